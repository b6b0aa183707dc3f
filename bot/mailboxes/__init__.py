"""Watch the mailbox where customers' replies arrive: a real IMAP server, or a local Maildir (the embedded default).

The mailbox classes are synchronous and protocol-faithful. The Watcher drives one of them from a single
dedicated thread (imapclient blocks and is not thread-safe) and awaits the handler on the event loop.
Progress is (UIDVALIDITY, last UID) per folder in the store, advanced after every message, so a restart
neither misses mail nor hands a message over twice (beyond the one in flight, which the handler dedupes).
"""

from bot.mailboxes.common import INBOX, Handler, Incoming, MailboxError, MailboxRefused
from bot.mailboxes.imap import ImapMailbox
from bot.mailboxes.maildir import MaildirMailbox
from bot.mailboxes.watcher import Watcher, watcher_for

__all__ = ["INBOX", "Handler", "ImapMailbox", "Incoming", "MailboxError", "MailboxRefused", "MaildirMailbox",
           "Watcher", "watcher_for"]
