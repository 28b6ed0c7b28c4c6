"""Fair share between clients: who a request's client is, and a queue that serves clients in turn.

A **client** is the API key a request presented (named ``key-`` + the first 8 hex digits of the key's
SHA-256: metrics and logs never carry a key), else the value of ``TSM_CLIENT_HEADER`` when a trusted
gateway sets one, else ``anonymous``. Its **priority class** is ``interactive`` (the default) or
``bulk`` (the ``X-Priority: bulk`` header or gRPC metadata, a v2 ``priority`` of 2 or more; jobs are
bulk). The front doors set both for the request (:data:`current`), so every stage reads them.

:class:`FairQueue` is deficit round robin over *flows* (a class and a client): each flow gets its
weight's share of what is served, in turn, so one client's backlog never sits in front of another
client's next item. A bulk flow's weight is a quarter of its client's.
"""

from __future__ import annotations

import hashlib
import re
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

Priority = Literal["interactive", "bulk"]
BULK_SHARE = 0.25  # a bulk flow's weight, as a share of its client's
_NAME = re.compile(r"[^A-Za-z0-9._:@-]")
T = TypeVar("T")


@dataclass(frozen=True)
class Client:
    name: str = "anonymous"
    priority: Priority = "interactive"

    @property
    def flow(self) -> str:
        return f"{self.priority}/{self.name}"


ANONYMOUS = Client()
current: ContextVar[Client] = ContextVar("tsm_client", default=ANONYMOUS)


def key_name(key: str) -> str:
    """How metrics, logs and weights name an API key: never the key itself."""
    return "key-" + hashlib.sha256(key.encode()).hexdigest()[:8]


def header_name(value: str) -> str:
    """A gateway's client header as a label value: printable, at most 64 characters."""
    return _NAME.sub("_", value.strip())[:64] or "anonymous"


def priority_of(value: str | None) -> Priority:
    """``X-Priority`` (``bulk``/``interactive``) or a v2 ``priority`` (Triton's: 1 is the highest, 0 the
    default): 2 and above is bulk."""
    text = (value or "").strip().lower()
    if text == "bulk" or (text.isdigit() and int(text) >= 2):
        return "bulk"
    return "interactive"


def flow_weights(weights: Mapping[str, float]) -> Callable[[str], float]:
    """A flow's weight: its client's (``TSM_CLIENT_WEIGHTS``, 1 by default), a quarter of it for bulk."""

    def weight(flow: str) -> float:
        priority, _, name = flow.partition("/")
        return weights.get(name, 1.0) * (BULK_SHARE if priority == "bulk" else 1.0)

    return weight


class FairQueue(Generic[T]):
    """Items of many flows, served one unit at a time in weighted turns (deficit round robin, a unit
    costing 1); within a flow, its items take turns unit by unit (a 10-clip request does not hold up
    the flow's 1-clip ones). ``weight_of(flow)``: a flow's share per turn (1 by default)."""

    def __init__(self, weight_of: Callable[[str], float] | None = None) -> None:
        self._weight_of = weight_of or (lambda flow: 1.0)
        self._items: dict[str, deque[list[Any]]] = {}  # flow → [item, units left] in turn order
        self._deficit: dict[str, float] = {}
        self._turns: deque[str] = deque()  # flows with units, in serving order; the head is being served
        self._granted = False  # the head flow has had its credit for this turn
        self._units = 0

    def __len__(self) -> int:
        """Units waiting (clips, or jobs)."""
        return self._units

    def __iter__(self) -> Iterator[T]:
        for entries in self._items.values():
            yield from (entry[0] for entry in entries)

    def push(self, flow: str, item: T, units: int = 1) -> None:
        if units < 1:
            return
        if flow not in self._items:
            self._items[flow] = deque()
            self._deficit[flow] = 0.0
            self._turns.append(flow)
        self._items[flow].append([item, units])
        self._units += units

    def pop(self) -> tuple[str, T]:
        """One unit of the next item by the weighted turns, with its flow. ``IndexError`` when empty."""
        if not self._units:
            raise IndexError("pop from an empty FairQueue")
        while True:
            flow = self._turns[0]
            if not self._granted:  # the start of this flow's turn: its weight of credit
                self._deficit[flow] += max(self._weight_of(flow), 1e-3)
                self._granted = True
            if self._deficit[flow] >= 1:
                self._deficit[flow] -= 1
                entries = self._items[flow]
                entry = entries.popleft()
                entry[1] -= 1
                self._units -= 1
                if entry[1]:
                    entries.append(entry)  # its next unit after the flow's other items'
                elif not entries:
                    self._forget(flow)
                return flow, entry[0]
            self._turns.rotate(-1)  # its turn is over (the credit left is kept): the next flow's
            self._granted = False

    def remove(self, flow: str, item: T) -> int:
        """Takes ``item`` out of ``flow`` (a cancelled request); the units it had left."""
        entries = self._items.get(flow)
        for entry in entries or ():
            if entry[0] is item:
                entries.remove(entry)  # type: ignore[union-attr]
                self._units -= entry[1]
                if not entries:
                    self._forget(flow)
                return int(entry[1])
        return 0

    def _forget(self, flow: str) -> None:
        # An emptied flow leaves the turns and its deficit: credit is not saved up while idle.
        if self._turns[0] == flow:
            self._granted = False
        del self._items[flow], self._deficit[flow]
        self._turns.remove(flow)
