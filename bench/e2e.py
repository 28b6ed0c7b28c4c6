"""End to end over HTTP: our default configuration against a baseline, side by side.

    bench/e2e.sh                                   # against the plain FastAPI handler (~30 min on 2 cores)
    bench/e2e.sh --quick                           # a smoke run (a few minutes)
    bench/e2e.sh --baseline naive                  # against our own server with batching off
    bench/e2e.sh --results bench/RESULTS.md        # append the tables to RESULTS.md
    python -m bench.e2e --models resnet50_224 --clips 320x240x10 --concurrency 64 --baseline naive \
        --decoders pyav,nvdec --set-all device=cuda --json out.json --markdown out.md   # bench/gpu.sh's P2

Two server processes start side by side on loopback (same model store, same weights): ``default``
(our server as it ships: engine auto, the CPU budget derived from the machine, batches of up to 16
clips) and the baseline: ``plain`` (``bench/plain_server.py``: decord in the request thread, one eager
forward per request, 2 torch threads, what a team writes first) or ``naive`` (our server with
batching off, ``TSM_MAX_BATCH_CLIPS=1``). Only one is loaded at a time; rounds alternate which goes
first, so drifting background load on a shared machine hits both alike.

Each cell is a closed loop at concurrency c ∈ {1, 4, 16, 64} of multipart uploads, round-robin
over a preloaded mix of 320×240, 640×360 and 1280×720 H.264 clips (moving shapes over a panning
texture, a keyframe every 2 s, see ``bench.decode.make_clip``), for the models named by ``--models``:
``default`` (the bundled model), ``mbv2_224`` (MobileNetV2 TSM ×1.0 at 8×224²) and ``resnet50_224``
(ResNet-50 TSM at 8×224²), the last two untrained (400 classes, He-initialised with calibrated
BatchNorm: the cost of a real one). Alongside: per-stage server timings, decode-worker busy fraction
(``/metrics``), mean batch size, server and machine CPU use.

``--decoders pyav,nvdec`` runs the default server once per decoder (``TSM_DECODER``), each its own row
against the same baseline (``naive`` decodes with the first of them); the table says which decoder
really decoded (an NVDEC request falls back to PyAV where NVDEC cannot serve, and the answer says why).
``--clips`` picks the clips, ``--set-all`` sets a setting of every server (``device=cuda``).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.decode import CLIPS, cached_clip, parse_clips  # noqa: E402
from harness.load import HttpTarget, Record, Sampler, closed_loop, load_average, load_videos, metric, summarize  # noqa: E402
from harness.process import ServerProcess  # noqa: E402
from service.core.metrics import STAGES  # noqa: E402

DEFAULT_MODEL = "tsm_mobilenetv2_synthetic_motion"
MODELS = {"mbv2_224": "MobileNetV2 ×1.0, 8×224²", "resnet50_224": "ResNet-50, 8×224²"}
# Our server as it ships (the harness's test defaults undone); the baselines.
SHIPPED: dict[str, object] = {
    "engine": "auto", "cpu_budget": 0, "decode_workers": 0, "torch_threads": 0, "log_level": "INFO",
}  # fmt: skip
CONFIGS: dict[str, dict[str, object]] = {
    "default": SHIPPED,
    "naive": {**SHIPPED, "max_batch_clips": 1},
    "plain": {"module": "bench.plain_server"},
}
SIZES = CLIPS


def make_videos(directory: Path, sizes: Sequence[tuple[int, int, int]] = SIZES) -> list[Path]:
    """The clip mix, encoded once and cached (encoding 720p takes a while on 2 cores)."""
    return [cached_clip(directory, w, h, seconds) for w, h, seconds in sizes]


def make_store(directory: Path, models: Sequence[str] = ("mbv2_224", "resnet50_224")) -> Path:
    """The default entry (copied) plus, of ``models``, MobileNetV2 and ResNet-50 TSMs at 8×224² with
    random weights."""
    from harness.entries import write_random_entry
    from service.core.resources import bundled_labels, bundled_store

    store = directory / "store"
    shutil.copytree(bundled_store() / DEFAULT_MODEL, store / DEFAULT_MODEL)
    labels = bundled_labels()["kinetics400"].read_text().split("\n")
    labels = [label for label in labels if label.strip()]
    if "mbv2_224" in models:
        write_random_entry(store, name="mbv2_224", labels=labels, width_mult=1.0, input_size=224, scale_size=256)
    if "resnet50_224" in models:
        write_random_entry(store, name="resnet50_224", labels=labels, arch="resnet50", input_size=224, scale_size=256)
    return store


def server_configs(args: argparse.Namespace) -> dict[str, dict[str, object]]:
    """Name -> settings of every server a cell compares: the default (once per decoder with
    ``--decoders``), then the baseline, last."""
    every = dict(item.split("=", 1) for item in args.set_all)
    default = {**CONFIGS["default"], **every}
    base = {**CONFIGS[args.baseline], **every}
    if not args.decoders:
        return {"default": default, args.baseline: base}
    decoders = args.decoders.split(",")
    configs: dict[str, dict[str, object]] = {f"default/{d}": {**default, "decoder": d} for d in decoders}
    configs[args.baseline] = {**base, "decoder": decoders[0]} if args.baseline == "naive" else base
    return configs


def start_servers(
    servers: dict[str, ServerProcess], store: Path, model: str, configs: dict[str, dict[str, object]], parallel: bool
) -> None:
    """Fills ``servers`` (the caller stops them, started or not); ``parallel``: all at once, on a machine
    with the cores for it (a GPU host: start-up is most of a short run)."""

    def start(name: str) -> ServerProcess:
        t = time.monotonic()
        server = ServerProcess(store, default_model=model, models=f'["{model}"]', **configs[name])  # type: ignore[arg-type]
        print(f"{model}: {name} ready in {time.monotonic() - t:.1f} s", flush=True)
        return server

    if not parallel:
        for name in configs:
            servers[name] = start(name)
        return
    with ThreadPoolExecutor(len(configs)) as pool:
        futures = {name: pool.submit(start, name) for name in configs}
    errors = {name: f.exception() for name, f in futures.items()}
    servers.update({name: f.result() for name, f in futures.items() if errors[name] is None})
    for error in errors.values():
        if error is not None:
            raise error


def decoded_by(server: ServerProcess, video: Any, model: str) -> str:
    """The decoder that decoded one upload, as the answer says, and why it is not the one asked for."""
    r = httpx.post(
        f"{server.url}/classify", params={"model": model, "top_k": 1}, files={"file": (video.name, video.data)},
        headers={"Cache-Control": "no-cache"}, timeout=120,
    )  # fmt: skip
    if r.status_code != 200:
        return f"? (HTTP {r.status_code})"
    facts = r.json().get("video", {})
    why = facts.get("decoder_fallback") or facts.get("fallback") or ""
    return str(facts.get("decoder", "?")) + (f" (fallback: {why})" if why else "")


def default_model_name() -> str:
    """As the tables name it: results of an older default model keep their own row label."""
    from service.core.resources import bundled_store
    from service.models.store import ModelConfig, find_entries

    c = ModelConfig.model_validate_json((find_entries(bundled_store())[DEFAULT_MODEL] / "model.json").read_text())
    return f"default (MobileNetV2 ×{c.width_mult:g}, {c.num_segments}×{c.input_size}²)"


def started_with(server: ServerProcess) -> str:
    """The engines and CPU split the default server chose, from its log."""
    found = []
    for line in server.output().splitlines():
        try:
            message = json.loads(line).get("message", "")
        except ValueError:
            continue
        if message.startswith(("CPU budget", "model ", "decoder", "decoding")):
            found.append(message)
    return "; ".join(found)


def batch_stats(url: str, model: str) -> tuple[float, float]:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return metric(text, "tsm_batch_clips_count", model=model), metric(text, "tsm_batch_clips_sum", model=model)


@dataclass
class Tally:
    """One configuration's share of a cell, summed over its rounds."""

    records: list[Record] = field(default_factory=list)
    elapsed_s: float = 0.0
    batches: float = 0.0
    clips: float = 0.0
    rounds: list[tuple[float, dict[str, Any]]] = field(default_factory=list)  # (seconds, profile)

    def report(self) -> dict[str, Any]:
        out = summarize(self.records, self.elapsed_s)
        out["mean_batch"] = round(self.clips / self.batches, 2) if self.batches else None
        out["round_videos_per_s"] = [round(p["videos_per_s"], 2) for _, p in self.rounds]
        profile: dict[str, Any] = {}
        for key in ("decode_busy_fraction", "server_cpu_cores", "machine_cpu_util"):
            pairs = [(t, p[key]) for t, p in self.rounds if p.get(key) is not None]
            weight = sum(t for t, _ in pairs)
            profile[key] = round(sum(t * v for t, v in pairs) / weight, 2) if weight else None
        out["profile"] = profile
        return out


async def one_round(
    server: ServerProcess, videos: list[Any], model: str, concurrency: int, requests: int, seconds: float, tally: Tally
) -> None:
    target = HttpTarget(server.url, concurrency, timeout_s=600, params={"top_k": 5, "model": model})
    before = batch_stats(server.url, model)
    try:
        async with Sampler(server.url, server.proc.pid) as sampler:
            records, elapsed = await closed_loop(target, videos, concurrency, requests, seconds)
    finally:
        await target.close()
    after = batch_stats(server.url, model)
    tally.records += records
    tally.elapsed_s += elapsed
    tally.batches += after[0] - before[0]
    tally.clips += after[1] - before[1]
    ok = sum(r.ok for r in records)
    tally.rounds.append((elapsed, {**sampler.result, "videos_per_s": ok / elapsed if elapsed else 0.0}))


async def warm_up(server: ServerProcess, videos: list[Any], model: str) -> None:
    """Every clip once per decode worker: first decodes and first forward passes are slow."""
    target = HttpTarget(server.url, 2, timeout_s=600, params={"model": model})
    try:
        await closed_loop(target, videos, 2, 2 * len(videos), 300)
    finally:
        await target.close()


def machine() -> str:
    model = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")), platform.machine(),
    )  # fmt: skip
    return f"{os.cpu_count()}-core CPU ({model}), {platform.system()}"


def fmt_s(ms: float) -> str:
    return f"{ms / 1000:.2f}"


BASELINE_NOTES = {
    "naive": "naive = our server with `TSM_MAX_BATCH_CLIPS=1` (one request = one forward pass), otherwise as shipped"
    " (with `--decoders`: the first decoder).",
    "plain": "plain = `bench/plain_server.py`: a FastAPI handler with decord in the request thread (full-resolution "
    "frames, then resized), one eager forward per request, 2 torch threads; same weights and sampling.",
}


def tables(results: list[dict[str, Any]], head: dict[str, Any]) -> str:
    base = head["baseline"]
    variants = head.get("variants", ["default"])
    names = [*variants, base]
    decoded = "; ".join(f"{k}: {v}" for k, v in head.get("decoded_by", {}).items())
    decoded_note = f"Decoded by (one upload per server, after warm-up): {decoded}. " if decoded else ""
    lines = [
        f"## End to end (`bench/e2e.sh{head['flags']}`), {head['date']}, {head['machine']}",
        "",
        f"Load average {head['load_before']} before, {head['load_after']} after (other jobs share this machine). "
        f"HTTP multipart, closed loop, {head['requests_note']}; mix of {', '.join(head['videos'])} round-robin. "
        f"default = tsm-serve as shipped ({'; '.join(head['default_start'])}). {BASELINE_NOTES[base]} "
        f"{decoded_note}Latency in seconds.",
        "",
        f"| model | c | default videos/s | {base} videos/s | ratio | default p50 / p99 | {base} p50 / p99 "
        "| p99 ratio | mean batch default |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        n = r[base]
        for variant in variants:
            d = r[variant]
            label = r["label"] if variant == "default" else f"{r['label']} ({variant})"
            ratio = d["videos_per_s"] / n["videos_per_s"] if n["videos_per_s"] else float("nan")
            p99 = d["latency_ms"]["p99"] / n["latency_ms"]["p99"] if n["latency_ms"]["p99"] else float("nan")
            lines.append(
                f"| {label} | {r['c']} | {d['videos_per_s']:.2f} | {n['videos_per_s']:.2f} | {ratio:.2f}x "
                f"| {fmt_s(d['latency_ms']['p50'])} / {fmt_s(d['latency_ms']['p99'])} "
                f"| {fmt_s(n['latency_ms']['p50'])} / {fmt_s(n['latency_ms']['p99'])} | {p99:.2f} | {d['mean_batch']} |"
            )
    lines += [
        "",
        "Profile of the same cells: mean server-reported stage times (ms), decode workers busy (share of "
        "samples of `tsm_decode_workers`), CPU cores used by the server process tree (server + decode "
        "workers), whole-machine CPU utilisation (includes other jobs), non-200 answers.",
        "",
        "| model | c | config | upload | decode | queue | inference | total | decode busy | server CPU cores "
        "| machine CPU | videos/s per round | errors |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in results:
        for name in names:
            x = r[name]
            st = x["stages_ms"]
            prof = x["profile"]
            errors = {k: v for k, v in x["status_counts"].items() if k != "200"} or "-"
            lines.append(
                f"| {r['label']} | {r['c']} | {name} | "
                + " | ".join(f"{st.get(s, {}).get('mean', float('nan')):.0f}" for s in STAGES)
                + f" | {prof['decode_busy_fraction']} | {prof['server_cpu_cores']} | {prof['machine_cpu_util']} "
                f"| {' / '.join(str(v) for v in x['round_videos_per_s'])} | {errors} |"
            )
    return "\n".join(lines) + "\n"


async def cell(
    servers: dict[str, ServerProcess], names: list[str], videos: list[Any], model: str, label: str, i: int, c: int,
    args: argparse.Namespace,
) -> dict[str, Any]:  # fmt: skip
    requests = max(args.min_requests, args.per_client * c)
    row: dict[str, Any] = {"model": model, "label": label, "c": c, "requests": requests}
    tallies = {name: Tally() for name in names}
    t = time.monotonic()
    # Short alternating rounds (AB, BA, AB, ...): background load on a shared machine drifts over
    # minutes, and this spreads it over both configurations alike.
    for r in range(args.rounds):
        for name in names if (i + r) % 2 == 0 else names[::-1]:
            per_round = max(c, requests // args.rounds)
            await one_round(servers[name], videos, model, c, per_round, args.cell_seconds, tallies[name])
    for name in names:
        row[name] = tallies[name].report()
    print(
        f"{model} c={c}: "
        + ", ".join(
            f"{n} {row[n]['videos_per_s']:.2f} videos/s {row[n]['round_videos_per_s']} "
            f"p99 {row[n]['latency_ms']['p99']:.0f} ms {row[n]['status_counts']}"
            for n in names
        )
        + f" ({time.monotonic() - t:.0f} s, load {load_average()})",
        flush=True,
    )
    return row


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="tsm-e2e-"))
    head: dict[str, Any] = {
        "date": dt.date.today().isoformat(),
        "machine": machine(),
        "load_before": load_average(),
        "flags": (" --quick" if args.quick else "") + getattr(args, "flags_note", ""),
    }
    sizes = parse_clips(args.clips) if args.clips else SIZES
    paths = make_videos(args.video_dir, sizes)
    videos = load_videos(paths)
    head["videos"] = [f"{w}×{h} {seconds} s" for w, h, seconds in sizes]
    store = make_store(work, args.models.split(","))
    labels = {DEFAULT_MODEL: default_model_name(), **MODELS}
    models = [(DEFAULT_MODEL if m == "default" else m, labels[DEFAULT_MODEL if m == "default" else m])
              for m in args.models.split(",")]  # fmt: skip
    configs = server_configs(args)
    names = list(configs)
    head["baseline"] = args.baseline
    head["variants"] = names[:-1]
    head["decoded_by"] = {}
    head["load_after"] = "(still running)"
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    head["requests_note"] = (
        f"max({args.min_requests}, {args.per_client}×c) requests per cell and configuration in {args.rounds} "
        f"alternating rounds (no new request after {args.cell_seconds:g} s in a round), after a warm-up of every "
        "clip twice; videos/s = all answers / all round time"
    )
    results: list[dict[str, Any]] = []
    head["default_start"] = []
    try:
        for model, label in models:
            # Each model on its own pair of servers, as it would be deployed: the CPU split follows it.
            servers: dict[str, ServerProcess] = {}
            try:
                start_servers(servers, store, model, configs, args.parallel_start)
                head["default_start"].append(started_with(servers[names[0]]))
                for name in names:
                    await warm_up(servers[name], videos, model)
                    if args.decoders:
                        head["decoded_by"][name] = decoded_by(servers[name], videos[0], model)
                        print(f"{model}: {name} decoded by {head['decoded_by'][name]}", flush=True)
                for i, c in enumerate(concurrencies):
                    results.append(await cell(servers, names, videos, model, label, i, c, args))
                    save(args, {"head": head, "results": results, "table": tables(results, head)})  # kept if cut short
            finally:
                for name, server in servers.items():
                    code = server.stop()
                    if code not in (0, -15):  # uvicorn.run (the plain server) exits by the signal
                        print(f"{name} server exited with {code}:\n{server.output()[-3000:]}", file=sys.stderr)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    head["load_after"] = load_average()
    return {"head": head, "results": results, "table": tables(results, head)}


def save(args: argparse.Namespace, out: dict[str, Any]) -> None:
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    if args.markdown:
        args.markdown.write_text(out["table"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/e2e.sh", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="c=1,4,16, fewer requests: a smoke run")
    p.add_argument("--concurrency", help="comma-separated client counts (default 1,4,16,64; --quick 1,4,16)")
    p.add_argument("--per-client", type=int, default=4, help="requests per cell: this many per client...")
    p.add_argument("--min-requests", type=int, default=40, help="...but at least this many")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds per cell and configuration")
    p.add_argument("--cell-seconds", type=float, default=150.0, help="no new request in a cell after this long")
    p.add_argument("--baseline", choices=["plain", "naive"], default="plain", help="what default is compared with")
    p.add_argument("--models", default="mbv2_224,resnet50_224", help="comma-separated: default, mbv2_224, resnet50_224")
    p.add_argument("--clips", help="comma-separated WxHxS clips (default: the mix, 320x240x10,640x360x10,1280x720x5)")
    p.add_argument("--decoders", help="comma-separated TSM_DECODER values: the default server once per decoder")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="a setting of the default server (e.g. torch_threads=1); repeatable")  # fmt: skip
    p.add_argument("--set-all", action="append", default=[], metavar="NAME=VALUE",
                   help="a setting of every server, baseline too (e.g. device=cuda); repeatable")  # fmt: skip
    p.add_argument("--parallel-start", action="store_true", help="start the servers at once (a machine with cores)")
    p.add_argument("--video-dir", type=Path, default=Path(tempfile.gettempdir()) / "tsm-bench-videos")
    p.add_argument("--json", type=Path, help="write every number here (rewritten after each cell)")
    p.add_argument("--markdown", type=Path, help="write the tables here (rewritten after each cell)")
    p.add_argument("--results", type=Path, help="append the tables to this markdown file (bench/RESULTS.md)")
    args = p.parse_args(argv)
    if args.quick:
        args.min_requests, args.per_client, args.cell_seconds = 8, 1, 30.0
    args.concurrency = args.concurrency or ("1,4,16" if args.quick else "1,4,16,64")
    overrides = dict(item.split("=", 1) for item in args.set)
    CONFIGS["default"] = {**CONFIGS["default"], **overrides}
    shown = [f"--set {k}={v}" for k, v in overrides.items()] + [f"--set-all {x}" for x in args.set_all]
    shown += [f"--{k} {getattr(args, k)}" for k in ("clips", "decoders") if getattr(args, k)]
    if shown:
        args.flags_note = " " + " ".join(shown)
    out = asyncio.run(main_async(args))
    print(out["table"])
    save(args, out)
    if args.results:
        with args.results.open("a") as f:
            f.write("\n" + out["table"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
