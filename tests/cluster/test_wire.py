"""Errors across the replica boundary: curated ones verbatim, anything else by log id only."""

from __future__ import annotations

import re

import pytest

from multimodal_mcp.cluster.wire import error_frame, raise_error
from multimodal_mcp.errors import BackendError, Busy, InvalidArgument


def test_a_curated_error_crosses_with_its_class_and_message() -> None:
    frame = error_frame(Busy("cpu is busy: 4 calls are waiting"), model="m", method="generate")
    with pytest.raises(Busy, match="4 calls are waiting"):
        raise_error(frame[1], frame[2])


def test_any_other_error_crosses_as_a_backend_error_naming_only_a_log_id(
    caplog: pytest.LogCaptureFixture,
) -> None:
    try:
        raise RuntimeError("CUDA failure at 10.0.0.7 pid=4242 /secret/path.py")
    except RuntimeError as exc:
        frame = error_frame(exc, model="tiny-sd15", method="generate")
    with pytest.raises(BackendError) as raised:
        raise_error(frame[1], frame[2])
    message = str(raised.value)
    assert "10.0.0.7" not in message and "4242" not in message and "secret" not in message
    error_id = re.search(r"error id ([0-9a-f]{8})", message)
    assert error_id is not None and error_id.group(1) in caplog.text  # the details are in the log


def test_an_unknown_error_kind_is_a_backend_error() -> None:
    with pytest.raises(BackendError):
        raise_error("SystemExit", "no")
    with pytest.raises(InvalidArgument):
        raise_error("InvalidArgument", "steps must be at most 50")
