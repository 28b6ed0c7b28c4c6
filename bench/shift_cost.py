"""What the temporal shift costs (issue #25): parameters, counted FLOPs, latency and bytes moved.

Parameters and counted FLOPs of TSN and TSM, forward latency by shifted proportion and placement,
and the bytes the shift moves against the convolutions'.

    .venv/bin/python -m bench.shift_cost            # 224², 8 segments, batches 1 and 8, 7 rounds (minutes)
    .venv/bin/python -m bench.shift_cost --write    # also replace its section in bench/RESULTS.md and
                                                    # the shift-cost tables in docs/paper.md
    .venv/bin/python -m bench.shift_cost --quick    # 64², 4 segments, 2 rounds: a smoke test, not a measurement

Proportions are named by the share of channels that move in all. ``shift_div`` d moves ``C // d``
channels one frame forward and as many back (``service.models.nn.shift.shift_offline``), so d = 16, 8,
4, 2 move 1/8, 1/4, 1/2 and all of them; the default d = 8 is the paper's "1/8 each way". Where
``C`` is not a multiple of d the share that really moves is smaller; the tables measure it.

Every variant of a backbone carries the same weights and BatchNorm statistics (copied from its TSN,
He-initialised and calibrated on noise: no denormals), so latencies differ by the shift alone.
Latency rounds are round-robin: each round runs every configuration once, the order rotated by one
per round; the overhead over TSN is taken per round (TSN and the variant of the same round) and its
median and quartiles are reported.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shlex
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from bench.e2e import machine
from harness.markdown import replace_section
from service.models.nn import shift as shift_module
from service.models.nn.backbones import Arch
from service.models.nn.shift import TemporalShift
from service.models.nn.tsm import TSM
from training.ablation import replace_marked
from training.variants import MOVED, Variant, build_models, count_flops, count_parameters, variants, zero_filled_shift

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "RESULTS.md"
PAPER = ROOT / "docs" / "paper.md"
SECTION = "## Temporal shift cost (bench/shift_cost.py)"
MARKER = "shift-cost"  # <!-- shift-cost:start --> ... <!-- shift-cost:end --> in docs/paper.md
NAMES = {"resnet50": "ResNet-50", "resnet101": "ResNet-101", "mobilenetv2": "MobileNetV2 ×1.0"}


@dataclass
class Traffic:
    """Bytes per forward: the shift's tensors and what moves between frames, and the convolutions'."""

    shifted_blocks: int = 0
    shift_tensor: int = 0  # bytes of every tensor a shift reads (its whole input)
    moved: int = 0  # bytes of the channels that take another frame's values (2 * fold of C)
    conv: int = 0  # inputs + outputs + weights of every Conv2d

    @property
    def implementation(self) -> int:
        """``shift_offline`` reads its input once and writes every element of a new tensor once:
        about 2x the tensor, whatever the proportion."""
        return 2 * self.shift_tensor


@contextmanager
def hooks(model: nn.Module, on_shift: Callable[[TemporalShift, Tensor], None],
          on_conv: Callable[[nn.Conv2d, Tensor, Tensor], None] | None = None) -> Iterator[None]:  # fmt: skip
    """Calls ``on_shift(module, input)`` before every TemporalShift and ``on_conv(module, input,
    output)`` after every Conv2d of ``model`` while inside."""
    handles = []
    for m in model.modules():
        if isinstance(m, TemporalShift):
            handles.append(m.register_forward_pre_hook(lambda mod, args: on_shift(mod, args[0])))
        elif isinstance(m, nn.Conv2d) and on_conv is not None:
            handles.append(m.register_forward_hook(lambda mod, args, out: on_conv(mod, args[0], out)))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@torch.inference_mode()
def measure_traffic(model: nn.Module, x: Tensor) -> Traffic:
    t = Traffic()

    def on_shift(m: TemporalShift, inp: Tensor) -> None:
        size = inp.element_size()
        t.shifted_blocks += 1
        t.shift_tensor += inp.numel() * size
        t.moved += inp.numel() // inp.shape[1] * 2 * (inp.shape[1] // m.shift_div) * size

    def on_conv(m: nn.Conv2d, inp: Tensor, out: Tensor) -> None:
        weights = sum(p.numel() * p.element_size() for p in m.parameters(recurse=False))
        t.conv += inp.numel() * inp.element_size() + out.numel() * out.element_size() + weights

    with hooks(model, on_shift, on_conv):
        model(x)
    return t


@dataclass
class Latency:
    seconds: dict[tuple[Variant, int], list[float]] = field(default_factory=dict)  # (variant, batch) -> per round

    def overhead(self, v: Variant, batch: int) -> list[float]:
        """Per round: the variant's time over its TSN's in the same round, minus 1."""
        base = self.seconds[Variant(v.arch, None), batch]
        return [a / b - 1 for a, b in zip(self.seconds[v, batch], base, strict=True)]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def measure_latency(models: dict[Variant, TSM], batches: list[int], segments: int, size: int, rounds: int,
                    warmup: int, device: torch.device, channels_last: bool) -> Latency:  # fmt: skip
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    placed = {v: m.to(device, memory_format=fmt) for v, m in models.items()}  # type: ignore[call-overload]
    gen = torch.Generator().manual_seed(1)
    inputs = {b: torch.randn(b, segments, 3, size, size, generator=gen).to(device) for b in batches}
    configs = [(v, b) for b in batches for v in placed]

    def once(v: Variant, b: int) -> float:
        _sync(device)
        started = time.perf_counter()
        placed[v](inputs[b])
        _sync(device)
        return time.perf_counter() - started

    for v, b in configs:  # oneDNN / cuDNN pick their kernels on the first calls of each shape
        for _ in range(warmup):
            once(v, b)
    result = Latency({c: [] for c in configs})
    for r in range(rounds):
        started = time.perf_counter()
        for v, b in configs[r % len(configs) :] + configs[: r % len(configs)]:
            result.seconds[v, b].append(once(v, b))
        print(f"  round {r + 1}/{rounds}: {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
    return result


@dataclass
class Implementations:
    """Ours against the zero-filled shift, rounds alternating: the shift alone and the whole forward."""

    variant: Variant
    batch: int
    seconds: dict[str, list[float]] = field(default_factory=dict)  # "shift ours" ... -> per round


@torch.inference_mode()
def measure_implementations(model: TSM, v: Variant, batch: int, segments: int, size: int, rounds: int,
                            device: torch.device, channels_last: bool) -> Implementations:  # fmt: skip
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(device, memory_format=fmt)  # type: ignore[call-overload]
    x = torch.randn(batch, segments, 3, size, size, generator=torch.Generator().manual_seed(3)).to(device)
    inputs: list[Tensor] = []
    with hooks(model, lambda m, inp: inputs.append(inp.clone())):
        model(x)
    assert v.shift_div is not None
    div = v.shift_div

    def shifts(fn: Callable[[Tensor, int, int], Tensor]) -> None:
        for t in inputs:
            fn(t, segments, div)

    def forward(fn: Callable[[Tensor, int, int], Tensor]) -> None:
        original = shift_module.shift_offline
        shift_module.shift_offline = fn  # type: ignore[assignment]  # TemporalShift.forward looks it up per call
        try:
            model(x)
        finally:
            shift_module.shift_offline = original

    runs: dict[str, Callable[[], None]] = {
        "shift ours": lambda: shifts(shift_module.shift_offline),
        "shift zero-filled": lambda: shifts(zero_filled_shift),
        "forward ours": lambda: forward(shift_module.shift_offline),
        "forward zero-filled": lambda: forward(zero_filled_shift),
    }  # fmt: skip
    for run_once in runs.values():
        run_once()
    result = Implementations(v, batch, {name: [] for name in runs})
    names = list(runs)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            _sync(device)
            started = time.perf_counter()
            runs[name]()
            _sync(device)
            result.seconds[name].append(time.perf_counter() - started)
    return result


@dataclass
class Report:
    args: argparse.Namespace
    command: str
    machine: str
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float] = (0.0, 0.0, 0.0)
    params: dict[Variant, int] = field(default_factory=dict)
    flops: dict[Variant, int] = field(default_factory=dict)
    traffic: dict[Variant, Traffic] = field(default_factory=dict)
    latency: dict[Arch, Latency] = field(default_factory=dict)
    implementations: list[Implementations] = field(default_factory=list)
    wall_s: float = 0.0


def run(args: argparse.Namespace, command: str) -> Report:
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # random weights: denormals would run 3-4x slower
    device = torch.device(args.device)
    report = Report(args, command, machine(), os.getloadavg())
    started = time.perf_counter()
    for arch in args.archs:
        print(f"{NAMES[arch]}: building {len(variants(arch, args.divs))} variants", file=sys.stderr, flush=True)
        models = build_models(arch, args.segments, args.size, args.num_classes, tuple(args.divs))
        clip = torch.randn(1, args.segments, 3, args.size, args.size, generator=torch.Generator().manual_seed(2))
        for v, model in models.items():
            report.params[v] = count_parameters(model)
            report.flops[v] = count_flops(model, clip)
            report.traffic[v] = measure_traffic(model, clip)
        print(f"{NAMES[arch]}: latency, {args.rounds} rounds", file=sys.stderr, flush=True)
        report.latency[arch] = measure_latency(models, args.batches, args.segments, args.size, args.rounds,
                                               args.warmup, device, args.memory_format == "channels_last")  # fmt: skip
        default = Variant(arch, 8)
        if default in models:
            print(f"{NAMES[arch]}: our shift against the zero-filled one", file=sys.stderr, flush=True)
            report.implementations.append(measure_implementations(
                models[default], default, max(args.batches), args.segments, args.size, args.rounds, device,
                args.memory_format == "channels_last"))  # fmt: skip
        del models
    report.load_after = os.getloadavg()
    report.wall_s = time.perf_counter() - started
    return report


# ---------------------------------------------------------------------------------------- tables
def _mb(n: int) -> str:
    return f"{n / 1e6:.2f}"


def _pct(x: float) -> str:
    return f"{100 * x:+.1f}%"


def _quartiles(xs: list[float]) -> tuple[float, float, float]:
    q1, q2, q3 = np.percentile(xs, [25, 50, 75])
    return float(q1), float(q2), float(q3)


def params_table(r: Report) -> list[str]:
    lines = ["| backbone | placement | moved | parameters | FLOPs per clip (counted) | vs TSN |",
             "| --- | --- | --- | ---: | ---: | --- |"]  # fmt: skip
    for v, flops in r.flops.items():
        base_p, base_f = r.params[Variant(v.arch, None)], r.flops[Variant(v.arch, None)]
        same = "identical" if (r.params[v], flops) == (base_p, base_f) else f"params {r.params[v] - base_p:+,}, " \
            f"FLOPs {flops - base_f:+,}"  # fmt: skip
        lines.append(f"| {NAMES[v.arch]} | {v.placement} | {v.moved} | {r.params[v]:,} | {flops / 1e9:.3f} G | "
                     f"{same} |")  # fmt: skip
    return lines


def latency_table(r: Report) -> list[str]:
    lines = ["| backbone | batch (clips) | placement | moved | ms median | ms IQR | ms min | overhead vs TSN, "
             "median [IQR] of rounds |", "| --- | ---: | --- | --- | ---: | ---: | ---: | --- |"]  # fmt: skip
    for arch, lat in r.latency.items():
        for (v, b), seconds in lat.seconds.items():
            ms = [1000 * s for s in seconds]
            q1, med, q3 = _quartiles(ms)
            over = "–"
            if v.shift_div is not None:
                o1, om, o3 = _quartiles(lat.overhead(v, b))
                over = f"{_pct(om)} [{_pct(o1)}, {_pct(o3)}]"
            lines.append(f"| {NAMES[arch]} | {b} | {v.placement} | {v.moved} | {med:.1f} | {q1:.1f}–{q3:.1f} | "
                         f"{min(ms):.1f} | {over} |")  # fmt: skip
    return lines


def implementations_table(r: Report) -> list[str]:
    lines = ["| backbone | batch (clips) | what is timed | ours: written once, ms median | zero-filled, ms median | "
             "ours / zero-filled, median [IQR] of rounds |", "| --- | ---: | --- | ---: | ---: | --- |"]  # fmt: skip
    for imp in r.implementations:
        for what, label in (("shift", f"the shift alone, its {NAMES[imp.variant.arch]} block inputs"),
                            ("forward", "the whole TSM forward")):  # fmt: skip
            ours, zeroed = imp.seconds[f"{what} ours"], imp.seconds[f"{what} zero-filled"]
            q1, med, q3 = _quartiles([a / b for a, b in zip(ours, zeroed, strict=True)])
            lines.append(f"| {NAMES[imp.variant.arch]} | {imp.batch} | {label} | {1000 * _quartiles(ours)[1]:.1f} | "
                         f"{1000 * _quartiles(zeroed)[1]:.1f} | {med:.2f} [{q1:.2f}, {q3:.2f}] |")  # fmt: skip
    return lines


def traffic_table(r: Report) -> list[str]:
    lines = ["| backbone | placement | moved (nominal) | moved (measured) | shifted blocks | shift inputs MB | "
             "MB that change frame | our shift reads + writes MB (≈2×) | convolutions MB (in + out + weights) | "
             "changing / conv | our shift / conv |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
    for v, t in r.traffic.items():
        share = f"{t.moved / t.shift_tensor:.1%}" if t.shift_tensor else "0"
        lines.append(f"| {NAMES[v.arch]} | {v.placement} | {v.moved} | {share} | {t.shifted_blocks} | "
                     f"{_mb(t.shift_tensor)} | {_mb(t.moved)} | {_mb(t.implementation)} | {_mb(t.conv)} | "
                     f"{t.moved / t.conv:.1%} | {t.implementation / t.conv:.1%} |")  # fmt: skip
    return lines


def markdown(r: Report, level: int = 2) -> str:
    """The three tables under one heading of ``level`` (2: bench/RESULTS.md; in docs/paper.md the
    text sits between markers under the doc's own heading: level 3 and no title line)."""
    a = r.args
    h = "#" * (level + 1)
    load = " ".join(f"{x:.2f}" for x in r.load_before), " ".join(f"{x:.2f}" for x in r.load_after)
    quick = " **`--quick`: smoke-test sizes, not a measurement.**" if a.quick else ""
    lines = [SECTION, ""] if level == 2 else []
    lines += [
        f"`{r.command}`, {dt.date.today()}, {r.machine}, torch {torch.__version__}, {torch.get_num_threads()} "
        f"threads, {a.device}, float32, {a.memory_format}; {a.segments} segments at {a.size}², {a.num_classes} "
        f"classes; load average {load[0]} before, {load[1]} after; {r.wall_s:.0f} s.{quick}",
        "",
        f"{h} Parameters and counted FLOPs",
        "",
        "`torch.utils.flop_counter.FlopCounterMode`, one clip; it counts 2 FLOPs per multiply-add (papers, "
        "the TSM paper among them, usually count the multiply-adds: half these figures). A copy counts "
        "nothing, so equal counts show that the shift adds no arithmetic; what it costs in time is below.",
        "",
        *params_table(r),
        "",
        f"{h} Forward latency by shifted proportion and placement",
        "",
        f"{a.rounds} round-robin rounds (after {a.warmup} warm-up call{'s' * (a.warmup != 1)} per configuration); "
        "one forward per "
        "configuration and round; the same weights in every variant. Overhead: each round's time over its "
        "TSN's in the same round.",
        "",
        *latency_table(r),
        "",
        f"{h} Bytes the shift moves per clip, against the convolutions'",
        "",
        "Counted with forward hooks: the input of every `TemporalShift` (the tensor the shift reads) and "
        "the input, output and weights of every `Conv2d`, float32. \"Change frame\": the 2·(C // shift_div) "
        "channels that take a neighbouring frame's values, the data movement the paper's argument counts. "
        "Our `shift_offline` builds a new tensor: it reads the input once and writes every element of the "
        "output once, ≈2× the tensor whatever the proportion (the official code, and ours before "
        "2026-12-02, zero-fills the output first: ≈3×).",
        "",
        *traffic_table(r),
        "",
        f"{h} Our shift against the zero-filled one (the default proportion, residual)",
        "",
        "The same values; ours writes every output element once, the official code's zero-fills its new "
        "tensor first. Rounds alternate the four timings; the ratio is taken per round.",
        "",
        *implementations_table(r),
        "",
    ]  # fmt: skip
    return "\n".join(lines)


# ------------------------------------------------------------------------------ writing the docs
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.shift_cost", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="64², 4 segments, batches 1 and 2, 1/4 and all moved, 2 rounds: a smoke test")  # fmt: skip
    p.add_argument("--archs", nargs="+", choices=sorted(NAMES), default=["resnet50", "mobilenetv2"])
    p.add_argument("--divs", type=int, nargs="+", default=list(MOVED),
                   help="shift_div values: C // d channels move each way (16 8 4 2: 1/8, 1/4, 1/2, all)")  # fmt: skip
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--segments", type=int, default=8)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8], help="clips per forward (8: a serving batch)")
    p.add_argument("--rounds", type=int, default=7, help="round-robin latency rounds")
    p.add_argument("--warmup", type=int, default=2, help="forwards per configuration before the rounds")
    p.add_argument("--num-classes", type=int, default=400)
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch threads (all cores)")
    p.add_argument("--device", default="cpu", help="where latency is measured (FLOPs and bytes: always CPU)")
    p.add_argument("--memory-format", choices=["channels_last", "contiguous"], default="channels_last",
                   help="channels_last: as the server runs the model (TSM_CHANNELS_LAST)")  # fmt: skip
    p.add_argument("--write", action="store_true", help="replace the section in --results and the tables in --doc")
    p.add_argument("--results", type=Path, default=RESULTS)
    p.add_argument("--doc", type=Path, default=PAPER)
    args = p.parse_args(argv)
    if args.quick:
        args.size, args.segments, args.batches, args.rounds, args.warmup, args.divs = 64, 4, [1, 2], 2, 1, [8, 2]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = "python -m bench.shift_cost " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    report = run(args, command.strip())
    print(markdown(report))
    if args.write:
        args.results.write_text(replace_section(args.results.read_text(), SECTION, markdown(report)))
        args.doc.write_text(replace_marked(args.doc.read_text(), MARKER, markdown(report, level=3)))
        print(f"wrote {args.results} and {args.doc}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
