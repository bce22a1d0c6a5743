"""Qwen2-VL through the transformers backend: several images in one question, natively."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from PIL import Image

from multimodal_mcp.backends.hf import backend
from multimodal_mcp.backends.vlm import images_per_question
from multimodal_mcp.config import Config, ModelSpec

from helpers import call_error, call_ok, data_uri, photo, qwen_vl_without_torchvision


def _vlm(source: str) -> ModelSpec:
    return ModelSpec(task="vlm", backend="transformers", source=source)


def test_qwen_vl_models_take_several_images_per_question_and_llava_one(config: Config) -> None:
    assert images_per_question(_vlm("Qwen/Qwen2.5-VL-7B-Instruct")) == 4
    assert images_per_question(_vlm("Qwen/Qwen2-VL-2B-Instruct")) == 4
    assert images_per_question(_vlm("llava-hf/llava-v1.6-mistral-7b-hf")) == 1
    assert images_per_question(_vlm("tiny:vlm")) == 1
    for name, wanted in (("tiny-qwen2-vl", 4), ("tiny-vlm", 1)):
        caps = backend.capabilities(name, config.models[name], config)
        assert caps.images_per_request == wanted


@pytest.fixture
def seen(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[dict[str, Any]]]:
    """What each Qwen2-VL generate call received: the images (rows of image_grid_thw) and the image
    markers in the prompt. The tiny model's processor is assembled where torchvision is missing."""
    from transformers import Qwen2VLForConditionalGeneration

    qwen_vl_without_torchvision(monkeypatch)
    calls: list[dict[str, Any]] = []
    original = Qwen2VLForConditionalGeneration.generate

    def spy(self: Any, *args: Any, **kwargs: Any) -> Any:
        ids = kwargs["input_ids"][0].tolist()
        calls.append(
            {
                "images": int(kwargs["image_grid_thw"].shape[0]),
                "sizes": [tuple(int(v) for v in row) for row in kwargs["image_grid_thw"]],
                "starts": ids.count(self.config.vision_start_token_id),
                "image_tokens": ids.count(self.config.image_token_id),
            }
        )
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Qwen2VLForConditionalGeneration, "generate", spy)
    yield calls


async def test_describe_image_runs_on_qwen2_vl(client: Client, seen: list[dict[str, Any]]) -> None:
    out = await call_ok(
        client, "describe_image", {"image": data_uri(photo("astronaut", 64)), "model": "tiny-qwen2-vl"}
    )
    assert out["model"] == "tiny-qwen2-vl" and isinstance(out["text"], str) and out["tokens"] > 0
    (call,) = seen
    assert call["images"] == 1 and call["starts"] == 1 and call["image_tokens"] > 0


async def test_compare_images_sends_qwen2_vl_both_images_not_a_composite(
    client: Client, seen: list[dict[str, Any]]
) -> None:
    a = photo("astronaut", 64)
    b = a.copy()
    b.paste((255, 0, 0), (10, 10, 30, 30))
    args = {"image_a": data_uri(a), "image_b": data_uri(b), "describe": True, "model": "tiny-qwen2-vl"}
    out = await call_ok(client, "compare_images", args)
    assert out["model"] == "tiny-qwen2-vl" and out["narrative"] is not None
    (call,) = seen
    # Two pictures of 64x64 each, not one 128x64 composite: two grids, two vision blocks.
    assert call["images"] == 2 and call["starts"] == 2
    assert call["sizes"][0] == call["sizes"][1]


async def test_without_torchvision_a_qwen2_vl_model_is_refused_naming_it(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    from multimodal_mcp.backends import vlm

    monkeypatch.setattr(vlm, "_missing_torchvision", lambda: True)
    image = data_uri(Image.new("RGB", (32, 32), (10, 200, 10)))
    message = await call_error(client, "describe_image", {"image": image, "model": "tiny-qwen2-vl"})
    import torch

    minor = int(torch.__version__.split(".")[1])
    assert "needs torchvision" in message
    # The release paired with this torch, from PyTorch's index for its build (a plain pip install
    # torchvision would replace a CPU torch with PyPI's CUDA build).
    index = "cpu" if torch.version.cuda is None else "cu" + torch.version.cuda.replace(".", "")
    assert (
        f"pip install 'torchvision==0.{minor + 15}.*' --index-url https://download.pytorch.org/whl/{index}"
        in message
    )


def test_p_yes_on_qwen2_vl_scores_the_answers_after_the_images_tokens(
    config: Config, tiny_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    from multimodal_mcp.backends.base import LoadContext
    from multimodal_mcp.backends.vlm import load_vlm

    qwen_vl_without_torchvision(monkeypatch)
    model = load_vlm("tiny-qwen2-vl", config.models["tiny-qwen2-vl"], LoadContext("cpu", tiny_dir))
    image, question = photo(size=56), "Is there a dog? Answer yes or no."
    p = model.yes_probability(image, question)

    # Independently: the model's own loss over each answer's tokens, with the whole prompt rebuilt.
    def log_likelihood(answer: str) -> float:
        text = model._prompt(question, 1)
        prompt = model.processor(images=image, text=text, return_tensors="pt")
        both = model.processor(images=image, text=text + answer, return_tensors="pt")
        answer_tokens = both["input_ids"].shape[1] - prompt["input_ids"].shape[1]
        labels = torch.full_like(both["input_ids"], -100)
        labels[:, -answer_tokens:] = both["input_ids"][:, -answer_tokens:]
        with torch.inference_mode():
            out = model.model(**both, labels=labels)
        return -float(out.loss) * answer_tokens

    expected = 1 / (1 + math.exp(log_likelihood("No") - log_likelihood("Yes")))
    assert math.isclose(p, expected, rel_tol=1e-4, abs_tol=1e-6) and 0.0 < p < 1.0
