"""One serving version of a model: built from its store entry (runner, batcher, live hub), and closed."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from service.core.metrics import Metrics
from service.inference.answers import LoadedModel
from service.inference.batching import Batcher, BatcherConfig, BatchInfo
from service.inference.engine_cache import ModelIdentity
from service.inference.runner import Runner, RunnerConfig
from service.live.hub import LiveLimits, ModelHub
from service.models.nn.online import OnlineAnswer, OnlineTSM
from service.models.store import load_entry

log = logging.getLogger("tsm.repository")


@dataclass(eq=False)
class Served:
    """One serving version: what the tables point at, and what closing it must stop."""

    name: str
    version: str
    model: LoadedModel
    fingerprint: tuple[tuple[str, int, int], ...]  # its files on disk when loaded: a change means reload
    info_labels: tuple[str, ...]  # its tsm_model_info series
    hub: ModelHub | None = None  # live streams: only the newest version of an online model has one

    @property
    def runner(self) -> Runner:
        return self.model.batcher.runner


def fingerprint(folder: Path) -> tuple[tuple[str, int, int], ...]:
    """Name, size and mtime of each file of a store entry: cheap to read on every poll."""
    stats = [(p.name, p.stat()) for p in sorted(folder.iterdir()) if p.is_file()]
    return tuple((name, st.st_size, st.st_mtime_ns) for name, st in stats)


class VersionLoader:
    """The factory the repository loads versions with: every part built from the narrow configs."""

    def __init__(self, runner: RunnerConfig, batcher: BatcherConfig, live: LiveLimits, metrics: Metrics) -> None:
        self.runner_config, self.batcher_config, self.live_limits = runner, batcher, live
        self.metrics = metrics

    async def load(self, name: str, folder: Path, label: str, newest: bool) -> Served:
        """Load, warm up and start one version (not yet in the tables)."""
        version, t0 = folder.name, time.monotonic()
        files = fingerprint(folder)
        entry = await asyncio.to_thread(load_entry, folder)
        c = entry.config
        # An online model classifies a clip by its last `window` frames, smoothed (OnlineAnswer).
        network = OnlineAnswer(entry.model, c.smoothing) if isinstance(entry.model, OnlineTSM) else entry.model
        frames = c.window if c.online else c.num_segments
        identity = ModelIdentity(c.arch, c.weights_sha256, (frames, c.input_size, c.input_size, 3))
        runner = Runner(network, mean=c.mean, std=c.std, num_segments=frames, input_size=c.input_size,
                        config=self.runner_config, identity=identity)  # fmt: skip
        try:
            await asyncio.to_thread(runner.warmup)
        except BaseException:
            runner.close()
            raise
        batcher = Batcher(runner, self.batcher_config, name=label, on_batch=self._batch_observer(label, name, version))
        await batcher.start()
        model = LoadedModel(entry, batcher)
        labels = (label, c.version, c.arch, str(c.num_segments), str(runner.device), runner.engine.precision,
                  runner.engine.name)  # fmt: skip
        served = Served(name, version, model, files, labels)
        try:
            if c.online and newest:  # live streams step the same weights frame by frame (service.live.hub)
                served.hub = await self.make_hub(name, model)
        except BaseException:
            await self.close(served, unpublished=True)
            raise
        log.info("model %s/%s ready on %s with engine %s in %.1f s", name, version, runner.device,
                 runner.engine.label, time.monotonic() - t0)  # fmt: skip
        return served

    async def make_hub(self, name: str, model: LoadedModel) -> ModelHub:
        hub = ModelHub(name, model.entry, self.live_limits, self.metrics, device=model.batcher.runner.device)
        c = self.runner_config  # live hubs take the runner's engine choice, precision and threads
        await asyncio.to_thread(hub.choose_engine, c.engine, c.dtype, c.torch_threads)
        log.info("model %s: live streams on engine %s", name, hub.engine.label)
        return hub

    def _batch_observer(self, label: str, name: str, version: str) -> Callable[[BatchInfo], None]:
        clips = self.metrics.batch_clips.labels(label)
        seconds = self.metrics.batch_duration.labels(label)
        statistics = self.metrics.statistics

        def observe(info: BatchInfo) -> None:
            clips.observe(info.size)
            seconds.observe(info.inference_s)
            if info.error is None and info.size:
                statistics.batch(name, version, info.size, info.inference_s)

        return observe

    async def close(self, s: Served, unpublished: bool = False) -> None:
        """Stop its batcher and runner. A published hub is the live service's to stop (after its
        streams); an unpublished one (a refused load) never ran a stream."""
        await s.model.batcher.stop()
        s.runner.close()
        if unpublished and s.hub is not None:
            await s.hub.stop()
        with contextlib.suppress(KeyError):  # a refused load never published it
            self.metrics.model_info.remove(*s.info_labels)
