"""The network variants the paper's claims compare (docs/paper.md): a TSN, then each shifted proportion
on the residual branch or in place, all with the same weights; their parameter and FLOP counts; and the
shift as the official code writes it (zero-filled), the baseline of our written-once shift. The cost
bench (bench/shift_cost.py) measures them; tests/docs/test_paper.py checks the claims on them."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from service.models.importing import calibrate_batchnorm
from service.models.nn.backbones import Arch
from service.models.nn.shift import ShiftPlace
from service.models.nn.tsm import TSM

# shift_div -> the share of channels that moves in all (C // d each way)
MOVED = {16: "1/8", 8: "1/4", 4: "1/2", 2: "all"}
PLACES = {"blockres": "residual", "block": "in-place"}


@dataclass(frozen=True)
class Variant:
    arch: Arch
    shift_div: int | None  # None: TSN, no shift
    place: ShiftPlace = "blockres"

    @property
    def moved(self) -> str:
        return "0 (TSN)" if self.shift_div is None else MOVED.get(self.shift_div, f"2/{self.shift_div}")

    @property
    def placement(self) -> str:
        return "–" if self.shift_div is None else PLACES[self.place]

    def build(self, num_classes: int, segments: int) -> TSM:
        shift = self.shift_div is not None
        return TSM(self.arch, num_classes, segments, shift_div=self.shift_div or 8, shift_place=self.place, shift=shift)


def variants(arch: Arch, divs: tuple[int, ...] = tuple(MOVED)) -> list[Variant]:
    """TSN, then every proportion on the residual branch, then (ResNets only: MobileNetV2 has no
    in-place placement, here as in the official code) every proportion in place."""
    out = [Variant(arch, None)] + [Variant(arch, d, "blockres") for d in divs]
    if arch.startswith("resnet"):
        out += [Variant(arch, d, "block") for d in divs]
    return out


def copy_weights(src: nn.Module, dst: nn.Module) -> None:
    """Same weights and BatchNorm statistics. Wrapping a layer in ``TemporalShift`` renames its keys
    (``conv1.net.weight``) but keeps their order, so the two state dicts pair up in order."""
    source, target = src.state_dict(), dst.state_dict()
    if len(source) != len(target):
        raise ValueError(f"{len(source)} tensors against {len(target)}: not the same network")
    for (a, x), (b, y) in zip(source.items(), target.items(), strict=True):
        if x.shape != y.shape or a.replace(".net.", ".") != b.replace(".net.", "."):
            raise ValueError(f"{a} {tuple(x.shape)} does not pair with {b} {tuple(y.shape)}")
    dst.load_state_dict(dict(zip(target, source.values(), strict=True)))


def build_models(arch: Arch, segments: int, size: int, num_classes: int, divs: tuple[int, ...]) -> dict[Variant, TSM]:
    torch.manual_seed(0)
    tsn = Variant(arch, None).build(num_classes, segments)
    calibrate_batchnorm(tsn, size)
    models = {Variant(arch, None): tsn.eval()}
    for v in variants(arch, divs)[1:]:
        model = v.build(num_classes, segments)
        copy_weights(tsn, model)
        models[v] = model.eval()
    return models


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.inference_mode()
def count_flops(model: nn.Module, x: Tensor) -> int:
    """FLOPs of one forward as ``torch.utils.flop_counter`` counts them: 2 per multiply-add of the
    convolutions and matrix products it knows; copies (the shift) count nothing."""
    with FlopCounterMode(display=False) as counter:
        model(x)
    return int(counter.get_total_flops())


def zero_filled_shift(x: Tensor, num_segments: int, shift_div: int = 8) -> Tensor:
    """The shift as the official code (and ours before 2026-12-02) writes it: a zero-filled new
    tensor, then every channel copied in. The same values as ``shift_offline``; the A/B baseline."""
    nt, c, h, w = x.shape
    x5 = x.view(nt // num_segments, num_segments, c, h, w)
    fold = c // shift_div
    out = torch.zeros_like(x5)
    out[:, :-1, :fold] = x5[:, 1:, :fold]
    out[:, 1:, fold : 2 * fold] = x5[:, :-1, fold : 2 * fold]
    out[:, :, 2 * fold :] = x5[:, :, 2 * fold :]
    return out.view(nt, c, h, w)
