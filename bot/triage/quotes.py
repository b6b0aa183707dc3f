"""Separate the customer's own new words from the quoted reminder and from their signature.

A reply quotes our reminder, which is full of words like "overdue", "pay" and "invoice"; if those
drove the decision every reply would look like a promise. So the decision only ever sees the new
text. Quote shapes belong to the customer's mail client, whose language may differ from the
customer's, so the attribution patterns of every language file are tried on every message.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from bot.triage.mime import ParsedMessage, html_to_text
from bot.triage.phrases import Language, fold, languages

HTML_QUOTE_SELECTORS = (
    ".gmail_quote",
    ".gmail_attr",
    ".gmail_signature",
    "[id$=divRplyFwdMsg] ~ *",  # Outlook: the quoted message follows the reply header as siblings
    "[id$=divRplyFwdMsg]",
    "[id=appendonsend] ~ *",
    "[id=Signature]",
    "[id$=_Signature]",
    "blockquote[type=cite]",
    ".moz-cite-prefix",
    ".moz-signature",
    ".yahoo_quoted",
)
"""Client markers of quoted blocks and signatures in HTML mail, removed before conversion to text."""

_HEADER_WINDOW = 6
"""An Outlook header block: the From line and at least two known fields within this many lines."""

_FIELD = re.compile(r"^[*>\s]*([a-z][a-z ]{0,15}?)\s*:\*?(?:\s|$)")
_NAME_TAIL = re.compile(r"[,\s]+(?:[A-Z][\w.'-]*\s*){1,3}$")
"""A signed closing such as "Thanks, John Smith": the capitalised name is dropped before matching."""
_CONTACT = re.compile(r"\|| \+?\(?\d[\d ().-]{6,}\d|@|www\.|https?://|\b(?:tel|phone|mobile|m|t|cel|movil|fax)\b\.?:")
_SENTENCE = re.compile(r"^(?:\S+\s+){3,}\S*[a-z]\.$|[a-z]{2}\.\s+[A-Z][a-z]")
"""Prose rather than a signature line: four words or more ending in a full stop, or two sentences."""
_RULE = re.compile(r"^\s*(?:[-_=*~](?: ?[-_=*~]){2,}\s*)?$")
"""A blank line or a drawn rule left over above a cut quote."""


@dataclass(frozen=True)
class Zones:
    new_text: str
    quoted: str
    signature: str


def split_message(msg: ParsedMessage) -> Zones:
    """Zones of a parsed message; HTML-only mail loses its client-marked quotes before conversion."""
    text = html_to_text(msg.html, HTML_QUOTE_SELECTORS) if msg.html else msg.text
    return split(text)


def split(text: str, langs: Iterable[Language] | None = None) -> Zones:
    """Cut at the first attribution line or Outlook header block; then cut the signature or footer."""
    table = list(languages().values()) if langs is None else list(langs)
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    folded = [fold(line).strip() for line in lines]
    cut = _quote_start(folded, table)
    mine = [i for i in range(cut) if not folded[i].startswith(">")] + _inline_answers(folded, cut)
    own = [lines[i] for i in mine]
    quoted = "\n".join(line for i, line in enumerate(lines) if i not in set(mine))
    sig = _signature_start([fold(_NAME_TAIL.sub("", lines[i])).strip() for i in mine], table)
    new_lines = own[:sig]
    while new_lines and _RULE.match(new_lines[-1]):
        new_lines.pop()
    new_lines = new_lines[: _signature_block(new_lines)]
    return Zones("\n".join(new_lines).strip(), quoted.strip(), "\n".join(own[sig:]).strip())


def _quote_start(folded: list[str], table: list[Language]) -> int:
    attributions = [p for lang in table for p in lang.attribution]
    header_from = {w for lang in table for w in lang.header_from}
    header_fields = {w for lang in table for w in lang.header_fields}
    for i, line in enumerate(folded):
        if not line:
            continue
        candidates = _wrapped(folded, i)
        if any(p.search(candidate) for p in attributions for candidate in candidates):
            return i
        if _field(line) in header_from:
            following = [_field(x) for x in folded[i + 1 : i + 1 + _HEADER_WINDOW]]
            if sum(1 for f in following if f in header_fields) >= 2:
                return i
    return len(folded)


def _inline_answers(folded: list[str], cut: int) -> list[int]:
    """Unquoted lines written between the ">" lines of the quote: answers given inline."""
    if sum(1 for line in folded[cut:] if line.startswith(">")) < 2:
        return []
    answers, quoting = [], False
    for i in range(cut + 1, len(folded)):
        quoting = quoting or folded[i].startswith(">")
        if quoting and folded[i] and not folded[i].startswith(">"):
            answers.append(i)
    return answers


def _wrapped(folded: list[str], i: int) -> list[str]:
    """The line, and the line joined with up to two following ones, as a client may have wrapped it."""
    candidates = [folded[i]]
    for j in (i + 1, i + 2):
        if j >= len(folded) or not folded[j] or candidates[-1].endswith((".", "!", "?")):
            break
        candidates.append(f"{candidates[-1]} {folded[j]}")
    return candidates


def _field(line: str) -> str:
    match = _FIELD.match(line)
    return match.group(1).strip() if match else ""


def _signature_start(folded: list[str], table: list[Language]) -> int:
    """Index of the first footer line, or of a closing formula that follows some content."""
    footers = [p for lang in table for p in lang.footer]
    closings = [p for lang in table for p in lang.valediction]
    seen_content = False
    for i, line in enumerate(folded):
        if any(p.search(line) for p in footers):
            return i
        if seen_content and any(p.match(line) for p in closings):
            return i
        seen_content = seen_content or not _greeting(line)
    return len(folded)


def _signature_block(lines: list[str]) -> int:
    """Start of a trailing block that reads like a signature: short lines, no question, no sentence,
    and a phone number, an address, a "|" or a web site among them (caught even without "Regards"
    before it). What follows only a greeting is the message, however short ("Olá, / Estou em férias.
    Retorno em 12/01. / Para assuntos urgentes, contate x@y")."""
    blank = [i for i, line in enumerate(lines) if not line.strip()]
    if not blank:
        return len(lines)
    block = [line.strip() for line in lines[blank[-1] + 1 :] if line.strip()]
    short = all(len(line.split()) <= 8 and not line.endswith("?") and not _SENTENCE.search(line) for line in block)
    said = any(line.strip() and not _greeting(fold(line).strip()) for line in lines[: blank[-1]])
    if block and short and said and any(_CONTACT.search(line) for line in block):
        return blank[-1]
    return len(lines)


def _greeting(line: str) -> bool:
    """Empty, or a short salutation such as "Hi John," that is not yet the message."""
    return not line or (len(line.split()) <= 5 and line.endswith((",", ":")))
