"""The baseline of ``bench/e2e.py --baseline plain``: the FastAPI handler a team writes in an afternoon.

decord reads the sampled frames at full resolution in the request thread, torch resizes and crops
them, one eager forward pass per request on 2 torch threads (on the GPU where there is one);
FastAPI runs the sync handler in its thread pool. Same model store, same weights, same sampling
(TSN segment centres, short side to ``scale_size``, centre crop) as tsm-serve, so the two answer
the same question.

    TSM_MODEL_STORE=... TSM_HTTP_PORT=8001 python -m bench.plain_server
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Any

import decord
import torch
import torch.nn.functional as F
import uvicorn
from fastapi import FastAPI, File, HTTPException, UploadFile

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from service.models.store import StoreEntry, find_entries, load_entry  # noqa: E402
from service.video.sampling import sample_indices  # noqa: E402

torch.set_num_threads(2)
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # as a plain handler would
ENTRIES: dict[str, StoreEntry] = {
    name: load_entry(path) for name, path in find_entries(Path(os.environ["TSM_MODEL_STORE"])).items()
}
for _entry in ENTRIES.values():
    _entry.model.to(DEVICE)
DEFAULT = os.environ.get("TSM_DEFAULT_MODEL") or next(iter(ENTRIES))
app = FastAPI()


def preprocess(path: str, entry: StoreEntry) -> torch.Tensor:
    c = entry.config
    reader = decord.VideoReader(path, num_threads=1)
    frames = torch.from_numpy(reader.get_batch(sample_indices(len(reader), c.num_segments)[0]).asnumpy())
    x = frames.permute(0, 3, 1, 2).float() / 255  # T, 3, H, W
    h, w = x.shape[-2:]
    if c.resize == "stretch":
        size = (c.scale_size, c.scale_size)
    else:
        size = (c.scale_size, round(w * c.scale_size / h)) if h <= w else (round(h * c.scale_size / w), c.scale_size)
    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    top, left = (size[0] - c.input_size) // 2, (size[1] - c.input_size) // 2
    x = x[:, :, top : top + c.input_size, left : left + c.input_size]
    mean = torch.tensor(c.mean).view(1, 3, 1, 1)
    std = torch.tensor(c.std).view(1, 3, 1, 1)
    return ((x - mean) / std).unsqueeze(0)


@app.get("/readyz")
def ready() -> dict[str, str]:
    return {"status": "ready"}


@app.post("/classify")
def classify(file: Annotated[UploadFile, File()], model: str = DEFAULT, top_k: int = 5) -> dict[str, Any]:
    entry = ENTRIES.get(model)
    if entry is None:
        raise HTTPException(404, f"unknown model {model}")
    with tempfile.NamedTemporaryFile(suffix=".mp4") as f:
        f.write(file.file.read())
        f.flush()
        try:
            x = preprocess(f.name, entry)
        except Exception as e:
            raise HTTPException(422, f"cannot decode: {e}") from None
    with torch.inference_mode():
        scores = entry.model(x.to(DEVICE)).softmax(-1)[0].cpu()
    top = scores.topk(min(top_k, len(scores)))
    return {
        "model": model,
        "predictions": [
            {"index": int(i), "label": entry.labels[int(i)], "score": float(s)}
            for s, i in zip(top.values, top.indices, strict=True)
        ],
    }


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(os.environ["TSM_HTTP_PORT"]), log_level="warning")
