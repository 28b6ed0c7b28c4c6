"""Admission to a model: a bounded budget of clips admitted but not yet finished, and each request's
share of it. A request reserves its clips before its upload is read; over the bound it is refused
(429) with a Retry-After from the rate at which the model finishes clips."""

from __future__ import annotations

import itertools
import time
from collections import Counter
from types import TracebackType

from service.core.errors import ErrorKind, ServiceError
from service.core.fair import Client

# Weight of the newest batch in the smoothed finishing rate: a few batches follow a change of load,
# one odd batch does not swing the Retry-After.
_RATE_WEIGHT = 0.2
_MAX_BUCKETS = 10_000  # clients remembered by RequestRate before full buckets are forgotten


class ClipBudget:
    """``limit`` clips in all; with ``client_limit``, each client (its name: both priority classes)
    at most that many, so one client's backlog cannot fill the budget others need."""

    def __init__(self, name: str, limit: int, rate: float = 0.0, client_limit: int = 0) -> None:
        self.name, self.limit, self.client_limit = name, limit, client_limit
        self.rate = rate  # clips/s through the model, smoothed
        self.reserved = 0  # admitted clips not yet finished
        self.by_client: Counter[str] = Counter()
        self._ids = itertools.count(1)

    def reserve(self, clips: int, client: Client | None = None) -> Reservation:
        client = client or Client()
        if clips > self.limit:
            raise ServiceError(
                ErrorKind.bad_request, f"the request needs {clips} clips; this server takes at most {self.limit}"
            )
        if self.client_limit and self.by_client[client.name] + clips > self.client_limit:
            excess = self.by_client[client.name] + clips - self.client_limit
            held = self.by_client[client.name]
            message = (f"client {client.name} has {held} clips in flight on model {self.name!r}; its limit is "
                       f"{self.client_limit} (TSM_CLIENT_MAX_CLIPS): retry shortly")  # fmt: skip
            raise ServiceError(ErrorKind.client_limit, message, retry_after_s=self._retry(excess))
        if self.reserved + clips > self.limit:
            excess = self.reserved + clips - self.limit
            message = f"model {self.name!r} is at capacity; retry shortly"
            raise ServiceError(ErrorKind.overloaded, message, retry_after_s=self._retry(excess))
        self.reserved += clips
        self.by_client[client.name] += clips
        return Reservation(self, clips, next(self._ids), client)

    def _retry(self, excess: int) -> float:
        return round(min(60.0, max(0.1, excess / self.rate)), 2) if self.rate > 0 else 1.0

    def observe_rate(self, rate: float) -> None:
        self.rate = rate if self.rate == 0 else (1 - _RATE_WEIGHT) * self.rate + _RATE_WEIGHT * rate


class RequestRate:
    """At most ``rate`` requests started per second by each client: a token bucket holding one second's
    worth (at least one request), so a short burst passes and a sustained flood is refused."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self._buckets: dict[str, tuple[float, float]] = {}  # client → (tokens, when)

    def admit(self, client: str) -> None:
        if self.rate <= 0:
            return
        now, burst = time.monotonic(), max(1.0, self.rate)
        tokens, then = self._buckets.get(client, (burst, now))
        tokens = min(burst, tokens + (now - then) * self.rate)
        if tokens < 1:
            raise ServiceError(
                ErrorKind.client_limit,
                f"client {client} is over its {self.rate:g} requests per second (TSM_CLIENT_MAX_RPS): retry shortly",
                retry_after_s=round((1 - tokens) / self.rate, 2),
            )
        if len(self._buckets) > _MAX_BUCKETS:  # a full bucket is the default: forgetting it changes nothing
            self._buckets = {c: (t, w) for c, (t, w) in self._buckets.items() if t + (now - w) * self.rate < burst}
        self._buckets[client] = (tokens - 1, now)


class Reservation:
    """Admitted clips of one request; releasing returns them to the budget (idempotent)."""

    def __init__(self, budget: ClipBudget, clips: int, id: int, client: Client | None = None) -> None:
        self.budget, self.clips, self.id = budget, clips, id
        self.client = client or Client()
        self.released = False

    @property
    def flow(self) -> str:
        return self.client.flow

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.budget.reserved -= self.clips
            self.budget.by_client[self.client.name] -= self.clips
            if self.budget.by_client[self.client.name] <= 0:
                del self.budget.by_client[self.client.name]

    def grow(self, clips: int) -> None:
        """Admit ``clips`` more for the same request (a timeline's windows, known once decoded)."""
        if clips > 0:
            extra = self.budget.reserve(clips, self.client)  # refused (429) like a new request when over
            extra.released = True  # its clips are this reservation's now, released with it
            self.clips += clips

    def __enter__(self) -> Reservation:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.release()
