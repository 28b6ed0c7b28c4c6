"""The error table: one code per kind, every kind mapped to the statuses of the design's table."""

from __future__ import annotations

import grpc

from service.errors import STATUS, ErrorKind, ServiceError


def test_every_kind_has_its_own_code_and_both_statuses() -> None:
    assert set(STATUS) == set(ErrorKind)
    assert len({k.value for k in ErrorKind}) == len(ErrorKind)
    assert ServiceError(ErrorKind.empty_upload, "x").code == "empty_upload"


def test_http_to_grpc_mapping_follows_the_design() -> None:
    expected = {
        400: grpc.StatusCode.INVALID_ARGUMENT, 415: grpc.StatusCode.INVALID_ARGUMENT,
        422: grpc.StatusCode.INVALID_ARGUMENT, 404: grpc.StatusCode.NOT_FOUND,
        413: grpc.StatusCode.RESOURCE_EXHAUSTED, 429: grpc.StatusCode.RESOURCE_EXHAUSTED,
        503: grpc.StatusCode.UNAVAILABLE, 504: grpc.StatusCode.DEADLINE_EXCEEDED,
    }  # fmt: skip
    for kind in ErrorKind:
        if kind.http_status in expected:
            assert kind.grpc_status == expected[kind.http_status], kind
