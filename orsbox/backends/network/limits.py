"""How long and how much a session may hold the egress proxy (`egress.py`), and how much of the log.

Everything in a session's container may be hostile, so each thing the proxy spends on a session is
bounded: time (to send a request head, to resolve a name, to reach an upstream, a tunnel's idle time and
lifetime), connections (per session, and for all sessions together: the server's file descriptors),
lookups at once (threads), and log lines (values clipped, repeated denials counted). The values are
fixed facts of the proxy, not ops' policy: they bound an attacker, and a well-behaved client (pip, git,
curl, urllib) stays far from each of them.
"""

from __future__ import annotations

import resource
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import structlog

log = structlog.get_logger()

#: Connections the proxies of a server hold at once, all sessions together (each is two of the server's file
#: descriptors), and at most an eighth of the server's open-file limit: a quarter of its descriptors, the rest
#: left to the server (agent sockets, the engine, clients). Past it: `503`.
MAX_TOTAL_CONNECTIONS = 4096

#: Threads the proxies of a server resolve names on, all sessions together: their own, so that lookups hung on
#: a slow DNS server never hold the event loop's default executor, which the server needs (agent frames).
LOOKUP_THREADS = 16


@dataclass(frozen=True)
class Limits:
    """One session's bounds at the proxy (seconds, connections). Tests make them small."""

    #: s for a client to send its whole request head (request line and headers), however it spreads the bytes
    #: (slowloris); then `408`. A real client sends its head at once, in well under a second.
    head_timeout: float = 5.0
    #: s a tunnel (or a plain request's connection) stays open while no byte moves either way, half-closed or
    #: not, and also when a side stops reading. Clients reconnect; pip's keep-alive connections do.
    idle_timeout: float = 60.0
    #: s a tunnel stays open at most, however busy (a download of 10 GB at 3 MB/s fits).
    lifetime: float = 3600.0
    #: s to resolve a name (on the host), then `504`.
    resolve_timeout: float = 5.0
    #: names one session may be resolving at once (each holds one of the proxies' lookup threads).
    lookups: int = 4
    #: s to reach an upstream, all of its addresses tried, then `504`.
    connect_timeout: float = 10.0
    #: s over which repeated denials of a session are counted and logged as one line (`egress_denied` with `count`).
    denial_interval: float = 60.0
    #: connections one session may have open at once (each is two file descriptors of the server), then `429`.
    #: pip, git and curl use a few; browsers six per host.
    connections: int = 64


#: What the proxies of a server use.
DEFAULT_LIMITS = Limits()


class Budget:
    """What the proxies of one server share, all sessions together: `connections` open at once (by default
    `connection_limit()`), and the lookup threads."""

    def __init__(self, *, connections: int | None = None) -> None:
        self.connections = connections if connections is not None else connection_limit()
        self.open = 0
        self.lookup_threads = ThreadPoolExecutor(max_workers=LOOKUP_THREADS, thread_name_prefix="egress-dns")

    def take_connection(self) -> bool:
        """Count one more open connection, if there is room for it."""
        if self.open >= self.connections:
            return False
        self.open += 1
        return True

    def give_connection(self) -> None:
        self.open -= 1

    def close(self) -> None:
        """Let the lookup threads go (a hung lookup is left to end on its own)."""
        self.lookup_threads.shutdown(wait=False, cancel_futures=True)


def connection_limit() -> int:
    """`MAX_TOTAL_CONNECTIONS`, or an eighth of this process's open-file limit if that is less."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_TOTAL_CONNECTIONS
    return max(1, min(MAX_TOTAL_CONNECTIONS, soft // 8))



# ---------------------------------------------------------------- logs

#: Characters of a logged value that came from a session (a host, a reason quoting a header) shown at most.
LOGGED_TEXT = 300
#: (host, status) pairs of one session whose denials are logged apart in an interval; the rest are counted together.
MAX_DENIAL_SUBJECTS = 16


def clip(text: str | None, limit: int = LOGGED_TEXT) -> str | None:
    """`text` for a log line: at most `limit` characters, then how many more; unprintable ones escaped (`\\x9b`),
    so that nothing a session wrote can forge a log line or drive a terminal."""
    if text is None:
        return None
    shown = "".join(char if char.isprintable() else char.encode("unicode_escape").decode("ascii")
                    for char in text[:limit])
    return shown + (f"...(+{len(text) - limit} characters)" if len(text) > limit else "")


@dataclass
class _Held:
    fields: dict[str, Any]  # the last denial's
    count: int = 0  # denials since the last line


class DenialLog:
    """One session's `egress_denied` lines, a bounded number however often it is denied.

    The first denial of a (host, status) is logged at once (`count=1`); more of it in the same interval are
    counted and logged as one line with their `count` when the interval ends, and so on while they go on;
    after a quiet interval it is forgotten. Past `MAX_DENIAL_SUBJECTS` pairs in an interval, denials are counted
    together (`host` None). The proxy calls `flush` at each interval's end and when it closes.
    """

    def __init__(self, session_id: str, *, interval: float) -> None:
        self.session_id, self.interval = session_id, interval
        self._held: dict[tuple[str | None, int], _Held] = {}
        self._others = 0  # denials past MAX_DENIAL_SUBJECTS pairs, this interval

    def denied(self, *, status: int, reason: str, method: str | None, host: str | None, port: int | None) -> None:
        shown = clip(host)
        fields = {"status": status, "reason": clip(reason), "method": clip(method, 32), "host": shown, "port": port}
        key = (shown, status)
        held = self._held.get(key)
        if held is not None:
            held.fields, held.count = fields, held.count + 1
        elif len(self._held) >= MAX_DENIAL_SUBJECTS:
            self._others += 1
        else:
            self._held[key] = _Held(fields)
            log.warning("egress_denied", session_id=self.session_id, count=1, **fields)

    def flush(self) -> None:
        """An interval ends: a line for each pair denied again since its last line, one for the others."""
        for key, held in list(self._held.items()):
            if not held.count:
                del self._held[key]
                continue
            log.warning("egress_denied", session_id=self.session_id, count=held.count, seconds=self.interval,
                        **held.fields)
            held.count = 0
        if self._others:
            log.warning("egress_denied", session_id=self.session_id, count=self._others, seconds=self.interval,
                        status=None, reason=f"denials of other hosts (past {MAX_DENIAL_SUBJECTS} host and status "
                                            "pairs in an interval), counted together", method=None, host=None,
                        port=None)
            self._others = 0
