"""Intent labels from the customer's words: phrase knowledge in en/es, negation, and the priority rules."""

from __future__ import annotations

from datetime import date

import pytest

from bot.triage import classify


def reply(body: str, subject: str = "Re: Reminder: invoice INV-1042 is overdue") -> bytes:
    """A plain reply sent on Tuesday 18 November 2025."""
    head = f"From: Customer <ap@customer.example>\nTo: ar@dunbot.example\nSubject: {subject}\n"
    head += "Date: Tue, 18 Nov 2025 10:00:00 +0000\nContent-Type: text/plain; charset=utf-8\n\n"
    return (head + body + "\n").encode()


@pytest.mark.parametrize(
    ("text", "intent"),
    [
        # payment_sent
        ("We paid this invoice yesterday.", "payment_sent"),
        ("The payment was sent on Friday, please check.", "payment_sent"),
        ("Please find attached the proof of payment.", "payment_sent"),
        ("This has already been settled, see remittance advice attached.", "payment_sent"),
        ("I've transferred the full amount this morning.", "payment_sent"),
        ("The check is in the mail.", "payment_sent"),
        ("Didn't you receive our wire last week?", "payment_sent"),
        ("Ya se pagó la factura.", "payment_sent"),
        ("ya se pago", "payment_sent"),
        ("Le hicimos la transferecia ayer, adjunto comprobante.", "payment_sent"),
        ("La factura ya está pagada desde el lunes.", "payment_sent"),
        ("Ya realizamos el depósito, les comparto el voucher.", "payment_sent"),
        ("Hemos abonado el importe total esta mañana.", "payment_sent"),
        ("Ya cancelamos esa factura la semana pasada.", "payment_sent"),
        # promise_to_pay
        ("We will pay on the 25th.", "promise_to_pay"),
        ("Payment will be made next Friday.", "promise_to_pay"),
        ("It's scheduled for our next payment run on the 28th.", "promise_to_pay"),
        ("I'll send the transfer by the end of the month.", "promise_to_pay"),
        ("Le pagamos el viernes.", "promise_to_pay"),
        ("Pagaremos la factura a fin de mes.", "promise_to_pay"),
        ("Vamos a hacer la transferencia la semana que viene.", "promise_to_pay"),
        ("El pago está programado para el 15/12.", "promise_to_pay"),
        ("Le estaré depositando mañana sin falta.", "promise_to_pay"),
        # dispute
        ("We have not received the goods yet, so we won't pay.", "dispute"),
        ("The invoice amount is wrong, we were quoted a lower price.", "dispute"),
        ("Half of the units arrived damaged.", "dispute"),
        ("No hemos recibido la mercancía.", "dispute"),
        ("El importe de la factura es incorrecto, nos cobraron de más.", "dispute"),
        ("Los productos llegaron dañados, no pagaremos hasta que los repongan.", "dispute"),
        # hardship
        ("We are having cash flow problems, could we pay in installments?", "hardship"),
        ("Would it be possible to pay half now and half on December 15?", "hardship"),
        ("We need a little more time, business has been slow.", "hardship"),
        ("Estamos con problemas de liquidez, ¿podemos pagar en dos cuotas?", "hardship"),
        ("¿Nos pueden dar una prórroga hasta el 30?", "hardship"),
        ("No tenemos fondos este mes, les pido paciencia.", "hardship"),
        # request_info
        ("Could you send me a copy of the invoice?", "request_info"),
        ("What is this invoice for?", "request_info"),
        ("We never received this invoice.", "request_info"),
        ("¿Me pueden reenviar la factura en PDF?", "request_info"),
        ("¿A qué corresponde este cobro?", "request_info"),
        ("No encuentro la factura, ¿me la pueden mandar?", "request_info"),
        ("¿Cuál es el número de cuenta para transferir?", "request_info"),
        # wrong_contact
        ("I am not the right person, please contact accounts@customer.example.", "wrong_contact"),
        ("John no longer works here.", "wrong_contact"),
        ("No soy la persona encargada, escriba a pagos@cliente.example.", "wrong_contact"),
        ("Ya no trabajo en esa empresa.", "wrong_contact"),
        # legal
        ("We have passed this matter to our lawyers.", "legal"),
        ("Any further contact will result in legal action.", "legal"),
        ("Hemos trasladado el caso a nuestro abogado.", "legal"),
        # unsubscribe
        ("Unsubscribe", "unsubscribe"),
        ("Please remove me from your mailing list.", "unsubscribe"),
        ("Dejen de enviarme correos.", "unsubscribe"),
        # other
        ("Hello, see you at the trade fair next week.", "other"),
    ],
)
def test_intent(text: str, intent: str) -> None:
    assert classify(reply(text)).intent == intent


@pytest.mark.parametrize(
    ("text", "intent"),
    [
        ("We have NOT paid yet, we will pay on the 28th.", "promise_to_pay"),
        ("No payment has been made, we dispute the charge.", "dispute"),
        ("No hemos pagado todavía, estamos revisando.", "other"),
        ("I don't think we've paid this one.", "other"),
        ("Aún no está pagada.", "other"),
    ],
)
def test_negation_cancels_a_phrase(text: str, intent: str) -> None:
    assert classify(reply(text)).intent == intent


@pytest.mark.parametrize(
    ("text", "intent"),
    [
        ("We paid half last week and will pay the rest on the 30th.", "promise_to_pay"),
        ("We paid half, and are withholding the rest because the goods arrived damaged.", "dispute"),
        ("Pagamos la mitad ayer; el resto lo retenemos porque la mercancía llegó dañada.", "dispute"),
        ("The goods were damaged and I have handed your complaint to our lawyer.", "legal"),
        ("Can we pay in three installments: 5 December, 15 December and 30 December?", "hardship"),
        ("Ya pagamos la mitad y el resto se pagará el 15 de diciembre.", "promise_to_pay"),
        ("We paid yesterday, please stop sending these reminders.", "payment_sent"),
    ],
)
def test_mixed_replies_get_what_the_collector_must_do_first(text: str, intent: str) -> None:
    assert classify(reply(text)).intent == intent


@pytest.mark.parametrize(
    ("text", "escalate"),
    [
        ("ok", False),
        ("Thanks!", False),
        ("Recibido, muchas gracias.", False),
        ("ok gracias", False),
        ("?", True),
        ("", True),
    ],
)
def test_bare_acknowledgement_needs_nobody_but_a_bare_question_does(text: str, escalate: bool) -> None:
    c = classify(reply(text))
    assert (c.intent, c.escalate) == ("other", escalate)


def test_words_of_the_quoted_reminder_never_decide() -> None:
    body = (
        "Thanks, noted.\n\nOn Mon, Nov 17, 2025 at 9:02 AM Dunbot <ar@dunbot.example> wrote:\n"
        "> Invoice INV-1042 is overdue. If you have already paid, please send proof of payment.\n"
        "> We will take legal action.\n"
    )
    c = classify(reply(body))
    assert (c.intent, c.escalate, c.new_text) == ("other", False, "Thanks, noted.")


def test_evidence_is_the_customers_own_words_with_their_accents() -> None:
    c = classify(reply("Hola, ya se pagó la factura. Adjunto el comprobante."))
    assert "ya se pagó" in c.evidence
    assert 0 < c.confidence <= 1


def test_disputes_go_to_a_person_even_when_sure() -> None:
    c = classify(reply("The goods arrived damaged and the invoice amount is wrong."))
    assert c.intent == "dispute"
    assert c.escalate


def test_reply_in_a_language_we_do_not_serve_goes_to_a_person() -> None:
    c = classify(reply("Bonjour, nous avons bien payé la facture hier par virement bancaire. Cordialement"))
    assert (c.language, c.intent, c.escalate) == ("fr", "other", True)


def test_promise_carries_its_date() -> None:
    c = classify(reply("Le pagamos el viernes sin falta."))
    assert (c.intent, c.promised_date) == ("promise_to_pay", date(2025, 11, 21))


@pytest.mark.parametrize(
    ("text", "intent"),
    [
        ("Payment went through yesterday afternoon.", "payment_sent"),
        ("Our accounts team confirms this was settled on 14 Nov.", "payment_sent"),
        ("Done - paid this morning.", "payment_sent"),
        ("Remittance attached.", "payment_sent"),
        ("Hola Marta! Ya te hice el depósito hace un rato, va el comprobante 👍", "payment_sent"),
        ("Se hizo el pago por ventanilla, adjunto ficha de depósito.", "payment_sent"),
        ("Listo, ya quedó pagada.", "payment_sent"),
        ("pagado", "payment_sent"),
        ("It'll go out Friday.", "promise_to_pay"),
        ("I've approved it; it goes out in Thursday's payment run.", "promise_to_pay"),
        ("Expect the funds early next week.", "promise_to_pay"),
        ("Esta semana le hago la transferencia.", "promise_to_pay"),
        ("El pago está previsto para el 15 de diciembre.", "promise_to_pay"),
        ("La transferencia la haremos el 7 de enero.", "promise_to_pay"),
        ("We have no record of this order and did not receive any goods.", "dispute"),
        ("We were charged for 50 units but only received 40.", "dispute"),
        ("The quantity invoiced doesn't match what was delivered.", "dispute"),
        ("El servicio no se prestó.", "dispute"),
        ("Faltaron dos cajas en la entrega, descontamos lo faltante.", "dispute"),
        ("Money's tight, can we do £300 a month?", "hardship"),
        ("Is there any chance of an extra 30 days?", "hardship"),
        ("Estamos cortos de dinero, ¿nos da chance hasta el 15?", "hardship"),
        ("¿Nos podrán dar 30 días más?", "hardship"),
        ("¿Me mandas la factura de nuevo?", "request_info"),
        ("Please send us your bank details and we'll pay as soon as we have them.", "request_info"),
        ("We need a W-9 before we can pay.", "request_info"),
        ("This mailbox is being retired, please send reminders to ap@client.test from now on.", "wrong_contact"),
        ("Peter has moved on; his replacement is ana@client.test.", "wrong_contact"),
        ("Eso lo lleva el área de tesorería: tesoreria@cliente.test.", "wrong_contact"),
        ("Our lawyer has advised us not to pay until the claim is resolved.", "legal"),
        ("I do not want to receive these messages anymore.", "unsubscribe"),
        ("BAJA", "unsubscribe"),
        ("Thanks for the reminder, I've passed it on to our finance team.", "other"),
        ("Recibido, se lo paso a contabilidad.", "other"),
        ("Can you give me a call when you get a chance?", "other"),
    ],
)
def test_general_phrasings(text: str, intent: str) -> None:
    assert classify(reply(text)).intent == intent


def test_signature_and_disclaimer_words_never_decide() -> None:
    body = (
        "Thanks, noted.\n\nJohn Doe | Legal & Compliance Manager\nACME Corp\n"
        "CONFIDENTIALITY: This e-mail may contain legally privileged information."
    )
    c = classify(reply(body))
    assert (c.intent, c.escalate) == ("other", False)
    es = "Ya pagamos ayer.\n\nSaludos cordiales,\nMaría López\nDirectora Jurídica\nSometido a los juzgados de Madrid."
    assert classify(reply(es)).intent == "payment_sent"


def test_a_body_that_sounds_automatic_yields_to_a_persons_statement() -> None:
    c = classify(reply("I'm on leave until Monday, but we will pay the invoice on Tuesday."))
    assert (c.intent, c.automatic) == ("promise_to_pay", None)
