"""The Python clients and the tsm-classify command against the real server in this process, over its
loopback HTTP port."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import pytest

from harness.inproc import InProcessServer
from service.client import AsyncClient, ClassifyError, Client
from tests.support import ROOT


def test_sync_client_file_and_bytes_agree(server: InProcessServer, clip: Path) -> None:
    with Client(server.url) as client:
        assert client.ready()
        assert {m["name"] for m in client.models()} == {"tiny", "tiny4"}
        from_file = client.classify(clip, top_k=2, request_id="abc-1")
        from_bytes = client.classify(clip.read_bytes(), top_k=2)
    assert from_file["request_id"] == "abc-1"
    assert from_file["predictions"] == from_bytes["predictions"]


def test_async_client_runs_concurrently(server: InProcessServer, clip: Path) -> None:
    async def run() -> list[dict]:
        async with AsyncClient(server.url) as client:
            return await asyncio.gather(*(client.classify(clip, model="tiny4", top_k=1) for _ in range(4)))

    answers = asyncio.run(run())
    assert {a["predictions"][0]["label"] for a in answers} and all(a["model"]["name"] == "tiny4" for a in answers)


def test_client_errors_carry_code_and_status(server: InProcessServer, clip: Path) -> None:
    with Client(server.url) as client, pytest.raises(ClassifyError) as info:
        client.classify(clip, model="missing")
    assert (info.value.status, info.value.code) == (404, "unknown_model")


def test_tsm_classify_command(server: InProcessServer, clip: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00" * 100)
    done = subprocess.run(
        [ROOT / ".venv/bin/tsm-classify", clip, bad, "--url", server.url, "--top-k", "2", "--json"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1, "one of the two files failed"
    answer = json.loads(done.stdout.splitlines()[0])
    assert answer["file"] == str(clip) and len(answer["predictions"]) == 2
    assert "415 unsupported_media_type" in done.stderr or "422" in done.stderr
    human = subprocess.run([ROOT / ".venv/bin/tsm-classify", clip, "--url", server.url], capture_output=True,
                           text=True, timeout=120)  # fmt: skip
    assert human.returncode == 0 and "untrained model" in human.stdout
