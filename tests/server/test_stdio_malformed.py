"""Issue 13, item 5: a stdio server answers malformed input as JSON-RPC 2.0 says and keeps serving."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import anyio
import mcp_types
import pytest
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from multimodal_mcp.server.stdio import reply_to_malformed

pytestmark = pytest.mark.anyio

PING = {"jsonrpc": "2.0", "id": 7, "method": "ping"}

# (line sent, the error code, the id of the reply): the issue's examples, then neighbours.
MALFORMED = [
    ('{"jsonrpc": "2.0", "id": 2, "method": "ping", "params": {"x": "\\ud800"}}', -32600, 2),
    (json.dumps([PING, PING]), -32600, None),
    (json.dumps({**PING, "id": None}), -32600, None),
    (json.dumps({**PING, "id": 1.5}), -32600, None),
    ('{"jsonrpc": "2.0", "id": 3, "method": ', -32700, None),
    (json.dumps({**PING, "id": True}), -32600, None),
    ('"just a string"', -32600, None),
    (json.dumps({"jsonrpc": "2.0", "id": 4}), -32600, 4),
]


@pytest.mark.parametrize(("line", "code", "request_id"), MALFORMED)
def test_each_malformed_line_gets_the_json_rpc_error_it_deserves(
    line: str, code: int, request_id: Any
) -> None:
    reply = reply_to_malformed(line)
    assert reply is not None and reply.error.code == code and reply.id == request_id


def test_valid_messages_and_blank_lines_pass_through() -> None:
    assert reply_to_malformed(json.dumps(PING)) is None
    assert reply_to_malformed('{"jsonrpc": "2.0", "method": "notifications/initialized"}') is None
    assert (
        reply_to_malformed('{"jsonrpc": "2.0", "id": null, "error": {"code": -32700, "message": "x"}}')
        is None
    )
    assert reply_to_malformed("\n") is None


_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False),
    st.sampled_from(["", "2.0", "1.0", "5", "ping", "tools/call", "\u00e9"]),
    st.text(max_size=8),
    st.lists(st.integers(), max_size=2),
    st.fixed_dictionaries(
        {
            "code": st.one_of(st.integers(), st.floats(), st.text(max_size=3)),
            "message": st.one_of(st.text(max_size=5), st.integers()),
        }
    ),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
_MESSAGES = st.dictionaries(
    st.sampled_from(["jsonrpc", "id", "method", "params", "result", "error", "other"]),
    st.one_of(st.just("2.0"), _VALUES),
)


@settings(max_examples=400, deadline=None)
@given(_MESSAGES)
def test_a_line_passes_the_screen_only_when_the_sdk_reads_it_as_a_json_rpc_message(
    message: dict[str, Any],
) -> None:
    # The screen validates the value it parsed; the SDK validates the line: they must agree, so that
    # no line the SDK would drop without a word passes unanswered.
    line = json.dumps(message)
    try:
        mcp_types.jsonrpc_message_adapter.validate_json(line, by_name=False)
        sdk_reads_it = True
    except ValidationError:
        sdk_reads_it = False
    if reply_to_malformed(line) is None:
        assert sdk_reads_it, line


async def _reply(stdout: BufferedByteReceiveStream) -> dict[str, Any]:
    with anyio.fail_after(60):
        reply: dict[str, Any] = json.loads(await stdout.receive_until(b"\n", 10_000_000))
    return reply


async def _send(process: Process, line: str | bytes) -> None:
    assert process.stdin is not None
    await process.stdin.send(
        (line.encode("utf-8", "surrogatepass") if isinstance(line, str) else line) + b"\n"
    )


async def test_a_stdio_server_process_answers_every_malformed_line_and_keeps_serving(
    tmp_path: Path, tiny_dir: Path
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        f'profile = "tiny"\n[server]\nstore_dir = "{tmp_path / "store"}"\ntiny_dir = "{tiny_dir}"\n'
    )
    command = [sys.executable, "-m", "multimodal_mcp", "serve", "--config", str(config)]
    async with await anyio.open_process(command, env=dict(os.environ)) as process:
        assert process.stdout is not None
        stdout = BufferedByteReceiveStream(process.stdout)
        initialize = {
            "jsonrpc": "2.0",
            "id": 0,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "t", "version": "0"},
            },
        }
        await _send(process, json.dumps(initialize))
        assert (await _reply(stdout))["id"] == 0
        await _send(process, '{"jsonrpc": "2.0", "method": "notifications/initialized"}')
        for line, code, request_id in [*MALFORMED, (b"\xff\xfe not utf-8", -32700, None)]:
            await _send(process, line)
            reply = await _reply(stdout)
            assert reply["error"]["code"] == code and reply["id"] == request_id, line
        await _send(process, json.dumps(PING))
        assert await _reply(stdout) == {"jsonrpc": "2.0", "id": 7, "result": {}}
        assert process.stdin is not None
        await process.stdin.aclose()
        with anyio.fail_after(60):
            assert await process.wait() == 0


async def test_a_line_longer_than_many_reads_comes_whole_with_characters_split_between_reads() -> None:
    # stdin is read READ_CHUNK_BYTES at a time: a 6 MB data URI spans ~90 reads, and a multi-byte
    # character may be cut by one read's end; the line the SDK gets must be the line sent.
    from multimodal_mcp.server.stdio import READ_CHUNK_BYTES, _Screened, _Wire

    # 3 + 4 bytes a pair, so the pairs' characters straddle every possible offset of a read's end.
    pad = "\u00e9\U0001f600" * (3 * READ_CHUNK_BYTES // 7)
    line = json.dumps({**PING, "params": {"_meta": {"pad": pad}}}, ensure_ascii=False)
    assert len(line.encode()) > 2 * READ_CHUNK_BYTES
    read_end, write_end = os.pipe()
    null_fd = os.open(os.devnull, os.O_WRONLY)
    with os.fdopen(read_end, "rb", buffering=0) as stdin, os.fdopen(null_fd, "wb", buffering=0) as null:
        screened = _Screened(stdin, _Wire(null))

        def write() -> None:
            with os.fdopen(write_end, "wb", buffering=0) as out:
                out.write(f"{line}\n{json.dumps(PING)}\n".encode())

        async with anyio.create_task_group() as tg:
            tg.start_soon(anyio.to_thread.run_sync, write)
            got = [received async for received in screened]
    assert got == [line + "\n", json.dumps(PING) + "\n"]
