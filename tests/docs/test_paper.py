"""The TSM paper's claims on our own model code (issue #25, docs/paper.md): the shift adds no
parameters and no counted FLOPs; every placement and proportion runs and moves the share it says;
in-place and residual placement differ only in what the block's skip connection carries; the cost
bench and the accuracy ablation run end to end (tiny sizes: the measured runs are separate)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from harness.markdown import replace_section
from service.models.nn.backbones import Arch, Bottleneck, InvertedResidual, MobileNetV2, ResNet
from service.models.nn.shift import TemporalShift, shift_offline
from service.models.nn.tsm import TSM
from tests.support import ROOT
from training import ablation, train
from training.variants import Variant, copy_weights, count_flops, count_parameters, variants, zero_filled_shift

COST_SECTION = "## Temporal shift cost (bench/shift_cost.py)"  # the heading bench/shift_cost.py owns in RESULTS

T, SIZE, CLASSES = 4, 64, 11
PAPER = ROOT / "docs" / "paper.md"


def _clip(seed: int = 0) -> Tensor:
    return torch.randn(1, T, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def tsn_cost() -> dict[str, tuple[int, int]]:
    """Parameters and counted FLOPs of each backbone's TSN, built once."""
    out: dict[str, tuple[int, int]] = {}
    arch: Arch
    for arch in ("resnet50", "mobilenetv2"):
        tsn = Variant(arch, None).build(CLASSES, T).eval()
        out[arch] = (count_parameters(tsn), count_flops(tsn, _clip()))
    return out


@pytest.mark.parametrize("variant", [v for arch in ("resnet50", "mobilenetv2") for v in variants(arch, (8, 4, 2))[1:]],
                         ids=lambda v: f"{v.arch}-{v.place}-div{v.shift_div}")  # fmt: skip
def test_every_placement_and_proportion_costs_what_tsn_costs_keeps_shapes_and_moves_its_share(
    variant: Variant, tsn_cost: dict[str, tuple[int, int]]
) -> None:
    assert variant.shift_div is not None
    model = variant.build(CLASSES, T).eval()
    assert (count_parameters(model), count_flops(model, _clip())) == tsn_cost[variant.arch]
    assert tsn_cost[variant.arch][1] > 0
    seen: list[tuple[Tensor, Tensor]] = []  # (what each shift was given, what its layer read)
    for shift in [m for m in model.modules() if isinstance(m, TemporalShift)]:
        shift.register_forward_pre_hook(lambda m, args: seen.append((args[0], args[0])))
        shift.net.register_forward_pre_hook(lambda m, args: seen.__setitem__(-1, (seen[-1][0], args[0])))
    with torch.inference_mode():
        out = model(torch.cat([_clip(1), _clip(2)]))
    assert out.shape == (2, CLASSES) and out.isfinite().all()
    assert len(seen) == (16 if variant.arch == "resnet50" else 10)
    for given, read in seen:
        assert read.shape == given.shape
        g, r = given.view(-1, T, *given.shape[1:]), read.view(-1, T, *read.shape[1:])
        fold = given.shape[1] // variant.shift_div  # C // shift_div each way: 2/shift_div in all
        assert torch.equal(r[:, :-1, :fold], g[:, 1:, :fold]) and not r[:, -1, :fold].any()  # from the future
        assert torch.equal(r[:, 1:, fold : 2 * fold], g[:, :-1, fold : 2 * fold]) and not r[:, 0, fold : 2 * fold].any()
        assert torch.equal(r[:, :, 2 * fold :], g[:, :, 2 * fold :])  # the rest stay


def _record(module: nn.Module, store: dict[str, Tensor], name: str, where: str = "in") -> None:
    if where == "in":
        module.register_forward_pre_hook(lambda m, args: store.__setitem__(name, args[0]))
    else:
        module.register_forward_hook(lambda m, args, out: store.__setitem__(name, out))


def _twins() -> tuple[TSM, TSM]:
    """ResNet-50 TSM with the residual and the in-place shift (1/4 moved), the same weights."""
    torch.manual_seed(0)
    residual = TSM("resnet50", CLASSES, T, shift_place="blockres").eval()
    inplace = TSM("resnet50", CLASSES, T, shift_place="block").eval()
    copy_weights(residual, inplace)
    return residual, inplace


def test_inplace_and_residual_shift_differ_only_in_what_the_skip_connection_carries() -> None:
    residual, inplace = _twins()
    assert count_parameters(residual) == count_parameters(inplace)
    assert isinstance(residual.base_model, ResNet) and isinstance(inplace.base_model, ResNet)
    # A block without downsample: its skip connection adds the block's input itself.
    res_block = residual.base_model.layer1[1]
    wrapper = inplace.base_model.layer1[1]
    assert isinstance(res_block, Bottleneck) and isinstance(res_block.conv1, TemporalShift)
    assert isinstance(wrapper, TemporalShift) and isinstance(wrapper.net, Bottleneck)
    r: dict[str, Tensor] = {}
    _record(res_block, r, "block input")
    _record(res_block.conv1.net, r, "conv1 reads")
    _record(res_block.bn3, r, "branch", "out")
    _record(res_block, r, "block output", "out")
    i: dict[str, Tensor] = {}
    _record(wrapper, i, "block input")
    _record(wrapper.net, i, "what the block gets")
    _record(wrapper.net.conv1, i, "conv1 reads")
    _record(wrapper.net.bn3, i, "branch", "out")
    _record(wrapper, i, "block output", "out")
    shifts: dict[str, list[torch.Size]] = {"residual": [], "in-place": []}
    for name, model in (("residual", residual), ("in-place", inplace)):
        for m in model.modules():
            if isinstance(m, TemporalShift):
                m.register_forward_pre_hook(lambda m, args, name=name: shifts[name].append(args[0].shape))
    clip = _clip()
    with torch.inference_mode():
        residual(clip), inplace(clip)
    # Both shift the input of every block, the same tensors (the first one value for value: same stem).
    assert shifts["residual"] == shifts["in-place"] and len(shifts["residual"]) == 16
    relu = torch.relu
    # Residual: the branch reads the shifted input, the skip connection adds the unshifted one.
    x = r["block input"]
    assert torch.equal(r["conv1 reads"], shift_offline(x, T, 8))
    assert torch.equal(r["block output"], relu(r["branch"] + x))
    assert not torch.equal(r["block output"], relu(r["branch"] + shift_offline(x, T, 8)))
    # In-place: the block gets the shifted tensor, so its skip connection adds the shifted one too.
    shifted = shift_offline(i["block input"], T, 8)
    assert torch.equal(i["what the block gets"], shifted) and torch.equal(i["conv1 reads"], shifted)
    assert torch.equal(i["block output"], relu(i["branch"] + shifted))
    assert not torch.equal(i["block output"], relu(i["branch"] + i["block input"]))


def test_mobilenetv2_shifts_its_residual_branch_and_keeps_the_skip_connection_unshifted() -> None:
    model = TSM("mobilenetv2", CLASSES, T).eval()
    assert isinstance(model.base_model, MobileNetV2)
    block = next(m for m in model.base_model.features if isinstance(m, InvertedResidual) and m.use_res_connect)
    shift = block.conv[0]
    assert isinstance(shift, TemporalShift)
    seen: dict[str, Tensor] = {}
    _record(block, seen, "block input")
    _record(shift.net, seen, "expansion reads")
    _record(block.conv, seen, "branch", "out")
    _record(block, seen, "block output", "out")
    with torch.inference_mode():
        model(_clip())
    x = seen["block input"]
    assert torch.equal(seen["expansion reads"], shift_offline(x, T, 8))
    assert torch.equal(seen["block output"], x + seen["branch"])


def test_shift_cost_quick_prints_the_three_tables_and_replaces_only_its_sections(tmp_path: Path) -> None:
    """The bench as it is run, a separate process (tests never import bench)."""
    results = tmp_path / "RESULTS.md"
    results.write_text(f"# Results\n\n## Before\nkept\n\n{COST_SECTION}\nold figures\n\n## After\nkept too\n")
    doc = tmp_path / "paper.md"
    shutil.copy(PAPER, doc)
    done = subprocess.run(
        [sys.executable, "-m", "bench.shift_cost", "--quick", "--write", "--results", str(results), "--doc", str(doc)],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    printed = done.stdout
    for title in ("Parameters and counted FLOPs", "Forward latency by shifted proportion and placement",
                  "Bytes the shift moves per clip", "Our shift against the zero-filled one"):  # fmt: skip
        assert f"### {title}" in printed
    assert "| ResNet-50 | 2 | the shift alone, its ResNet-50 block inputs |" in printed
    assert "| MobileNetV2 ×1.0 | 2 | the whole TSM forward |" in printed
    assert "| ResNet-50 | 1 | in-place | 1/4 |" in printed and "| MobileNetV2 ×1.0 | 2 | residual | all |" in printed
    assert "identical" in printed and "load average" in printed and "--quick" in printed
    text = results.read_text()
    assert "old figures" not in text and "kept\n" in text and text.rstrip().endswith("## After\nkept too")
    assert text.count(COST_SECTION) == 1 and "### Bytes the shift moves per clip" in text
    written = doc.read_text()
    cost = written.split("<!-- shift-cost:start -->")[1].split("<!-- shift-cost:end -->")[0]
    assert "#### Parameters and counted FLOPs" in cost and "Not yet measured" not in cost
    assert written.split("<!-- ablation:start -->")[1] == PAPER.read_text().split("<!-- ablation:start -->")[1]
    # no section yet: appended
    assert replace_section("# R\n", COST_SECTION, f"{COST_SECTION}\nnew\n") == (f"# R\n\n{COST_SECTION}\nnew\n")


@pytest.mark.parametrize("div", [2, 4, 8, 16])
def test_the_zero_filled_baseline_of_the_bench_shifts_exactly_as_ours(div: int) -> None:
    x = torch.randn(3 * T, 48, 5, 5).to(memory_format=torch.channels_last)
    assert torch.equal(zero_filled_shift(x, T, div), shift_offline(x, T, div))


# Tiny data for training.train (passed on by the ablation): a handful of short, small clips.
TINY = ["--clips-per-class", "1", "--easy-clips-per-class", "1", "--val-per-class", "1", "--batch-size", "4",
        "--epochs", "1", "--easy-epochs", "0", "--max-duration", "1.5", "--max-long-side", "160"]  # fmt: skip


def test_ablation_smoke_run_trains_evaluates_resumes_and_writes_its_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = tmp_path / "paper.md"
    shutil.copy(PAPER, doc)
    out = tmp_path / "runs"
    argv = ["--steps", "2", "--seeds", "0", "--variants", "residual_1_4", "online", "--out", str(out),
            "--cache", str(tmp_path / "cache"), "--workers", "1", "--eval-clips-per-class", "1",
            "--ranges", "stress", "--strides", "2", "--write", "--doc", str(doc), *TINY]  # fmt: skip
    assert ablation.main(argv) == 0
    records = {r["variant"]: r for r in ablation.load_results(out)}
    assert set(records) == {"residual_1_4", "online"}
    assert all(r["steps"] == 2 and r["eval"]["clips"] == 11 for r in records.values())
    assert records["residual_1_4"]["model"]["shift_div"] == 8 and records["online"]["model"]["online"]
    assert records["online"]["streamed"]["best_stride"] == 2 and records["residual_1_4"]["streamed"] is None
    weights = out / "entries" / "mobilenetv2-online-seed0" / "1" / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    capsys.readouterr()
    assert ablation.main(argv) == 0  # resumed: nothing trained or evaluated again
    assert capsys.readouterr().out.count("done before, skipped") == 2 and weights.stat().st_mtime_ns == stamp
    table = doc.read_text().split("<!-- ablation:start -->")[1].split("<!-- ablation:end -->")[0]
    assert "| MobileNetV2 ×0.5, 96² | residual_1_4 |" in table and "| online, streamed |" in table
    assert "seed 0" in table and "Not yet measured" not in table
    assert doc.read_text().split("<!-- ablation:start -->")[0] == PAPER.read_text().split("<!-- ablation:start -->")[0]


@pytest.mark.parametrize(("argv", "message"), [
    (["--variants", "inplace_1_4"], "ResNets only"),
    (["--seed", "3"], "set by this command"),
    (["--steps", "0"], "at least 1"),
])  # fmt: skip
def test_ablation_refuses_what_would_break_its_comparison(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        ablation.parse_args(argv)
    assert message in capsys.readouterr().err


def test_ablation_runs_every_variant_its_backbone_has() -> None:
    assert ablation.parse_args([])[0].variants == ["tsn", "residual_1_4", "residual_1_2", "residual_all", "online"]
    assert ablation.parse_args(["--arch", "resnet50"])[0].variants == list(ablation.VARIANTS)


@pytest.mark.parametrize(("argv", "check"), [
    (["--arch", "resnet50", "--shift-place", "block", "--shift-div", "4"],
     lambda a: (a.arch, a.shift_place, a.shift_div) == ("resnet50", "block", 4)),
    (["--shift-place", "block"], None),  # MobileNetV2 has no in-place placement
    (["--online", "--arch", "resnet50", "--shift-place", "block"], None),  # online shifts the residual branch
])  # fmt: skip
def test_train_takes_the_shift_settings(argv: list[str], check: Callable[[Any], bool] | None) -> None:
    if check is None:
        with pytest.raises(SystemExit):
            train.parse_args(argv)
    else:
        assert check(train.parse_args(argv))
