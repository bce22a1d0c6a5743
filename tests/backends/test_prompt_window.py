"""The prompt text past a text encoder's window, reported as the caller wrote it: the tiny
pipelines' own CLIP and T5 tokenizers, whose small vocabularies split most words into pieces."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from multimodal_mcp.backends.prompt_window import Dropped, dropped_text
from multimodal_mcp.config import Config
from multimodal_mcp.server.app import build_server, create_services

from helpers import call_ok, cpu_only

pytestmark = [pytest.mark.model, pytest.mark.anyio]

PROMPT = "a photo shot on 35mm film of the keeper's cottage, and the garden"


class _NoOffsets:
    """A tokenizer without an offsets mapping (a slow, Python tokenizer)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def __call__(self, text: str, **kwargs: Any) -> Any:
        if kwargs.get("return_offsets_mapping"):
            raise NotImplementedError("return_offset_mapping is not available for python tokenizers")
        return self.tokenizer(text, **kwargs)


def _tokenizer(tiny_dir: Path, folder: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_dir / folder)


def _count(tokenizer: Any, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False).input_ids)


@pytest.mark.parametrize("folder", ["sd15/tokenizer", "flux/tokenizer_2"])
@pytest.mark.parametrize("offsets", [True, False], ids=["offsets", "word-count"])
def test_the_dropped_tail_is_the_prompt_as_written_from_the_start_of_the_cut_word(
    tiny_dir: Path, folder: str, offsets: bool
) -> None:
    tokenizer = _tokenizer(tiny_dir, folder)
    wrapped = tokenizer if offsets else _NoOffsets(tokenizer)
    # A cut on a word boundary: the window ends with "on".
    room = _count(tokenizer, "a photo shot on")
    assert dropped_text(wrapped, PROMPT, room) == Dropped(
        "35mm film of the keeper's cottage, and the garden", False
    )
    # A cut inside "35mm" and inside "keeper's": the tail starts at the word, read in part.
    room = _count(tokenizer, "a photo shot on 3")
    assert dropped_text(wrapped, PROMPT, room) == Dropped(
        "35mm film of the keeper's cottage, and the garden", True
    )
    room = _count(tokenizer, "a photo shot on 35mm film of the kee")
    assert dropped_text(wrapped, PROMPT, room) == Dropped("keeper's cottage, and the garden", True)
    assert dropped_text(wrapped, PROMPT, _count(tokenizer, PROMPT)) is None


async def test_generate_image_reports_each_encoders_cut_as_written(config: Config) -> None:
    words = "a small red house with a blue car near the sea and a white horse on the road " * 6
    prompt = words + "shot on 35mm film near the keeper's cottage"
    async with Client(build_server(config, create_services(config, devices=cpu_only()))) as client:
        out = await call_ok(client, "generate_image", {"prompt": prompt, "model": "tiny-flux", "seed": 1})
    cuts = [a for a in out["adjustments"] if a["argument"] == "prompt"]
    assert len(cuts) == 2  # CLIP's 77 tokens and T5's 32
    for cut in cuts:
        assert prompt.endswith(cut["dropped"]) and prompt[-len(cut["dropped"]) - 1] == " "
        assert repr(cut["dropped"]) in cut["message"]
        assert "shot on 35mm film near the keeper's cottage" in cut["dropped"]  # not "3 5 mm", "keeper 's"
