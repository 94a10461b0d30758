"""How long and how much a session may hold the egress proxy (`egress.py`).

Everything in a session's container may be hostile, so each thing the proxy spends on a session is
bounded: time (to send a request head, to reach an upstream, a tunnel's idle time and lifetime) and
connections. The values are fixed facts of the proxy, not ops' policy: they bound an attacker, and a
well-behaved client (pip, git, curl, urllib) stays far from each of them.
"""

from __future__ import annotations

import resource
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

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
    #: s a tunnel stays open at most, however busy (a download of several GB at the proxy's pace fits).
    lifetime: float = 3600.0
    #: s to resolve a name (on the host), then `504`.
    resolve_timeout: float = 5.0
    #: names one session may be resolving at once (each holds one of the proxies' lookup threads).
    lookups: int = 4
    #: s to reach an upstream, all of its addresses tried, then `504`.
    connect_timeout: float = 10.0
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
