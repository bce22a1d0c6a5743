"""Placement by node labels, and the loss of a node, on a simulated two-node cluster (marker ``ray``;
a subprocess of its own)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.timeout(240)]


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory: pytest.TempPathFactory, tiny_dir: Path) -> dict[str, dict]:  # type: ignore[type-arg]
    """What tests/cluster/two_nodes.py printed: its PLACEMENT and NODELOSS lines, parsed."""
    pytest.importorskip("ray.serve")
    tmp_path = tmp_path_factory.mktemp("two-nodes")
    here = Path(__file__).parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(here.parent), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, str(here / "two_nodes.py"), str(tiny_dir), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=220,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [
        line.split(" ", 1)
        for line in done.stdout.splitlines()
        if line.startswith(("PLACEMENT ", "NODELOSS "))
    ]
    return {kind: json.loads(found) for kind, found in lines}


def test_a_family_asking_for_a_node_label_runs_on_the_node_that_has_it(two_nodes: dict) -> None:  # type: ignore[type-arg]
    found = two_nodes["PLACEMENT"]
    assert found["replica"] == found["worker"] != found["head"]
    assert sum(found["scores"]) == pytest.approx(1)


def test_losing_the_node_of_a_running_call_is_a_clear_error_soon_not_a_hang(two_nodes: dict) -> None:  # type: ignore[type-arg]
    lost = two_nodes["NODELOSS"]
    assert lost["error"] == "BackendError", lost
    assert "try again" in lost["message"], lost
    assert not any(
        word in lost["message"].lower() for word in ("traceback", "pid", "127.0.0", "actor", "node_id")
    ), lost
    assert lost["seconds_after_removal"] <= 20 + 5, "within the engine's silence timeout (20 s)"
