"""classify() never raises and never needs its last-resort guard, whatever bytes arrive."""

from __future__ import annotations

from datetime import date

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.triage import INTENTS, Classification, classification_json, classify

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def sane(c: Classification) -> None:
    assert c.intent in INTENTS
    assert 0.0 <= c.confidence <= 1.0
    assert not (c.malformed or "").startswith("internal error"), c.malformed  # the guard is a guard, not a path
    assert set(classification_json(c, "x.eml")) == {
        "file",
        "language",
        "intent",
        "confidence",
        "promised_date",
        "amount",
        "invoice_refs",
        "escalate",
        "evidence",
    }


@FAST
@given(st.binary(max_size=4000))
def test_arbitrary_bytes(raw: bytes) -> None:
    sane(classify(raw))


CHARSETS = st.sampled_from(
    ["utf-8", "iso-8859-1", "windows-1252", "us-ascii", "x-bogus", "utf-16", "shift_jis", "", '"utf-8']
)
ENCODINGS = st.sampled_from(["7bit", "8bit", "quoted-printable", "base64", "x-uuencode", "binary", "bogus"])
TYPES = st.sampled_from(
    [
        "text/plain",
        "text/html",
        "application/pdf",
        "message/rfc822",
        "message/delivery-status",
        "text/rfc822-headers",
        "multipart/mixed",
        "multipart/alternative",
        "multipart/report",
        "image/png",
        "text/x-garbage",
        "/",
    ]
)
TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=300)


@st.composite
def broken_mime(draw: st.DrawFn) -> bytes:
    """Structured like mail, broken at random: wrong boundaries, charsets, encodings, headers."""
    lines = [
        f"From: {draw(TEXT)} <{draw(st.sampled_from(['a@b.example', 'MAILER-DAEMON@x.example', '', '<>']))}>",
        f"Subject: {draw(TEXT)}",
        f"Date: {draw(st.sampled_from(['Tue, 18 Nov 2025 10:00:00 +0000', 'not a date', '', 'Mon, 99 Foo 2025']))}",
    ]
    lines += draw(
        st.lists(
            st.sampled_from(
                [
                    "Auto-Submitted: auto-replied",
                    "X-Autoreply: yes",
                    "Precedence: bulk",
                    "Return-Path: <>",
                    "Content-Transfer-Encoding: base64",
                    "MIME-Version: 1.0",
                    "X-Weird: =?utf-8?q?broken",
                    "\tcontinuation",
                ]
            ),
            max_size=4,
        )
    )
    boundary = draw(st.sampled_from(["b", "", "very long boundary " * 5, "=?x?="]))
    lines.append(
        f'Content-Type: {draw(TYPES)}; charset={draw(CHARSETS)}; boundary="{boundary}"; report-type=delivery-status'
    )
    body = []
    for _ in range(draw(st.integers(0, 4))):
        body += [
            f"--{draw(st.sampled_from([boundary, 'other', '']))}",
            f"Content-Type: {draw(TYPES)}; charset={draw(CHARSETS)}",
            f"Content-Transfer-Encoding: {draw(ENCODINGS)}",
            draw(st.sampled_from(["", 'Content-Disposition: attachment; filename="=?utf-8?b?ZmFjdHVyYQ==?=.pdf"'])),
            "",
            draw(TEXT),
        ]
    if draw(st.booleans()):
        body.append(f"--{boundary}--")
    text = "\r\n".join(lines) + "\r\n\r\n" + "\r\n".join(body)
    encoding = draw(st.sampled_from(["utf-8", "latin-1", "utf-16"]))
    return text.encode(encoding, "replace") + draw(st.binary(max_size=50))


@FAST
@given(broken_mime())
def test_structured_but_broken_mime(raw: bytes) -> None:
    sane(classify(raw, known_invoices=frozenset({"INV-1"}), our_domains=frozenset({"x.example"})))


@FAST
@given(TEXT, st.sampled_from(["en", "es", "fr", None]), st.sampled_from(["en", "es", None]))
def test_any_text_body(text: str, known: str | None, thread: str | None) -> None:
    raw = b"From: a@b.example\nSubject: Re: x\nDate: Tue, 18 Nov 2025 10:00:00 +0000\n\n" + text.encode()
    c = classify(raw, known_language=known, thread_language=thread, today=date(2025, 11, 18))
    sane(c)
    assert c.promised_date is None or date(2025, 11, 18) <= c.promised_date


def test_deep_nesting() -> None:
    depth = 3000
    raw = b"From: a@b.example\nMIME-Version: 1.0\n"
    raw += b"".join(f'Content-Type: multipart/mixed; boundary="{i}"\n\n--{i}\n'.encode() for i in range(depth))
    raw += b"Content-Type: text/plain\n\nWe paid.\n"
    c = classify(raw)
    sane(c)
    assert c.malformed is not None


def test_huge_headers_and_many_parts() -> None:
    raw = b"From: a@b.example\nSubject: " + b"x" * 2_000_000 + b"\n" + b"X-Junk: y\n" * 20_000
    raw += b'MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary="b"\n\n'
    raw += b"--b\nContent-Type: application/octet-stream\n\nAAAA\n" * 5000 + b"--b--\n"
    sane(classify(raw))


def test_size_cap_applies_before_parsing() -> None:
    c = classify(b"From: a@b.example\n\n" + b"We paid. " * 1000, max_bytes=100)
    sane(c)
    assert c.malformed is not None and "truncated" in c.malformed
