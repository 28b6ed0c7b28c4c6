"""Fair share and per-client limits through the real server: two API keys, a heavy client's backlog
and a light client's call; limits answered 429 with Retry-After and the setting's name; per-client
metrics by key name, never by key."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from harness.inproc import InProcessServer
from harness.load import metric
from harness.media import make_video
from service.core.fair import key_name

HEAVY, LIGHT = "heavy-s3cret", "light-s3cret"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", "Content-Type": "video/mp4"}


def test_a_light_clients_call_is_not_queued_behind_a_heavy_clients_backlog(tiny_store: Path, tmp_path: Path) -> None:
    # 640×360, 4 s: long enough to decode that a backlog of twelve is still queued when the light call comes
    video = make_video(tmp_path / "heavy.mp4", width=640, height=360, frames=100, pattern="corner").read_bytes()
    with InProcessServer(tiny_store, api_keys=[HEAVY, LIGHT], max_batch_clips=2, max_delay_ms=20) as srv:

        async def scenario() -> tuple[list[float], float]:
            async with srv.async_client() as client:

                async def call(key: str) -> float:
                    r = await client.post("/classify", content=video, headers=bearer(key))
                    assert r.status_code == 200, r.text
                    return time.monotonic()

                heavy = [asyncio.create_task(call(HEAVY)) for _ in range(12)]
                await asyncio.sleep(0.05)  # the backlog is queued for decoding and batching
                light = await call(LIGHT)
                return list(await asyncio.gather(*heavy)), light

        heavy_done, light_done = srv.run(scenario())
        text = srv.metrics()
    # First come, first served would answer the light call after every heavy one.
    assert sum(t > light_done for t in heavy_done) >= 4, sorted(t - light_done for t in heavy_done)
    assert metric(text, "tsm_client_clips_total", client=key_name(LIGHT), priority="interactive") == 1
    assert metric(text, "tsm_client_clips_total", client=key_name(HEAVY), priority="interactive") == 12
    assert HEAVY not in text and LIGHT not in text, "metrics name clients, never their keys"


def test_per_client_limits_are_429_with_retry_after_and_the_setting(tiny_store: Path, clip: Path) -> None:
    video = clip.read_bytes()
    with InProcessServer(tiny_store, api_keys=[HEAVY, LIGHT], client_max_clips=2, client_max_rps=0.2) as srv:
        over = srv.http.post("/classify", params={"clips": 3}, content=video, headers=bearer(HEAVY))
        assert over.status_code == 429 and over.json()["error"]["code"] == "client_limit", over.text
        assert "TSM_CLIENT_MAX_CLIPS" in over.json()["error"]["message"] and over.headers["retry-after"]
        assert srv.http.post("/classify", content=video, headers=bearer(HEAVY)).status_code == 200
        fast = srv.http.post("/classify", content=video, headers=bearer(HEAVY))
        assert fast.status_code == 429 and "TSM_CLIENT_MAX_RPS" in fast.json()["error"]["message"]
        assert int(fast.headers["retry-after"]) >= 1
        assert srv.http.post("/classify", content=video, headers=bearer(LIGHT)).status_code == 200, "its own share"
        text = srv.metrics()
    assert metric(text, "tsm_client_rejected_total", client=key_name(HEAVY), reason="client_limit") == 2
    assert metric(text, "tsm_client_rejected_total", client=key_name(LIGHT), reason="client_limit") == 0
