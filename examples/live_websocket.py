"""Stream a video file's frames to tsm-serve's WebSocket /v1/live and print each answer as it comes.

    .venv/bin/python examples/live_websocket.py examples/moving_left_to_right.mp4
    .venv/bin/python examples/live_websocket.py clip.mp4 --url ws://host:8000/v1/live --api-key KEY --fast

The protocol (README, "Live video"): a JSON text message of options first, then per frame a JSON header
(format, size, the sender's timestamp) and the raw rgb24 pixels; JPEG or PNG bytes could be sent alone.
Answers arrive while frames are still being sent; ``{"end": true}`` asks for the last ones.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from websockets.asyncio.client import connect

from service.client import video_frames


async def stream(path: str, url: str, api_key: str | None, realtime: bool, top_k: int) -> int:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    async with connect(url, additional_headers=headers, max_size=None) as ws:
        await ws.send(json.dumps({"top_k": top_k}))

        async def send() -> None:
            for frame in await asyncio.to_thread(lambda: list(video_frames(path, realtime=False))):
                if realtime:
                    await asyncio.sleep(max(0.0, frame.pts_us / 1e6 - (loop.time() - start)))
                header = {"format": "rgb24", "width": frame.width, "height": frame.height, "pts_us": frame.pts_us}
                await ws.send(json.dumps(header))
                await ws.send(frame.data)
            await ws.send(json.dumps({"end": True}))

        loop = asyncio.get_running_loop()
        start = loop.time()
        sender = asyncio.create_task(send())
        async for message in ws:  # ends when the server closes, after the last answer
            answer = json.loads(message)
            if "error" in answer:
                print(f"error: {answer['error']['code']}: {answer['error']['message']}", file=sys.stderr)
                return 1
            best = answer["predictions"][0]
            print(
                f"frame {answer['frame_index']:4d} {answer['latency_ms']:6.1f} ms  {best['score']:6.1%} {best['label']}"
            )
        await sender
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("video")
    p.add_argument("--url", default="ws://127.0.0.1:8000/v1/live")
    p.add_argument("--api-key")
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--fast", action="store_true", help="send frames as fast as they decode, not at the file's rate")
    args = p.parse_args()
    return asyncio.run(stream(args.video, args.url, args.api_key, not args.fast, args.top_k))


if __name__ == "__main__":
    sys.exit(main())
