"""Python clients (HTTP sync and async, gRPC sync, gRPC live streams) and the ``tsm-classify`` command.

from service.client import Client, GrpcClient, LiveClient, video_frames
result = Client("http://127.0.0.1:8000").classify("video.mp4", top_k=3)
result = GrpcClient("127.0.0.1:50051").classify("video.mp4", top_k=3)  # the same answer, as a dict
result["predictions"][0]["label"]
for answer in LiveClient("127.0.0.1:50051").stream(video_frames("video.mp4")):  # one per processed frame
    print(answer["frame_index"], answer["predictions"][0]["label"])
for line in Client().timeline("long.mp4"):  # {"window": ...} as each is scored, then {"result": ...}
    print(line)

The import path ``service.client`` is the public one; the modules under it are how it is built.
"""

from service.client.common import DEFAULT_GRPC_TARGET, DEFAULT_URL, ClassifyError, Video
from service.client.grpc import GrpcClient, LiveClient, LiveFrame, classification_dict, live_dict, video_frames
from service.client.http import AsyncClient, Client

__all__ = [
    "DEFAULT_GRPC_TARGET",
    "DEFAULT_URL",
    "AsyncClient",
    "ClassifyError",
    "Client",
    "GrpcClient",
    "LiveClient",
    "LiveFrame",
    "Video",
    "classification_dict",
    "live_dict",
    "video_frames",
]
