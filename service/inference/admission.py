"""Admission to a model: a bounded budget of clips admitted but not yet finished, and each request's
share of it. A request reserves its clips before its upload is read; over the bound it is refused
(429) with a Retry-After from the rate at which the model finishes clips."""

from __future__ import annotations

import itertools
from types import TracebackType

from service.core.errors import ErrorKind, ServiceError

# Weight of the newest batch in the smoothed finishing rate: a few batches follow a change of load,
# one odd batch does not swing the Retry-After.
_RATE_WEIGHT = 0.2


class ClipBudget:
    def __init__(self, name: str, limit: int, rate: float = 0.0) -> None:
        self.name, self.limit = name, limit
        self.rate = rate  # clips/s through the model, smoothed
        self.reserved = 0  # admitted clips not yet finished
        self._ids = itertools.count(1)

    def reserve(self, clips: int) -> Reservation:
        if clips > self.limit:
            raise ServiceError(
                ErrorKind.bad_request, f"the request needs {clips} clips; this server takes at most {self.limit}"
            )
        if self.reserved + clips > self.limit:
            excess = self.reserved + clips - self.limit
            retry = min(60.0, max(0.1, excess / self.rate)) if self.rate > 0 else 1.0
            message = f"model {self.name!r} is at capacity; retry shortly"
            raise ServiceError(ErrorKind.overloaded, message, retry_after_s=round(retry, 2))
        self.reserved += clips
        return Reservation(self, clips, next(self._ids))

    def observe_rate(self, rate: float) -> None:
        self.rate = rate if self.rate == 0 else (1 - _RATE_WEIGHT) * self.rate + _RATE_WEIGHT * rate


class Reservation:
    """Admitted clips of one request; releasing returns them to the budget (idempotent)."""

    def __init__(self, budget: ClipBudget, clips: int, id: int) -> None:
        self.budget, self.clips, self.id = budget, clips, id
        self.released = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.budget.reserved -= self.clips

    def grow(self, clips: int) -> None:
        """Admit ``clips`` more for the same request (a timeline's windows, known once decoded)."""
        if clips > 0:
            extra = self.budget.reserve(clips)  # refused (429) like a new request when over capacity
            extra.released = True  # its clips are this reservation's now, released with it
            self.clips += clips

    def __enter__(self) -> Reservation:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.release()
