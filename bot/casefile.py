"""The case file for an agency or a lawyer: everything that shows the debt and how it was pursued.

Collection practice hands a case to an agency after about three months, and what they need first is
evidence: who owes what since when, every reminder sent and whether it was delivered, every answer in
the customer's own words, the promises made and broken. The ZIP holds:

  summary.html          one self-contained, printable page of all that (no scripts, no external files)
  reminders/NNN-stage.eml, replies/NNN.eml
                        the messages byte for byte as sent and received, as the store recorded them
  manifest.json         the SHA-256 of every other file, so anyone can check nothing was altered

Everything from the ledger or a customer is escaped in the HTML: a name is text, never markup.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from jinja2 import Environment, StrictUndefined

from bot.casebook import CaseBook, CaseError
from bot.config import Settings
from bot.schema import escalations, holds, installments
from bot.store import Store


@dataclass(frozen=True, slots=True)
class Member:
    path: str
    data: bytes


def _when(value: datetime | None, zone: ZoneInfo) -> str:
    return value.astimezone(zone).strftime("%Y-%m-%d %H:%M %Z") if value else ""


def _money(amount: Any, currency: str) -> str:
    return f"{Decimal(str(amount)):,.2f} {currency}"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


_ENV = Environment(autoescape=True, undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
_ENV.filters.update(money=_money)


def export(store: Store, settings: Settings, customer_id: str, *, now: datetime | None = None) -> bytes:
    """The case file of one customer as ZIP bytes; raises CaseError for a customer the store does not know."""
    zone = ZoneInfo(settings.company.timezone)
    now = now or datetime.now(UTC)
    book = CaseBook(store, settings)
    case = book.case(customer_id)
    if case is None:
        raise CaseError(f"no customer {customer_id!r} in the store (run `dunbot send` or `plan` first)")
    files: list[Member] = []
    sent = []
    for n, r in enumerate(store.reminders_for(customer_id), 1):
        path = f"reminders/{n:03d}-{r['stage']}.eml"
        files.append(Member(path, r["raw"]))
        sent.append({"n": n, "at": _when(r["sent_at"] or r["created_at"], zone), "stage": r["stage"],
                     "track": r["track"], "recipients": ", ".join(json.loads(r["recipients"])),
                     "subject": r["subject"], "status": r["status"], "attempts": r["attempts"],
                     "server": r["server_reply"] or r["last_error"] or "", "path": path,
                     "message_id": r["message_id"], "sha256": _sha(r["raw"])})
    timeline = book.timeline(customer_id)
    corrected = {e.detail.get("reply_id"): e.detail.get("intent") for e in timeline if e.kind == "correction"}
    answers = []
    for n, r in enumerate(store.replies_for(customer_id), 1):
        path = f"replies/{n:03d}.eml"
        files.append(Member(path, r["raw"]))
        document = json.loads(r["classification"] or "{}")
        answers.append({"n": n, "at": _when(r["sent_at"] or r["created_at"], zone), "sender": r["sender"],
                        "subject": r["subject"], "intent": r["intent"], "corrected": corrected.get(r["id"]),
                        "confidence": f"{r['confidence']:.0%}", "words": (document.get("new_text") or "").strip(),
                        "promised_date": document.get("promised_date") or "", "action": r["action"], "path": path,
                        "message_id": r["message_id"], "sha256": _sha(r["raw"])})
    with store.engine.begin() as c:
        promised = [dict(r._mapping) for r in c.execute(
            sa.select(holds).where(holds.c.customer_id == customer_id).where(holds.c.kind == "promise")
            .order_by(holds.c.id))]
        plan_rows = [dict(r._mapping) for r in c.execute(
            sa.select(installments).where(installments.c.customer_id == customer_id)
            .order_by(installments.c.plan, installments.c.seq))]
        escalated = [dict(r._mapping) for r in c.execute(
            sa.select(escalations).where(escalations.c.customer_id == customer_id).order_by(escalations.c.id))]
    as_of = case["updated_at"].astimezone(zone).date() if case.get("updated_at") else now.astimezone(zone).date()
    invoices = [{**i, "days_overdue": (as_of - date.fromisoformat(i["due_date"])).days}
                for i in case["invoices"]]
    context = {
        "company": settings.company, "case": case, "as_of": as_of.isoformat(),
        "generated": _when(now, zone), "invoices": sorted(invoices, key=lambda i: i["due_date"]),
        "balances": sorted(case["balances"].items()), "reminders": sent, "replies": answers,
        "promises": [{"made": _when(p["created_at"], zone), "reason": p["reason"],
                      "amount": p["amount"] or "the balance", "until": _when(p["until"], zone),
                      "outcome": p["outcome"] or "pending", "ended": _when(p["ended_at"], zone)} for p in promised],
        "plans": plan_rows,
        "escalations": [{"at": _when(e["created_at"], zone), "reason": e["reason"], "detail": e["detail"],
                         "recommendation": e["recommendation"], "resolved": _when(e["resolved_at"], zone)}
                        for e in escalated],
        "actions": [{"at": _when(e.at, zone), "actor": e.actor, "kind": e.kind, "summary": e.summary}
                    for e in timeline if e.kind not in ("reminder", "reply")],
        "since": _when(case.get("since"), zone),
    }
    summary = _ENV.from_string(SUMMARY).render(context).encode()
    members = [Member("summary.html", summary), *files]
    manifest = {
        "customer_id": customer_id, "customer": case["name"], "generated_at": now.astimezone(zone).isoformat(),
        "generator": "dunbot", "algorithm": "sha256",
        "files": [{"path": m.path, "sha256": _sha(m.data), "bytes": len(m.data)} for m in members],
    }
    members.append(Member("manifest.json", json.dumps(manifest, ensure_ascii=False, indent=1).encode()))
    stamp = now.astimezone(zone).timetuple()[:6]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for member in members:
            info = zipfile.ZipInfo(member.path, date_time=max(stamp, (1980, 1, 1, 0, 0, 0)))
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, member.data)
    return buffer.getvalue()


SUMMARY = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Case file: {{ case.name }} ({{ case.customer_id }})</title>
<style>
  body { font: 11pt/1.45 Georgia, "Times New Roman", serif; color: #111; margin: 2em auto; max-width: 60em; }
  h1 { font-size: 18pt; margin-bottom: 0; } h2 { font-size: 13pt; border-bottom: 1px solid #888; margin-top: 2em; }
  table { border-collapse: collapse; width: 100%; margin: .5em 0; } th, td { border: 1px solid #bbb;
  padding: 3px 6px; text-align: left; vertical-align: top; font-size: 10pt; } th { background: #eee; }
  td.num { text-align: right; white-space: nowrap; } .muted { color: #555; } .words { white-space: pre-wrap;
  font-family: inherit; margin: 0; } code { font-size: 8pt; word-break: break-all; }
  .parties { display: flex; gap: 2em; } .parties > div { flex: 1; }
  @media print { body { margin: 0; max-width: none; } h2 { break-after: avoid; } tr { break-inside: avoid; } }
</style>
</head>
<body>
<h1>Case file: {{ case.name }}</h1>
<p class="muted">Customer {{ case.customer_id }} · state {{ case.state }}{% if since %} since {{ since }}{% endif %}
{% if case.owner %} · owner {{ case.owner }}{% endif %} · generated {{ generated }} by Dunbot for {{ company.name }}</p>

<h2>Parties</h2>
<div class="parties">
<div><h3>Creditor</h3>
<p><strong>{{ company.name }}</strong><br>{{ company.email }}{% if company.reply_to != company.email %}<br>
{{ company.reply_to }}{% endif %}{% if company.phone %}<br>{{ company.phone }}{% endif %}{% if company.country %}<br>
Country: {{ company.country }}{% endif %}{% if company.bank.iban %}<br>Bank: {{ company.bank.name }},
IBAN {{ company.bank.iban }}{% if company.bank.bic %}, BIC {{ company.bank.bic }}{% endif %}{% endif %}</p></div>
<div><h3>Debtor</h3>
<p><strong>{{ case.name }}</strong> (customer {{ case.customer_id }})<br>
{% if case.contact_name %}Contact: {{ case.contact_name }}<br>{% endif %}
{{ case.contact_email }}{% if case.country %}<br>Country: {{ case.country }}{% endif %}
{% if case.account_manager %}<br>Account manager: {{ case.account_manager }}{% endif %}</p></div>
</div>

<h2>Amount owed</h2>
<p>As of the ledger read on {{ as_of }}:
{% for currency, balance in balances %}<strong>{{ balance|money(currency) }}</strong>{% if not loop.last %}, {% endif %}
{% else %}nothing open.{% endfor %}</p>
<table><tr><th>Invoice</th><th>Issued</th><th>Due</th><th>Days overdue</th><th>Amount</th><th>Still owed</th></tr>
{% for i in invoices %}
<tr><td>{{ i.invoice_id }}</td><td>{{ i.issue_date }}</td><td>{{ i.due_date }}</td>
<td class="num">{{ i.days_overdue }}</td><td class="num">{{ i.amount|money(i.currency) }}</td>
<td class="num">{{ i.balance|money(i.currency) }}</td></tr>
{% endfor %}
</table>

<h2>Contact attempts ({{ reminders|length }})</h2>
<table><tr><th>#</th><th>Date</th><th>Stage</th><th>To</th><th>Subject</th><th>Delivery</th><th>Original</th></tr>
{% for r in reminders %}
<tr><td>{{ r.n }}</td><td>{{ r.at }}</td><td>{{ r.stage }}</td><td>{{ r.recipients }}</td><td>{{ r.subject }}</td>
<td>{{ r.status }}{% if r.server %}<br><span class="muted">{{ r.server }}</span>{% endif %}</td>
<td><a href="{{ r.path }}">{{ r.path }}</a></td></tr>
{% else %}
<tr><td colspan="7">No reminder was sent.</td></tr>
{% endfor %}
</table>

<h2>Answers from the customer ({{ replies|length }})</h2>
{% for r in replies %}
<table>
<tr><th style="width:9em">#{{ r.n }} received</th><td>{{ r.at }}</td></tr>
<tr><th>From</th><td>{{ r.sender }}</td></tr>
<tr><th>Subject</th><td>{{ r.subject }}</td></tr>
<tr><th>Read as</th><td>{{ r.intent }} ({{ r.confidence }}){% if r.corrected %}, corrected by a person to
{{ r.corrected }}{% endif %}{% if r.promised_date %}; promised date {{ r.promised_date }}{% endif %}</td></tr>
<tr><th>Their words</th><td><pre class="words">{{ r.words }}</pre></td></tr>
<tr><th>Original</th><td><a href="{{ r.path }}">{{ r.path }}</a></td></tr>
</table>
{% else %}
<p>The customer never answered.</p>
{% endfor %}

<h2>Promises to pay ({{ promises|length }})</h2>
<table><tr><th>Made</th><th>Promise</th><th>Amount</th><th>Held until</th><th>Outcome</th></tr>
{% for p in promises %}
<tr><td>{{ p.made }}</td><td>{{ p.reason }}</td><td>{{ p.amount }}</td><td>{{ p.until }}</td>
<td><strong>{{ p.outcome }}</strong>{% if p.ended %} ({{ p.ended }}){% endif %}</td></tr>
{% else %}
<tr><td colspan="5">No promise was recorded.</td></tr>
{% endfor %}
</table>

<h2>Payment plans</h2>
<table><tr><th>Plan</th><th>Installment</th><th>Due</th><th>Amount</th><th>In force</th></tr>
{% for p in plans %}
<tr><td>{{ p.plan }}</td><td>{{ p.seq }}</td><td>{{ p.due_date }}</td>
<td class="num">{{ p.amount|money(p.currency) }}</td><td>{{ "yes" if p.active else "no" }}</td></tr>
{% else %}
<tr><td colspan="5">No payment plan was agreed.</td></tr>
{% endfor %}
</table>

<h2>Escalations</h2>
<table><tr><th>Date</th><th>Reason</th><th>Detail</th><th>Suggested step</th><th>Closed</th></tr>
{% for e in escalations %}
<tr><td>{{ e.at }}</td><td>{{ e.reason }}</td><td><pre class="words">{{ e.detail }}</pre></td>
<td>{{ e.recommendation }}</td><td>{{ e.resolved }}</td></tr>
{% else %}
<tr><td colspan="5">None.</td></tr>
{% endfor %}
</table>

<h2>Case history</h2>
<table><tr><th>Date</th><th>Who</th><th>What</th><th>Detail</th></tr>
{% for a in actions %}
<tr><td>{{ a.at }}</td><td>{{ a.actor }}</td><td>{{ a.kind }}</td><td>{{ a.summary }}</td></tr>
{% else %}
<tr><td colspan="4">No action was recorded.</td></tr>
{% endfor %}
</table>

<h2>Evidence integrity</h2>
<p>Every message is enclosed as its original file, byte for byte as sent or received. manifest.json lists the
SHA-256 of every file in this archive; the messages' are repeated here.</p>
<table><tr><th>File</th><th>Message-ID</th><th>SHA-256</th></tr>
{% for m in reminders + replies %}
<tr><td>{{ m.path }}</td><td><code>{{ m.message_id }}</code></td><td><code>{{ m.sha256 }}</code></td></tr>
{% endfor %}
</table>
</body>
</html>
"""
