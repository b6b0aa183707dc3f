"""One error family, so callers can tell a bad input from a broken server from a bug."""


class DunbotError(Exception):
    """Root of every error Dunbot raises on purpose."""


class ConfigError(DunbotError):
    """Raised when config.toml is missing, unreadable or holds a bad value; names the key and the file."""


class LedgerError(DunbotError):
    """Raised when the ledger as a whole cannot be read (missing file, wrong encoding, no header)."""


class TemplateError(DunbotError):
    """Raised when a template is missing or fails to render; the message names the file and line."""


class StoreError(DunbotError):
    """Raised when the store cannot record what is about to happen; sending must stop."""


class DeliveryError(DunbotError):
    """Raised by a transport when a message was not accepted."""


class TemporaryFailure(DeliveryError):
    """The server or network failed in a way worth retrying later (4xx reply, timeout, refused connection)."""


class PermanentFailure(DeliveryError):
    """The server refused for good (5xx); `recipients` names the refused addresses, empty when all were."""

    def __init__(self, message: str, recipients: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.recipients = recipients


class ConfigurationFailure(DeliveryError):
    """The sending account is misconfigured (bad credentials, TLS failure): alert a person, do not retry blindly."""
