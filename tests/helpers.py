"""Test helpers shared across test modules."""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from mcp import Client
from mcp.types import BlobResourceContents, CallToolResult, TextContent
from PIL import Image
from skimage import data as skdata

from multimodal_mcp.config import Config, load_config
from multimodal_mcp.pool.devices import Device, GiB


def photo(name: str = "astronaut", size: int | None = 128) -> Image.Image:
    """A public-domain test photo from scikit-image, optionally downscaled to ``size`` px square."""
    img = Image.fromarray(np.asarray(getattr(skdata, name)()))
    return img.resize((size, size), Image.Resampling.LANCZOS) if size else img


def encoded(img: Image.Image, fmt: str, **kwargs: Any) -> bytes:
    """``img`` saved as ``fmt`` with Pillow's save options ``kwargs`` (icc_profile, exif, ...)."""
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def transparent_disc(hidden: tuple[int, int, int], size: int = 64) -> Image.Image:
    """A dark disc on a fully transparent background whose hidden colour is ``hidden``."""
    from PIL import ImageDraw

    img = Image.new("RGBA", (size, size), (*hidden, 0))
    ImageDraw.Draw(img).ellipse((16, 16, size - 16, size - 16), fill=(20, 20, 20, 255))
    return img


def swapped_profile(padding: int = 0) -> bytes:
    """An RGB ICC profile whose red and blue primaries are exchanged (the file's red is sRGB blue),
    optionally padded with ``padding`` bytes at its end (the header's size updated)."""
    import struct

    from PIL import ImageCms

    profile = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    count = struct.unpack(">I", profile[128:132])[0]
    entries = {bytes(profile[132 + 12 * i : 136 + 12 * i]): 132 + 12 * i for i in range(count)}
    r, b = entries[b"rXYZ"], entries[b"bXYZ"]
    profile[r + 4 : r + 12], profile[b + 4 : b + 12] = profile[b + 4 : b + 12], profile[r + 4 : r + 12]
    if padding:
        profile += b"\0" * padding
        profile[0:4] = struct.pack(">I", len(profile))
    return bytes(profile)


def b64_png(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def data_uri(img: Image.Image) -> str:
    return f"data:image/png;base64,{b64_png(img)}"


def text_of(result: CallToolResult) -> str:
    return " ".join(block.text for block in result.content if isinstance(block, TextContent))


async def call_ok(client: Client, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    result = await client.call_tool(tool, arguments)
    assert not result.is_error, text_of(result)
    assert result.structured_content is not None
    return result.structured_content


async def call_error(client: Client, tool: str, arguments: dict[str, Any]) -> str:
    result = await client.call_tool(tool, arguments)
    assert result.is_error, f"{tool} unexpectedly succeeded: {text_of(result)}"
    return text_of(result)


async def read_png(client: Client, uri: str) -> bytes:
    contents = (await client.read_resource(uri)).contents
    assert len(contents) == 1 and isinstance(contents[0], BlobResourceContents)
    assert contents[0].mime_type == "image/png"
    return base64.b64decode(contents[0].blob)


async def read_image(client: Client, uri: str) -> Image.Image:
    """A stored image of any stored format (inputs keep their own JPEG/WebP/PNG encoding), decoded."""
    contents = (await client.read_resource(uri)).contents
    assert len(contents) == 1 and isinstance(contents[0], BlobResourceContents)
    img = Image.open(io.BytesIO(base64.b64decode(contents[0].blob)))
    assert f"image/{img.format.lower()}" == contents[0].mime_type
    img.load()
    return img


def open_png(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    assert img.format == "PNG"
    img.load()
    return img


def cpu_only(budget_gib: float = 8) -> list[Device]:
    """The CPU as the only device, with a fixed budget (tests must not depend on the machine's RAM)."""
    return [Device("cpu", "cpu", "cpu", int(budget_gib * GiB), int(budget_gib * GiB))]


# On a CUDA machine, MMCP_TEST_TORCH_DEVICE=cuda makes the "fake" GPUs real: same budgets, real moves.
TEST_TORCH_DEVICE = os.environ.get("MMCP_TEST_TORCH_DEVICE", "cpu")


def fake_gpu(name: str = "fake-gpu:0", budget_bytes: int = 10 * 1024 * 1024) -> Device:
    """A GPU with a small injected budget. Its tensors live in CPU memory unless
    MMCP_TEST_TORCH_DEVICE says otherwise, so placement and offloading are tested on any machine."""
    return Device(name, TEST_TORCH_DEVICE, "gpu", budget_bytes, budget_bytes)


def make_config(tmp_path: Path, tiny_dir: Path, allowed_root: Path, **server: Any) -> Config:
    """The tiny profile with a private store and the session's tiny models."""
    return load_config(
        profile="tiny",
        cache_dir=tmp_path / "cache",
        home=tmp_path,
        default_allowed_roots=[allowed_root],
        overrides={"store_dir": tmp_path / "store", "tiny_dir": tiny_dir, **server},
    )


def qwen_vl_without_torchvision(monkeypatch: Any) -> None:
    """Let the tiny Qwen2-VL load where torchvision is not installed (here and in CI).

    transformers builds a Qwen2VLProcessor only together with its video processor, which needs
    torchvision; without it the server refuses the model (a test says so). For the tiny Qwen2-VL the
    processor is assembled from its saved parts instead (image processor, tokenizer, chat template:
    what its ``__call__`` uses for images), and the refusal is lifted. With torchvision installed this
    does nothing and the real loading path runs.
    """
    if importlib.util.find_spec("torchvision") is not None:
        return
    import transformers
    from transformers import AutoImageProcessor, AutoTokenizer, Qwen2VLProcessor

    from multimodal_mcp.backends import vlm

    original = transformers.AutoProcessor.from_pretrained

    def from_pretrained(source: Any, *args: Any, **kwargs: Any) -> Any:
        folder = Path(str(source))
        config = folder / "config.json"
        if not config.is_file() or json.loads(config.read_text()).get("model_type") != "qwen2_vl":
            return original(source, *args, **kwargs)
        processor = Qwen2VLProcessor.__new__(Qwen2VLProcessor)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        processor.image_processor = AutoImageProcessor.from_pretrained(folder)
        processor.tokenizer, processor.video_processor = tokenizer, None
        processor.chat_template = (folder / "chat_template.jinja").read_text()
        processor.image_token, processor.video_token = "<|image_pad|>", "<|video_pad|>"
        processor.image_token_id = tokenizer.convert_tokens_to_ids("<|image_pad|>")
        processor.video_token_id = tokenizer.convert_tokens_to_ids("<|video_pad|>")
        return processor

    monkeypatch.setattr(transformers.AutoProcessor, "from_pretrained", from_pretrained)
    monkeypatch.setattr(vlm, "_missing_torchvision", lambda: False)
