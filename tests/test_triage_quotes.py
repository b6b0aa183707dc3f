"""The customer's new text, separated from the quoted reminder and from signatures, in each client's style."""

from __future__ import annotations

import pytest

from bot.triage import classify
from bot.triage.quotes import split

REMINDER = "Invoice INV-1042 is overdue. If you have already paid, send proof of payment.\nWe will take legal action."


@pytest.mark.parametrize(
    ("own", "attribution"),
    [
        # Gmail, English and Spanish (and Latin American Gmail)
        ("We will pay on Friday.", "On Tue, Nov 18, 2025 at 9:02 AM Dunbot AR <ar@dunbot.example> wrote:"),
        ("Le pagamos el viernes.", "El mar., 18 nov. 2025 a las 9:02, Dunbot AR (<ar@dunbot.example>) escribió:"),
        ("Le pagamos el viernes.", "El mar, 18 de nov de 2025, 9:02 a. m., Dunbot AR <ar@dunbot.example> escribió:"),
        # Apple Mail, English and Spanish
        ("We will pay on Friday.", "On 18 Nov 2025, at 09:02, Dunbot AR <ar@dunbot.example> wrote:"),
        ("Le pagamos el viernes.", "El 18 nov 2025, a las 9:02, Dunbot AR <ar@dunbot.example> escribió:"),
        # Outlook plain-text separators
        ("We will pay on Friday.", "-----Original Message-----"),
        ("Le pagamos el viernes.", "-----Mensaje original-----"),
        # bare address lines
        ("We will pay on Friday.", "ar@dunbot.example wrote:"),
        # other languages' clients
        ("We will pay on Friday.", "Le mar. 18 nov. 2025 à 09:02, Dunbot AR <ar@dunbot.example> a écrit :"),
        ("We will pay on Friday.", "Am Di., 18. Nov. 2025 um 09:02 Uhr schrieb Dunbot AR <ar@dunbot.example>:"),
        ("We will pay on Friday.", "Em ter., 18 de nov. de 2025 às 09:02, Dunbot AR <ar@dunbot.example> escreveu:"),
        ("We will pay on Friday.", "Op di 18 nov 2025 om 09:02 schreef Dunbot AR <ar@dunbot.example>:"),
        (
            "We will pay on Friday.",
            "Il giorno mar 18 nov 2025 alle ore 09:02 Dunbot AR <ar@dunbot.example> ha scritto:",
        ),
    ],
)
def test_attribution_lines_cut_the_quote(own: str, attribution: str) -> None:
    text = f"{own}\n\n{attribution}\n> {REMINDER.replace(chr(10), chr(10) + '> ')}\n"
    zones = split(text)
    assert zones.new_text == own
    assert "overdue" in zones.quoted


def test_wrapped_gmail_attribution() -> None:
    text = (
        "Paid yesterday.\n\n"
        "On Tue, Nov 18, 2025 at 9:02 AM Dunbot Accounts Receivable <\nar@dunbot.example> wrote:\n\n> overdue\n"
    )
    assert split(text).new_text == "Paid yesterday."


def test_sentence_before_an_attribution_is_not_swallowed_by_it() -> None:
    text = "Thanks, noted.\nOn Mon, Nov 17, 2025 at 9:02 AM Dunbot <ar@dunbot.example> wrote:\n> overdue"
    assert split(text).new_text == "Thanks, noted."


@pytest.mark.parametrize(
    "header",
    [
        "From: Dunbot AR <ar@dunbot.example>\nSent: Tuesday, November 18, 2025 9:02 AM\nTo: Ana\nSubject: Invoice",
        "De: Dunbot AR <ar@dunbot.example>\nEnviado el: martes, 18 de noviembre de 2025\nPara: Ana\nAsunto: Factura",
        "De: Dunbot AR <ar@dunbot.example>\nEnviado: martes, 18 de noviembre de 2025 9:02\nPara: Ana\nAsunto: Factura",
        "__________________________\nFrom: Dunbot AR <ar@dunbot.example>\nSent: Tuesday\nTo: Ana\nSubject: Invoice",
        "*From:* Dunbot AR <ar@dunbot.example>\n*Sent:* Tuesday\n*To:* Ana\n*Subject:* Invoice",
        "Von: Dunbot AR <ar@dunbot.example>\nGesendet: Dienstag\nAn: Ana\nBetreff: Rechnung",
    ],
)
def test_outlook_header_block_cuts_the_quote(header: str) -> None:
    zones = split(f"Ya pagamos ayer.\n\n{header}\n\n{REMINDER}")
    assert zones.new_text == "Ya pagamos ayer."
    assert "overdue" in zones.quoted


def test_interleaved_quote_lines_are_dropped() -> None:
    text = "> Invoice INV-1042 is overdue.\nWe paid it on Monday.\n> Please pay now.\nDone already."
    assert split(text).new_text == "We paid it on Monday.\nDone already."


@pytest.mark.parametrize(
    ("text", "own"),
    [
        ("We paid yesterday.\n\nBest regards,\nAna Pérez\nCFO, Cliente SA\n+34 600 000 000", "We paid yesterday."),
        ("We paid yesterday.\n-- \nAna Pérez | Cliente SA", "We paid yesterday."),
        ("We paid yesterday.\n\nSent from my iPhone", "We paid yesterday."),
        ("Ya pagamos ayer.\n\nSaludos,\nAna", "Ya pagamos ayer."),
        ("Ya pagamos ayer.\n\nUn saludo.\nAna", "Ya pagamos ayer."),
        ("Ya pagamos ayer.\nQuedo atenta.\nAna", "Ya pagamos ayer."),
        ("Ya pagamos ayer.\n\nEnviado desde mi iPhone", "Ya pagamos ayer."),
        (
            "Ya pagamos ayer.\n\nAtentamente,\nAna\n\nAVISO DE CONFIDENCIALIDAD: este mensaje es privado.",
            "Ya pagamos ayer.",
        ),
        (
            "We paid yesterday.\n\nThis email and any attachments are confidential and intended for the addressee.",
            "We paid yesterday.",
        ),
        ("Hi Ana,\nThanks.\nWe paid yesterday.\nThanks,\nBob", "Hi Ana,\nThanks.\nWe paid yesterday."),
        ("Hola,\nGracias, ya pagamos.\nSaludos", "Hola,\nGracias, ya pagamos."),
        ("Thanks,\nBob", "Thanks,\nBob"),
    ],
)
def test_signatures_and_disclaimers_are_cut(text: str, own: str) -> None:
    assert split(text).new_text == own


def html_mail(html: str) -> bytes:
    head = "From: ana@c.example\nSubject: Re: Invoice\nDate: Tue, 18 Nov 2025 10:00:00 +0000\n"
    return (head + "Content-Type: text/html; charset=utf-8\n\n" + html).encode()


@pytest.mark.parametrize(
    "html",
    [
        # Gmail
        '<div dir="ltr">Gracias, ya pagamos.</div><br><div class="gmail_quote"><div class="gmail_attr">'
        "El mar, 18 nov 2025 escribió:</div><blockquote>We will take legal action. Overdue.</blockquote></div>",
        '<div>Gracias, ya pagamos.</div><div class="gmail_signature">Ana | CFO | we will take legal action</div>',
        # Outlook web / new Outlook
        '<div>Gracias, ya pagamos.</div><hr><div id="divRplyFwdMsg"><b>From:</b> Dunbot<br><b>Sent:</b> Tuesday</div>'
        "<div>We will take legal action. Overdue.</div><div>more quoted text</div>",
        '<div>Gracias, ya pagamos.</div><div id="Signature">Legal action department</div>',
        # Apple Mail
        '<div>Gracias, ya pagamos.</div><div><br><blockquote type="cite">We will take legal action.</blockquote></div>',
        # Thunderbird
        '<p>Gracias, ya pagamos.</p><div class="moz-cite-prefix">On 18/11/2025 Dunbot wrote:</div>'
        '<blockquote type="cite">We will take legal action.</blockquote>',
    ],
)
def test_html_only_mail_drops_client_marked_quotes(html: str) -> None:
    c = classify(html_mail(html))
    assert c.new_text == "Gracias, ya pagamos."
    assert c.intent == "payment_sent"
