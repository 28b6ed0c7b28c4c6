"""The error table: one code per kind, every kind mapped to the statuses of the design's table."""

from __future__ import annotations

import subprocess
import sys

import grpc

from service.api.grpc_common import GRPC_STATUS, grpc_status
from service.core.errors import HTTP_STATUS, ErrorKind, ServiceError
from tests.support import ROOT


def test_every_kind_has_its_own_code_and_both_statuses() -> None:
    assert set(HTTP_STATUS) == set(ErrorKind)
    assert len({k.value for k in ErrorKind}) == len(ErrorKind)
    assert ServiceError(ErrorKind.empty_upload, "x").code == "empty_upload"
    assert all(kind.http_status in GRPC_STATUS for kind in ErrorKind)


def test_http_to_grpc_mapping_follows_the_design() -> None:
    expected = {
        400: grpc.StatusCode.INVALID_ARGUMENT, 415: grpc.StatusCode.INVALID_ARGUMENT,
        422: grpc.StatusCode.INVALID_ARGUMENT, 404: grpc.StatusCode.NOT_FOUND,
        413: grpc.StatusCode.RESOURCE_EXHAUSTED, 429: grpc.StatusCode.RESOURCE_EXHAUSTED,
        503: grpc.StatusCode.UNAVAILABLE, 504: grpc.StatusCode.DEADLINE_EXCEEDED,
    }  # fmt: skip
    for kind in ErrorKind:
        if kind.http_status in expected:
            assert grpc_status(kind) == expected[kind.http_status], kind
    assert grpc_status(ErrorKind.unauthenticated) == grpc.StatusCode.UNAUTHENTICATED
    assert grpc_status(ErrorKind.internal) == grpc.StatusCode.INTERNAL


def test_the_error_table_and_the_decode_worker_load_neither_grpc_nor_torch() -> None:
    probe = "import sys, service.core.errors, service.video.worker; print(sorted({'grpc', 'torch'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, check=True)
    assert done.stdout.strip() == "[]"
