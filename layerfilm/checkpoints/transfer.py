"""Talking to servers: what they answer (:class:`Answer`), what is listed (:class:`Entry`),
which failures are final (:class:`RemoteError`) and which are worth another try
(:class:`Transient`, :func:`retrying`), and what was spent (:class:`Traffic`)."""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Callable, Iterable

ATTEMPTS = 5  # tries per request (first + retries)
BACKOFF = 0.25  # seconds before the first retry; doubles each time
DEADLINE = 120.0  # seconds one request may take, retries included
# A server that ignores Range answers with the whole file from byte 0: reads of the file's
# first bytes up to this size take them and close; longer reads spill the whole file.
PREFIX_MAX = 1 << 20


class RemoteError(OSError):
    """A final answer (not found, denied, changed): named in one line, never retried."""


class Transient(OSError):
    """Worth another try: 5xx, timeout, reset, a response that was not the range asked for."""


@dataclasses.dataclass(frozen=True)
class Entry:
    """One listed name: a folder, or a file with its size and identity (``ident``: what
    changes with its contents, e.g. an ETag or an LFS sha256; ``""`` when the server says
    nothing)."""

    name: str
    is_dir: bool
    size: int = 0
    ident: str = ""
    info: tuple = ()  # extra (key, value) pairs recorded in manifests


@dataclasses.dataclass
class Answer:
    """What a server answered to a ranged GET: ``status``, ``content_range`` (or ``None``),
    ``length`` (Content-Length or ``None``) and the body as chunks (read lazily)."""

    status: int
    content_range: str | None
    length: int | None
    chunks: Iterable[bytes]


class Traffic:
    """Requests made and bytes received (thread-safe); every storage's counts also go to
    :data:`TOTAL`, what this process fetched (the progress bar shows it)."""

    def __init__(self, parent: "Traffic | None" = None):
        self._lock = threading.Lock()
        self._parent = parent
        self.requests = 0  # listings, API calls, HEADs
        self.data_requests = 0  # GETs of file contents
        self.fetched = 0  # bytes of file contents received
        self.retries = 0
        self.stored = 0  # bytes of the files drawn (set by the plan)

    def add(self, **counts: int) -> None:
        with self._lock:
            for k, v in counts.items():
                setattr(self, k, getattr(self, k) + v)
        if self._parent is not None:
            self._parent.add(**counts)

    def as_dict(self) -> dict[str, int]:
        return {"requests": self.requests, "data_requests": self.data_requests,
                "bytes_fetched": self.fetched, "retries": self.retries}


TOTAL = Traffic()


def status_error(status: int, where: str, hint: str = "") -> OSError:
    """The exception for an HTTP status that is not a success: :class:`RemoteError` for
    answers that another try would not change, :class:`Transient` for the rest."""
    if status == 404 or status == 410:
        return RemoteError(f"not found (HTTP {status}){hint}")
    if status in (401, 403):
        return RemoteError(f"access denied (HTTP {status}){hint}")
    if status == 412:
        return RemoteError(f"changed while being read (HTTP {status}: its ETag no longer matches)")
    if status == 416:
        return RemoteError(f"range not satisfiable (HTTP {status}): the file is shorter than listed")
    if status == 429 or status >= 500:
        return Transient(f"HTTP {status} from the server")
    return RemoteError(f"unexpected HTTP {status}{hint}")


def retrying(fn: Callable[[], object], what: str, traffic: Traffic | None = None,
             attempts: int = ATTEMPTS, backoff: float = BACKOFF, deadline: float = DEADLINE):
    """``fn()``, tried again after a :class:`Transient` error or a connection problem
    (timeouts, resets: ``ConnectionError``/``TimeoutError`` and libraries' equivalents) with
    exponential backoff, at most ``attempts`` times and ``deadline`` seconds in all."""
    t0 = time.monotonic()
    for attempt in range(attempts):
        try:
            return fn()
        except RemoteError:
            raise
        except Exception as e:  # noqa: BLE001 - classified right here
            if not transient(e):
                raise
            last = e
        if attempt + 1 == attempts or time.monotonic() - t0 > deadline:
            break
        if traffic is not None:
            traffic.add(retries=1)
        time.sleep(min(backoff * 2 ** attempt, 8.0))
    raise Transient(f"{_describe(last)}; gave up after {attempt + 1} tries ({what})") from last


def transient(e: BaseException) -> bool:
    if isinstance(e, (Transient, ConnectionError, TimeoutError)):
        return True
    names = {c.__module__.split(".")[0] + "." + c.__name__ for c in type(e).__mro__}
    return any(n in names for n in (
        "httpx2.TransportError", "httpx.TransportError", "aiohttp.ClientPayloadError",
        "aiohttp.ClientConnectionError", "aiohttp.ServerDisconnectedError",
        "botocore.EndpointConnectionError", "botocore.ConnectionClosedError",
        "botocore.ReadTimeoutError", "botocore.ConnectTimeoutError", "http.IncompleteRead",
        "asyncio.TimeoutError", "urllib3.ProtocolError"))


def _describe(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text


def human_bytes(n: float) -> str:
    """``1234567`` -> ``"1.2 MB"``."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


def drain(answer: Answer) -> None:
    close = getattr(answer.chunks, "close", None)
    if close is not None:
        close()
