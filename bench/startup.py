"""Time to ready: from ``python -m service`` to ``/readyz`` answering 200, with a ResNet-50 entry.

    python -m bench.startup                                   # this checkout: cold and warm engine cache
    python -m bench.startup --source /tmp/old --label before  # another checkout (git worktree add)
    python -m bench.startup --results bench/RESULTS.md

The store holds one entry, a ResNet-50 TSM at 8×224² (400 classes, random weights), which is also
the default model. "cold": an empty engine cache (the first start on a machine); "warm": the same
cache again (a restart). The server runs as shipped (engine auto, CPU budget from the machine).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from harness.load import load_average  # noqa: E402
from harness.process import free_port  # noqa: E402


def time_to_ready(source: Path, store: Path, cache: Path, timeout_s: float = 600) -> tuple[float, str]:
    port = free_port()
    env = {**os.environ, "TSM_MODEL_STORE": str(store), "TSM_DEFAULT_MODEL": "resnet50", "TSM_HTTP_PORT": str(port),
           "TSM_GRPC_PORT": "0", "TSM_ENGINE_CACHE_DIR": str(cache), "TSM_LOG_FORMAT": "text"}  # fmt: skip
    start = time.monotonic()
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen([sys.executable, "-m", "service"], cwd=source, env=env, stdout=log, stderr=log)
        try:
            while time.monotonic() - start < timeout_s:
                if proc.poll() is not None:
                    log.seek(0)
                    raise RuntimeError(f"server exited:\n{log.read()[-3000:]}")
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                        elapsed = time.monotonic() - start
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
            else:
                raise RuntimeError("not ready in time")
        finally:
            proc.terminate()
            proc.wait(60)
        log.seek(0)
        engine = next((line.split("with engine ")[1].split()[0] for line in log if "with engine " in line), "torch")
    return elapsed, engine


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.startup", description=__doc__)
    p.add_argument("--source", type=Path, default=ROOT, help="checkout whose `python -m service` is timed")
    p.add_argument("--label", default="this checkout")
    p.add_argument("--results", type=Path, help="append the rows to this markdown file")
    a = p.parse_args(argv)
    from harness.entries import write_random_entry

    work = Path(tempfile.mkdtemp(prefix="tsm-startup-"))
    labels = [f"class {i}" for i in range(400)]
    write_random_entry(work / "store", name="resnet50", labels=labels, arch="resnet50", input_size=224, scale_size=256)
    cache = work / "engines"
    load = load_average()
    rows = []
    for start in ("cold", "warm"):
        seconds, engine = time_to_ready(a.source, work / "store", cache)
        rows.append(f"| {a.label} | {start} | {seconds:.1f} | {engine} | {load} |")
        print(rows[-1], flush=True)
    header = [
        f"## Time to ready (`python -m bench.startup`), {dt.date.today().isoformat()}, {os.cpu_count()} cores",
        "",
        "| server | engine cache | seconds to ready | engine | load average before |",
        "|---|---|---:|---|---|",
    ]
    if a.results:
        with a.results.open("a") as f:
            f.write("\n".join([*header, *rows]) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
