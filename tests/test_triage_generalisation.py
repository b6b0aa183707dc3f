"""General classes of phrasing the classifier must read, in English and Spanish, beyond the corpus.

Each test names one class (passive payment forms, payment jargon, tenseless Spanish verbs, passing
mentions of other matters, conditions on the collector, ...) and holds a few varied examples of it, so
a change that fits one sentence but breaks the class shows here.
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest

from bot.triage import classify
from bot.triage.quotes import split


def reply(body: str, subject: str = "Re: Reminder: invoice INV-1042 is overdue", **headers: str) -> bytes:
    """A plain reply sent on Tuesday 18 November 2025."""
    head = f"From: Customer <ap@customer.example>\nTo: ar@dunbot.example\nSubject: {subject}\n"
    head += "".join(f"{k.replace('_', '-')}: {v}\n" for k, v in headers.items())
    head += "Date: Tue, 18 Nov 2025 10:00:00 +0000\nContent-Type: text/plain; charset=utf-8\n\n"
    return (head + body + "\n").encode()


def intent(text: str) -> str:
    return classify(reply(text)).intent


@pytest.mark.parametrize(
    "text",
    [
        # passive and perfect forms: has been paid / remitted / settled / cleared / processed / applied
        "The balance has been remitted via ACH.",
        "Payment for INV-1042 was actioned on 14/11 via BACS.",
        "A payment of $3,200 was applied to this invoice on 11/13.",
        "Funds were cleared on Monday.",
        "Kindly note that we have effected payment.",
        "The cheque cleared your account on 11 November according to our bank.",
        "Our records show this invoice as paid on Nov 10.",
        "La factura ya fue abonada.",
        "El importe ya fue girado a su cuenta.",
        "La factura quedó cancelada el 14 de noviembre.",
        "Ya fue consignado el valor total.",
        "Les confirmamos que la transferencia fue efectuada el día de ayer.",
        "Se canceló el total adeudado el día de ayer.",
        "Hemos procedido al pago de la factura.",
    ],
)
def test_passive_and_perfect_payment_forms(text: str) -> None:
    assert intent(text) == "payment_sent"


@pytest.mark.parametrize(
    "text",
    [
        # the rails and papers clerks name: ACH, SEPA, SWIFT MT103, BACS, check run, payment run, SPEI, CEP
        "Your invoice was included in last week's check run.",
        "Our AP run on Thursday picked up INV-1604.",
        "Both invoices were bundled into a single SEPA credit transfer that left our account on 28 November.",
        "The wire went out yesterday, MT103 attached.",
        "Payment effected via Fedwire today.",
        "Check #10234 was issued on November 7.",
        "We paid this via Zelle yesterday.",
        "Se realizó el pago vía SPEI, adjunto CEP.",
        "Las facturas salieron en la remesa de pagos del viernes.",
        "El depósito se hizo en ventanilla el martes.",
        "Ya se hizo efectivo el pago de la factura.",
        "Ya les hicimos llegar el pago por transferencia interbancaria.",
    ],
)
def test_payment_jargon(text: str) -> None:
    assert intent(text) == "payment_sent"


@pytest.mark.parametrize(
    "text",
    [
        # no subject, typos, one word among thanks, British idiom
        "Went out yesterday. Bank ref CHASE 7781-22094.",
        "hi marta we sent teh payment last thurs via ach shoud be in ur acct by now",
        "Paid 3 Dec in a single BACS payment of £3,320.50.",
        "Thanks, paid.",
        "Hiya, sorted this on Friday via EFT.",
        "We have squared away that invoice.",
        "Gracias, ya está pagada.",
        "Pagué la factura con tarjeta.",
    ],
)
def test_terse_and_idiomatic_payment_statements(text: str) -> None:
    c = classify(reply(text))
    assert (c.intent, c.escalate) == ("payment_sent", False)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # "pagamos" is both "we pay" and "we paid": the time words and dates of its sentence decide
        ("Le pagamos el viernes.", "promise_to_pay"),
        ("Le pagamos ayer.", "payment_sent"),
        ("Le pagamos el viernes pasado.", "payment_sent"),
        ("Ya pagamos la factura.", "payment_sent"),
        ("Transferimos la próxima semana.", "promise_to_pay"),
        ("Pagamos mediante cheque el día 10.", "payment_sent"),  # the 10th, written on the 18th, is past
        ("Realizamos la transferencia ayer por la tarde.", "payment_sent"),
        ("Mañana le mando el SPEI.", "promise_to_pay"),
    ],
)
def test_tenseless_spanish_verbs_take_the_tense_of_their_sentence(text: str, expected: str) -> None:
    assert intent(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # paid part and promises the rest: the promise is followed
        ("We've sent $3,000.00 today and the balance of $2,450.00 will follow on Friday the 12th.", "promise_to_pay"),
        ("Hoy hemos transferido 1.500 €. El resto, 2.320 €, os lo pagamos el 30/12.", "promise_to_pay"),
        # money on its way after a payment is the payment; on its own it is a promise
        ("We sent the wire yesterday; you should have it by Monday.", "payment_sent"),
        ("It went out by ACH on 12/04, so the funds should be with you by now.", "payment_sent"),
        ("You'll have the full £7,250.00 by Wednesday.", "promise_to_pay"),
        ("Ya realizamos la transferencia, les llegará el lunes.", "payment_sent"),
        # a promise said without a subject, or pointing back to an earlier promise
        ("Will be sorted this week, promise.", "promise_to_pay"),
        ("We haven't paid yet but will do so by the 30th.", "promise_to_pay"),
        ("Aún no hemos pagado, pero lo haremos el viernes.", "promise_to_pay"),
        ("It'll be in next week's run.", "promise_to_pay"),
        ("Se paga el lunes.", "promise_to_pay"),
    ],
)
def test_paid_or_promised(text: str, expected: str) -> None:
    assert intent(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # a "no" before a statement with its own subject belongs to something else
        ("No need to chase this one – we settled INV-2025-0433 on 25/11.", "payment_sent"),
        ("Not sure why you're chasing, this was paid on the 3rd.", "payment_sent"),
        ("No se preocupe, ya le pagamos el viernes.", "payment_sent"),
        # ... unless it hedges the whole statement
        ("I don't think we've paid this one.", "other"),
        # a negation right after the verb
        ("It didn't look right, so we've paid nothing yet.", "other"),
        # a reason is a clause of its own: the negation of "paid" does not reach the goods
        ("We haven't paid because the goods never arrived.", "dispute"),
        ("No hemos pagado porque la mercancía no llegó.", "dispute"),
        ("We're not paying this until you fix the pricing.", "dispute"),
        # a habit is no payment
        ("We always pay on time, but 3 of the 20 cases arrived damaged.", "dispute"),
        ("Siempre pagamos puntualmente, pero 9 cajas llegaron con averías.", "dispute"),
    ],
)
def test_negation_hedges_reasons_and_habits(text: str, expected: str) -> None:
    assert intent(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # the collector must act first: the promise does not count
        ("Send those SWIFT details over and we'll release the payment the same day.", "request_info"),
        ("Please send us the remittance details so we can pay.", "request_info"),
        ("Mándenme el certificado bancario y les transferimos.", "request_info"),
        # a condition on the customer's own cash leaves the promise standing
        ("The balance will follow on Friday, once our line of credit resets.", "promise_to_pay"),
        ("El resto os lo pagamos el 30/12 cuando cobremos la campaña de Navidad.", "promise_to_pay"),
    ],
)
def test_conditions_on_the_collector_and_on_the_customer(text: str, expected: str) -> None:
    assert intent(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # words of other intents said in passing do not outrank the statement
        (
            "The dispute we raised on PO 88123 is a separate matter. INV-2025-0461 is approved and "
            "the funds will be transferred on 22/12.",
            "promise_to_pay",
        ),
        ("It went out by ACH on 12/04. Apologies for the dispute last month over the freight line.", "payment_sent"),
        (
            "Ya está pagada. Disculpa el lío con la reclamación del mes pasado; quedó todo resuelto con "
            "vuestra nota de crédito.",
            "payment_sent",
        ),
        ("We settled it on 25/11, net of your credit note CN-0091 for the two damaged cases.", "payment_sent"),
        ("Our lawyer reviewed the terms last year. You'll have the full amount by Wednesday.", "promise_to_pay"),
        (
            "Our largest customer filed for bankruptcy owing us $180,000. Would you consider holding off "
            "until the end of February?",
            "hardship",
        ),
        ("Thank you for your patience, this will be paid on 1/15.", "promise_to_pay"),
        ("The invoice is queued for Tuesday's payment run. Thanks for your patience.", "promise_to_pay"),
        ("La caja está complicada, pero les pagamos el viernes sin falta.", "promise_to_pay"),
    ],
)
def test_passing_mentions_and_circumstances(text: str, expected: str) -> None:
    assert intent(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        # asking for time, instalments or a new arrangement, with the circumstance or without
        "Cash flow is really tight at the moment.",
        "Could we pay 30% now and the remainder over the following three months?",
        "Would you be open to us splitting the balance across January and February?",
        "We can only afford to pay half this month.",
        "Could we push this back to mid January?",
        "¿Te sirve si te lo pagamos con tres cheques diferidos a 30, 60 y 90 días?",
        "¿Podemos conversar una reprogramación de la deuda?",
        "Estamos pasando un momento complicado con la caja.",
    ],
)
def test_hardship_requests_and_circumstances(text: str) -> None:
    assert intent(text) == "hardship"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The invoice is for 1,200 units. We received 1,000. We will pay for what we got.", "dispute"),
        ("El albarán recoge 14 bultos y en la factura se cobran 17.", "dispute"),
        ("INV-1806 looks like the same delivery as INV-1803. Please void 1806.", "dispute"),
        ("The pricing isn't right: it was billed at list price rather than the contract price.", "dispute"),
        ("The goods did not meet the specification.", "dispute"),
        ("Hemos pagado 4.200 €. Retenemos los 650 € restantes en concepto de penalización.", "dispute"),
        ("Hasta que no nos emitáis un abono por la diferencia no podemos contabilizarla.", "dispute"),
        ("¿Me pueden mandar el detalle de las facturas pendientes con sus notas de crédito?", "request_info"),
        ("¿Me pasás el remito conformado de esa entrega?", "request_info"),
        ("Could you confirm in writing which IBAN is correct?", "request_info"),
        ("I moved over to the logistics team, please send finance mail to rachel@client.example.", "wrong_contact"),
        ("Yo ya no estoy más en administración. Escribile a Mariela: mgomez@client.example", "wrong_contact"),
        ("Si vuelven a reclamarla les mandamos carta documento y lo resolvemos en tribunales.", "legal"),
        ("Coastal Provisions made a general Assignment for the Benefit of Creditors.", "legal"),
        ("Under Article 21 of the UK GDPR I object to my email address being used. Please remove it.", "unsubscribe"),
        ("Favor de ya no enviar más correos a esta dirección.", "unsubscribe"),
        ("Por favor, eliminad mi dirección de vuestra lista de envíos automáticos.", "unsubscribe"),
    ],
)
def test_other_intents_in_new_words(text: str, expected: str) -> None:
    assert intent(text) == expected


@pytest.mark.parametrize(
    "text", ["Can you call me?", "Who is this?", "¿Quién habla?", "Hemos cambiado de razón social."]
)
def test_a_human_reply_with_no_intent_goes_to_a_person_with_low_confidence(text: str) -> None:
    c = classify(reply(text))
    assert (c.intent, c.escalate) == ("other", True)
    assert c.confidence < 0.5


@pytest.mark.parametrize("text", ["Thanks, paid.", "ok paid", "Gracias, ya pagamos.", "Recibido, ya está pagado."])
def test_a_payment_claim_never_passes_as_a_bare_acknowledgement(text: str) -> None:
    c = classify(reply(text))
    assert c.intent == "payment_sent"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Recibido Marta, lo miro y te digo algo.", False),
        ("Thanks, I'll look into it and get back to you.", False),
    ],
)
def test_promising_only_to_look_is_an_acknowledgement(text: str, expected: bool) -> None:
    c = classify(reply(text))
    assert (c.intent, c.escalate) == ("other", expected)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        # an auto-reply's alternative contact is no wrong_contact: the person still works there
        (
            "Thank you for your email. I am currently on annual leave and will return on Monday 24 November. "
            "For urgent matters please contact accounts@customer.example.",
            "out_of_office",
        ),
        (
            "Gracias por su mensaje. Me encuentro de vacaciones hasta el 1 de diciembre. Para temas urgentes, "
            "escriba a pagos@cliente.example.",
            "out_of_office",
        ),
        ("Thank you for contacting Accounts Payable. Your request (#48213) has been received.", "out_of_office"),
        ("Hemos recibido su solicitud. Le responderemos en un plazo máximo de 48 horas.", "out_of_office"),
        # whole offices closed for the holidays, in the languages we recognise auto-replies in
        ("Our offices will be closed from 24 December until 2 January.", "out_of_office"),
        ("Nuestras oficinas permanecerán cerradas del 22 de diciembre al 6 de enero.", "out_of_office"),
        ("Unser Büro bleibt vom 22.12.2025 bis einschließlich 02.01.2026 geschlossen.", "out_of_office"),
        ("Nos bureaux seront fermés du 24 décembre au 2 janvier.", "out_of_office"),
        # the person left, or the mailbox is retired: write to someone else
        (
            "Please note that Daniel Price has left Orchard Bay Foods. Please write to payables@orchard.example.",
            "wrong_contact",
        ),
        (
            "The mailbox invoices@pinecrest.example was retired on 30 November and is no longer read. "
            "Please resend invoices to ap@pinecrest.example.",
            "wrong_contact",
        ),
        # a person who was away and now states a payment is a person
        ("I was out of the office last week, sorry for the delay. We paid this on Monday.", "payment_sent"),
    ],
)
def test_auto_replies_without_headers(body: str, expected: str) -> None:
    assert classify(reply(body, subject="Re: Invoice INV-1042")).intent == expected


def test_a_delay_warning_without_a_report_is_a_transient_bounce() -> None:
    body = (
        "This message was created automatically by mail delivery software.\n"
        "A message that you sent has not yet been delivered to one or more of its recipients after more than "
        "24 hours on the queue.\n\n  accounts@tanaka.example\n    451 4.7.1 Greylisting in action\n\n"
        "No action is required on your part. Delivery attempts will continue for some time."
    )
    raw = reply(body, subject="Warning: message 1vQ2Xk delayed 24 hours").replace(
        b"From: Customer <ap@customer.example>", b"From: Mail Delivery System <Mailer-Daemon@mx.tanaka.example>"
    )
    c = classify(raw)
    assert c.intent == "bounce"
    assert c.bounce is not None and not c.bounce.permanent
    assert not c.escalate


def test_a_short_message_after_a_greeting_is_no_signature() -> None:
    text = "Olá,\n\nEstou em férias coletivas. Retorno em 12/01/2026.\nPara assuntos urgentes, contate fin@x.example.\n"
    assert "Retorno em 12/01/2026" in split(text).new_text
    signed = "We paid on Friday.\n\nJohn Smith | Finance\n+1 555 0100 | www.acme.example"
    assert split(signed).new_text == "We paid on Friday."


def test_addressee_lines_do_not_decide_the_language() -> None:
    body = (
        "Señores\n\nNorthwind Trading S.L.\n\nRespetados señores:\n\nNos permitimos informarles que la "
        "Superintendencia de Sociedades admitió a la compañía al proceso de reorganización empresarial."
    )
    c = classify(reply(body))
    assert (c.language, c.intent) == ("es", "legal")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("By our books INV-1736 isn't due until December 13. It will be released on that date.", date(2025, 12, 13)),
        ("La factura vence el 15 de diciembre; ese día se paga.", date(2025, 12, 15)),
    ],
)
def test_a_promise_that_points_back_to_a_date(text: str, expected: date) -> None:
    c = classify(reply(text))
    assert (c.intent, c.promised_date) == ("promise_to_pay", expected)


def test_a_hardship_request_promises_no_date() -> None:
    c = classify(reply("¿Habría chance de que nos dieran una prórroga hasta el 15 de enero?"))
    assert (c.intent, c.promised_date) == ("hardship", None)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # "no." does not end the sentence that holds the amount
        ("The outward remittance against your invoice no. INV-1633 has been effected for USD 22,750.00.", "22750.00"),
        # the amount sits with other evidence than the strongest
        ("Our AP run on Thursday picked up INV-1604. It went out by ACH on 12/04 for $6,318.40.", "6318.40"),
    ],
)
def test_the_amount_of_a_payment(text: str, expected: str) -> None:
    c = classify(reply(text))
    assert c.intent == "payment_sent"
    assert c.amount == Decimal(expected)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # instalments already paid are history, not a request
        ("We paid the invoice in two instalments, the last one on Monday.", "payment_sent"),
        # money on its way, said without a subject
        ("Should be with you by Friday.", "promise_to_pay"),
        # a different product than ordered; a discount below the agreed one
        ("You sent a different model than the one we ordered.", "dispute"),
        ("Nos llegó otro modelo distinto al que pedimos.", "dispute"),
        ("La factura viene con un descuento menor al pactado.", "dispute"),
        # asking for flexibility on the date
        ("Is there any flexibility on the payment date?", "hardship"),
        ("¿Habría flexibilidad con la fecha de pago?", "hardship"),
        # whom to pay: a request, not a hardship question
        ("Who should we make the cheque payable to?", "request_info"),
        ("¿A nombre de quién hago el cheque?", "request_info"),
        ("¿Me podrían mandar el número de cuenta para transferir?", "request_info"),
        # the wrong company altogether
        ("Wrong company - we have never done business with you.", "wrong_contact"),
        # a law firm by its regional name
        ("Cualquier reclamo, diríjase a nuestro estudio jurídico.", "legal"),
    ],
)
def test_more_general_classes(text: str, expected: str) -> None:
    assert intent(text) == expected
