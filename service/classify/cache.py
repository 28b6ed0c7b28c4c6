"""The result cache: an answer computed once per (upload, model version, options), shared by replicas.

Keys are built by the classifier (sha256 of the upload, computed while it was spooled, + the model's
name, version, weights and engine + every option that changes the answer); values are the encoded
answer. Two tiers: an in-process LRU bounded by entries and bytes, and optionally Redis
(``TSM_CACHE_URL``) shared by every replica. Redis is an optimisation, never a dependency of an
answer: an error or a timeout marks it down for a few seconds (logged once, ``tsm_cache_backend_up``)
and requests go on without it. Identical requests in flight at once are computed once (single flight).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from service.core.metrics import Metrics

log = logging.getLogger("tsm.cache")
T = TypeVar("T")
_DOWN_FOR_S = 5.0  # after a Redis error, requests skip it this long instead of waiting on it each time
_TIMEOUT_S = 0.25  # a cache that answers slower than this is not worth waiting for


@dataclass(frozen=True)
class CacheConfig:
    entries: int  # 0: no cache at all
    max_bytes: int
    url: str  # redis://... or empty
    ttl_s: int


class LocalLru:
    """Bounded by entries and by the bytes of the values."""

    def __init__(self, entries: int, max_bytes: int) -> None:
        self.entries, self.max_bytes = entries, max_bytes
        self._items: OrderedDict[str, bytes] = OrderedDict()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: str) -> bytes | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: str, value: bytes) -> None:
        if len(value) > self.max_bytes:
            return
        old = self._items.pop(key, None)
        if old is not None:
            self.bytes -= len(old)
        self._items[key] = value
        self.bytes += len(value)
        while len(self._items) > self.entries or self.bytes > self.max_bytes:
            _, evicted = self._items.popitem(last=False)
            self.bytes -= len(evicted)


class RedisTier:
    """Redis behind a breaker: an error takes it out of the path for ``_DOWN_FOR_S``."""

    def __init__(self, url: str, ttl_s: int, metrics: Metrics) -> None:
        import redis.asyncio as aioredis  # only servers with TSM_CACHE_URL need it

        self._client: Any = aioredis.Redis.from_url(
            url, socket_timeout=_TIMEOUT_S, socket_connect_timeout=_TIMEOUT_S, retry_on_timeout=False
        )
        self._errors = (aioredis.RedisError, OSError, asyncio.TimeoutError)
        self.ttl_s, self.metrics = ttl_s, metrics
        self.where = url.split("@")[-1]  # never log a password
        self._down_until = 0.0
        self._up = True
        metrics.cache_backend_up.labels("redis").set(1)

    async def get(self, key: str) -> bytes | None:
        if time.monotonic() < self._down_until:
            return None
        try:
            value = await asyncio.wait_for(self._client.get(key), _TIMEOUT_S * 2)
        except self._errors as e:
            self._failed(e)
            return None
        self._recovered()
        return value if isinstance(value, bytes) else None

    async def put(self, key: str, value: bytes) -> None:
        if time.monotonic() < self._down_until:
            return
        try:
            await asyncio.wait_for(self._client.set(key, value, ex=self.ttl_s), _TIMEOUT_S * 2)
        except self._errors as e:
            self._failed(e)
            return
        self._recovered()

    def _failed(self, error: BaseException) -> None:
        self._down_until = time.monotonic() + _DOWN_FOR_S
        self.metrics.cache_backend_errors.labels("redis").inc()
        if self._up:
            log.warning("result cache: Redis at %s failed (%s); serving without it, retrying in %.0f s",
                        self.where, type(error).__name__, _DOWN_FOR_S)  # fmt: skip
            self._up = False
            self.metrics.cache_backend_up.labels("redis").set(0)

    def _recovered(self) -> None:
        if not self._up:
            log.info("result cache: Redis at %s answers again", self.where)
            self._up = True
            self.metrics.cache_backend_up.labels("redis").set(1)

    async def close(self) -> None:
        with contextlib.suppress(*self._errors):
            await self._client.aclose()


class ResultCache:
    def __init__(self, config: CacheConfig, metrics: Metrics) -> None:
        self.metrics = metrics
        self.local = LocalLru(config.entries, config.max_bytes)
        self.redis = RedisTier(config.url, config.ttl_s, metrics) if config.url else None
        self._flights: dict[str, asyncio.Future[Any]] = {}

    async def get(self, key: str) -> bytes | None:
        value = self.local.get(key)
        if value is None and self.redis is not None:
            value = await self.redis.get(key)
            if value is not None:
                self._keep(key, value)
        return value

    async def put(self, key: str, value: bytes) -> None:
        self._keep(key, value)
        if self.redis is not None:
            await self.redis.put(key, value)

    def _keep(self, key: str, value: bytes) -> None:
        self.local.put(key, value)
        self.metrics.cache_entries.set(len(self.local))
        self.metrics.cache_bytes.set(self.local.bytes)

    async def single_flight(self, key: str, compute: Callable[[], Awaitable[T]]) -> tuple[T, bool]:
        """``compute()`` unless an identical request is computing it now: then its result, shared
        (``True``: shared). When the first one fails, each waiting request computes its own."""
        flight = self._flights.get(key)
        if flight is not None:
            try:
                return await asyncio.shield(flight), True
            except Exception:
                return await compute(), False
        flight = self._flights[key] = asyncio.get_running_loop().create_future()
        try:
            result = await compute()
        except BaseException as e:
            flight.set_exception(e if isinstance(e, Exception) else RuntimeError("cancelled"))
            flight.exception()  # retrieved: no "never retrieved" warning when nobody waits
            raise
        else:
            flight.set_result(result)
            return result, False
        finally:
            del self._flights[key]

    async def close(self) -> None:
        if self.redis is not None:
            await self.redis.close()
