"""MIME parsing: bodies, charsets, encodings, attachments, size cap, and malformed input that must not crash."""

from __future__ import annotations

import base64

import pytest

from bot.triage import classify
from bot.triage.mime import decode_bytes, decode_header_value, parse, repair_mojibake

HEAD = b"From: Ana <ana@cliente.example>\r\nSubject: Re: factura\r\nDate: Tue, 18 Nov 2025 10:00:00 +0100\r\n"


def test_plain_quoted_printable() -> None:
    raw = HEAD + b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
    raw += b"Ya se pag=C3=B3 la factura, ma=C3=B1ana env=C3=ADo el comprobante.\r\n"
    msg = parse(raw)
    assert msg.text.strip() == "Ya se pagó la factura, mañana envío el comprobante."
    assert msg.malformed is None
    assert msg.sender == "ana@cliente.example"
    assert msg.date is not None and msg.date.day == 18


def test_base64_body() -> None:
    body = base64.b64encode(b"Pagaremos el viernes.")
    raw = HEAD + b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n" + body
    assert parse(raw).text.strip() == "Pagaremos el viernes."


def test_alternative_prefers_text_plain() -> None:
    raw = HEAD + (
        b'MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nWe paid yesterday.\r\n"
        b"--b\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>We <b>paid</b> yesterday (html).</p>\r\n--b--\r\n"
    )
    msg = parse(raw)
    assert msg.text.strip() == "We paid yesterday."
    assert msg.html == ""


def test_html_only_is_converted_to_text() -> None:
    raw = HEAD + (
        b"Content-Type: text/html; charset=utf-8\r\n\r\n"
        b"<html><head><style>p {color: red}</style></head><body><p>We <b>paid</b> the invoice.</p>"
        b'<p>See <a href="http://x.example">the receipt</a>.</p></body></html>'
    )
    msg = parse(raw)
    assert "We paid the invoice." in msg.text
    assert "<" not in msg.text and "color" not in msg.text and "http" not in msg.text
    assert msg.html


@pytest.mark.parametrize(
    ("data", "declared", "expected"),
    [
        ("Pagó mañana".encode(), "iso-8859-1", "Pagó mañana"),  # UTF-8 declared as latin-1
        ("Pagó mañana".encode("cp1252"), "utf-8", "Pagó mañana"),  # latin-1 declared as UTF-8
        ("Pagó mañana".encode(), "x-no-such-charset", "Pagó mañana"),  # unknown charset
        ("Pagó mañana".encode("cp1252"), None, "Pagó mañana"),  # no charset at all
        ("Zahlung für Rechnung".encode("iso-8859-15"), "iso-8859-15", "Zahlung für Rechnung"),
        ("お支払い".encode("shift_jis"), "shift_jis", "お支払い"),
        (b"\xff\xfe\xfa", "us-ascii", "ÿþú"),
    ],
)
def test_declared_or_misdeclared_charset(data: bytes, declared: str | None, expected: str) -> None:
    assert decode_bytes(data, declared) == expected


def test_double_encoded_text_is_repaired() -> None:
    assert repair_mojibake("Ya se pagÃ³ la factura") == "Ya se pagó la factura"
    assert repair_mojibake("Já está pago") == "Já está pago"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("=?utf-8?q?Re=3A_Factura_pagada?=", "Re: Factura pagada"),
        ("=?iso-8859-1?q?Re:_Recibo_de_pago_=F1?=", "Re: Recibo de pago ñ"),
        ("=?x-bogus?q?Re:_hola?=", "Re: hola"),
        ("=?utf-8?b?not base64!?=", "=?utf-8?b?not base64!?="),
        ("Re: línea\r\n continuada", "Re: línea continuada"),
    ],
)
def test_header_decoding_never_fails(value: str, expected: str) -> None:
    assert decode_header_value(value) == expected


def test_raw_eight_bit_header_is_read_as_utf8() -> None:
    raw = b"From: x@y.example\r\nSubject: Re: factura pagada \xc3\xa1\r\n\r\nok\r\n"
    assert parse(raw).subject == "Re: factura pagada á"


def test_attachments_are_listed_not_decoded() -> None:
    pdf = base64.b64encode(b"%PDF-1.4 " + bytes(3000)).decode()
    raw = HEAD + (
        b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="m"\r\n\r\n'
        b"--m\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nAdjunto comprobante.\r\n"
        b'--m\r\nContent-Type: application/pdf; name="comprobante.pdf"\r\n'
        b'Content-Disposition: attachment; filename="comprobante.pdf"\r\nContent-Transfer-Encoding: base64\r\n\r\n'
        + pdf.encode()
        + b'\r\n--m\r\nContent-Type: text/plain; name="notes.txt"\r\n'
        b'Content-Disposition: attachment; filename="notes.txt"\r\n\r\n'
        b"We will take legal action\r\n"
        b'--m\r\nContent-Type: image/png\r\nContent-Disposition: inline; filename="=?utf-8?q?recibo_n=C2=BA1.png?="\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\n!!!not base64!!!\r\n--m--\r\n"
    )
    msg = parse(raw)
    assert msg.text.strip() == "Adjunto comprobante."  # the attached .txt is not read as the body
    names = [(a.name, a.content_type) for a in msg.attachments]
    assert names == [
        ("comprobante.pdf", "application/pdf"),
        ("notes.txt", "text/plain"),
        ("recibo nº1.png", "image/png"),
    ]
    assert abs(msg.attachments[0].size - 3009) <= 3


def test_size_cap_truncates_and_says_so() -> None:
    raw = (
        HEAD
        + (
            b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="m"\r\n\r\n'
            b"--m\r\nContent-Type: text/plain\r\n\r\nWe paid the invoice yesterday.\r\n"
            b"--m\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        )
        + b"QUJD" * 5000
    )
    c = classify(raw, max_bytes=600)
    assert c.malformed is not None and "truncated" in c.malformed
    assert c.intent == "payment_sent"
    assert c.escalate


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (b"", "no headers"),
        (b"\x00\x01\x02 garbage without headers", "no headers"),
        (HEAD + b"Content-Type: multipart/mixed\r\n\r\nno boundary at all\r\n", "broken MIME structure"),
        (HEAD + b'Content-Type: multipart/mixed; boundary="zz"\r\n\r\nthe boundary never starts\r\n', "broken MIME"),
    ],
)
def test_malformed_input_is_reported_not_raised(raw: bytes, problem: str) -> None:
    c = classify(raw)
    assert c.malformed is not None and problem in c.malformed
    assert c.escalate


def test_deep_nesting_is_cut_off() -> None:
    depth = 60
    raw = HEAD + b"MIME-Version: 1.0\r\n"
    for i in range(depth):
        raw += f'Content-Type: multipart/mixed; boundary="b{i}"\r\n\r\n--b{i}\r\n'.encode()
    raw += b"Content-Type: text/plain\r\n\r\nWe paid.\r\n"
    for i in reversed(range(depth)):
        raw += f"--b{i}--\r\n".encode()
    c = classify(raw)
    assert c.malformed is not None and "nesting too deep" in c.malformed
