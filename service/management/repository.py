"""Which model versions serve, and changing that while serving (Triton's repository extension).

A load reads a model's versions from the store, picks those its version policy serves, and loads and
warms each new one (sha256 checked, engine verified) *beside* the versions serving; only then does it
swap the tables the classifier and the live service read. It is all or nothing per model: a broken new
version is refused and the old ones keep serving. A retired version leaves the tables at once (new
requests go to its successor) and is closed once its admitted requests and live streams are done, so
work in flight ends on the version it started on. ``poll`` compares the store with what serves and
loads or unloads the difference (``TSM_MODEL_POLL_S``).

Every change runs under one lock, on the event loop; the tables are changed without an await in
between, so a request sees the old tables or the new ones, never a mix.

Why one module of this length: load, unload, retire and poll change the same tables under the same lock;
split apart, each would reach into the others' state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from service.classify.classifier import LoadedModel
from service.core.config import Settings
from service.core.errors import ErrorKind, ServiceError
from service.core.metrics import Metrics
from service.inference.batching import Batcher, BatcherConfig, BatchInfo
from service.inference.engines import ModelIdentity
from service.inference.runner import Runner, RunnerConfig
from service.live.hub import LiveLimits, LiveService, ModelHub
from service.models.nn.online import OnlineAnswer, OnlineTSM
from service.models.store import StoreError, find_versions, load_entry, version_key

log = logging.getLogger("tsm.repository")

State = Literal["READY", "LOADING", "UNLOADING", "UNAVAILABLE"]


class VersionState(BaseModel):
    """A model version as the repository index shows it (Triton's fields)."""

    name: str
    version: str
    state: State = Field(description="READY serves; LOADING, UNLOADING (finishing its requests), UNAVAILABLE")
    reason: str = Field(default="", description="why it is not READY")


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


class Repository:
    def __init__(self, settings: Settings, metrics: Metrics, inference_threads: int) -> None:
        self.settings, self.metrics = settings, metrics
        self.inference_threads = inference_threads
        self.runner_config = RunnerConfig.from_settings(settings, inference_threads)
        self.batcher_config = BatcherConfig.from_settings(settings)
        self.live_limits = LiveLimits.from_settings(settings)
        self.served: dict[str, list[Served]] = {}  # model → its serving versions, oldest first
        # The classifier's table (the bare name: the newest serving version; NAME:VERSION: each) and
        # the live service's (online model → the hub of its newest version). Changed in place.
        self.models: dict[str, LoadedModel] = {}
        self.hubs: dict[str, ModelHub] = {}
        self.live: LiveService | None = None  # set once the live service exists (after the first loads)
        self._states: dict[tuple[str, str], tuple[State, str]] = {}
        self._refused: dict[tuple[str, str], tuple[tuple[str, int, int], ...]] = {}  # not retried unchanged
        self._unloaded: set[str] = set()  # unloaded by a call: polling leaves them unloaded
        self._lock = asyncio.Lock()
        self._closing: set[asyncio.Task[None]] = set()
        self._retired: set[Served] = set()  # out of the tables, not yet closed
        self._poller: asyncio.Task[None] | None = None

    # ----------------------------------------------------------------------------- reading
    def state(self, name: str, version: str) -> tuple[State, str] | None:
        return self._states.get((name, version))

    def loading(self, name: str) -> bool:
        return any(n == name and s == "LOADING" for (n, _), (s, _) in self._states.items())

    def index(self, ready_only: bool = False) -> list[VersionState]:
        """Every version in the store or known to this server, with its state."""
        keys = {(n, f.name) for n, folders in find_versions(self.settings.store.path).items() for f in folders}
        keys |= set(self._states)
        out = []
        for name, version in sorted(keys, key=lambda k: (k[0], version_key(k[1]))):
            state, reason = self._states.get((name, version), ("UNAVAILABLE", "not loaded"))
            if not ready_only or state == "READY":
                out.append(VersionState(name=name, version=version, state=state, reason=reason))
        return out

    # ----------------------------------------------------------------------------- changing
    async def load(self, name: str) -> list[str]:
        """(Re)load model ``name`` from the store as its version policy says; the versions now serving."""
        async with self._lock:
            versions = await self._load(name)
            self._unloaded.discard(name)
            return versions

    async def unload(self, name: str) -> None:
        """Stop serving every version of ``name``; its in-flight requests and live streams finish first."""
        async with self._lock:
            if name not in self.served:
                if name in find_versions(self.settings.store.path) or name in self._unloaded:
                    return  # not serving: nothing to do (as Triton)
                raise ServiceError(ErrorKind.unknown_model, f"unknown model {name!r}: not in the store, not served")
            self._check_removable(name)
            self._unloaded.add(name)
            self._retire_model(name, "unloaded")

    async def poll(self) -> None:
        """Load what the store added or changed, unload what it removed (models unloaded by a call stay
        unloaded; a refused version is retried when its files change)."""
        async with self._lock:
            found = find_versions(self.settings.store.path)
            wanted = set(self.settings.models or found)
            for name in sorted(wanted | set(self.served)):
                if name in self._unloaded:
                    continue
                if name not in found:
                    if name in self.served:
                        try:
                            self._check_removable(name)
                        except ServiceError as e:
                            log.error("model %s left the store but keeps serving: %s", name, e.message)
                            continue
                        log.info("model %s left the store: unloading it", name)
                        self._retire_model(name, "removed from the model store")
                    continue
                if name in wanted and self._changed(name, found[name]):
                    try:
                        await self._load(name)
                    except ServiceError as e:
                        log.error("poll: %s", e.message)

    def start_polling(self, every_s: float) -> None:
        async def loop() -> None:
            while True:
                await asyncio.sleep(every_s)
                try:
                    await self.poll()
                except Exception:
                    log.exception("polling the model store failed")

        self._poller = asyncio.create_task(loop(), name="model-store-poll")

    async def close(self) -> None:
        """Stop polling and close every version, serving or retiring (after the live service stopped)."""
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.gather(self._poller, return_exceptions=True)
        for task in self._closing:
            task.cancel()
        await asyncio.gather(*self._closing, return_exceptions=True)
        for s in [*self._retired, *(s for versions in self.served.values() for s in versions)]:
            await self._close(s)

    # ----------------------------------------------------------------------------- internals
    def _changed(self, name: str, folders: list[Path]) -> bool:
        try:
            wanted = self.settings.versions_to_serve(name, [f.name for f in folders])
        except ValueError:
            return False  # a pinned version is missing: keep what serves (the load call would say why)
        by_version = {f.name: f for f in folders}
        serving = {s.version: s.fingerprint for s in self.served.get(name, [])}
        for v in wanted:
            now = fingerprint(by_version[v])
            if self._refused.get((name, v)) == now:
                return False  # refused as it is: wait for its files to change
            if serving.get(v) != now:
                return True
        return set(serving) != set(wanted)

    def _check_removable(self, name: str) -> None:
        if name == self.settings.default_model:
            raise ServiceError(
                ErrorKind.conflict,
                f"{name} is the default model (requests that name none use it): serve another default "
                "(TSM_DEFAULT_MODEL) before unloading it",
            )
        if self.live is not None and name == self.live.default_model:
            raise ServiceError(
                ErrorKind.conflict,
                f"{name} is the default online model of live streams: set TSM_DEFAULT_ONLINE_MODEL to another first",
            )

    async def _load(self, name: str) -> list[str]:
        folders = find_versions(self.settings.store.path).get(name)
        if not folders:
            have = ", ".join(sorted(find_versions(self.settings.store.path))) or "none"
            raise ServiceError(
                ErrorKind.unknown_model,
                f"model {name!r} is not in the model store {self.settings.store.path} (found: {have})",
            )
        by_version = {f.name: f for f in folders}
        try:
            wanted = self.settings.versions_to_serve(name, list(by_version))
        except ValueError as e:
            raise ServiceError(ErrorKind.load_failed, str(e)) from None
        current = {s.version: s for s in self.served.get(name, [])}
        fresh: list[Served] = []
        for v in wanted:
            old = current.get(v)
            if old is not None and old.fingerprint == fingerprint(by_version[v]):
                continue
            try:
                fresh.append(await self._load_version(name, by_version[v], newest=v == wanted[-1]))
            except Exception as e:  # refuse the whole load: what serves keeps serving
                for s in fresh:
                    await self._close(s, unpublished=True)
                    self._set_state(s.name, s.version, *current_state(current, s.version))
                reason = e.message if isinstance(e, ServiceError) else str(e) if isinstance(e, StoreError) else repr(e)
                self._refused[name, v] = fingerprint(by_version[v])
                self._set_state(name, v, *current_state(current, v, f"refused: {reason}"))
                kept = f"; version(s) {', '.join(current)} keep serving" if current else ""
                raise ServiceError(
                    ErrorKind.load_failed, f"model {name} version {v} was refused: {reason}{kept}"
                ) from None
        replaced = {s.version for s in fresh}
        serving = sorted([current[v] for v in wanted if v in current and v not in replaced] + fresh,
                         key=lambda s: version_key(s.version))  # fmt: skip
        retired = [s for s in current.values() if s not in serving]
        newest = serving[-1]
        if newest.model.entry.config.online and newest.hub is None:  # an older version became the newest
            newest.hub = await self._make_hub(name, newest.model)
        self.served[name] = serving
        self._publish(name)
        for s in retired:
            self._retire(s, "replaced by a newer load" if s.version in replaced else "not in the version policy")
        for s in serving:
            self._refused.pop((name, s.version), None)
        log.info("model %s serves version(s) %s", name, ", ".join(s.version for s in serving))
        return [s.version for s in serving]

    async def _load_version(self, name: str, folder: Path, newest: bool) -> Served:
        """Load, warm up and start one version (not yet in the tables)."""
        version, t0 = folder.name, time.monotonic()
        self._set_state(name, version, "LOADING", "")
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
        label = self._metric_name(name, version)
        batcher = Batcher(runner, self.batcher_config, name=label, on_batch=self._batch_observer(label))
        await batcher.start()
        model = LoadedModel(entry, batcher)
        labels = (label, c.version, c.arch, str(c.num_segments), str(runner.device), runner.engine.precision,
                  runner.engine.name)  # fmt: skip
        served = Served(name, version, model, files, labels)
        try:
            if c.online and newest:  # live streams step the same weights frame by frame (service.live.hub)
                served.hub = await self._make_hub(name, model)
        except BaseException:
            await self._close(served, unpublished=True)
            raise
        log.info("model %s/%s ready on %s with engine %s in %.1f s", name, version, runner.device,
                 runner.engine.label, time.monotonic() - t0)  # fmt: skip
        return served

    async def _make_hub(self, name: str, model: LoadedModel) -> ModelHub:
        hub = ModelHub(name, model.entry, self.live_limits, self.metrics)
        s = self.settings
        await asyncio.to_thread(hub.choose_engine, s.engine, s.dtype, self.inference_threads)
        log.info("model %s: live streams on engine %s", name, hub.engine.label)
        return hub

    def _metric_name(self, name: str, version: str) -> str:
        """The ``model`` label of its metrics and batcher: the bare name when its policy serves one
        version at a time (the label stays across reloads), NAME:VERSION when it serves several."""
        return name if self.settings.serves_one_version(name) else f"{name}:{version}"

    def _batch_observer(self, label: str) -> Callable[[BatchInfo], None]:
        clips = self.metrics.batch_clips.labels(label)
        seconds = self.metrics.batch_duration.labels(label)

        def observe(info: BatchInfo) -> None:
            clips.observe(info.size)
            seconds.observe(info.inference_s)

        return observe

    def _publish(self, name: str) -> None:
        """Point the tables at ``self.served[name]`` (no await: requests see all of it or none)."""
        for key in [k for k in self.models if k == name or k.startswith(f"{name}:")]:
            del self.models[key]
        serving = self.served.get(name, [])
        for s in serving:
            self.models[f"{name}:{s.version}"] = s.model
            self.metrics.model_info.labels(*s.info_labels).set(1)
            self._set_state(name, s.version, "READY", "")
        previous = self.hubs.pop(name, None)
        hub = serving[-1].hub if serving else None
        if serving:
            self.models[name] = serving[-1].model
        if hub is not None:
            self.hubs[name] = hub
            if hub is not previous:
                hub.start()
        if previous is not None and previous is not hub:
            for s in serving:  # an older version that had the hub keeps no reference to it
                if s.hub is previous:
                    s.hub = None
            self._retire_hub(previous)

    def _retire_model(self, name: str, reason: str) -> None:
        retired = self.served.pop(name, [])
        self._publish(name)
        for s in retired:
            self._retire(s, reason)

    def _retire(self, s: Served, reason: str) -> None:
        """``s`` is out of the tables: close it once its admitted clips are done."""
        self._set_state(s.name, s.version, "UNLOADING", reason)
        self._retired.add(s)
        s.hub = None  # _publish handed it to the live service

        async def close_when_idle() -> None:
            while s.model.batcher.pending_clips:
                await asyncio.sleep(0.05)
            await self._close(s)
            if self._states.get((s.name, s.version), ("", ""))[0] == "UNLOADING":
                self._set_state(s.name, s.version, "UNAVAILABLE", reason)

        self._track(close_when_idle())

    def _retire_hub(self, hub: ModelHub) -> None:
        """Its open streams go on (on the weights they started with); new ones go to the new hub."""
        if self.live is not None:
            self.live.retiring.add(hub)

        async def stop_when_empty() -> None:
            while hub.streams:
                await asyncio.sleep(0.2)
            await hub.stop()
            if self.live is not None:
                self.live.retiring.discard(hub)

        self._track(stop_when_empty())

    def _track(self, work: Coroutine[None, None, None]) -> None:
        task = asyncio.create_task(work)
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _close(self, s: Served, unpublished: bool = False) -> None:
        """Stop its batcher and runner. A published hub is the live service's to stop (after its
        streams); an unpublished one (a refused load) never ran a stream."""
        self._retired.discard(s)
        await s.model.batcher.stop()
        s.runner.close()
        if unpublished and s.hub is not None:
            await s.hub.stop()
        with contextlib.suppress(KeyError):  # a refused load never published it
            self.metrics.model_info.remove(*s.info_labels)

    def _set_state(self, name: str, version: str, state: State, reason: str) -> None:
        previous = self._states.get((name, version))
        if previous is not None and previous[0] != state:
            self.metrics.model_state.remove(name, version, previous[0])
        self._states[name, version] = (state, reason)
        self.metrics.model_state.labels(name, version, state).set(1)


def current_state(current: dict[str, Served], version: str, reason: str = "") -> tuple[State, str]:
    """After a refused load: a version still serving stays READY; any other is UNAVAILABLE."""
    return ("READY", "") if version in current else ("UNAVAILABLE", reason or "not loaded")
