"""Every Prometheus metric of the server, in one place. ``tsm_`` prefix, base units (seconds, bytes)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from service.core.statistics import Statistics

# Latency buckets from 5 ms (a cached small batch) to 2 min (a long decode under load).
_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_CLIPS = (1, 2, 4, 8, 16, 32, 64, 128)
# A live frame's answer: from 2 ms (one small frame) to 2 s (far behind a frame interval).
_FRAME_SECONDS = (0.002, 0.005, 0.01, 0.02, 0.033, 0.05, 0.067, 0.1, 0.133, 0.2, 0.5, 1.0, 2.0)
MAX_CLIENT_LABELS = 100
# A probability: confidence shows in the top decile, so finer there.
_SCORES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
# The stages of a request, in order: the keys of an answer's timings and of the duration histogram.
STAGES = ("upload", "decode", "queue", "inference", "total")


class Metrics:
    """One registry per server, so tests can run several servers in one process."""

    def __init__(self) -> None:
        self._client_names: set[str] = set()
        self.statistics = Statistics()  # the v2 statistics extension's numbers, beside Prometheus's
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "tsm_requests", "Classification requests by outcome code.", ["protocol", "model", "code"], registry=r
        )
        self.request_duration = Histogram(
            "tsm_request_duration_seconds", "Time spent per request stage.", ["protocol", "stage"],
            buckets=_SECONDS, registry=r,
        )  # fmt: skip
        self.batch_clips = Histogram(
            "tsm_batch_clips", "Clips per forward pass.", ["model"], buckets=_CLIPS, registry=r
        )
        self.batch_duration = Histogram(
            "tsm_batch_duration_seconds", "Forward pass time per batch.", ["model"], buckets=_SECONDS, registry=r
        )
        self.queue_clips = Gauge(
            "tsm_queue_clips", "Admitted clips not yet scored (decoding, queued or running).", ["model"], registry=r
        )
        self.rejected = Counter("tsm_rejected", "Requests refused before work started.", ["reason"], registry=r)
        self.dropped_clips = Counter(
            "tsm_dropped_clips",
            "Admitted clips that never reached the model: expired, cancelled, draining or failed.",
            ["model", "reason"], registry=r,
        )  # fmt: skip
        self.decode_failures = Counter(
            "tsm_decode_failures", "Uploads that could not be decoded, by error code.", ["reason"], registry=r
        )
        # The HTTP port's connections (service.api.http_guard): floods show here.
        self.http_connections = Gauge("tsm_http_connections", "Open HTTP connections.", registry=r)
        self.http_connections_closed = Counter(
            "tsm_http_connections_closed", "HTTP connections closed by the server's guard, by reason (evicted: the "
            "oldest without a request, at the connection cap).", ["reason"], registry=r,
        )  # fmt: skip
        # Fair share (service.core.fair): clients by name (key-<8 hex> for an API key), never a key.
        self.client_clips_in_flight = Gauge(
            "tsm_client_clips_in_flight", "Admitted clips not yet finished, by client (all models).", ["client"],
            registry=r,
        )  # fmt: skip
        self.client_clips = Counter(
            "tsm_client_clips", "Clips answered, by client and priority class.", ["client", "priority"], registry=r
        )
        self.client_rejected = Counter(
            "tsm_client_rejected", "Requests refused as overloaded or over the client's own limits, by client.",
            ["client", "reason"], registry=r,
        )  # fmt: skip
        # What the models answer: drift (the mix of top-1 labels) and confidence (the top-1 score).
        self.predictions = Counter(
            "tsm_predictions", "Answered requests by model and top-1 label.", ["model", "label"], registry=r
        )
        self.top1_score = Histogram(
            "tsm_prediction_top1_score", "The top-1 class's probability of each answer.", ["model"],
            buckets=_SCORES, registry=r,
        )  # fmt: skip
        self.decoder_fallbacks = Counter(
            "tsm_decoder_fallbacks",
            "Uploads the decoder asked for could not take (NVDEC: codec, GPU or error; decord: an unreadable "
            "index), decoded by the one used instead; the answer's video.decoder_fallback says why.",
            ["requested", "used"],
            registry=r,
        )
        self.decode_workers = Gauge(
            "tsm_decode_workers", "Decode workers (workers, busy, idle) and queued jobs.", ["state"], registry=r
        )
        self.decode_jobs = Counter("tsm_decode_jobs", "Decode jobs run, decoded or failed.", registry=r)
        self.decode_worker_restarts = Counter(
            "tsm_decode_worker_restarts", "Decode workers replaced after a crash, hang or memory overrun.", registry=r
        )
        self.in_flight = Gauge("tsm_requests_in_flight", "Requests being handled now.", registry=r)
        self.model_info = Gauge(
            "tsm_model_info", "Loaded models (value 1) and the engine serving each.",
            ["name", "version", "arch", "segments", "device", "dtype", "engine"], registry=r,
        )  # fmt: skip
        self.model_state = Gauge(
            "tsm_model_state", "Each model version's state (value 1): READY, LOADING, UNLOADING or UNAVAILABLE.",
            ["name", "version", "state"], registry=r,
        )  # fmt: skip
        self.ready = Gauge("tsm_ready", "1 when models are warm and the server is not draining.", registry=r)
        self.live_streams = Gauge("tsm_live_streams", "Open live streams.", ["model"], registry=r)
        self.live_frames = Counter(
            "tsm_live_frames", "Live frames scored (processed) or replaced by a newer one before their turn (dropped).",
            ["model", "outcome"], registry=r,
        )  # fmt: skip
        self.live_frame_latency = Histogram(
            "tsm_live_frame_latency_seconds", "From a live frame's arrival to its answer.", ["model"],
            buckets=_FRAME_SECONDS, registry=r,
        )  # fmt: skip
        self.live_batch_streams = Histogram(
            "tsm_live_batch_streams", "Live streams stepped in one forward pass.", ["model"], buckets=_CLIPS, registry=r
        )
        self.cache_requests = Counter(
            "tsm_cache_requests", "Result cache lookups: hit, miss, or bypass (Cache-Control: no-cache).", ["result"],
            registry=r,
        )  # fmt: skip
        self.cache_entries = Gauge("tsm_cache_entries", "Answers in the in-process result cache.", registry=r)
        self.cache_bytes = Gauge("tsm_cache_bytes", "Bytes of the answers in the in-process result cache.", registry=r)
        self.cache_backend_up = Gauge(
            "tsm_cache_backend_up", "1 while the shared cache answers, 0 while the server serves without it.",
            ["backend"], registry=r,
        )  # fmt: skip
        self.cache_backend_errors = Counter(
            "tsm_cache_backend_errors", "Errors and timeouts of the shared cache.", ["backend"], registry=r
        )
        self.device_memory = Gauge("tsm_device_memory_bytes", "CUDA memory of this process.", ["kind"], registry=r)

    def client_label(self, name: str) -> str:
        """A client's label value: the first 100 names seen, then "other" (a gateway's client header
        could otherwise create a series per caller)."""
        if name in self._client_names or len(self._client_names) < MAX_CLIENT_LABELS:
            self._client_names.add(name)
            return name
        return "other"
