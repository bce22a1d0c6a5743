"""Placement by node labels on a simulated two-node cluster (marker ``ray``; a subprocess of its own)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.timeout(240)]


def test_a_family_asking_for_a_node_label_runs_on_the_node_that_has_it(
    tmp_path: Path, tiny_dir: Path
) -> None:
    pytest.importorskip("ray.serve")
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
    line = next(line for line in done.stdout.splitlines() if line.startswith("PLACEMENT "))
    found = json.loads(line.removeprefix("PLACEMENT "))
    assert found["replica"] == found["worker"] != found["head"]
    assert sum(found["scores"]) == pytest.approx(1)
