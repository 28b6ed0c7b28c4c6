"""Composition root: model store → runner → batcher → classifier, plus readiness and drain.

``Server`` owns every long-lived object of one process. The front doors (``service.api``) only
read it; ``serve()`` in ``service.__main__`` is the only code that touches ports.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections import Counter
from pathlib import Path

import torch

from service import __version__
from service.classify.cache import CacheConfig, ResultCache
from service.classify.classifier import Classifier
from service.classify.options import RequestLimits
from service.classify.records import PredictionLog, Records
from service.classify.tracing import Tracing
from service.core.auth import Access, Identify
from service.core.config import Settings
from service.core.errors import ErrorKind, ServiceError, shutting_down
from service.core.fair import flow_weights
from service.core.limits import ConnectionGuard
from service.core.metrics import Metrics
from service.core.resources import STORE_SETTING
from service.inference.batching import Batcher, BatcherConfig
from service.inference.devices import resolve_device
from service.inference.runner import RunnerConfig
from service.live.hub import LiveLimits
from service.live.service import LiveService
from service.management.catalog import Catalog
from service.management.repository import Repository, RepositoryConfig
from service.management.versions import VersionLoader
from service.models.store import StoreError, find_versions
from service.video.decoders import choose_decoder
from service.video.pool import DecodePool
from service.video.probe import DecodeLimits
from service.video.spool import default_spool_dir

log = logging.getLogger("tsm.server")


class Server:
    """Settings are read here and nowhere below: each part gets its own narrow config."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.access = Access(settings.api_keys, settings.admin_api_keys, settings.control_api)
        self.api_keys = self.access.users  # both front doors check the same keys
        self.identify = Identify(self.access, settings.client_header)  # whose request it is (fair share)
        self.metrics = Metrics()
        self.classifier: Classifier | None = None
        self.live: LiveService | None = None
        self.startup_error: str | None = None
        self.draining = False
        self._pool: DecodePool | None = None
        self._pool_counted = {"jobs": 0, "restarts": 0}
        self._dropped_counted: dict[tuple[Batcher, str], int] = {}
        self.repository: Repository | None = None
        self.catalog = Catalog(None, settings.default_model)  # empty until the models are loaded
        self.cache: ResultCache | None = None
        self._spool_dir: Path | None = None
        self._records: Records | None = None
        self.http_guard: ConnectionGuard | None = None  # the HTTP port's connections (the runtime's)
        self._guard_counted: dict[str, int] = {}

    @property
    def ready(self) -> bool:
        return self.classifier is not None and not self.draining

    def require_live(self) -> LiveService:
        self.require_classifier()  # not ready, or draining: the same answer as for videos
        assert self.live is not None
        return self.live

    def require_classifier(self) -> Classifier:
        if self.draining:
            raise shutting_down()
        if self.classifier is None:
            raise ServiceError(
                ErrorKind.not_ready, "the server is still loading and warming up its models; retry shortly"
            )
        return self.classifier

    async def start(self) -> None:
        """Load every model, warm it up, start the batchers and the decode workers; then ready."""
        try:
            await self._start()
        except (StoreError, ServiceError) as e:
            self.startup_error = str(e)
            log.error("start-up failed: %s", e)
            raise
        except Exception as e:
            self.startup_error = repr(e)
            log.exception("start-up failed")
            raise

    async def _start(self) -> None:
        s = self.settings
        log.info("tsm-serve %s starting; model store: %s", __version__, s.store.describe())
        found = find_versions(s.store.path)
        wanted = s.models or sorted(found)
        missing = [name for name in [*wanted, s.default_model] if name not in found]
        if missing:
            raise StoreError(
                f"model(s) {', '.join(sorted(set(missing)))} not found in the model store {s.store.describe()}; "
                f"models found there: {', '.join(sorted(found)) or 'none'}. Set {STORE_SETTING} to a folder of "
                "<name>/<version>/model.json entries, or TSM_DEFAULT_MODEL / TSM_MODELS to models it has"
            )
        if s.default_model not in wanted:
            wanted.append(s.default_model)
        device = resolve_device(s.device)
        accelerator = device.type == "cuda"
        try:
            split = s.cpu_split(accelerator)
            decoding = choose_decoder(s.decoder, (device.index or 0) if accelerator else None)
        except ValueError as e:
            raise ServiceError(ErrorKind.internal, str(e)) from None
        live_limits = LiveLimits.from_settings(s)
        loader = VersionLoader(RunnerConfig.from_settings(s, split.inference_threads), BatcherConfig.from_settings(s),
                               live_limits, self.metrics)  # fmt: skip
        config = RepositoryConfig(s.store.path, tuple(s.models), s.default_model, s.policy)
        self.repository = repository = Repository(config, loader, self.metrics)
        for name in wanted:
            try:
                await repository.load(name)
            except ServiceError as e:
                raise StoreError(e.message) from None
        # Decode workers: as many as keep the default model busy (its warm-up time per clip).
        default_runner = repository.models[s.default_model].batcher.runner
        split = s.cpu_split(accelerator, default_runner.warmup_s.get(1, 0.0), decoding.decoder == "nvdec")
        log.info("%s", split.describe())
        log.info("decoder %s (%s)", decoding.decoder, decoding.why)
        self._pool = DecodePool(DecodeLimits.from_settings(s), split.decode_workers, split.decode_threads,
                                decoding.decoder, decoding.gpu, flow_weights(s.client_weights))  # fmt: skip
        await self._pool.start()
        self._spool_dir = default_spool_dir(s.spool_dir)
        limits = RequestLimits.from_settings(s)
        if s.cache_entries > 0:
            self.cache = ResultCache(CacheConfig(s.cache_entries, s.cache_max_bytes, s.cache_url, s.cache_ttl_s),
                                     self.metrics)  # fmt: skip
        self._records = Records(self.metrics, Tracing(s.otel_endpoint), PredictionLog(s.prediction_log))
        log.info("%s; prediction log %s", self._records.tracing.describe(), s.prediction_log or "off")
        self.classifier = Classifier(
            repository.models,
            s.default_model,
            self._pool,
            self._spool_dir,
            limits,
            self.metrics,
            self.cache,
            repository.hubs,
            self._records,
        )
        hubs = repository.hubs
        online_default = s.default_online_model or next(iter(sorted(hubs)), None)
        if online_default is not None and online_default not in hubs:
            raise StoreError(
                f"default_online_model {online_default!r} is not an online model loaded here "
                f"(online models: {', '.join(sorted(hubs)) or 'none'})"
            )
        self.live = repository.live = LiveService(hubs, online_default, live_limits, self.metrics)
        self.catalog = Catalog(repository, s.default_model)
        log.info("%s", s.describe_model_control())
        if s.poll_every_s > 0:
            repository.start_polling(s.poll_every_s)
        self.metrics.ready.set(1)

    def refresh_gauges(self) -> None:
        """Gauges read at scrape time rather than on every change."""
        if self.classifier is not None:
            batchers = [model.batcher for _, model in self.catalog.loaded()]
            # Batchers keep lifetime totals; a reload brings a new batcher under the same label.
            self._dropped_counted = {k: v for k, v in self._dropped_counted.items() if k[0] in batchers}
            clients: Counter[str] = Counter()
            for batcher in batchers:
                self.metrics.queue_clips.labels(batcher.name).set(batcher.pending_clips)
                clients.update(batcher.budget.by_client)
                for reason, total in batcher.dropped_clips.items():
                    counted = self._dropped_counted.get((batcher, reason), 0)
                    self.metrics.dropped_clips.labels(batcher.name, reason).inc(total - counted)
                    self._dropped_counted[batcher, reason] = total
            self.metrics.client_clips_in_flight.clear()  # clients that left have none
            for name, clips in clients.items():
                self.metrics.client_clips_in_flight.labels(self.metrics.client_label(name)).inc(clips)
        if self.http_guard is not None:
            guard = self.http_guard
            self.metrics.http_connections.set(len(guard.open))
            for why, total in (("evicted", guard.evicted), ("header_timeout", guard.timed_out),
                               ("headers_too_large", guard.too_large)):  # fmt: skip
                self.metrics.http_connections_closed.labels(why).inc(total - self._guard_counted.get(why, 0))
                self._guard_counted[why] = total
        if self._pool is not None:
            stats = self._pool.stats()
            for state in ("workers", "busy", "idle", "queued"):
                self.metrics.decode_workers.labels(state).set(stats[state])
            # The pool keeps lifetime totals; counters advance by what happened since the last scrape.
            for key, counter in (("jobs", self.metrics.decode_jobs), ("restarts", self.metrics.decode_worker_restarts)):
                counter.inc(stats[key] - self._pool_counted[key])
                self._pool_counted[key] = stats[key]
        if torch.cuda.is_available():
            self.metrics.device_memory.labels("allocated").set(torch.cuda.memory_allocated())
            self.metrics.device_memory.labels("reserved").set(torch.cuda.memory_reserved())

    async def drain(self) -> None:
        """Stop admitting work, let in-flight requests finish within the drain budget."""
        self.draining = True
        self.metrics.ready.set(0)
        if self.classifier is None:
            return
        self.classifier.accepting = False
        if self.live is not None:
            self.live.drain()
        budget_end = time.monotonic() + self.settings.drain_timeout_s
        while (self.classifier.in_flight or self._live_streams()) and time.monotonic() < budget_end:
            await asyncio.sleep(0.05)
        if self.classifier.in_flight:
            log.warning("drain budget spent with %d request(s) in flight", self.classifier.in_flight)

    def _live_streams(self) -> int:
        return self.live.active if self.live is not None else 0

    async def abort_in_flight(self, grace_s: float = 2.0) -> None:
        """After the drain budget: answer every request still in flight with ``draining`` (HTTP
        503 JSON, gRPC UNAVAILABLE) while the front doors can still send it, instead of letting the
        servers' own shutdown cancel them into bare 500s / CANCELLED."""
        if self.classifier is None or not self.classifier.in_flight:
            return
        self.classifier.abort_in_flight()
        end = time.monotonic() + grace_s
        while self.classifier.in_flight and time.monotonic() < end:
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        if self.live is not None:
            await self.live.stop()
        if self.repository is not None:
            await self.repository.close()
        if self.cache is not None:
            await self.cache.close()
        if self._pool is not None:
            await self._pool.close()
        if self._records is not None:  # every request has ended: export the last spans, close the log
            await asyncio.to_thread(self._records.tracing.shutdown)
            self._records.prediction_log.close()
        if self._spool_dir is not None and self.settings.spool_dir is None:  # ours: a fresh dir per start
            shutil.rmtree(self._spool_dir, ignore_errors=True)
