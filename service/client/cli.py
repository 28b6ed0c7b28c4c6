"""``tsm-classify``: classify video files (or stream one live) against a running server."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import av
import httpx

from service.client.common import DEFAULT_GRPC_TARGET, DEFAULT_URL, ClassifyError
from service.client.grpc import GrpcClient, LiveClient, video_frames
from service.client.http import Client


def _print_result(path: str, result: dict[str, Any]) -> None:
    model = result["model"]
    note = "  (untrained model: scores are meaningless)" if model.get("untrained") else ""
    print(f"{path}: {model['name']}/{model['version']}, {result['timings_ms']['total']:.0f} ms{note}")
    for p in result["predictions"]:
        print(f"  {p['score']:7.2%}  {p['label']}")


def _timeline(client: Client | GrpcClient, path: Path, args: argparse.Namespace) -> bool:
    """``--timeline``: one line per window as it is scored, then the segments. False on an error."""
    try:
        for line in client.timeline(path, window_s=args.window_s, stride_s=args.stride_s, top_k=args.top_k,
                                    model=args.model, timeout_s=args.timeout, no_cache=args.no_cache):  # fmt: skip
            if args.json:
                print(json.dumps({"file": str(path), **line}), flush=True)
            elif "window" in line:
                w = line["window"]
                best = w["predictions"][0]
                print(f"{path}: {w['start_s']:7.2f}-{w['end_s']:7.2f} s  {best['score']:7.2%}  {best['label']}",
                      flush=True)  # fmt: skip
            else:
                for g in line["result"]["timeline"]["segments"]:
                    print(f"  segment {g['start_s']:7.2f}-{g['end_s']:7.2f} s  {g['score']:7.2%}  {g['label']}")
    except (ClassifyError, OSError, httpx.HTTPError) as e:
        print(json.dumps({"file": str(path), "error": str(e)}) if args.json else f"{path}: error: {e}", file=sys.stderr)
        return False
    return True


def _live(args: argparse.Namespace) -> int:
    """``--live FILE``: the file's frames streamed through ``ClassifyLive``, one line per answer."""
    if len(args.files) != 1:
        print("tsm-classify: error: --live streams one file", file=sys.stderr)
        return 2
    root = args.ca_cert.read_bytes() if args.ca_cert else None
    with LiveClient(args.grpc or DEFAULT_GRPC_TARGET, root_certificates=root, api_key=args.api_key) as client:
        try:
            frames = video_frames(args.files[0], realtime=not args.fast)
            for a in client.stream(frames, model=args.model, top_k=args.top_k):
                if args.json:
                    print(json.dumps(a), flush=True)
                    continue
                best, now = a["predictions"][0], a["instant"][0]
                print(f"frame {a['frame_index']:5d} {a['latency_ms']:6.1f} ms {a['dropped_frames']:3d} dropped  "
                      f"{best['score']:7.2%} {best['label']}  (this frame: {now['label']})", flush=True)  # fmt: skip
        except (ClassifyError, OSError, av.FFmpegError) as e:
            print(f"{args.files[0]}: error: {e}", file=sys.stderr)
            return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tsm-classify", description="Classify videos with a tsm-serve server.")
    parser.add_argument("files", nargs="+", type=Path, help="video files")
    parser.add_argument("--live", action="store_true",
                        help="stream the file's frames to an online model (gRPC ClassifyLive; --grpc, default "
                        f"{DEFAULT_GRPC_TARGET}) and print an answer per frame")  # fmt: skip
    parser.add_argument("--fast", action="store_true", help="with --live: send frames as fast as they decode")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--url", default=DEFAULT_URL, help=f"HTTP server address (default {DEFAULT_URL})")
    where.add_argument("--grpc", metavar="HOST:PORT", help="use gRPC instead: files are streamed in chunks")
    parser.add_argument("--ca-cert", type=Path, help="PEM CA certificate of a TLS (HTTPS or gRPC) server")
    parser.add_argument("--api-key", default=os.environ.get("TSM_API_KEY"), help="API key (default: $TSM_API_KEY)")
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--model", help="model name (default: the server's default)")
    parser.add_argument("--clips", type=int, default=1)
    parser.add_argument("--crops", type=int, default=1)
    parser.add_argument("--timeout", type=float, help="deadline per video, seconds")
    parser.add_argument("--json", action="store_true", help="print one JSON answer per line")
    parser.add_argument("--timeline", action="store_true",
                        help="where each action happens: each window as it is scored, then the segments")  # fmt: skip
    parser.add_argument("--window-s", type=float, help="with --timeline: window length (default: the model's)")
    parser.add_argument("--stride-s", type=float, help="with --timeline: seconds between windows (default: half)")
    parser.add_argument("--no-cache", action="store_true", help="compute afresh, not from the server's result cache")
    args = parser.parse_args(argv)
    if args.live:
        return _live(args)
    failures = 0
    if args.grpc:
        root = args.ca_cert.read_bytes() if args.ca_cert else None
        client: Client | GrpcClient = GrpcClient(args.grpc, root_certificates=root, api_key=args.api_key)
    else:
        client = Client(args.url, api_key=args.api_key, verify=str(args.ca_cert) if args.ca_cert else True)
    with client:
        for path in args.files:
            if args.timeline:
                failures += not _timeline(client, path, args)
                continue
            try:
                result = client.classify(path, top_k=args.top_k, model=args.model, clips=args.clips,
                                         crops=args.crops, timeout_s=args.timeout, no_cache=args.no_cache)  # fmt: skip
            except (ClassifyError, OSError, httpx.HTTPError) as e:
                failures += 1
                error = {"file": str(path), "error": str(e)}
                print(json.dumps(error) if args.json else f"{path}: error: {e}", file=sys.stderr)
                continue
            if args.json:
                print(json.dumps({"file": str(path), **result}))
            else:
                _print_result(str(path), result)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
