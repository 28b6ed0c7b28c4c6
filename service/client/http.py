"""HTTP clients, sync and async: classify, timelines (NDJSON as each window is scored), models, health."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from service.client.common import DEFAULT_URL, ClassifyError, Closable, Video, file_chunks, tls_context
from service.core.errors import ErrorKind


def _params(top_k: int, model: str | None, clips: int, crops: int, sampling: str) -> dict[str, Any]:
    params: dict[str, Any] = {"top_k": top_k, "clips": clips, "crops": crops, "sampling": sampling}
    if model:
        params["model"] = model
    return params


def _headers(timeout_s: float | None, request_id: str | None) -> dict[str, str]:
    headers = {"Content-Type": "application/octet-stream"}
    if timeout_s is not None:
        headers["X-Request-Timeout"] = str(timeout_s)
    if request_id:
        headers["X-Request-ID"] = request_id
    return headers


def _body(video: Video) -> bytes | Iterator[bytes]:
    return video if isinstance(video, bytes) else file_chunks(Path(video))  # streamed, never read whole


def _answer(response: httpx.Response) -> dict[str, Any]:
    if response.status_code == 200:
        return dict(response.json())
    try:
        error = response.json()["error"]
        code, message = error["code"], error["message"]
    except (ValueError, KeyError, TypeError):
        code, message = f"http_{response.status_code}", response.text[:200]
    retry = response.headers.get("retry-after")
    raise ClassifyError(response.status_code, code, message, float(retry) if retry else None)


def _window(window_s: float | None, stride_s: float | None) -> dict[str, float]:
    return {k: v for k, v in (("window_s", window_s), ("stride_s", stride_s)) if v is not None}


def _no_cache(no_cache: bool) -> dict[str, str]:
    return {"Cache-Control": "no-cache"} if no_cache else {}


def _timeline_line(line: dict[str, Any]) -> dict[str, Any]:
    """An NDJSON line of a streamed timeline; an ``{"error": ...}`` line raises as an error answer does."""
    if "error" in line:
        error = line["error"]
        status = next((kind.http_status for kind in ErrorKind if kind.value == error.get("code")), 0)
        raise ClassifyError(status, str(error.get("code")), str(error.get("message")))
    return line


def _auth(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


class Client(Closable):
    """Blocking client over HTTP."""

    def __init__(
        self, url: str = DEFAULT_URL, timeout_s: float = 120.0, api_key: str | None = None,
        verify: bool | str = True,
    ):  # fmt: skip
        """``api_key``: sent as ``Authorization: Bearer``; ``verify``: CA bundle path for an HTTPS server."""
        self._http = httpx.Client(base_url=url, timeout=timeout_s, headers=_auth(api_key), verify=tls_context(verify))

    def close(self) -> None:
        self._http.close()

    def classify(
        self, video: Video, *, top_k: int = 5, model: str | None = None, clips: int = 1, crops: int = 1,
        sampling: str = "uniform", timeout_s: float | None = None, request_id: str | None = None,
        no_cache: bool = False,
    ) -> dict[str, Any]:  # fmt: skip
        """``no_cache``: compute afresh instead of answering from the server's result cache."""
        response = self._http.post(
            "/classify", params=_params(top_k, model, clips, crops, sampling), content=_body(video),
            headers={**_headers(timeout_s, request_id), **_no_cache(no_cache)},
        )  # fmt: skip
        return _answer(response)

    def timeline(
        self, video: Video, *, window_s: float | None = None, stride_s: float | None = None, top_k: int = 5,
        model: str | None = None, timeout_s: float | None = None, no_cache: bool = False,
    ) -> Iterator[dict[str, Any]]:  # fmt: skip
        """Where each action happens: ``{"window": ...}`` per window as the server scores it, then
        ``{"result": ...}`` (the whole answer: segments, the overall predictions, ``cache``)."""
        params = {**_params(top_k, model, 1, 1, "uniform"), "timeline": "true", **_window(window_s, stride_s)}
        headers = {**_headers(timeout_s, None), "Accept": "application/x-ndjson", **_no_cache(no_cache)}
        with self._http.stream("POST", "/classify", params=params, content=_body(video), headers=headers) as r:
            if r.status_code != 200:
                r.read()
                _answer(r)
            for line in r.iter_lines():
                if line:
                    yield _timeline_line(json.loads(line))

    def models(self) -> list[dict[str, Any]]:
        return list(_answer(self._http.get("/v1/models"))["models"])

    def ready(self) -> bool:
        return self._http.get("/readyz").status_code == 200


class AsyncClient:
    """asyncio client over HTTP; share one across many concurrent ``classify`` calls."""

    def __init__(
        self, url: str = DEFAULT_URL, timeout_s: float = 120.0, api_key: str | None = None,
        verify: bool | str = True,
    ):  # fmt: skip
        self._http = httpx.AsyncClient(
            base_url=url, timeout=timeout_s, headers=_auth(api_key), verify=tls_context(verify)
        )

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.aclose()

    async def classify(
        self, video: Video, *, top_k: int = 5, model: str | None = None, clips: int = 1, crops: int = 1,
        sampling: str = "uniform", timeout_s: float | None = None, request_id: str | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        data = video if isinstance(video, bytes) else await asyncio.to_thread(Path(video).read_bytes)
        response = await self._http.post(
            "/classify", params=_params(top_k, model, clips, crops, sampling), content=data,
            headers=_headers(timeout_s, request_id),
        )  # fmt: skip
        return _answer(response)

    async def models(self) -> list[dict[str, Any]]:
        return list(_answer(await self._http.get("/v1/models"))["models"])
