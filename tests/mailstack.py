"""A real Postfix + Dovecot on loopback, configured in a temporary folder, for tests and benchmarks.

Real daemons because what breaks in production (STARTTLS, AUTH, partial refusals, connection
reuse, what actually lands in a mailbox) is exactly what a fake would assume away.

Mail routing (all on 127.0.0.1, nothing ever leaves the machine):
  *@customers.test  -> IMAP user `inbox` (one copy per envelope recipient, each with Delivered-To)
  *@dunbot.test     -> IMAP user `dunbot` (our own address: customers' replies, bounces)
  *@discard.test    -> accepted, then dropped (throughput benchmarks)
  *@reject.test     -> 550 at RCPT time
  anything else     -> 554 relay denied at RCPT time

Run `python tests/mailstack.py` to keep a stack up: it prints its ports and folders as JSON and
stops on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import atexit
import email
import email.policy
import json
import os
import re
import secrets
import shutil
import signal
import smtplib
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

from imapclient import IMAPClient

HOST = "127.0.0.1"
CUSTOMERS = "customers.test"
OWN = "dunbot.test"
DISCARD = "discard.test"
REJECT = "reject.test"

POSTFIX = Path("/usr/sbin/postfix")
POSTQUEUE = Path("/usr/sbin/postqueue")
DOVECOT = Path("/usr/sbin/dovecot")
MAIL_USER = "mail"  # Debian's uid 8: Dovecot will not touch mail as root
START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0
QUEUE_DIRS = ("maildrop", "incoming", "active", "deferred", "hold")


class MailStackError(RuntimeError):
    """The stack could not start or stop; the message says what to do or which log to read."""


@dataclass(frozen=True, slots=True)
class TlsFiles:
    ca: Path
    cert: Path
    key: Path


def _openssl(*args: str | Path) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        raise MailStackError("openssl is not installed: run `sudo bash scripts/test-deps.sh`")
    done = subprocess.run(
        [openssl, *map(str, args)], stdin=subprocess.DEVNULL, capture_output=True, timeout=30, check=False
    )
    if done.returncode:
        raise MailStackError(f"openssl {args[0]} failed: {done.stderr.decode(errors='replace')}")


_EC_KEY = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "7")
_SERVER_EXT = (
    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
    "-addext", "basicConstraints=critical,CA:FALSE",
    "-addext", "keyUsage=critical,digitalSignature",
    "-addext", "extendedKeyUsage=serverAuth",
)


def make_certificates(folder: Path) -> TlsFiles:
    """A throw-away CA and a server certificate for 127.0.0.1/localhost signed by it (EC keys: fast)."""
    folder.mkdir(parents=True, exist_ok=True)
    ca, ca_key = folder / "ca.pem", folder / "ca.key"
    cert, key = folder / "server.pem", folder / "server.key"
    _openssl(
        "req", "-x509", *_EC_KEY, "-keyout", ca_key, "-out", ca, "-subj", "/CN=Dunbot Test CA",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )
    _openssl(
        "req", "-x509", *_EC_KEY, "-CA", ca, "-CAkey", ca_key, "-keyout", key, "-out", cert,
        "-subj", "/CN=127.0.0.1", *_SERVER_EXT,
    )
    return TlsFiles(ca=ca, cert=cert, key=key)


def make_untrusted_certificate(folder: Path) -> TlsFiles:
    """A self-signed certificate for 127.0.0.1 that no test CA vouches for (TLS failure tests)."""
    folder.mkdir(parents=True, exist_ok=True)
    cert, key = folder / "untrusted.pem", folder / "untrusted.key"
    _openssl("req", "-x509", *_EC_KEY, "-keyout", key, "-out", cert, "-subj", "/CN=127.0.0.1", *_SERVER_EXT)
    return TlsFiles(ca=cert, cert=cert, key=key)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _alive(pid: int) -> bool:
    """Whether pid still runs; a zombie (exited, not yet reaped by init) counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _wait(condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def _group_alive(pgid: int) -> bool:
    """Whether any live (non-zombie) process is left in process group pgid."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def _listening(ports: Iterable[int]) -> bool:
    """Whether all ports listen on 127.0.0.1, read from /proc: probing them would add log noise."""
    wanted = {f"0100007F:{port:04X}" for port in ports}
    with open("/proc/net/tcp") as table:
        listening = {fields[1] for fields in map(str.split, table) if fields[3] == "0A"}
    return wanted <= listening


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    """Write a config file dated in the past: Postfix re-reads a main.cf younger than 1 s, costing ~2 s."""
    path.write_text(text)
    path.chmod(mode)
    past = time.time() - 60
    os.utime(path, (past, past))


class MailStack:
    """Postfix (plain, STARTTLS and implicit-TLS SMTP) delivering by LMTP into Dovecot (IMAP).

    One instance per test session: starting costs about a second, emptying a mailbox milliseconds.
    """

    host = HOST

    def __init__(self) -> None:
        self.root = Path()
        self.smtp_port = self.submission_port = self.smtps_port = 0
        self.imap_port = self.imaps_port = 0
        self.users: dict[str, str] = {}
        self.ca_file = Path()
        self._postfix_pid: int | None = None
        self._dovecot: subprocess.Popen[bytes] | None = None

    # Names that tests use without knowing the folder layout.
    @property
    def smtp_user(self) -> str:
        return "dunbot"

    @property
    def smtp_password(self) -> str:
        return self.users["dunbot"]

    @property
    def postfix_log_file(self) -> Path:
        return self.root / "postfix.log"

    @property
    def dovecot_log_file(self) -> Path:
        return self.root / "dovecot.log"

    @property
    def postfix_config(self) -> Path:
        return self.root / "pf"

    def describe(self) -> dict[str, object]:
        return {
            "host": self.host, "smtp_port": self.smtp_port, "submission_port": self.submission_port,
            "smtps_port": self.smtps_port, "imap_port": self.imap_port, "imaps_port": self.imaps_port,
            "ca_file": str(self.ca_file), "users": self.users, "root": str(self.root),
            "postfix_log": str(self.postfix_log_file), "dovecot_log": str(self.dovecot_log_file),
            "domains": {"inbox": CUSTOMERS, "dunbot": OWN, "discard": DISCARD, "reject": REJECT},
        }

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self) -> MailStack:
        missing = [str(p) for p in (POSTFIX, POSTQUEUE, DOVECOT) if not p.exists()]
        missing += [f"{p} (dovecot-{p.split('/')[-1]}d)" for p in ("/usr/lib/dovecot/imap", "/usr/lib/dovecot/lmtp")
                    if not Path(p).exists()]
        if missing:
            raise MailStackError(
                f"Postfix/Dovecot are not installed (missing {', '.join(missing)}): "
                "run `sudo bash scripts/test-deps.sh` once on this machine"
            )
        if os.geteuid() != 0:
            raise MailStackError("the mail stack runs Postfix and Dovecot, which must be started as root")
        # Short and world-traversable: Postfix (as user postfix) must reach Dovecot's sockets, and
        # unix socket paths are limited to 107 bytes.
        self.root = Path(tempfile.mkdtemp(prefix="dunbot-", dir="/tmp"))
        self.root.chmod(0o755)
        atexit.register(self.stop)
        try:
            self._configure()
            self._start_daemons()
        except BaseException:
            self.stop()
            raise
        return self

    def _configure(self) -> None:
        tls = make_certificates(self.root / "tls")
        self.ca_file = tls.ca
        self.smtp_port, self.submission_port, self.smtps_port, self.imap_port, self.imaps_port = (
            free_port() for _ in range(5)
        )
        self.users = {"inbox": secrets.token_urlsafe(12), "dunbot": secrets.token_urlsafe(12)}
        mail = self.root / "mail"
        mail.mkdir()
        shutil.chown(mail, MAIL_USER, MAIL_USER)
        self._configure_dovecot(tls)
        self._configure_postfix(tls)

    def _configure_dovecot(self, tls: TlsFiles) -> None:
        dc = self.root / "dc"
        dc.mkdir()
        homes = {"inbox": self.root / "mail" / CUSTOMERS, "dunbot": self.root / "mail" / OWN}
        users = dc / "users"
        _write(users, "".join(
            f"{user}:{{PLAIN}}{password}:8:8::{homes[user]}::\n" for user, password in self.users.items()
        ), mode=0o640)
        shutil.chown(users, group="dovecot")  # read by Dovecot's auth process, by no one else
        # LMTP recipients never match the passwd-file (its names have no domain), so every
        # address of a domain falls through to the static userdb and lands in that domain's home:
        # customers.test -> inbox, dunbot.test -> dunbot.
        _write(dc / "dovecot.conf", f"""\
base_dir = {dc}/run
state_dir = {dc}/state
instance_name = {self.root.name}
log_path = {self.dovecot_log_file}
protocols = imap lmtp
listen = {HOST}
ssl = yes
ssl_cert = <{tls.cert}
ssl_key = <{tls.key}
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_failure_delay = 0
first_valid_uid = 8
mail_uid = {MAIL_USER}
mail_gid = {MAIL_USER}
mail_location = maildir:~/Maildir:LAYOUT=fs
mail_fsync = never
namespace inbox {{
  inbox = yes
  separator = /
}}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {dc}/users
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {dc}/users
}}
userdb {{
  driver = static
  args = home={self.root}/mail/%d allow_all_users=yes
}}
service imap-login {{
  inet_listener imap {{
    address = {HOST}
    port = {self.imap_port}
  }}
  inet_listener imaps {{
    address = {HOST}
    port = {self.imaps_port}
    ssl = yes
  }}
}}
service lmtp {{
  unix_listener {dc}/lmtp {{
    mode = 0666
  }}
}}
# A wrong password would otherwise delay every later login from 127.0.0.1 by 2 s and more.
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
service auth {{
  unix_listener {dc}/auth {{
    mode = 0666
  }}
}}
protocol imap {{
  mail_max_userip_connections = 100
}}
protocol lmtp {{
  postmaster_address = postmaster@{OWN}
}}
""")

    def _configure_postfix(self, tls: TlsFiles) -> None:
        pf, dc = self.postfix_config, self.root / "dc"
        pf.mkdir()
        spool = self.root / "spool"
        spool.mkdir()  # root-owned; `postfix start` creates the queue folders inside
        lmtp = f"lmtp:unix:{dc}/lmtp"
        _write(pf / "transport", f"{CUSTOMERS} {lmtp}\n{OWN} {lmtp}\n{DISCARD} discard:benchmark\n")
        _write(pf / "recipient_access", f"{REJECT} 550 5.1.1 Recipient address rejected: {REJECT} refuses all\n")
        _write(pf / "main.cf", f"""\
compatibility_level = 3.6
queue_directory = {spool}
data_directory = {self.root}/pfdata
myhostname = mx.{OWN}
mydomain = {OWN}
myorigin = $mydomain
mydestination =
local_recipient_maps =
local_transport = error:local delivery is disabled
alias_maps =
alias_database =
inet_interfaces = {HOST}
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relay_domains = {CUSTOMERS}, {OWN}, {DISCARD}, {REJECT}
transport_maps = texthash:{pf}/transport
default_transport = error:this test server delivers only to the .test domains
smtpd_relay_restrictions = reject_unauth_destination
smtpd_recipient_restrictions = check_recipient_access texthash:{pf}/recipient_access
auth_required_restrictions = permit_sasl_authenticated, check_client_access static:{{530 5.7.0 Authentication required}}
smtpd_peername_lookup = no
smtpd_error_sleep_time = 0s
smtpd_soft_error_limit = 1000
smtpd_hard_error_limit = 1000
smtpd_client_connection_count_limit = 0
in_flow_delay = 0s
# One recipient per LMTP transaction: Dovecot adds Delivered-To only to single-recipient deliveries.
lmtp_destination_recipient_limit = 1
queue_run_delay = 1s
minimal_backoff_time = 1s
maximal_backoff_time = 2s
smtpd_tls_cert_file = {tls.cert}
smtpd_tls_key_file = {tls.key}
smtpd_tls_security_level = none
smtpd_tls_auth_only = yes
smtpd_sasl_type = dovecot
smtpd_sasl_path = {dc}/auth
smtpd_sasl_auth_enable = no
maillog_file = {self.postfix_log_file}
maillog_file_prefixes = {self.root}
biff = no
append_dot_mydomain = no
""")
        chroot_off = "n"  # stock Debian chroots daemons: absolute socket paths would then not resolve
        services = [
            ("cleanup", "unix", "n", "-", "0", "cleanup"),
            ("qmgr", "unix", "n", "300", "1", "qmgr"),
            ("pickup", "unix", "n", "60", "1", "pickup"),
            ("tlsmgr", "unix", "-", "1000?", "1", "tlsmgr"),
            ("rewrite", "unix", "-", "-", "-", "trivial-rewrite"),
            ("bounce", "unix", "-", "-", "0", "bounce"),
            ("defer", "unix", "-", "-", "0", "bounce"),
            ("trace", "unix", "-", "-", "0", "bounce"),
            ("verify", "unix", "-", "-", "1", "verify"),
            ("flush", "unix", "n", "1000?", "0", "flush"),
            ("proxymap", "unix", "-", "-", "-", "proxymap"),
            ("showq", "unix", "n", "-", "-", "showq"),
            ("error", "unix", "-", "-", "-", "error"),
            ("retry", "unix", "-", "-", "-", "error"),
            ("discard", "unix", "-", "-", "-", "discard"),
            ("lmtp", "unix", "-", "-", "-", "lmtp"),
            ("anvil", "unix", "-", "-", "1", "anvil"),
            ("scache", "unix", "-", "-", "1", "scache"),
            ("postlog", "unix-dgram", "n", "-", "1", "postlogd"),
        ]
        lines = [
            # Plain: no STARTTLS offered, no AUTH.
            f"{HOST}:{self.smtp_port} inet n - {chroot_off} - - smtpd",
            # Submission: STARTTLS required before MAIL, AUTH offered (optional).
            f"{HOST}:{self.submission_port} inet n - {chroot_off} - - smtpd",
            "  -o smtpd_tls_security_level=encrypt",
            "  -o smtpd_sasl_auth_enable=yes",
            # Implicit TLS (465-style): AUTH required, 530 at RCPT otherwise.
            f"{HOST}:{self.smtps_port} inet n - {chroot_off} - - smtpd",
            "  -o smtpd_tls_wrappermode=yes",
            "  -o smtpd_sasl_auth_enable=yes",
            "  -o smtpd_client_restrictions=$auth_required_restrictions",
        ]
        lines += [f"{name} {kind} {private} - {chroot_off} {wake} {limit} {cmd}"
                  for name, kind, private, wake, limit, cmd in services]
        _write(pf / "master.cf", "\n".join(lines) + "\n")

    def _start_daemons(self) -> None:
        """Both daemons start at once; each writes its own log and never inherits our stdout."""
        with (self.root / "dovecot.out").open("ab") as out:
            self._dovecot = subprocess.Popen(
                [str(DOVECOT), "-F", "-c", str(self.root / "dc" / "dovecot.conf")],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )
        with (self.root / "postfix.out").open("ab") as out:
            done = subprocess.run(
                [str(POSTFIX), "-c", str(self.postfix_config), "start"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, timeout=START_TIMEOUT,
                check=False,
            )
        if done.returncode:
            raise MailStackError(f"postfix start failed:\n{_tail(self.root / 'postfix.out')}")
        self._postfix_pid = int((self.root / "spool" / "pid" / "master.pid").read_text().split()[0])

        def ready() -> bool:
            if self._dovecot is not None and self._dovecot.poll() is not None:
                raise MailStackError(f"dovecot exited at start:\n{_tail(self.root / 'dovecot.out')}\n"
                                     f"{_tail(self.dovecot_log_file)}")
            sockets = all((self.root / "dc" / name).exists() for name in ("lmtp", "auth"))
            ports = (self.smtp_port, self.submission_port, self.smtps_port, self.imap_port, self.imaps_port)
            return sockets and _listening(ports)

        try:
            _wait(ready, START_TIMEOUT, "postfix and dovecot to listen")
        except TimeoutError as exc:
            raise MailStackError(f"{exc}\npostfix:\n{_tail(self.postfix_log_file)}\n"
                                 f"dovecot:\n{_tail(self.dovecot_log_file)}") from exc
        # Create each INBOX now, alone: when LMTP and IMAP create the same INBOX at once, Dovecot
        # 2.3 takes its index locks in opposite orders and deadlocks (fcntl: EDEADLK, then a panic).
        for user in self.users:
            with self.imap(user) as client:
                client.select_folder("INBOX")

    def stop(self) -> None:
        """Stop both daemons and remove the folder; safe to call twice or after a failed start."""
        atexit.unregister(self.stop)
        if self._postfix_pid is not None:
            self._terminate(self._postfix_pid)
            self._postfix_pid = None
        if self._dovecot is not None:
            self._dovecot.terminate()
            try:
                self._dovecot.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self._dovecot.kill()
                self._dovecot.wait(STOP_TIMEOUT)
            self._dovecot = None
        if self.root != Path() and self.root.exists():
            shutil.rmtree(self.root, ignore_errors=True)

    @staticmethod
    def _terminate(pid: int) -> None:
        """SIGTERM the Postfix master (it stops its children), then wait; it is not our child, init reaps it."""
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        try:
            _wait(lambda: not _alive(pid), STOP_TIMEOUT, f"postfix master {pid} to exit")
        except TimeoutError:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            _wait(lambda: not _alive(pid), STOP_TIMEOUT, f"postfix master {pid} to die")

    def stop_dovecot(self) -> None:
        """Stop Dovecot alone, sessions included (an IMAP outage): clients get BYE, Postfix defers delivery.

        Signalled as a process group, as `systemctl stop` would: after SIGTERM to the master alone,
        Dovecot 2.3 keeps existing IMAP sessions serving for ~10 s before it says BYE.
        """
        if self._dovecot is None:
            return
        group = self._dovecot.pid  # started with a session of its own: the group is this instance only
        with suppress(ProcessLookupError):
            os.killpg(group, signal.SIGTERM)
        try:
            self._dovecot.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)
            self._dovecot.wait(STOP_TIMEOUT)
        self._dovecot = None
        _wait(lambda: not _group_alive(group), STOP_TIMEOUT, f"dovecot's process group {group} to exit")
        _wait(lambda: not _listening((self.imap_port,)), STOP_TIMEOUT, "dovecot to stop listening")

    def start_dovecot(self) -> None:
        """Start Dovecot again after stop_dovecot(), with the same folders, users and ports."""
        if self._dovecot is not None:
            return
        with (self.root / "dovecot.out").open("ab") as out:
            self._dovecot = subprocess.Popen(
                [str(DOVECOT), "-F", "-c", str(self.root / "dc" / "dovecot.conf")],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )
        _wait(lambda: _listening((self.imap_port, self.imaps_port)), START_TIMEOUT, "dovecot to listen again")

    def restart_dovecot(self) -> None:
        self.stop_dovecot()
        self.start_dovecot()

    def __enter__(self) -> MailStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- Postfix side ----------------------------------------------------------------------

    def deliver(self, message: bytes, to: str | Iterable[str], sender: str = f"customer@{CUSTOMERS}") -> None:
        """Inject a message through Postfix's plain port, as a customer's mail server would."""
        recipients = [to] if isinstance(to, str) else list(to)
        with smtplib.SMTP(self.host, self.smtp_port, timeout=10) as smtp:
            refused = smtp.sendmail(sender, recipients, message)
        if refused:
            raise MailStackError(f"Postfix refused {refused}")

    def postfix_queue_empty(self) -> bool:
        """True once Postfix holds no message: everything accepted has been delivered, dropped or bounced."""
        spool = self.root / "spool"
        return not any(files for d in QUEUE_DIRS for _, _, files in os.walk(spool / d))

    def flush(self, timeout: float = 10.0) -> None:
        """Ask Postfix to retry deferred mail now, and wait until its queue is empty."""
        subprocess.run([str(POSTQUEUE), "-c", str(self.postfix_config), "-f"], stdin=subprocess.DEVNULL,
                       capture_output=True, timeout=timeout, check=True)
        self.wait_queue_empty(timeout)

    def wait_queue_empty(self, timeout: float = 10.0) -> None:
        try:
            _wait(self.postfix_queue_empty, timeout, "the Postfix queue to empty")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n{_tail(self.postfix_log_file)}") from exc

    def postfix_log(self, since: int = 0) -> str:
        """Postfix's log from byte offset `since` (take `postfix_log_size()` before acting)."""
        with self.postfix_log_file.open("rb") as log:
            log.seek(since)
            return log.read().decode(errors="replace")

    def postfix_log_size(self) -> int:
        return self.postfix_log_file.stat().st_size if self.postfix_log_file.exists() else 0

    def wait_for_log(self, pattern: str, count: int = 1, since: int = 0, timeout: float = 5.0) -> list[str]:
        """Lines matching `pattern` once there are `count` of them; Postfix logs asynchronously."""
        regex = re.compile(pattern)
        found: list[str] = []

        def enough() -> bool:
            found[:] = [line for line in self.postfix_log(since).splitlines() if regex.search(line)]
            return len(found) >= count

        try:
            _wait(enough, timeout, f"{count} log lines matching {pattern!r}")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}; found {len(found)}") from exc
        return found

    # ---- Dovecot side ----------------------------------------------------------------------

    @contextmanager
    def imap(self, user: str = "inbox", timeout: float = 10.0) -> Iterator[IMAPClient]:
        """A logged-in IMAP connection to the plain port, logged out on exit."""
        client = IMAPClient(self.host, port=self.imap_port, ssl=False, timeout=timeout)
        try:
            client.login(user, self.users[user])
            yield client
        finally:
            try:
                client.logout()
            except Exception:  # already broken: just drop the socket
                client.shutdown()

    def messages(self, user: str = "inbox", folder: str = "INBOX") -> list[EmailMessage]:
        """Every message in the folder now, oldest first, without marking anything seen."""
        with self.imap(user) as client:
            client.select_folder(folder, readonly=True)
            uids = client.search("ALL")
            fetched = client.fetch(uids, ["BODY.PEEK[]"]) if uids else {}
        return [
            email.message_from_bytes(fetched[uid][b"BODY[]"], policy=email.policy.default)
            for uid in sorted(fetched)
        ]

    def wait_for(self, count: int, user: str = "inbox", folder: str = "INBOX",
                 timeout: float = 10.0) -> list[EmailMessage]:
        """The folder's messages once at least `count` have arrived (polls; raises TimeoutError)."""
        found: list[EmailMessage] = []

        def arrived() -> bool:
            found[:] = self.messages(user, folder)
            return len(found) >= count

        try:
            _wait(arrived, timeout, f"{count} messages in {user}/{folder}", interval=0.05)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}; found {len(found)}\n{_tail(self.postfix_log_file)}") from exc
        return found

    def fetch_all(self, user: str = "inbox", folder: str = "INBOX", timeout: float = 10.0) -> list[EmailMessage]:
        """Every message once Postfix has finished delivering what it accepted."""
        self.wait_queue_empty(timeout)
        return self.messages(user, folder)

    def clear(self, user: str = "inbox") -> None:
        """Empty a user's mailbox: delete its other folders, expunge INBOX."""
        with self.imap(user) as client:
            for _flags, _sep, name in sorted(client.list_folders(), key=lambda f: -len(f[2])):
                if name.upper() != "INBOX":
                    client.delete_folder(name)
            client.select_folder("INBOX")
            uids = client.search("ALL")
            if uids:
                client.delete_messages(uids)
                client.uid_expunge(uids)


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    """Keep a stack up until Ctrl-C or SIGTERM (benchmarks, manual poking with an IMAP client)."""
    for signum in (signal.SIGINT, signal.SIGTERM):  # SIGINT too: a shell's `&` starts us ignoring it
        signal.signal(signum, _interrupt)
    stack = MailStack()
    started = time.monotonic()
    with stack:
        print(json.dumps({**stack.describe(), "start_seconds": round(time.monotonic() - started, 3)}, indent=2),
              flush=True)
        with suppress(KeyboardInterrupt):
            signal.pause()


if __name__ == "__main__":
    main()
