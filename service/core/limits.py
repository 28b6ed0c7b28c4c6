"""The process's open-file limit, and the connections each port may hold within it.

Every connection is an open file, and both ports share the process's limit with uploads, decode
workers' sockets and model files: past it, accepting fails on both ports at once. So the soft limit is
raised to the hard one at start, and each port is capped below it (``TSM_MAX_CONNECTIONS``), leaving
room for the rest.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Protocol

log = logging.getLogger("tsm")

RESERVED_FILES = 512  # uploads being spooled, decode workers, model and label files, logs
PORT_SHARE = 0.45  # of what is left, for each of the two ports


def raise_open_file_limit() -> int:
    """Raises the soft ``RLIMIT_NOFILE`` to the hard limit; returns the soft limit now in force."""
    try:
        import resource
    except ImportError:  # not POSIX
        return 0
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as e:
            log.warning("could not raise the open-file limit from %d to %d: %s", soft, hard, e)
    return int(soft)


def open_file_limit() -> int:
    try:
        import resource
    except ImportError:
        return 0
    return int(resource.getrlimit(resource.RLIMIT_NOFILE)[0])


def connection_cap(configured: int) -> int:
    """Connections one port may hold: ``configured``, or its share of the open-file limit."""
    if configured:
        return configured
    limit = open_file_limit()
    if limit <= 0 or limit >= 10**7:  # unknown or unlimited: a cap still bounds memory
        return 100_000
    return max(64, int((limit - RESERVED_FILES) * PORT_SHARE))


class Connection(Protocol):
    @property
    def waiting_for_request(self) -> bool:
        """No request of it is being served: closing it loses nothing."""
        ...

    def close_now(self) -> None: ...


class ConnectionGuard:
    """The open connections of one HTTP server, oldest first, and their cap."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.open: OrderedDict[Connection, None] = OrderedDict()
        self.evicted = 0
        self.timed_out = 0
        self.too_large = 0

    def opened(self, connection: Connection) -> None:
        self.open[connection] = None
        if len(self.open) <= self.cap:
            return
        victim = next((c for c in self.open if c.waiting_for_request), connection)
        del self.open[victim]  # gone now: it closes in the background
        self.evicted += 1
        victim.close_now()

    def closed(self, connection: Connection) -> None:
        self.open.pop(connection, None)
