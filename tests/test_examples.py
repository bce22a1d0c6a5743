"""The examples are run as users run them: a fresh process that starts the server over stdio."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).parent.parent / "examples").glob("*.py"))
# What a script must print besides image ids. On tiny the verification scores are noise, so the agent
# loop must end by its budget (4 rounds) and still compare the first and last images.
EXPECTED = {
    "agent_loop": ["round 1: image://", "round 4: image://", "budget spent", "first vs last: image://"]
}


@pytest.mark.parametrize("script", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs_on_the_tiny_profile(script: Path, tmp_path: Path, tiny_dir: Path) -> None:
    cache = tmp_path / "cache" / "multimodal-mcp"
    cache.mkdir(parents=True)
    (cache / "tiny-models").symlink_to(tiny_dir)
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"), "HOME": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=300, env=env, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "image://" in result.stdout
    for expected in EXPECTED.get(script.stem, []):
        assert expected in result.stdout, result.stdout[-3000:]
