"""Shared fixtures: a tiny model store, real encoded videos, and the real server in this process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.entries import write_random_entry
from harness.inproc import InProcessServer
from harness.media import make_video
from harness.process import ServerProcess, self_signed_certificate
from tests.support import TINY_LABELS, UPLOAD_LIMIT


@pytest.fixture(scope="session", autouse=True)
def engine_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Converted engines go to a directory of this session, not the user's ~/.cache: servers started
    in-process and as processes read it through the environment (tests that need a cold or damaged
    cache pass their own ``engine_cache_dir``)."""
    cache_home = tmp_path_factory.mktemp("cache-home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(cache_home))
        yield cache_home / "tsm-serve" / "engines"


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two small untrained models: fast enough to serve many requests on 2 cores; tiny4 sees whole frames."""
    store = tmp_path_factory.mktemp("store")
    small = {"width_mult": 0.5, "input_size": 64, "scale_size": 72}
    write_random_entry(store, name="tiny", labels=TINY_LABELS, **small)
    write_random_entry(store, name="tiny4", labels=TINY_LABELS[:3], num_segments=4, seed=1, resize="stretch", **small)
    return store


@pytest.fixture(scope="session")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real H.264 MP4, 96x64, 24 frames."""
    return make_video(tmp_path_factory.mktemp("clips") / "clip.mp4", width=96, height=64, frames=24, pattern="corner")


@pytest.fixture(scope="session")
def tls_server(tiny_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, Path]]:
    """One server process with HTTPS and gRPC over TLS (TLS is the process's own listeners), and the
    certificate to trust: the HTTPS, gRPC TLS and HTTPS-healthcheck tests share it."""
    cert, key = self_signed_certificate(tmp_path_factory.mktemp("tls"))
    proc = ServerProcess(tiny_store, http_tls_cert_file=cert, http_tls_key_file=key, grpc_tls_cert_file=cert,
                         grpc_tls_key_file=key, max_batch_clips=4)  # fmt: skip
    yield proc, cert
    assert proc.stop() == 0, proc.output()


@pytest.fixture(scope="session")
def server(tiny_store: Path) -> Iterator[InProcessServer]:
    """The real server in this process, shared by every module that needs no settings of its own.
    Batches wait long enough (300 ms) for concurrent requests to share them; it also listens on a
    loopback HTTP port for clients that need a socket."""
    # engine auto, as a server out of the box: the shared server also checks the engine choice end to end
    with InProcessServer(tiny_store, http_port=True, max_delay_ms=300, max_upload_bytes=UPLOAD_LIMIT,
                         engine="auto", model_control="explicit") as srv:  # fmt: skip
        yield srv
