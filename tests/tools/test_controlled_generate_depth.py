"""controlled_generate with control_type="depth" from a photo: the map made by the depth model."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
from mcp import Client
from PIL import Image

from multimodal_mcp.config import Config, ModelSpec
from multimodal_mcp.server.app import build_server, create_services

from helpers import call_error, call_ok, cpu_only, data_uri, photo, read_image


async def test_a_photo_becomes_a_depth_map_of_the_output_size_which_is_stored_and_returned(
    client: Client, tiny_dir: Path
) -> None:
    from transformers import pipeline

    source = photo("astronaut", 96).crop((0, 16, 96, 80))  # 96x64: fitted to 96x64 output
    args = {"prompt": "a room", "control_image": data_uri(source), "control_type": "depth", "seed": 2}
    out = await call_ok(client, "controlled_generate", {**args, "width": 96, "height": 64})
    (used,) = out["controls"]
    assert used["controlnet"] == "tiny-controlnet-depth"
    assert used["control_image"]["id"] != used["input_image"]["id"]  # made from the photo, stored
    stored = await read_image(client, out["control_image"]["uri"])
    assert stored.size == (96, 64)
    rgb = np.asarray(stored.convert("RGB")).astype(int)
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()  # grey levels
    assert rgb.min() == 0 and rgb.max() == 255  # stretched to the full range
    # The same depth, up to scale, as transformers' own depth-estimation pipeline gives.
    estimator = pipeline("depth-estimation", model=str(tiny_dir / "depth"), device="cpu")
    expected = np.asarray(estimator(source.convert("RGB"))["depth"], dtype=float)
    assert expected.shape == (64, 96)
    assert np.corrcoef(expected.ravel(), rgb[..., 0].ravel())[0, 1] > 0.99


async def test_preprocess_false_uses_a_prepared_depth_map_as_given(client: Client) -> None:
    depth = Image.linear_gradient("L").resize((64, 64)).convert("RGB")
    args = {"prompt": "a hall", "control_image": data_uri(depth), "control_type": "depth", "seed": 1}
    given = await call_ok(client, "controlled_generate", {**args, "preprocess": False})
    assert given["control_image"]["id"] == given["controls"][0]["input_image"]["id"]
    made = await call_ok(client, "controlled_generate", args)
    assert made["control_image"]["id"] != made["controls"][0]["input_image"]["id"]
    several = await call_ok(
        client,
        "controlled_generate",
        {
            "prompt": "a hall",
            "seed": 1,
            "controls": [{"image": data_uri(depth), "type": "depth", "preprocess": False}],
        },
    )
    assert several["control_image"]["id"] == given["control_image"]["id"]


@pytest.fixture
async def pose_client(config: Config) -> AsyncIterator[Client]:
    """The tiny profile with a pose ControlNet (canny weights) and no depth model."""
    pose = config.models["tiny-controlnet-depth"].model_copy(update={"control_type": "pose"})
    models: dict[str, ModelSpec] = {
        **{name: spec for name, spec in config.models.items() if spec.task != "depth"},
        "tiny-controlnet-pose": pose,
    }
    defaults = {key: name for key, name in config.defaults.items() if key != "depth"}
    changed = config.model_copy(update={"models": models, "defaults": defaults})
    async with Client(build_server(changed, create_services(changed, devices=cpu_only()))) as c:
        yield c


async def test_maps_the_server_cannot_make_from_a_photo_are_refused_naming_what_to_use(
    pose_client: Client,
) -> None:
    picture = data_uri(photo("astronaut", 64))
    pose = await call_error(
        pose_client,
        "controlled_generate",
        {"prompt": "a dancer", "control_image": picture, "control_type": "pose"},
    )
    assert "OpenPose" in pose and "controlnet_aux" in pose and "lllyasviel/Annotators" in pose
    assert "preprocess=false" in pose
    depth = await call_error(
        pose_client,
        "controlled_generate",
        {"prompt": "a room", "control_image": picture, "control_type": "depth"},
    )
    assert "depth-estimation model" in depth and "[defaults] depth" in depth and "preprocess=false" in depth
    out = await call_ok(
        pose_client,
        "controlled_generate",
        {
            "prompt": "a dancer",
            "control_image": picture,
            "control_type": "pose",
            "preprocess": False,
            "seed": 1,
        },
    )
    assert out["controls"][0]["controlnet"] == "tiny-controlnet-pose"


def test_a_thin_picture_gets_a_depth_map_of_its_own_size(config: Config, tiny_dir: Path) -> None:
    from multimodal_mcp.backends.base import LoadContext
    from multimodal_mcp.backends.depth import load_depth

    model = load_depth("tiny-depth", config.models["tiny-depth"], LoadContext("cpu", tiny_dir))
    # Thinner than 1:2: estimated padded with its edge pixels (the processor would round a thin
    # side to no patch), the padding cut off again.
    for size in [(96, 8), (3, 200), (64, 48), (1, 1)]:
        made = model.depth_map(photo("astronaut", 64).resize(size))
        assert made.size == size and made.mode == "RGB"
