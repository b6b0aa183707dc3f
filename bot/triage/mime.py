"""Bytes of an email in, plain data out: headers, body text, attachment list, and what was broken.

Customers' mail clients declare wrong charsets, nest parts oddly, send HTML only and truncate
messages; none of that may stop the triage. Every step here is defensive: a failure degrades the
result and is recorded in ``malformed``, never raised. Attachments are listed (name, type, size) but
their content is never decoded.
"""

from __future__ import annotations

import codecs
import functools
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from email import errors as email_errors
from email.header import decode_header
from email.message import Message
from email.parser import BytesParser
from email.policy import compat32
from email.utils import getaddresses, parsedate_to_datetime

import html2text
from bs4 import BeautifulSoup, MarkupResemblesLocatorWarning, XMLParsedAsHTMLWarning

MAX_DEPTH = 20
"""Deeper MIME nesting is not mail a person wrote; parts below it are ignored."""

MAX_PARTS = 200
"""More parts than this are not read (a zip-bomb-like message must stay cheap)."""

_SERIOUS_DEFECTS = (
    email_errors.NoBoundaryInMultipartDefect,
    email_errors.StartBoundaryNotFoundDefect,
    email_errors.MultipartInvariantViolationDefect,
    email_errors.FirstHeaderLineIsContinuationDefect,
    email_errors.MissingHeaderBodySeparatorDefect,
)
"""Defects that mean the structure was guessed; base64 padding and similar slips are common and harmless."""

_WESTERN = re.compile(r"^(us-?ascii|ascii|iso[-_]?8859[-_]?\d+|latin[-_]?\d|l\d|windows[-_]?125\d|cp125\d|cp850)$")
"""Single-byte charsets that are often declared for text that is really UTF-8."""

_MOJIBAKE = re.compile("[ÃÂ][\u0080-\u00bf\u2018-\u203a\u0152\u0153\u0160\u0161\u017d\u017e\u0178\u0192\u02c6\u02dc]")
"""UTF-8 decoded as cp1252/latin-1 ("Ã©" for "é"): the signature of a double-encoded text."""

_REPORT_PARTS = frozenset({"message/delivery-status", "text/rfc822-headers", "message/disposition-notification"})


@dataclass(frozen=True)
class Attachment:
    name: str
    content_type: str
    size: int  # bytes after transfer decoding, estimated without decoding


@dataclass(frozen=True)
class ParsedMessage:
    headers: dict[str, tuple[str, ...]]  # lower-case name -> decoded values, in order
    subject: str
    sender: str  # lower-case address of From, "" if none
    date: datetime | None
    text: str  # body as plain text (from text/plain, or the whole HTML converted)
    html: str  # the HTML body when there was no usable text/plain, else ""
    attachments: tuple[Attachment, ...]
    malformed: str | None
    message: Message  # the stdlib tree, read-only, for report (DSN) parsing

    def header(self, name: str) -> str:
        """First value of a header, "" when absent."""
        return _first(self.headers, name.lower())


def decode_bytes(data: bytes, declared: str | None) -> str:
    """Decode text whose declared charset may be missing, unknown or wrong.

    Valid UTF-8 with non-ASCII bytes is almost never a single-byte charset, so it wins over a
    declared western charset; bytes that fit no declaration fall back to cp1252, then latin-1.
    """
    charset = (declared or "").strip().strip('"').lower()
    candidates: list[str] = []
    if not charset or _WESTERN.match(charset):
        candidates.append("utf-8")
    if charset:
        candidates.append(charset)
    candidates += ["utf-8", "cp1252"]
    for name in candidates:
        try:
            codecs.lookup(name)
            text = data.decode(name)
        except (LookupError, UnicodeDecodeError, ValueError):
            continue
        return repair_mojibake(text)
    return data.decode("latin-1")


def repair_mojibake(text: str) -> str:
    """Undo a UTF-8 text that was decoded as cp1252 somewhere upstream, when it round-trips cleanly."""
    if not _MOJIBAKE.search(text):
        return text
    for single in ("cp1252", "latin-1"):
        try:
            return text.encode(single).decode("utf-8")
        except (UnicodeEncodeError, UnicodeDecodeError):
            continue
    return text


def decode_header_value(value: object) -> str:
    """RFC 2047 words, raw 8-bit bytes and bad charsets all become a str; unfolded to one line."""
    raw = str(value)
    try:
        chunks = decode_header(raw)
    except Exception:  # the stdlib raises assorted errors on broken encoded words
        chunks = [(raw, None)]
    out: list[str] = []
    for chunk, charset in chunks:
        if isinstance(chunk, bytes):
            out.append(decode_bytes(chunk, charset))
        elif any("\udc80" <= ch <= "\udcff" for ch in chunk):
            out.append(decode_bytes(chunk.encode("utf-8", "surrogateescape"), None))
        else:
            out.append(chunk)
    return re.sub(r"\s*\r?\n\s*", " ", "".join(out)).strip()


@functools.cache
def _needle(selector: str) -> str:
    """The longest name in a CSS selector (class, id or tag), lower-cased: it must occur in the markup."""
    return max(re.findall(r"[\w-]+", selector), key=len, default="").lower()


def html_to_text(html: str, drop: tuple[str, ...] = ()) -> str:
    """Readable text from HTML: block structure kept; links, images, emphasis and ``drop`` (CSS selectors) gone."""
    with warnings.catch_warnings():  # bs4 warns when a body looks like a URL or XML; it is still a body
        warnings.simplefilter("ignore", MarkupResemblesLocatorWarning)
        warnings.simplefilter("ignore", XMLParsedAsHTMLWarning)
        soup = BeautifulSoup(html, "html.parser")
    for tag in soup.find_all(["style", "script", "head", "title"]):
        tag.decompose()
    lowered = html.lower()
    for selector in drop:
        if _needle(selector) not in lowered:
            continue  # a selector whose class or id is nowhere in the markup matches nothing: skip the slow search
        for tag in soup.select(selector):
            tag.decompose()
    converter = html2text.HTML2Text()
    converter.body_width = 0
    converter.ignore_links = True
    converter.ignore_images = True
    converter.ignore_emphasis = True
    converter.unicode_snob = True
    text = converter.handle(str(soup))
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def parse(raw: bytes, max_bytes: int = 10_000_000) -> ParsedMessage:
    """Parse a message; never raises. ``malformed`` says what was wrong, None when nothing was."""
    problems: list[str] = []
    if len(raw) > max_bytes:
        raw = raw[:max_bytes]
        problems.append(f"larger than {max_bytes} bytes: truncated")
    try:
        msg = BytesParser(policy=compat32).parsebytes(raw)
    except Exception as exc:  # the parser is not documented to raise, but must never take us down
        problems.append(f"unparseable: {type(exc).__name__}")
        msg = Message()
    headers = _headers(msg)
    if not headers:
        problems.append("no headers")
    plain: list[str] = []
    html: list[str] = []
    attachments: list[Attachment] = []
    try:
        _collect(msg, plain, html, attachments, problems)
    except RecursionError:
        problems.append("nesting too deep")
    text = "\n".join(t for t in plain if t.strip())
    html_body = ""
    if not text.strip() and html:
        html_body = "\n".join(html)
        try:
            text = html_to_text(html_body)
        except Exception as exc:  # html2text and bs4 choke on some pathological markup
            problems.append(f"unreadable HTML: {type(exc).__name__}")
            text = re.sub(r"<[^>]*>", " ", html_body)
    return ParsedMessage(
        headers=headers,
        subject=_first(headers, "subject"),
        sender=_address(_first(headers, "from")),
        date=_date(_first(headers, "date")),
        text=text,
        html=html_body,
        attachments=tuple(attachments),
        malformed="; ".join(dict.fromkeys(problems)) or None,
        message=msg,
    )


def _headers(msg: Message) -> dict[str, tuple[str, ...]]:
    out: dict[str, list[str]] = {}
    try:
        items = msg.raw_items()  # undecoded: 8-bit bytes survive as surrogates for decode_header_value
    except Exception:
        return {}
    for name, value in items:
        key = str(name).strip().lower()
        if key:
            out.setdefault(key, []).append(decode_header_value(value))
    return {k: tuple(v) for k, v in out.items()}


def _first(headers: dict[str, tuple[str, ...]], name: str) -> str:
    return headers.get(name, ("",))[0]


def _address(value: str) -> str:
    try:
        pairs = getaddresses([value])
    except Exception:
        return ""
    for _, addr in pairs:
        if "@" in addr:
            return addr.strip().lower()
    return ""


def _date(value: str) -> datetime | None:
    if not value:
        return None
    try:
        return parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def walk(msg: Message, max_depth: int = MAX_DEPTH) -> Iterator[tuple[Message, int, str]]:
    """Parts depth-first without recursion, with their depth and the parent's content type."""
    stack: list[tuple[Message, int, str]] = [(msg, 0, "")]
    seen = 0
    while stack and seen < MAX_PARTS:
        part, depth, parent = stack.pop()
        seen += 1
        yield part, depth, parent
        payload = part.get_payload() if part.is_multipart() else None
        if isinstance(payload, list) and depth < max_depth:
            ctype = _ctype(part)
            stack.extend((child, depth + 1, ctype) for child in reversed(payload) if isinstance(child, Message))


def _ctype(part: Message) -> str:
    try:
        return part.get_content_type()
    except Exception:
        return "application/octet-stream"


def _collect(
    msg: Message, plain: list[str], html: list[str], attachments: list[Attachment], problems: list[str]
) -> None:
    for part, depth, parent in walk(msg):
        if depth >= MAX_DEPTH:
            problems.append("nesting too deep")
        problems.extend(
            f"broken MIME structure ({type(d).__name__})" for d in part.defects if isinstance(d, _SERIOUS_DEFECTS)
        )
        ctype = _ctype(part)
        if part.is_multipart() or ctype in _REPORT_PARTS:
            continue
        if parent == "multipart/report" and ctype == "message/rfc822":
            continue  # the returned message of a bounce, read by automatic.py
        name = _filename(part)
        disposition = str(part.get("content-disposition", "")).split(";")[0].strip().lower()
        if ctype in ("text/plain", "text/html") and not name and disposition != "attachment":
            body = _body_text(part, problems)
            (plain if ctype == "text/plain" else html).append(body)
        else:
            attachments.append(Attachment(name or _default_name(part, ctype), ctype, _size(part)))


def _filename(part: Message) -> str:
    try:
        name = part.get_filename() or part.get_param("name") or ""
    except Exception:
        return ""
    if isinstance(name, tuple):  # RFC 2231 triple the stdlib did not collapse
        name = name[2]
    return decode_header_value(name)


def _default_name(part: Message, ctype: str) -> str:
    if ctype == "message/rfc822":
        inner = part.get_payload()
        if isinstance(inner, list) and inner and isinstance(inner[0], Message):
            return decode_header_value(inner[0].get("subject", "")) or "message.eml"
    return "unnamed"


def _size(part: Message) -> int:
    """Size the part would have once decoded, estimated from its encoded form."""
    payload = part.get_payload()
    if isinstance(payload, list):
        return sum(_size(p) for p in payload if isinstance(p, Message))
    if not isinstance(payload, str):
        return 0
    cte = str(part.get("content-transfer-encoding", "")).strip().lower()
    if cte == "base64":
        chars = len(re.sub(r"[^A-Za-z0-9+/]", "", payload))
        return chars * 3 // 4
    return len(payload.encode("utf-8", "surrogateescape"))


def _body_text(part: Message, problems: list[str]) -> str:
    try:
        data = part.get_payload(decode=True)
    except Exception as exc:
        problems.append(f"undecodable body: {type(exc).__name__}")
        data = None
    if not isinstance(data, bytes):
        payload = part.get_payload()
        data = payload.encode("utf-8", "surrogateescape") if isinstance(payload, str) else b""
    try:
        charset = part.get_content_charset()
    except Exception:
        charset = None
    return decode_bytes(data, charset).replace("\r\n", "\n").replace("\r", "\n")
