"""The examples are run as users run them: a fresh process that starts the server over stdio.

Each example runs once, on the tiny profile, from a scratch working directory; what it prints and
the files it writes (under ``example-output/``) are then checked against what it claims to show.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from multimodal_mcp.tools.describe_image import DescribeImageParams

EXAMPLES = sorted(p for p in (Path(__file__).parent.parent / "examples").glob("*.py") if p.stem[0] != "_")


def image_ids(stdout: str) -> list[str]:
    return re.findall(r"image://([0-9a-f]{16})", stdout)


def stored_png(path: Path, stdout: str) -> Image.Image:
    """The file is a PNG and is the very image the server named in its output (ids are content hashes)."""
    data = path.read_bytes()
    assert hashlib.sha256(data).hexdigest()[:16] in image_ids(stdout), f"{path.name} is not an image it named"
    image = Image.open(path)
    assert image.format == "PNG"
    return image


def check_sdxl_garden(stdout: str, out: Path) -> None:
    assert "with tiny-sdxl (seed 42, 64x64, 4 steps, dpm++, guidance 7.5)" in stdout
    image = stored_png(out / "japanese_garden.png", stdout)
    assert image.size == (64, 64)
    assert "Negative prompt: blurry, low quality, distorted" in image.info["parameters"]
    assert "stabilityai/stable-diffusion-xl-base-1.0" in stdout and "--profile default" in stdout


def check_flux_schnell_cityscape(stdout: str, out: Path) -> None:
    assert "with tiny-flux (seed 2024, 64x64, 4 steps, flow_euler, guidance 0.0)" in stdout
    image = stored_png(out / "cyberpunk_city.png", stdout)
    assert image.size == (64, 64)
    assert image.info["parameters"].startswith(
        "A cyberpunk cityscape at sunset, neon reflections on wet streets"
    )
    assert "black-forest-labs/FLUX.1-schnell" in stdout


def check_canny_skyscraper(stdout: str, out: Path) -> None:
    assert "A futuristic glass skyscraper" in stored_png(out / "skyscraper.png", stdout).info["parameters"]
    edges = np.asarray(stored_png(out / "skyscraper_edges.png", stdout))
    assert set(np.unique(edges)) == {0, 255}, "the edge map is a binary canny map"


def check_clip_zero_shot(stdout: str, out: Path) -> None:
    scores = dict(re.findall(r"^(a photo of a (?:cat|dog|car)): ([0-9.]+)$", stdout, re.MULTILINE))
    assert set(scores) == {"a photo of a cat", "a photo of a dog", "a photo of a car"}
    values = [float(v) for v in scores.values()]
    assert values == sorted(values, reverse=True) and sum(values) == pytest.approx(1, abs=0.002)
    assert len(set(image_ids(stdout))) == 1


def check_receipt_extraction(stdout: str, out: Path) -> None:
    receipt = Image.open(out / "receipt.png")
    assert receipt.getextrema()[0] == (0, 255), "black text on white"
    assert re.search(r"^answer: \S", stdout, re.MULTILINE)
    assert "the receipt says: total $23.47, date 2024-03-15" in stdout
    if "structured: " in stdout:  # the model answered JSON that matches the schema
        assert "response_schema" in DescribeImageParams.model_fields
        fields, _ = json.JSONDecoder().raw_decode(stdout.split("structured: ", 1)[1])
        assert {"total", "date"} <= set(fields)
    elif "response_schema" in DescribeImageParams.model_fields:  # the tiny model cannot: asked again
        assert stdout.count("[describe_image]") == 2
    else:
        assert stdout.count("[describe_image]") == 1


def check_before_after(stdout: str, out: Path) -> None:
    before = np.asarray(stored_png(out / "before.png", stdout).convert("RGB"))
    after = np.asarray(stored_png(out / "after.png", stdout).convert("RGB"))
    assert before.shape == after.shape == (64, 96, 3) and not np.array_equal(before, after)
    stored_png(out / "diff.png", stdout)
    assert re.search(r"changed regions \(x0, y0, x1, y1\): \[\(\d+", stdout), "the edit was found"
    assert "every changed region inside the mask: True" in stdout
    assert "What changed (tiny-vlm):" in stdout


def check_agent_loop(stdout: str, out: Path) -> None:
    # On tiny the verification scores are noise: the loop must end by its budget (4 rounds) and still
    # compare the first and last images.
    for expected in ["round 1: image://", "round 4: image://", "budget spent", "first vs last: image://"]:
        assert expected in stdout, stdout[-3000:]


def check_generate_and_verify(stdout: str, out: Path) -> None:
    tools = re.findall(r"^\[(\w+)\]", stdout, re.MULTILINE)
    assert tools == ["generate_image", "clip_classify", "describe_image", "generate_image", "compare_images"]
    assert len(set(image_ids(stdout))) == 3  # two generations and a heat map


CHECKS: dict[str, Callable[[str, Path], None]] = {
    name.removeprefix("check_"): check for name, check in globals().items() if name.startswith("check_")
}


@pytest.mark.parametrize("script", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs_on_the_tiny_profile_and_shows_what_it_says(
    script: Path, tmp_path: Path, tiny_dir: Path
) -> None:
    cache = tmp_path / "cache" / "multimodal-mcp"
    cache.mkdir(parents=True)
    (cache / "tiny-models").symlink_to(tiny_dir)
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"), "HOME": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "image://" in result.stdout
    CHECKS.get(script.stem, lambda stdout, out: None)(result.stdout, tmp_path / "example-output")
