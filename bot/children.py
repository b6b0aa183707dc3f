"""Child processes of this bot: started with its own package, dying with their parent, talking in framed pickles.

Two kinds use it: the daemon's offloaded work (bot/offload.py: its memory goes when the child ends) and a large
pass's rendering worker (bot/rendering.py: a second core). Not multiprocessing: its spawn method re-runs the
parent's main script, which a program embedding the bot need not guard, and its fork copies a process with
threads. A child never outlives its parent (PR_SET_PDEATHSIG), so it never outlives the instance lock either.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import pickle
import signal
import struct
import sys
from pathlib import Path
from typing import IO, Any

_HEADER = struct.Struct("!I")
_PLAIN = (str, int, float, bool, type(None))
_SOURCE = str(Path(__file__).resolve().parent.parent)  # the child imports this very bot package
_PYTHONPATH = os.environ.get("PYTHONPATH", "")


def frame(message: Any) -> bytes:
    """One message as it goes on a child's pipe: its length, then its pickle."""
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(data)) + data


def write(stream: IO[bytes], message: Any) -> None:
    stream.write(frame(message))
    stream.flush()


def read(stream: IO[bytes]) -> Any:
    """The next framed message; EOFError when the other side has closed the pipe."""
    head = stream.read(_HEADER.size)
    if len(head) < _HEADER.size:
        raise EOFError
    size = _HEADER.unpack(head)[0]
    data = stream.read(size)
    if len(data) < size:
        raise EOFError
    return pickle.loads(data)


async def receive(stream: asyncio.StreamReader) -> Any:
    """`read`, from the daemon's side; asyncio.IncompleteReadError when the child has gone."""
    size = _HEADER.unpack(await stream.readexactly(_HEADER.size))[0]
    return pickle.loads(await stream.readexactly(size))


async def spawn(entry: str) -> asyncio.subprocess.Process:
    """A child running `entry` ("module:function") of this very bot package, its pipes on stdin and stdout.

    The entry must call `become_child` first.
    """
    module, function = entry.split(":")
    return await asyncio.create_subprocess_exec(
        sys.executable, "-c", f"from {module} import {function}; {function}()", stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, env={**os.environ, "DUNBOT_PARENT": str(os.getpid()),
                                             "PYTHONPATH": os.pathsep.join(filter(None, (_SOURCE, _PYTHONPATH)))})


async def stop(child: asyncio.subprocess.Process, grace: float) -> None:
    """Terminate a child still running, then kill it if it has not gone within `grace` seconds."""
    if child.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            child.terminate()
        try:
            await asyncio.wait_for(asyncio.shield(child.wait()), grace)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                child.kill()


def become_child() -> tuple[IO[bytes], IO[bytes]]:
    """In the child: die with the parent, leave SIGINT to it; returns the pipes (in, out) for `read`/`write`."""
    _die_with_parent(int(os.environ["DUNBOT_PARENT"]))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    out = sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing else may write into the message stream
    return sys.stdin.buffer, out


def portable(record: logging.LogRecord) -> dict[str, Any]:
    """A record as a dict that pickles, for `logging.makeLogRecord` in the process that handles it."""
    doc = dict(record.__dict__)
    if record.exc_info:
        doc["exc_text"] = logging.Formatter().formatException(record.exc_info)
    doc["exc_info"] = None
    doc["msg"] = record.msg if isinstance(record.msg, str) else str(record.msg)
    if isinstance(record.args, tuple):
        doc["args"] = tuple(a if isinstance(a, _PLAIN) or _pickles(a) else str(a) for a in record.args)
    elif record.args is not None:
        doc["msg"], doc["args"] = record.getMessage(), None
    return doc


def _pickles(value: Any) -> bool:
    try:
        pickle.dumps(value)
    except Exception:
        return False
    return True


def _die_with_parent(parent: int) -> None:
    """PR_SET_PDEATHSIG: the kernel kills the child when the daemon dies, even by kill -9."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
    if os.getppid() != parent:  # the daemon died before the line above took effect
        os._exit(1)
