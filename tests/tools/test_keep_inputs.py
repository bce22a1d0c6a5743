"""What a tool stores of the images it receives (tools/common.py ``keep_inputs``): nothing when the
call is refused after decoding them, and readable ids when it goes ahead. Against the fake hub."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from multimodal_mcp.errors import InvalidArgument, SpendingRefused
from multimodal_mcp.imaging.store_index import INDEX_NAME
from multimodal_mcp.tools.clip_classify import ClipClassifyParams, clip_classify
from multimodal_mcp.tools.common import Services
from multimodal_mcp.tools.compare_images import CompareImagesParams, compare_images
from multimodal_mcp.tools.controlled_generate import ControlledGenerateParams, controlled_generate
from multimodal_mcp.tools.describe_image import DescribeImageParams, describe_image

from fake_hub import MODELS, fake_config, fake_handles, fake_services_for
from helpers import data_uri, photo

pytestmark = pytest.mark.anyio

EDITING = {"capabilities": {"edit_modes": ["img2img", "inpaint"], "strength": True}}


def _services(tmp_path: Path, allowed_root: Path, models: dict[str, Any], **server: Any) -> Services:
    return fake_services_for(fake_config(tmp_path, allowed_root, models, **server), fake_handles())


def stored_files(tmp_path: Path) -> list[Path]:
    """The images and records in the store (its index left out)."""
    return [p for p in (tmp_path / "store").rglob("*") if p.is_file() and not p.name.startswith(INDEX_NAME)]


def jpeg_uri(img: Image.Image) -> str:
    import base64

    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


async def test_controlled_generate_refused_after_decoding_its_init_image_stores_nothing(
    tmp_path: Path, allowed_root: Path
) -> None:
    models = {**MODELS, "fake-sd": {**MODELS["fake-sd"], **EDITING}}
    services = _services(tmp_path, allowed_root, models, limits={"max_pixel_steps_per_call": 64 * 64 * 4})
    init = jpeg_uri(photo("astronaut", 64))
    wide = data_uri(photo("coffee", None).resize((1100, 64)))
    for arguments, refusal in (
        ({"steps": 8}, "max_pixel_steps_per_call"),  # the size comes from the image, once decoded
        ({"init_image": wide, "steps": 1}, "max_pixel_steps_per_call"),  # too thin to fit the budget
        ({"mask_image": data_uri(photo("coffee", 64))}, "not a mask"),  # a colour picture
    ):
        with pytest.raises(InvalidArgument, match=refusal):
            await controlled_generate(
                ControlledGenerateParams(**{"prompt": "x", "init_image": init, **arguments}), services
            )
        assert stored_files(tmp_path) == []
    out = await controlled_generate(
        ControlledGenerateParams(prompt="x", init_image=init, steps=2, seed=1), services
    )
    assert out.init_image is not None
    data, mime = services.store.read_bytes(out.init_image.id)
    assert mime == "image/jpeg" and data.startswith(b"\xff\xd8")  # the client's own JPEG, kept
    assert services.store.record(out.images[0].id).parents == [out.init_image.id]


async def test_vision_tools_refused_before_their_work_store_nothing_and_store_once_it_starts(
    tmp_path: Path, allowed_root: Path
) -> None:
    paid = {name: {**spec, "paid": True} for name, spec in MODELS.items()}
    refusing = _services(tmp_path, allowed_root, paid, spending={"confirm": "deny"})
    image, other = data_uri(photo("astronaut", 32)), data_uri(photo("coffee", 32))
    calls = [
        (describe_image, DescribeImageParams(image=image)),
        (clip_classify, ClipClassifyParams(image=image, labels=["a cat", "a dog"])),
        (compare_images, CompareImagesParams(image_a=image, image_b=other)),
    ]
    for tool, params in calls:
        with pytest.raises(SpendingRefused):
            await tool(params, refusing)  # type: ignore[operator]
        assert stored_files(tmp_path) == [], tool.__name__

    services = _services(tmp_path, allowed_root, MODELS)
    described = await describe_image(DescribeImageParams(image=image), services)
    classified = await clip_classify(ClipClassifyParams(image=image, labels=["a", "b"]), services)
    compared = await compare_images(CompareImagesParams(image_a=image, image_b=other), services)
    for ref in (described.image, classified.image, compared.image_a, compared.image_b, compared.diff_image):
        assert services.store.open(ref.id).size == (ref.width, ref.height)
    assert services.store.record(compared.diff_image.id).parents == [compared.image_a.id, compared.image_b.id]


async def test_the_store_stays_within_max_bytes_across_calls_of_one_session(
    tmp_path: Path, tiny_dir: Path, allowed_root: Path
) -> None:
    """Each call runs as a job; its images stop being held once it returned them, so a busy session
    cannot take the store past [server.store] max_bytes (found by trying it as a user would)."""
    from mcp import Client

    from multimodal_mcp.server.app import build_server, create_services

    from helpers import cpu_only, make_config

    config = make_config(tmp_path, tiny_dir, allowed_root, store={"max_bytes": 60_000})
    server = build_server(config, create_services(config, devices=cpu_only()))
    sizes = []
    async with Client(server) as client:
        for seed in range(8):
            made = await client.call_tool(
                "generate_image", {"prompt": "noise", "seed": seed, "width": 128, "height": 128}
            )
            assert not made.is_error
            sizes.append(sum(p.stat().st_size for p in stored_files(tmp_path)))
    assert max(sizes) < 60_000 + 40_000  # at most one image's worth over, right after a write
    assert sizes[-1] <= 60_000


async def test_an_input_kept_alongside_the_model_is_readable_when_the_block_ends(
    tmp_path: Path, allowed_root: Path
) -> None:
    from multimodal_mcp.tools.common import keeping_inputs

    services = _services(tmp_path, allowed_root, MODELS)
    resolved = services.resolver.resolve(data_uri(photo("astronaut", 32)))
    async with keeping_inputs(services, resolved):
        pass
    assert services.store.exists(resolved.record.id)
    other = services.resolver.resolve(data_uri(photo("chelsea", 32)))
    with pytest.raises(InvalidArgument, match="refused"):  # itself, not an exception group
        async with keeping_inputs(services, other):
            raise InvalidArgument("refused")


async def test_concurrent_calls_give_their_results_in_order_and_an_error_as_itself() -> None:
    import anyio

    from multimodal_mcp.tools.common import concurrently

    second_done = anyio.Event()

    async def first() -> str:
        await second_done.wait()  # finishes last
        return "first"

    async def second() -> str:
        second_done.set()
        return "second"

    async def failing() -> str:
        raise InvalidArgument("bad")

    with anyio.fail_after(10):
        assert await concurrently([first, second]) == ["first", "second"]
        with pytest.raises(InvalidArgument, match="bad"):
            await concurrently([second, failing])
