"""Composition root: model store → runner → batcher → classifier, plus readiness and drain.

``Server`` owns every long-lived object of one process. The front doors (``service.api``) only
read it; ``serve()`` in ``service.__main__`` is the only code that touches ports.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import torch
from pydantic import Field

from service.auth import ApiKeys
from service.batching import Batcher, BatcherConfig, BatchInfo
from service.classifier import Classifier, LoadedModel
from service.config import Settings
from service.decode import DecodeLimits
from service.decode_pool import DecodePool
from service.engines import ModelIdentity
from service.errors import ErrorKind, ServiceError, shutting_down
from service.live import LiveLimits, LiveService, ModelHub
from service.metrics import Metrics
from service.model.online import OnlineAnswer, OnlineTSM
from service.request import RequestLimits
from service.runner import Runner, RunnerConfig, resolve_device
from service.store import StoreError, find_versions, load_entry
from service.uploads import default_spool_dir

log = logging.getLogger("tsm.server")


@dataclass(frozen=True)
class ModelInfo:
    """A loaded model as clients see it: the HTTP front door answers it as it is (its schema in
    OpenAPI), the gRPC one as ``tsm.v1.ModelInfo``."""

    name: str
    version: str
    default: Annotated[bool, Field(description="the model used when a request names none")]
    arch: str
    num_segments: Annotated[int, Field(description="frames per clip")]
    num_classes: int
    input_size: Annotated[int, Field(description="side of the square crop the network sees")]
    scale_size: int
    resize: Annotated[
        str, Field(description="short_side (resize, then centre crop) or stretch (whole frame, aspect not kept)")
    ]
    shift: Annotated[bool, Field(description="false for a TSN (no temporal shift)")]
    untrained: Annotated[bool, Field(description="random weights: its answers mean nothing")]
    source: str
    online: Annotated[bool, Field(description="uni-directional (live-stream) model: answers from the last frames")]
    engine: Annotated[str, Field(description="inference engine serving it: torch, compile or openvino")]
    precision: Annotated[str, Field(description="float32, or float16/bfloat16 (verified to looser bounds)")]


class Server:
    """Settings are read here and nowhere below: each part gets its own narrow config."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.api_keys = ApiKeys(settings.api_keys)  # both front doors check the same keys
        self.metrics = Metrics()
        self.classifier: Classifier | None = None
        self.live: LiveService | None = None
        self.startup_error: str | None = None
        self.draining = False
        self._pool: DecodePool | None = None
        self._pool_counted = {"jobs": 0, "restarts": 0}
        self._dropped_counted: dict[tuple[str, str], int] = {}
        self._runners: list[Runner] = []
        self._spool_dir: Path | None = None

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
        all_versions = find_versions(s.model_store)
        found = {name: dirs[-1] for name, dirs in all_versions.items()}
        wanted = s.models or sorted(found)
        missing = [name for name in [*wanted, s.default_model] if name not in found]
        if missing:
            raise StoreError(
                f"model(s) {', '.join(sorted(set(missing)))} not found in {s.model_store} "
                f"(found: {', '.join(sorted(found)) or 'none'})"
            )
        if s.default_model not in wanted:
            wanted.append(s.default_model)
        models: dict[str, LoadedModel] = {}
        hubs: dict[str, ModelHub] = {}
        live_limits = LiveLimits.from_settings(s)
        accelerator = resolve_device(s.device).type == "cuda"
        try:
            split = s.cpu_split(accelerator)
        except ValueError as e:
            raise ServiceError(ErrorKind.internal, str(e)) from None
        runner_config = RunnerConfig.from_settings(s, split.inference_threads)
        batcher_config = BatcherConfig.from_settings(s)
        served = []  # (name, version folder, newest served?) in load order
        for name in wanted:
            versions = {d.name: d for d in all_versions[name]}
            try:
                chosen = s.versions_to_serve(name, list(versions))
            except ValueError as e:
                raise StoreError(str(e)) from None
            served += [(name, versions[v], v == chosen[-1]) for v in chosen]  # versions: folder names
        for name, folder, newest in served:
            t0 = time.monotonic()
            entry = await asyncio.to_thread(load_entry, folder)
            c = entry.config
            # The newest served version answers to the bare name; every version to NAME:VERSION.
            key = name if newest else f"{name}:{folder.name}"
            # An online model classifies a clip by its last `window` frames, smoothed (OnlineAnswer).
            model = OnlineAnswer(entry.model, c.smoothing) if isinstance(entry.model, OnlineTSM) else entry.model
            frames = c.window if c.online else c.num_segments
            identity = ModelIdentity(c.arch, c.weights_sha256, (frames, c.input_size, c.input_size, 3))
            runner = Runner(model, mean=c.mean, std=c.std, num_segments=frames, input_size=c.input_size,
                            config=runner_config, identity=identity)  # fmt: skip
            self._runners.append(runner)
            await asyncio.to_thread(runner.warmup)
            batcher = Batcher(runner, batcher_config, name=key, on_batch=self._batch_observer(key))
            await batcher.start()
            models[key] = models[f"{name}:{folder.name}"] = LoadedModel(entry, batcher)
            if c.online and newest:  # live streams step the same weights frame by frame (service.live)
                hubs[name] = hub = ModelHub(name, entry, live_limits, self.metrics)
                await asyncio.to_thread(hub.choose_engine, s.engine, s.dtype, split.inference_threads)
                log.info("model %s: live streams on engine %s", name, hub.engine.label)
            self.metrics.model_info.labels(
                key,
                c.version,
                c.arch,
                str(c.num_segments),
                str(runner.device),
                runner.engine.precision,
                runner.engine.name,
            ).set(1)
            log.info("model %s/%s ready on %s with engine %s in %.1f s", name, c.version, runner.device,
                     runner.engine.label, time.monotonic() - t0)  # fmt: skip
        # Decode workers: as many as keep the default model busy (its warm-up time per clip).
        default_runner = models[s.default_model].batcher.runner
        split = s.cpu_split(accelerator, default_runner.warmup_s.get(1, 0.0))
        log.info("%s", split.describe())
        self._pool = DecodePool(DecodeLimits.from_settings(s), split.decode_workers, split.decode_threads)
        await self._pool.start()
        self._spool_dir = default_spool_dir(s.spool_dir)
        limits = RequestLimits.from_settings(s)
        self.classifier = Classifier(models, s.default_model, self._pool, self._spool_dir, limits, self.metrics)
        online_default = s.default_online_model or next(iter(sorted(hubs)), None)
        if online_default is not None and online_default not in hubs:
            raise StoreError(
                f"default_online_model {online_default!r} is not an online model loaded here "
                f"(online models: {', '.join(sorted(hubs)) or 'none'})"
            )
        self.live = LiveService(hubs, online_default, live_limits, self.metrics)
        self.live.start()
        self.metrics.ready.set(1)

    def _batch_observer(self, name: str) -> Callable[[BatchInfo], None]:
        clips = self.metrics.batch_clips.labels(name)
        seconds = self.metrics.batch_duration.labels(name)

        def observe(info: BatchInfo) -> None:
            clips.observe(info.size)
            seconds.observe(info.inference_s)

        return observe

    def refresh_gauges(self) -> None:
        """Gauges read at scrape time rather than on every change."""
        if self.classifier is not None:
            for name, model in self.loaded():
                self.metrics.queue_clips.labels(name).set(model.batcher.pending_clips)
                for reason, total in model.batcher.dropped_clips.items():
                    counted = self._dropped_counted.get((name, reason), 0)
                    self.metrics.dropped_clips.labels(name, reason).inc(total - counted)
                    self._dropped_counted[name, reason] = total
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
        if self.classifier is not None:
            for _, model in self.loaded():
                await model.batcher.stop()
        for runner in self._runners:
            runner.close()
        if self._pool is not None:
            await self._pool.close()
        if self._spool_dir is not None and self.settings.spool_dir is None:  # ours: a fresh dir per start
            shutil.rmtree(self._spool_dir, ignore_errors=True)

    def models_info(self) -> list[ModelInfo]:
        """Every served version, by model name, oldest version first."""
        infos = [self._info(key, model) for key, model in self.loaded()]
        return sorted(
            infos, key=lambda i: (i.name, (0, int(i.version), "") if i.version.isdigit() else (1, 0, i.version))
        )

    def _info(self, key: str, model: LoadedModel) -> ModelInfo:
        c = model.entry.config
        assert self.classifier is not None
        return ModelInfo(
            name=key.split(":")[0], version=c.version, default=key == self.classifier.default_model,
            arch=c.arch, num_segments=c.num_segments, num_classes=c.num_classes,
            input_size=c.input_size, scale_size=c.scale_size, resize=c.resize, shift=c.shift,
            untrained=c.untrained, source=c.source, online=c.online, engine=model.batcher.runner.engine.name,
            precision=model.batcher.runner.engine.precision,
        )  # fmt: skip

    def loaded(self) -> list[tuple[str, LoadedModel]]:
        """Each served version once, under the name its batcher and metrics use (the bare name for the
        newest served version of a model, NAME:VERSION for older ones)."""
        if self.classifier is None:
            return []
        return [(key, m) for key, m in self.classifier.models.items() if m.batcher.name == key]

    def model_info(self, name: str) -> ModelInfo:
        """``name``: a model (its newest served version) or NAME:VERSION."""
        model = self.classifier.models.get(name) if self.classifier is not None else None
        if model is None:
            known = ", ".join(sorted({info.name for info in self.models_info()})) or "none"
            raise ServiceError(ErrorKind.unknown_model, f"unknown model {name!r}; loaded models: {known}")
        return self._info(model.batcher.name, model)

    def versions_of(self, name: str) -> list[str]:
        """The served versions of model ``name``, oldest first."""
        return [i.version for i in self.models_info() if i.name == name]
