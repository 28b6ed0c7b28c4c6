"""Train the bundled TSM (or, with ``--no-shift``, the TSN baseline) on synthetic motion clips.

    python -m training.train            # -> service/bundled/model_store/tsm_mobilenetv2_synthetic_motion/2
    python -m training.train --no-shift --out /tmp/tsn_entry
    python -m training.train --device cuda --workers 16     # a GPU trains ~9x faster than 2 CPU cores
    python -m training.train --online   # -> service/bundled/model_store/tsm_mobilenetv2_synthetic_motion_online/1

Clips are rendered, encoded and decoded once through the server's own ``decode_file`` (the whole
frame stretched to a ``scale_size`` square, the entry's ``resize="stretch"``), cached as uint8, then
trained on from RAM with random ``input_size`` crops. A curriculum starts with ``--easy-epochs`` over
easy clips (big, sharp objects on plain backgrounds with large motions) before the full range;
turning and still clips, learnt last, are seen ``--hard-repeats`` times per epoch.
Flips, transposes and time reversal relabel the clip (see ``common.LABEL_MAPS``), so augmentation
never teaches a wrong direction.

``--online`` trains the uni-directional TSM (``service.models.nn.online``): the same clips, each frame's
shifted channels taken from the previous frame only (zeros before the first), the clip's answer the
mean of its per-frame logits, as the official online model was trained; ``training.evaluate`` then
measures it streamed, frame by frame, and picks the frame stride it is served at.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import shlex
import sys
import time
import types
from dataclasses import replace
from pathlib import Path
from typing import get_args

import numpy as np
import torch
from torch import nn

from service.inference.normalise import Normalise
from service.models.nn.backbones import Arch
from service.models.nn.shift import ShiftPlace
from service.models.store import ModelConfig, build_model, load_entry, write_entry
from service.video.sampling import SamplingSpec, crop_offsets
from training.card import write_card
from training.common import (
    DEFAULT_CACHE,
    DEFAULT_ENTRY,
    DEFAULT_ONLINE_ENTRY,
    ENTRY_NAME,
    LABEL_MAPS,
    decoded_clips,
    seed_everything,
)
from training.synthetic import (
    CCW,
    CW,
    GENERATOR_VERSION,
    LABELS,
    SPLIT_EASY,
    SPLIT_TRAIN,
    SPLIT_VAL,
    STILL,
    TRAIN,
    Ranges,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m training.train", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, help="entry folder to write (…/<name>/<version>); default: the bundled entry")
    p.add_argument("--no-shift", action="store_true", help="train the TSN baseline (no temporal shift)")
    p.add_argument("--online", action="store_true", help="train the uni-directional (online, live-stream) TSM")
    p.add_argument("--arch", choices=get_args(Arch), default="mobilenetv2",
                   help="backbone; --width-mult applies to mobilenetv2 only")  # fmt: skip
    p.add_argument("--shift-div", type=int, default=8,
                   help="fold = channels // shift-div move each way: 2/shift-div of the channels in all "
                   "(online: 1/shift-div, from the past only)")  # fmt: skip
    p.add_argument("--shift-place", choices=get_args(ShiftPlace), default="blockres",
                   help="blockres: the residual branch's input; block: the block's input, skip connection "
                   "included (the paper's in-place shift; ResNet only)")  # fmt: skip
    p.add_argument("--clips-per-class", type=int, default=400)
    p.add_argument("--val-per-class", type=int, default=8)
    p.add_argument("--epochs", type=int, default=17)
    p.add_argument("--easy-clips-per-class", type=int, default=120, help="clips of the curriculum's easy stage")
    p.add_argument("--easy-epochs", type=int, default=2, help="epochs over the easy clips before the full range")
    p.add_argument("--hard-repeats", type=int, default=2,
                   help="times each clip of HARD_CLASSES (turns, standing still) is seen per epoch")  # fmt: skip
    p.add_argument("--init", type=Path, help="start from the weights of this entry folder (continue a run)")
    p.add_argument("--steps", type=int, default=0, help="stop after this many steps (smoke runs); 0: all epochs")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--dropout", type=float, default=0.3, help="before the classifier")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--segments", type=int, default=8)
    p.add_argument("--width-mult", type=float, default=0.5)
    p.add_argument("--input-size", type=int, default=96)
    p.add_argument("--scale-size", type=int, default=110)
    p.add_argument("--max-duration", type=float, default=TRAIN.duration_s[1], help="longest training clip, s")
    p.add_argument("--max-long-side", type=int, default=TRAIN.long_side[1], help="largest training frame side")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="rendered clips and decoded frames")
    p.add_argument("--workers", type=int, default=2, help="processes that render and decode clips")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto",
                   help="autocast to bf16 (weights stay fp32); auto: on CUDA and CPUs with native bf16")  # fmt: skip
    p.add_argument("--device", default="cpu", help="torch device to train on: cpu, cuda, cuda:1 ...")
    args = p.parse_args(argv)
    if args.online and args.no_shift:
        p.error("--online is a temporal shift (one-sided): it cannot go with --no-shift")
    if args.online and args.shift_place != "blockres":
        p.error("--online shifts the residual branch only: it cannot go with --shift-place block")
    if args.shift_place == "block" and args.arch == "mobilenetv2":  # as the official code: ResNet only
        p.error("--shift-place block needs a ResNet (--arch resnet50): MobileNetV2 shifts its residual branch only")
    args.out = args.out or (DEFAULT_ONLINE_ENTRY if args.online else DEFAULT_ENTRY)
    return args


def augment(
    frames: np.ndarray, labels: np.ndarray, size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Random crop per clip, then flips / transpose / time reversal with their relabelling."""
    n, t, full = frames.shape[:3]
    out = np.empty((n, t, size, size, 3), np.uint8)
    labels = labels.copy()
    for i in range(n):
        y, x = rng.integers(0, full - size + 1, 2)
        clip = frames[i, :, y : y + size, x : x + size]
        if rng.uniform() < 0.5:
            clip, labels[i] = clip[:, :, ::-1], LABEL_MAPS["hflip"][labels[i]]
        if rng.uniform() < 0.5:
            clip, labels[i] = clip[:, ::-1], LABEL_MAPS["vflip"][labels[i]]
        if rng.uniform() < 0.5:
            clip, labels[i] = clip.transpose(0, 2, 1, 3), LABEL_MAPS["transpose"][labels[i]]
        if rng.uniform() < 0.5:
            clip, labels[i] = clip[::-1], LABEL_MAPS["reverse"][labels[i]]
        if rng.uniform() < 0.5:  # colours carry no class: permute channels
            clip = clip[..., rng.permutation(3)]
        out[i] = clip
    return out, labels


def to_input(frames: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 [B, T, H, W, 3] -> normalised float [B, T, 3, H, W]: the server's own normalisation."""
    return Normalise(mean, std)(torch.from_numpy(np.ascontiguousarray(frames)))


def _conv_in_fp32(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    with torch.autocast("cpu", enabled=False):
        return conv._conv_forward(x.float(), conv.weight, conv.bias)


def strided_depthwise_in_fp32(model: nn.Module) -> None:
    """Runs strided depthwise convolutions in fp32 under bf16 autocast: oneDNN's bf16 kernels for
    them are ~3.6x slower than fp32's (measured on Zen 4), and their backward was about half of a
    bf16 MobileNetV2 step. Same parameters and state dict; only this training process's forward changes."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and m.groups == m.in_channels > 1 and m.stride != (1, 1):
            m.forward = types.MethodType(_conv_in_fp32, m)  # type: ignore[method-assign]


# Learnt last and confused with each other: a turn's direction, and a small turn vs. no motion.
HARD_CLASSES = (CW, CCW, STILL)


def epoch_clips(labels: np.ndarray, hard_repeats: int) -> np.ndarray:
    """Indices of one epoch, unshuffled: every clip once, those of ``HARD_CLASSES`` ``hard_repeats`` times."""
    hard = np.flatnonzero(np.isin(labels, HARD_CLASSES))
    return np.concatenate([np.arange(len(labels)), *[hard] * (hard_repeats - 1)])


def centre_crop(frames: np.ndarray, size: int) -> np.ndarray:
    """The server's centre crop (``service.video.sampling.crop_offsets``) of ``[N, T, H, W, 3]`` frames."""
    [(x, y)] = crop_offsets(frames.shape[3], frames.shape[2], size, crops=1)
    return frames[:, :, y : y + size, x : x + size]


def clip_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``[B, classes]``: an online model's per-frame logits ``[B, T, classes]`` averaged over the clip
    (its training consensus), an offline model's own answer."""
    out = model(x)
    return out.mean(dim=1) if out.dim() == 3 else out


@torch.no_grad()
def logits_of(model: nn.Module, frames: np.ndarray, config: ModelConfig, batch: int = 32) -> torch.Tensor:
    """``[N, classes]`` clip logits of uint8 frames, in eval mode, on the CPU."""
    model.eval()
    device = next(model.parameters()).device
    out = [clip_logits(model, to_input(frames[i : i + batch], config.mean, config.std).to(device)).float().cpu()
           for i in range(0, len(frames), batch)]  # fmt: skip
    return torch.cat(out) if out else torch.zeros(0, config.num_classes)


def predict(model: nn.Module, frames: np.ndarray, config: ModelConfig, batch: int = 32) -> np.ndarray:
    return logits_of(model, frames, config, batch).argmax(1).numpy()


def fit_temperature(logits: torch.Tensor, labels: np.ndarray) -> float:
    """The temperature T minimising the negative log-likelihood of ``softmax(logits / T)`` (a grid over
    0.3-5): one number that makes the scores' confidence match how often they are right, without
    changing any answer (Guo et al., 2017, "On calibration of modern neural networks")."""
    target = torch.from_numpy(labels)
    grid = np.exp(np.linspace(math.log(0.3), math.log(5.0), 121))
    losses = [float(nn.functional.cross_entropy(logits / t, target)) for t in grid]
    return float(grid[int(np.argmin(losses))])


@torch.no_grad()
def fold_temperature(model: nn.Module, temperature: float) -> None:
    """Divides the classifier's weights and bias by ``temperature``: the served logits are ``logits / T``
    (the average over segments is linear), so the server needs no new setting."""
    fc = model.new_fc
    assert isinstance(fc, nn.Linear)
    fc.weight.mul_(1 / temperature)
    fc.bias.mul_(1 / temperature)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # denormals run 3-4x slower on CPU
    seed_everything(args.seed)
    ranges = replace(TRAIN, duration_s=(TRAIN.duration_s[0], args.max_duration),
                     long_side=(TRAIN.long_side[0], args.max_long_side))  # fmt: skip
    classes = len(LABELS)
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels once
    # Native bf16 (AVX512-BF16, AMX) runs a step ~1.4x faster; emulated bf16 would be slower than fp32.
    native_bf16 = device.type == "cuda" or torch.ops.mkldnn._is_mkldnn_bf16_supported()
    bf16 = args.precision == "bf16" or (args.precision == "auto" and native_bf16)
    # Training clips keep the scale square so random crops can shift; validation is exactly what the
    # server samples (stretch to the scale square, then centre crop).
    train_spec = SamplingSpec(args.segments, args.scale_size, args.scale_size, resize="stretch")
    val_spec = SamplingSpec(args.segments, args.scale_size, args.input_size, resize="stretch")
    # A curriculum: motion has to be found before it can be told apart; big, long, sharp motions first.
    easy_x, easy_y = np.zeros(0, np.uint8), np.zeros(0, np.int64)  # none when fine-tuning (--easy-epochs 0)
    if args.easy_epochs:
        easy_x, easy_y = decoded_clips(SPLIT_EASY, args.seed, args.easy_clips_per_class * classes,
                                       replace(ranges, easy=True), args.cache, train_spec, args.workers)  # fmt: skip
    train_x, train_y = decoded_clips(
        SPLIT_TRAIN, args.seed, args.clips_per_class * classes, ranges, args.cache, train_spec, args.workers
    )
    val_x, val_y = decoded_clips(SPLIT_VAL, args.seed, args.val_per_class * classes, ranges, args.cache, val_spec,
                                 args.workers)  # fmt: skip
    data_s = time.monotonic() - started
    print(f"data: {len(easy_y)} easy and {len(train_y)} training clips, {len(val_y)} validation clips, "
          f"{data_s:.0f} s", flush=True)  # fmt: skip

    name = args.out.parent.name if args.out.parent.name else ENTRY_NAME
    config = ModelConfig(
        name=name, version=args.out.name, arch=args.arch, num_segments=1 if args.online else args.segments,
        shift=not args.no_shift, online=args.online, shift_div=args.shift_div, shift_place=args.shift_place,
        width_mult=args.width_mult if args.arch == "mobilenetv2" else 1.0, num_classes=classes,
        input_size=args.input_size, scale_size=args.scale_size, resize="stretch", weights_sha256="0" * 64,
        untrained=False,
        source=f"trained on synthetic motion clips by training/train.py (seed {args.seed})",
    )  # fmt: skip
    model = build_model(config)
    if args.init:
        load_init(model, args.init)
    model.dropout.p = args.dropout
    model = model.to(device, memory_format=torch.channels_last)  # type: ignore[call-overload]  # faster on CPU
    if bf16 and device.type == "cpu":
        strided_depthwise_in_fp32(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    phases = [(easy_x, easy_y)] * args.easy_epochs + [(train_x, train_y)] * args.epochs
    planned = sum(math.ceil(len(epoch_clips(y, args.hard_repeats)) / args.batch_size) for _, y in phases)
    total = min(args.steps, planned) if args.steps else planned
    warmup = min(100, max(total // 10, 1))

    def lr_at(step: int) -> float:  # linear warm-up, then cosine to zero
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(total - warmup, 1)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)
    rng = np.random.default_rng(args.seed)
    step, history = 0, list[dict[str, object]]()
    train_started = time.monotonic()
    for epoch, (phase_x, phase_y) in enumerate(phases):
        model.train()
        order = rng.permutation(epoch_clips(phase_y, args.hard_repeats))
        losses = []
        for b in range(math.ceil(len(order) / args.batch_size)):
            if step >= total:
                break
            idx = np.sort(order[b * args.batch_size : (b + 1) * args.batch_size])
            frames, labels = augment(phase_x[idx], phase_y[idx], args.input_size, rng)
            x = to_input(frames, config.mean, config.std)
            # brightness and contrast jitter per clip
            gain = torch.empty(len(idx), 1, 1, 1, 1).uniform_(0.8, 1.2)
            x = x * gain + torch.empty(len(idx), 1, 1, 1, 1).uniform_(-0.2, 0.2)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                logits = clip_logits(model, x.to(device))
            loss = loss_fn(logits.float(), torch.from_numpy(labels).to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
            step += 1
            if step % 20 == 0:
                print(f"epoch {epoch + 1} step {step}/{total} loss {np.mean(losses[-20:]):.3f} "
                      f"{time.monotonic() - train_started:.0f} s", flush=True)  # fmt: skip
        acc = float((predict(model, val_x, config) == val_y).mean()) if len(val_y) else float("nan")
        history.append({"epoch": epoch + 1, "loss": float(np.mean(losses)) if losses else None, "val_top1": acc})
        print(f"epoch {epoch + 1}: loss {history[-1]['loss']}, validation top-1 {acc:.3f}", flush=True)
        # written after every epoch, so a run stopped early still leaves its best-so-far entry
        save(model, config, args, argv, started, data_s, step, history, len(train_y), len(val_y), ranges, bf16)
        if step >= total:
            break
    if history and len(val_y):
        # Calibrated last: the validation clips' temperature, folded into the classifier.
        temperature = fit_temperature(logits_of(model, val_x, config), val_y)
        fold_temperature(model, temperature)
        history[-1]["temperature"] = temperature
        print(f"calibrated: temperature {temperature:.3f} (validation negative log-likelihood)", flush=True)
        save(model, config, args, argv, started, data_s, step, history, len(train_y), len(val_y), ranges, bf16)
    # --epochs 0 --easy-epochs 0 only renders and caches the clips (bench/train_sweep.sh does that first)
    done = f"wrote {args.out}" if history else "no epochs: clips cached, nothing trained or written,"
    print(f"{done} in {time.monotonic() - started:.0f} s (data {data_s:.0f} s)", flush=True)
    return 0


def load_init(model: nn.Module, entry_dir: Path) -> None:
    """Starts from an entry's weights, also a TSM's into a TSN: the shift wraps each shifted
    convolution (``….net.weight``), the TSN holds the same tensor as ``….weight``."""
    own = model.state_dict().keys()
    state = load_entry(entry_dir).model.state_dict()
    model.load_state_dict({k if k in own else k.replace(".net.", "."): v for k, v in state.items()})


def machine(device: str) -> str:
    """What trained, in words for the model card."""
    if torch.device(device).type == "cuda":
        return f"an {torch.cuda.get_device_name(device)} GPU ({os.cpu_count()}-core {platform.machine()} host)"
    return f"a {os.cpu_count()}-core {platform.machine()} CPU, {torch.get_num_threads()} torch threads"


def save(
    model: nn.Module, config: ModelConfig, args: argparse.Namespace, argv: list[str] | None, started: float,
    data_s: float, step: int, history: list[dict[str, object]], train_clips: int, val_clips: int, ranges: Ranges,
    bf16: bool,
) -> None:  # fmt: skip
    model = copy.deepcopy(model).to("cpu", memory_format=torch.contiguous_format).eval()  # type: ignore[call-overload]
    wall_s = time.monotonic() - started
    write_entry(args.out, config, model, LABELS)  # type: ignore[arg-type]
    facts = {
        "command": "python -m training.train " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
        "shift": not args.no_shift, "online": args.online, "segments": args.segments, "seed": args.seed,
        "train_clips": train_clips, "val_clips": val_clips,
        "epochs": args.epochs, "easy_epochs": args.easy_epochs, "hard_repeats": args.hard_repeats,
        "easy_clips": args.easy_clips_per_class * len(LABELS) if args.easy_epochs else 0,
        "steps": step, "batch_size": args.batch_size,
        "init": str(args.init) if args.init else None,
        "lr": args.lr, "label_smoothing": args.label_smoothing, "dropout": args.dropout,
        "precision": "bf16 autocast" if bf16 else "fp32", "device": str(args.device),
        "data_s": round(data_s), "wall_s": round(wall_s), "threads": args.threads,
        "machine": machine(args.device), "history": history,
        "ranges": {"duration_s": ranges.duration_s, "fps": ranges.fps, "long_side": ranges.long_side},
        "generator_version": GENERATOR_VERSION,
    }  # fmt: skip
    (args.out / "training.json").write_text(json.dumps(facts, indent=2) + "\n")
    if not args.online:  # an online entry's card needs its streamed figures: training.evaluate writes it
        write_card(args.out, config, facts, [])


if __name__ == "__main__":
    sys.exit(main())
