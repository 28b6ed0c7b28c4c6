"""CUDA graphs of a runner's forward pass, one per batch-size bucket (``TSM_CUDA_GRAPHS``): a batch
replays its bucket's recorded kernels instead of launching them one by one."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

log = logging.getLogger("tsm.runner")


@dataclass
class CudaGraph:
    graph: torch.cuda.CUDAGraph
    inp: Tensor  # copy a batch in here, replay, read ``out``
    out: Tensor


def capture(
    compute: Callable[[Tensor], Tensor],
    clip_shape: tuple[int, ...],
    size: int,
    device: torch.device,
    others: dict[int, CudaGraph],
) -> CudaGraph | None:
    """The graph of ``compute`` on a batch of ``size`` (sharing the memory pool of ``others``); None when
    the device has no memory for it: that size then runs eagerly."""
    inp = torch.zeros((size, *clip_shape), dtype=torch.uint8, device=device)
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side), torch.inference_mode():
        for _ in range(3):  # cuDNN autotuning and lazy init must happen outside the capture
            compute(inp)
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    pool = next(iter(others.values())).graph.pool() if others else None
    try:
        with torch.cuda.graph(graph, pool=pool), torch.inference_mode():
            out = compute(inp)
    except torch.OutOfMemoryError:
        log.warning("no CUDA graph for batch %d: out of memory; it runs eagerly", size)
        return None
    return CudaGraph(graph, inp, out)
