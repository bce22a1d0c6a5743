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
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
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
    assert re.search(
        r"^OCR checked \d+ number\(s\) and quote\(s\) of the grounded answer$", stdout, re.MULTILINE
    )
    if "structured: " in stdout:  # the model answered JSON that matches the schema
        assert "response_schema" in DescribeImageParams.model_fields
        fields, _ = json.JSONDecoder().raw_decode(stdout.split("structured: ", 1)[1])
        assert {"total", "date"} <= set(fields)
    elif "response_schema" in DescribeImageParams.model_fields:  # the tiny model cannot: asked again
        assert stdout.count("[describe_image]") == 3  # and once more with ground=True
    else:
        assert stdout.count("[describe_image]") == 2


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
    for expected in [
        "round 1: image://",
        "claims held (facts from rules",
        '[text] the image shows the text "KEEP OUT": FAILED (rapidocr: OCR found no text',
        "[count] there are two boats:",
        "round 4: image://",
        "budget spent",
        "first vs last: image://",
    ]:
        assert expected in stdout, stdout[-3000:]


def check_generate_and_verify(stdout: str, out: Path) -> None:
    tools = re.findall(r"^\[(\w+)\]", stdout, re.MULTILINE)
    assert tools == ["generate_image", "clip_classify", "describe_image", "generate_image", "compare_images"]
    assert len(set(image_ids(stdout))) == 3  # two generations and a heat map


CHECKS: dict[str, Callable[[str, Path], None]] = {
    name.removeprefix("check_"): check for name, check in globals().items() if name.startswith("check_")
}


EXAMPLES_AT_ONCE = 2
"""Examples run at the same time. Each is a client process and a server process taking turns, about
one core's worth of work, mostly imports and model loads: on two cores two at a time take about
40% less wall time than one after another."""


Runs = dict[str, tuple[Path, "Future[subprocess.CompletedProcess[str]]"]]
"""An example's stem -> (its scratch directory, its run)."""


@pytest.fixture(scope="module")
def example_runs(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, tiny_dir: Path
) -> Iterator[Runs]:
    """Every selected example started at once, EXAMPLES_AT_ONCE at a time, in its own scratch
    directory: stem -> (directory, its finished run). Each test waits for its own."""
    chosen = {
        item.callspec.params["script"]
        for item in request.session.items
        if isinstance(item, pytest.Function)
        and item.originalname == "test_example_runs_on_the_tiny_profile_and_shows_what_it_says"
    }
    selected = [script for script in EXAMPLES if script in chosen]
    runs: Runs = {}
    with ThreadPoolExecutor(EXAMPLES_AT_ONCE) as pool:
        for script in selected:
            workdir = tmp_path_factory.mktemp(f"example-{script.stem}")
            runs[script.stem] = (workdir, pool.submit(_run_example, script, workdir, tiny_dir))
        yield runs
        for _, run in runs.values():
            run.cancel()


def _run_example(script: Path, workdir: Path, tiny_dir: Path) -> subprocess.CompletedProcess[str]:
    """Run ``script`` as a user would, from ``workdir``, with the session's tiny models."""
    cache = workdir / "cache" / "multimodal-mcp"
    cache.mkdir(parents=True)
    (cache / "tiny-models").symlink_to(tiny_dir)
    env = {**os.environ, "XDG_CACHE_HOME": str(workdir / "cache"), "HOME": str(workdir)}
    # One torch thread in each server, as the in-process tests use: two examples share the cores.
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=workdir,
        check=False,
    )


@pytest.mark.parametrize("script", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs_on_the_tiny_profile_and_shows_what_it_says(script: Path, example_runs: Runs) -> None:
    workdir, run = example_runs[script.stem]
    result = run.result()
    assert result.returncode == 0, result.stderr[-3000:]
    assert "image://" in result.stdout
    CHECKS.get(script.stem, lambda stdout, out: None)(result.stdout, workdir / "example-output")
