"""The TSM network: backbone + temporal shift + ``new_fc`` + average consensus over segments. Its
parameter names are the official ones, so checkpoints (``service.models.checkpoints``) load as they are."""

from __future__ import annotations

from torch import Tensor, nn

from service.models.nn.backbones import Arch, build_backbone
from service.models.nn.shift import ShiftPlace


class TSM(nn.Module):
    """Input ``[B, T, 3, H, W]`` float (normalised), output logits ``[B, num_classes]``."""

    def __init__(
        self,
        arch: Arch,
        num_classes: int,
        num_segments: int,
        shift_div: int = 8,
        shift_place: ShiftPlace = "blockres",
        shift: bool = True,
        width_mult: float = 1.0,
        dropout: float = 0.5,
    ):
        super().__init__()
        self.num_segments = num_segments
        self.base_model = build_backbone(arch, width_mult)
        if shift:
            self.base_model.insert_temporal_shift(num_segments, shift_div, shift_place)
        self.dropout = nn.Dropout(dropout)
        self.new_fc = nn.Linear(self.base_model.feature_dim, num_classes)
        nn.init.normal_(self.new_fc.weight, 0.0, 0.001)  # as the official code
        nn.init.zeros_(self.new_fc.bias)

    def forward(self, x: Tensor) -> Tensor:
        b, t = x.shape[:2]
        if t != self.num_segments:
            raise ValueError(f"expected {self.num_segments} frames per clip, got {t}")
        features = self.base_model(x.reshape(b * t, *x.shape[2:]))
        logits = self.new_fc(self.dropout(features))
        return logits.view(b, t, -1).mean(dim=1)  # average consensus over segments
