"""The status board's bookkeeping (no Ray: the actor's class in this process)."""

from __future__ import annotations

import time

from multimodal_mcp.cluster.status import StatusBoard, board_name


def test_the_board_keeps_each_replicas_latest_record_and_forgets_the_long_silent() -> None:
    board = StatusBoard(forget_after=0.2)
    board.publish("r1", {"replica": "r1", "loaded": []})
    board.publish("r2", {"replica": "r2", "loaded": []})
    board.publish("r1", {"replica": "r1", "loaded": ["tiny-clip"]})
    found = sorted(board.records(), key=lambda r: r[1]["replica"])
    assert [record for _, record in found] == [
        {"replica": "r1", "loaded": ["tiny-clip"]},
        {"replica": "r2", "loaded": []},
    ]
    assert all(0 <= age < 0.2 for age, _ in found)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        board.publish("r2", {"replica": "r2", "loaded": []})
        if [record["replica"] for _, record in board.records()] == ["r2"]:
            break
    assert [record["replica"] for _, record in board.records()] == ["r2"], "r1 was forgotten"
    assert board_name("multimodal-mcp") == "multimodal-mcp-replica-status"
