"""Settings: built once at start-up from ``TSM_*`` environment variables (and CLI flags), passed down."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, PrivateAttr, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.core.resources import StoreChoice, choose_store
from service.core.version_policy import VersionPolicy

MiB = 1024 * 1024


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TSM_", env_file=None, extra="ignore")

    # --- network
    host: str = Field(default="127.0.0.1", description="address both servers bind; 0.0.0.0 in containers")
    http_port: int = Field(default=8000, ge=0, le=65535)
    grpc_port: int = Field(default=50051, ge=0, le=65535, description="0 picks a free port")
    grpc_max_message_bytes: int | None = Field(
        default=None, ge=1024, description="largest gRPC message; default: max_upload_bytes + 1 MiB"
    )
    grpc_tls_cert_file: Path | None = Field(default=None, description="PEM certificate: serve gRPC over TLS")
    grpc_tls_key_file: Path | None = Field(default=None, description="PEM private key for grpc_tls_cert_file")

    http_tls_cert_file: Path | None = Field(default=None, description="PEM certificate: serve HTTPS")
    http_tls_key_file: Path | None = Field(default=None, description="PEM private key for http_tls_cert_file")

    # --- auth
    api_keys: list[SecretStr] = Field(default_factory=list, description="accepted API keys (JSON list); empty: no auth")
    admin_api_keys: list[SecretStr] = Field(
        default_factory=list,
        description="keys that may also load and unload models (/v2/repository); with api_keys set and none "
        "of these, model management is off",
    )
    auth_public_probes: bool = Field(
        default=True, description="health, readiness, metrics, gRPC health and reflection need no key"
    )

    # --- models
    model_store: Path | None = Field(
        default=None,
        description="folder of <name>/<version>/model.json; unset: ./model_store if it exists, else the models "
        "bundled with the package",
    )
    default_model: str = Field(default="tsm_mobilenetv2_synthetic_motion", description="model used when none is named")
    models: list[str] = Field(default_factory=list, description="models to load; empty: every store entry")
    version_policy: list[str] = Field(
        default_factory=list,
        description="versions served per model: NAME=latest:N or NAME=specific:V1,V2 (*=... for every model); "
        "default latest:1. Requests pin one as NAME:VERSION",
    )
    model_control: Literal["none", "explicit", "poll"] = Field(
        "none",
        description="Triton's words. none: the store is read at start, /v2/repository load and unload are refused "
        "(unless admin_api_keys are set); explicit: they are allowed; poll: the store is also checked every "
        "model_poll_s (default 30 s) and what changed is loaded or unloaded",
    )
    model_poll_s: float = Field(
        default=0.0,
        ge=0,
        description="check the store this often and load or unload what changed; 0: never "
        "(30 s with model_control=poll)",
    )
    default_online_model: str = Field(
        default="", description="online model of live streams that name none; empty: the first online model loaded"
    )

    # --- inference
    device: str = Field(default="auto", description="auto, cpu, cuda or cuda:N")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto", description="auto: float16 on CUDA; bfloat16 (OpenVINO) on CPUs that run it natively, else float32"
    )
    torch_threads: int = Field(default=0, ge=0, description="inference threads; 0: its share of cpu_budget")
    channels_last: bool = True
    engine: Literal["auto", "torch", "compile", "openvino"] = Field(
        "auto",
        description="auto: the fastest engine that passes verification here (CPU: openvino or torch; CUDA: torch); "
        "compile: torch.compile (slow start)",
    )
    engine_cache_dir: Path | None = Field(
        default=None, description="converted engines, reused across restarts; default ~/.cache/tsm-serve/engines"
    )
    cuda_graphs: bool = Field(default=False, description="capture CUDA graphs per batch-size bucket (CUDA only)")

    # --- batching and admission
    max_batch_clips: int = Field(default=16, ge=1, description="a batch closes at this many clips...")
    max_delay_ms: float = Field(default=10.0, ge=0, description="...or this long after its first clip arrived")
    max_queue_clips: int = Field(default=256, ge=1, description="admitted but unfinished clips; beyond: 429")
    request_timeout_s: float = Field(default=60.0, gt=0, description="deadline of a request that sets none")

    # --- connections (service/api/http_guard.py, service/core/limits.py): floods and slow clients
    header_timeout_s: float = Field(
        default=10.0,
        gt=0,
        le=300,
        description="a request's line and headers must arrive within this (408 beyond); "
        "also the gRPC handshake timeout",
    )
    max_header_bytes: int = Field(
        default=64 * 1024, ge=4096, description="request line and headers together, at most (431 beyond)"
    )
    grpc_unary_uploads: int = Field(
        default=1,
        ge=1,
        description="large unary gRPC uploads (Classify, ModelInfer over 8 MiB: a whole video in one "
        "message, held in memory) received or served at once; others wait, unread",
    )
    grpc_unary_wait_s: float = Field(
        default=5.0,
        ge=0,
        description="how long a unary upload waits for its turn before RESOURCE_EXHAUSTED (stream with ClassifyStream)",
    )
    max_connections: int = Field(
        default=0,
        ge=0,
        description="open connections per port; beyond, the oldest without a request is closed "
        "(HTTP) or new ones refused (gRPC); 0: 45% each of the open-file limit left after 512",
    )

    # --- clients (service/core/fair.py): fair share, weights, limits
    client_header: str = Field(
        default="",
        description="a header (and gRPC metadata key) a trusted gateway sets to name the client, when "
        "no API keys are configured; empty: one client",
    )
    client_weights: dict[str, float] = Field(
        default_factory=dict,
        description="a client's share of decoding and batches by its name (key-<8 hex> for "
        "an API key; see README), JSON; 1 when absent",
    )
    client_max_clips: int = Field(
        default=0, ge=0, description="clips one client may have admitted per model at once (429 beyond); 0: no limit"
    )
    client_max_rps: float = Field(
        default=0.0, ge=0, description="requests per second one client may start (429 beyond); 0: no limit"
    )

    # --- the CPU budget: inference threads + decode workers × decoder threads <= cpu_budget
    cpu_budget: int = Field(default=0, ge=0, description="cores this server may use; 0: the cores it may run on "
                            "(CPU affinity and cgroup quota)")  # fmt: skip

    # --- decoding
    decode_workers: int = Field(default=0, ge=0, description="decode processes; 0: their share of cpu_budget")
    decode_timeout_s: float = Field(default=20.0, gt=0, description="a decode running longer is killed")
    decoder: Literal["auto", "pyav", "nvdec", "decord"] = Field(
        "auto",
        description="auto: NVDEC when the model runs on CUDA, else PyAV; pyav: FFmpeg on the CPU; nvdec: FFmpeg "
        "on the GPU's decoder; decord: mmaction2's frames (service/video/decoders.py)",
    )
    decode_memory_mb: int = Field(default=2048, ge=768, description="memory cap (RLIMIT_DATA) of each decode worker")
    decode_threads: int = Field(default=1, ge=1, description="decoder threads per worker")
    decode_max_jobs: int = Field(default=200, ge=1, description="a worker is replaced after this many decodes")
    max_upload_bytes: int = Field(default=200 * MiB, ge=1)
    max_frame_pixels: int = Field(default=4096 * 2304, ge=1, description="width*height of a frame, at most")
    max_frame_side: int = Field(default=8192, ge=16)
    max_duration_s: float = Field(default=3600.0, gt=0)
    max_clips: int = Field(default=10, ge=1, description="temporal views a request may ask for")
    max_windows: int = Field(default=256, ge=1, description="windows a timeline request may have")
    spool_dir: Path | None = Field(default=None, description="where uploads are spooled; default /dev/shm or tmp")

    # --- result cache
    cache_entries: int = Field(default=1024, ge=0, description="answers kept in process; 0: no result cache")
    cache_max_bytes: int = Field(default=64 * MiB, ge=0, description="bytes of answers kept in process")
    cache_url: str = Field(default="", description="redis://host:port/db: a cache shared by replicas; empty: none")
    cache_ttl_s: int = Field(default=86400, ge=1, description="how long the shared cache keeps an answer")

    # --- live streams (online models)
    max_live_streams: int = Field(default=64, ge=1, description="open live streams, all models; beyond: 429")
    live_max_batch_streams: int = Field(default=32, ge=1, description="streams stepped in one forward pass")
    live_idle_timeout_s: float = Field(default=10.0, gt=0, description="a stream with no frame this long is closed")
    live_max_duration_s: float = Field(default=3600.0, gt=0, description="the longest a live stream may last")
    live_max_frame_bytes: int = Field(default=4 * MiB, ge=1024, description="largest frame (encoded or rgb24)")

    # --- lifecycle and logging
    drain_timeout_s: float = Field(default=30.0, ge=0, description="in-flight work may finish this long on SIGTERM")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "text"] = Field(default="json", description="json: one object per line")
    otel_endpoint: str = Field(
        default="",
        description="OTLP/gRPC endpoint traces are exported to (http://host:4317: plaintext); empty: "
        "OTEL_EXPORTER_OTLP_ENDPOINT if set, else no traces",
    )
    prediction_log: str = Field(
        default="", description="stdout or a file: one JSON line per answered request (never the video); empty: off"
    )

    _store: StoreChoice = PrivateAttr()
    _policy: VersionPolicy = PrivateAttr()

    @model_validator(mode="after")
    def _derive(self) -> Settings:
        """Settings that are read as values: parsed (or chosen) once, when the settings are built."""
        self._store = choose_store(self.model_store)
        self._policy = VersionPolicy.parse(self.version_policy)
        return self

    @property
    def store(self) -> StoreChoice:
        """The model store in use and how it was chosen (rules: service.core.resources)."""
        return self._store

    @property
    def policy(self) -> VersionPolicy:
        return self._policy

    @property
    def control_api(self) -> bool:
        """Whether /v2/repository may load and unload: asked for, or admin keys were configured for it."""
        return self.model_control == "explicit" or any(k.get_secret_value() for k in self.admin_api_keys)

    @property
    def poll_every_s(self) -> float:
        """How often the store is polled (0: never)."""
        return self.model_poll_s or (DEFAULT_POLL_S if self.model_control == "poll" else 0.0)

    def describe_model_control(self) -> str:
        """The start-up log line's words for who may change the models served."""
        polling = f"; the store is polled every {self.poll_every_s:g} s" if self.poll_every_s else ""
        if not self.control_api:
            return (f"model control {self.model_control}: /v2/repository load and unload are refused (set "
                    f"TSM_MODEL_CONTROL=explicit or TSM_ADMIN_API_KEYS to allow them){polling}")  # fmt: skip
        who = "admin keys only" if any(k.get_secret_value() for k in self.admin_api_keys) else (
            "anyone who reaches the HTTP port (no admin keys: set TSM_ADMIN_API_KEYS)")  # fmt: skip
        return f"model control {self.model_control}: /v2/repository load and unload allowed to {who}{polling}"

    @model_validator(mode="after")
    def _tls_pairs(self) -> Settings:
        for proto in ("http", "grpc"):
            cert, key = getattr(self, f"{proto}_tls_cert_file"), getattr(self, f"{proto}_tls_key_file")
            if (cert is None) != (key is None):
                raise ValueError(f"set both {proto}_tls_cert_file and {proto}_tls_key_file, or neither")
        return self

    def cpu_split(self, accelerator: bool, seconds_per_clip: float = 0.0, nvdec: bool = False) -> CpuSplit:
        """Divide the CPU budget between inference and decoding; refuse settings that oversubscribe.

        Neither side may use more threads than the budget has cores. Without an accelerator the two
        sides take turns on the same cores (a clip is decoded, then inferred): inference gets every core,
        and decode workers are as many as keep up with the model, ``seconds_per_clip`` (its warm-up time
        per clip) against ~0.2 s of CPU per video, up to the budget. With one, the server process keeps
        :func:`main_cores` for itself (HTTP and gRPC, batching, feeding the device: one inference
        thread) and decode workers get the rest; with ``nvdec`` twice as many, since an NVDEC worker
        spends most of a job waiting on the GPU's decoder. bench/RESULTS.md has the splits we measured."""
        budget = self.cpu_budget or available_cores()
        asked = {
            "TSM_TORCH_THREADS": self.torch_threads,
            "TSM_DECODE_WORKERS × TSM_DECODE_THREADS": self.decode_workers * self.decode_threads,
        }
        for name, used in asked.items():
            if used > budget:
                raise ValueError(
                    f"CPU budget exceeded: {name} = {used} threads on {budget} core(s) (TSM_CPU_BUDGET "
                    f"{'as set' if self.cpu_budget else 'from this machine'}). Threads beyond the cores slow "
                    "every request down: lower it, or leave it at 0 to be derived"
                )
        inference = self.torch_threads or (1 if accelerator else budget)
        most = max(1, budget // self.decode_threads)
        if self.decode_workers:
            workers = self.decode_workers
        elif accelerator:
            workers = max(1, (budget - main_cores(budget)) // self.decode_threads) * (2 if nvdec else 1)
        elif seconds_per_clip > 0:
            workers = min(most, max(1, math.ceil(DECODE_S_PER_VIDEO / (seconds_per_clip * self.decode_threads))))
        else:
            workers = most
        return CpuSplit(budget, inference, workers, self.decode_threads, main_cores(budget) if accelerator else 0)


def main_cores(budget: int) -> int:
    """Cores the server process keeps on a GPU host: one for the event loop (HTTP, gRPC, multipart,
    batching) and, from 8 cores up, one more for the thread that feeds the device."""
    return 1 if budget < 8 else 2


DEFAULT_POLL_S = 30.0  # model_control=poll without model_poll_s

# CPU seconds to decode a typical upload's sampled frames (bench/RESULTS.md: 0.05 s at 320×240, 0.12 s
# at 640×360, 0.27 s at 1280×720): how many decode workers keep one inference thread pool busy.
DECODE_S_PER_VIDEO = 0.2


@dataclass(frozen=True)
class CpuSplit:
    budget: int
    inference_threads: int
    decode_workers: int
    decode_threads: int
    main_cores: int = 0  # kept by the server process on a GPU host (0: it shares the cores, CPU inference)

    def describe(self) -> str:
        kept = f"server process {self.main_cores} core(s), " if self.main_cores else ""
        return (
            f"CPU budget {self.budget} core(s): {kept}inference {self.inference_threads} thread(s), decoding "
            f"{self.decode_workers} worker(s) × {self.decode_threads} thread(s)"
        )


def available_cores() -> int:
    """Cores this process may use: its CPU affinity, capped by a cgroup v2 CPU quota (containers)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return cores
    if quota == "max":
        return cores
    return max(1, min(cores, math.ceil(int(quota) / int(period))))


def default(name: str) -> Any:
    """The default of setting ``name``: the narrow configs take theirs from here, never as a copy."""
    return Settings.model_fields[name].get_default(call_default_factory=True)
