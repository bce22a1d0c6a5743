"""The gallery view when its generation outlasts the server's wait and becomes a job."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from multimodal_mcp.tools.common import Services

from browser_fakes import steerable_services
from fake_hub import solid_colour


@pytest.fixture
def view_services(tmp_path: Path, allowed_root: Path) -> Services:
    """Generations take 1 s; the server hands back a job after 0.1 s."""
    return steerable_services(tmp_path, allowed_root, generation_seconds=1.0, pool={"job_wait_seconds": 0.1})


async def test_a_generation_that_became_a_job_is_followed_to_its_images(host) -> None:  # type: ignore[no-untyped-def]
    pending = await host.show("generate_image", {"prompt": "a red square", "seed": 3})
    assert "job" in pending.structured_content and "images" not in pending.structured_content
    followed = await host.next_call("get_job", 0)
    assert followed.arguments["job_id"] == pending.structured_content["job"]["id"]
    (image,) = followed.result.structured_content["result"]["images"]
    seen = await host.pixels(f'#result .card[data-id="{image["id"]}"] img')
    centre = np.asarray(seen)[seen.height // 2, seen.width // 2]
    assert np.abs(centre.astype(int) - np.array(solid_colour(3))).max() <= 6
    assert not host.problems
