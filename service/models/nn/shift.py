"""Temporal shift (Lin, Gan & Han, ICCV 2019) and its insertion into residual blocks.

Frames of one clip are stacked along the batch axis, ``[N*T, C, H, W]``. The offline shift views
that as ``[N, T, C, H, W]``: channels ``[0, fold)`` take frame t+1, channels ``[fold, 2*fold)``
take frame t-1 (zeros at the clip ends), the rest stay. ``fold = C // shift_div``.

The online (uni-directional) shift of live streams: channels ``[0, fold)`` of frame t come from frame
t-1 of the same stream, carried across calls as the stream's state (``OnlineShift``).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

ShiftPlace = Literal["blockres", "block"]


def shift_offline(x: Tensor, num_segments: int, shift_div: int = 8) -> Tensor:
    """Bi-directional zero-padded shift; returns a new tensor (the input is untouched).

    Every element of the result is written once (only the clip ends' shifted channels are zeroed):
    the input read once and the output written once, not zero-filled first, which on ResNet-50's
    wide block inputs is a third of the shift's memory traffic (docs/paper.md, claim 2)."""
    nt, c, h, w = x.shape
    x5 = x.view(nt // num_segments, num_segments, c, h, w)
    fold = c // shift_div
    out = torch.empty_like(x5)
    out[:, :-1, :fold] = x5[:, 1:, :fold]  # from the future
    out[:, -1, :fold] = 0
    out[:, 1:, fold : 2 * fold] = x5[:, :-1, fold : 2 * fold]  # from the past
    out[:, 0, fold : 2 * fold] = 0
    out[:, :, 2 * fold :] = x5[:, :, 2 * fold :]
    return out.view(nt, c, h, w)


def shift_online(x: Tensor, past: Tensor) -> tuple[Tensor, Tensor]:
    """Uni-directional (past-only) shift of ``T`` frames of ``N`` streams, ``[N, T, C, H, W]``.

    ``past`` holds channels ``[0, fold)`` of each stream's frame before these (zeros before the first
    frame), ``fold = past.shape[1]``. Frame t gets channels ``[0, fold)`` of frame t-1, as in the official
    online demo; returns the shifted frames and the state for the next call (the last frame's channels).
    One frame at a time or a whole clip at once: the same result.
    """
    fold = past.shape[1]
    shifted = torch.cat((past.unsqueeze(1), x[:, :-1, :fold]), dim=1)
    return torch.cat((shifted, x[:, :, fold:]), dim=2), x[:, -1, :fold].clone()


class TemporalShift(nn.Module):
    """Shift the input of ``net`` in time, then run ``net``. ``net`` keeps its parameter names
    under ``.net`` as in the official checkpoints (``conv1.net.weight``)."""

    def __init__(self, net: nn.Module, num_segments: int, shift_div: int = 8):
        super().__init__()
        self.net = net
        self.num_segments = num_segments
        self.shift_div = shift_div

    def forward(self, x: Tensor) -> Tensor:
        return self.net(shift_offline(x, self.num_segments, self.shift_div))

    def extra_repr(self) -> str:
        return f"num_segments={self.num_segments}, shift_div={self.shift_div}"


class OnlineShift(nn.Module):
    """Wraps the first layer of a residual branch, like ``TemporalShift``, with the one-sided shift:
    channels ``[0, fold)`` of frame t come from frame t-1 of the same stream, ``state_in`` before the
    first frame of the call (zeros if None). ``service.models.nn.online.OnlineTSM`` sets ``frames`` and
    ``state_in`` before a forward and reads ``state_out`` (the last frame's channels) after."""

    def __init__(self, net: nn.Module, shift_div: int = 8) -> None:
        super().__init__()
        self.net = net
        self.shift_div = shift_div
        self.frames = 1
        self.state_in: Tensor | None = None
        self.state_out: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        nt, c, h, w = x.shape
        x5 = x.view(nt // self.frames, self.frames, c, h, w)
        past = self.state_in if self.state_in is not None else x.new_zeros(x5.shape[0], c // self.shift_div, h, w)
        shifted, self.state_out = shift_online(x5, past)
        return self.net(shifted.view(nt, c, h, w))

    def extra_repr(self) -> str:
        return f"shift_div={self.shift_div}, online (past only)"
