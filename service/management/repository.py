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

"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from service.core.errors import ErrorKind, ServiceError
from service.core.metrics import Metrics
from service.core.version_policy import VersionPolicy
from service.inference.answers import LoadedModel
from service.live.hub import ModelHub
from service.live.service import LiveService
from service.management.versions import Served, VersionLoader, fingerprint
from service.models.store import StoreError, find_versions, version_key

log = logging.getLogger("tsm.repository")

State = Literal["READY", "LOADING", "UNLOADING", "UNAVAILABLE"]


class VersionState(BaseModel):
    """A model version as the repository index shows it (Triton's fields)."""

    name: str
    version: str
    state: State = Field(description="READY serves; LOADING, UNLOADING (finishing its requests), UNAVAILABLE")
    reason: str = Field(default="", description="why it is not READY")


@dataclass(frozen=True)
class RepositoryConfig:
    """What the repository builds models with; the server makes it from Settings."""

    store: Path
    models: tuple[str, ...]  # the models to serve; empty: every entry of the store
    default_model: str  # never unloaded
    policy: VersionPolicy


class Repository:
    def __init__(self, config: RepositoryConfig, loader: VersionLoader, metrics: Metrics) -> None:
        self.config, self.loader, self.metrics = config, loader, metrics
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
        keys = {(n, f.name) for n, folders in find_versions(self.config.store).items() for f in folders}
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
                if name in find_versions(self.config.store) or name in self._unloaded:
                    return  # not serving: nothing to do (as Triton)
                raise ServiceError(ErrorKind.unknown_model, f"unknown model {name!r}: not in the store, not served")
            self._check_removable(name)
            self._unloaded.add(name)
            self._retire_model(name, "unloaded")

    async def poll(self) -> None:
        """Load what the store added or changed, unload what it removed (models unloaded by a call stay
        unloaded; a refused version is retried when its files change)."""
        async with self._lock:
            found = find_versions(self.config.store)
            wanted = set(self.config.models or found)
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
            await self.loader.close(s)

    # ----------------------------------------------------------------------------- internals
    def _changed(self, name: str, folders: list[Path]) -> bool:
        try:
            wanted = self.config.policy.versions_to_serve(name, [f.name for f in folders])
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
        if name == self.config.default_model:
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
        folders = find_versions(self.config.store).get(name)
        if not folders:
            have = ", ".join(sorted(find_versions(self.config.store))) or "none"
            raise ServiceError(
                ErrorKind.unknown_model,
                f"model {name!r} is not in the model store {self.config.store} (found: {have})",
            )
        by_version = {f.name: f for f in folders}
        try:
            wanted = self.config.policy.versions_to_serve(name, list(by_version))
        except ValueError as e:
            raise ServiceError(ErrorKind.load_failed, str(e)) from None
        current = {s.version: s for s in self.served.get(name, [])}
        fresh: list[Served] = []
        for v in wanted:
            old = current.get(v)
            if old is not None and old.fingerprint == fingerprint(by_version[v]):
                continue
            try:
                self._set_state(name, v, "LOADING", "")
                label = self._metric_name(name, v)
                fresh.append(await self.loader.load(name, by_version[v], label, newest=v == wanted[-1]))
            except Exception as e:  # refuse the whole load: what serves keeps serving
                for s in fresh:
                    await self.loader.close(s, unpublished=True)
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
            newest.hub = await self.loader.make_hub(name, newest.model)
        self.served[name] = serving
        self._publish(name)
        for s in retired:
            self._retire(s, "replaced by a newer load" if s.version in replaced else "not in the version policy")
        for s in serving:
            self._refused.pop((name, s.version), None)
        log.info("model %s serves version(s) %s", name, ", ".join(s.version for s in serving))
        return [s.version for s in serving]

    def _metric_name(self, name: str, version: str) -> str:
        """The ``model`` label of its metrics and batcher: the bare name when its policy serves one
        version at a time (the label stays across reloads), NAME:VERSION when it serves several."""
        return name if self.config.policy.serves_one_version(name) else f"{name}:{version}"

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
            await self.loader.close(s)
            self._retired.discard(s)
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

    def _set_state(self, name: str, version: str, state: State, reason: str) -> None:
        previous = self._states.get((name, version))
        if previous is not None and previous[0] != state:
            self.metrics.model_state.remove(name, version, previous[0])
        self._states[name, version] = (state, reason)
        self.metrics.model_state.labels(name, version, state).set(1)


def current_state(current: dict[str, Served], version: str, reason: str = "") -> tuple[State, str]:
    """After a refused load: a version still serving stays READY; any other is UNAVAILABLE."""
    return ("READY", "") if version in current else ("UNAVAILABLE", reason or "not loaded")
