"""Reply triage: the pure core that reads a customer's reply to a payment reminder.

Bytes of an email in, a Classification out; no I/O besides the bundled language files. See
pipeline.py for the order of the steps and lang/*.toml for everything language-specific.
"""

from bot.triage.automatic import Bounce
from bot.triage.evaluate import EvalReport, classification_json, evaluate
from bot.triage.mime import Attachment
from bot.triage.pipeline import INTENTS, Classification, classify

__all__ = [
    "INTENTS",
    "Attachment",
    "Bounce",
    "Classification",
    "EvalReport",
    "classification_json",
    "classify",
    "evaluate",
]
