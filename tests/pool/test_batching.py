from __future__ import annotations

import math
from pathlib import Path

import anyio
import numpy as np
import pytest
from mcp import Client

from multimodal_mcp.config import Config
from multimodal_mcp.pool import ModelPool
from multimodal_mcp.server.app import build_server, create_services

from helpers import call_ok, cpu_only, data_uri, make_config, photo

LABELS = ["a cat", "a dog", "a rocket", "coffee", "a person"]


def _direct_probabilities(config: Config, image: object, texts: list[str]) -> list[float]:
    import torch
    from transformers import AutoProcessor, CLIPModel

    path = config.server.tiny_dir / "clip"
    model, processor = CLIPModel.from_pretrained(path), AutoProcessor.from_pretrained(path)
    inputs = processor(text=texts, images=[image], return_tensors="pt", padding=True)
    with torch.inference_mode():
        return model(**inputs).logits_per_image[0].softmax(-1).tolist()


async def test_concurrent_classifications_share_batches_and_match_unbatched_results(config: Config) -> None:
    pool = ModelPool(config, cpu_only())
    images = [photo(name, 64) for name in ("astronaut", "chelsea", "coffee")] * 4
    results: list[list[float]] = [[] for _ in images]

    async def classify(index: int) -> None:
        results[index] = await pool.clip("tiny-clip").classify(images[index], LABELS)

    async with pool.running(), anyio.create_task_group() as tg:
        for index in range(len(images)):
            tg.start_soon(classify, index)
    stats = pool.clip("tiny-clip").stats()
    assert stats["requests"] == 12 and stats["batches"] < 12
    for image, probabilities in zip(images[:3], results[:3], strict=True):
        expected = _direct_probabilities(config, image, LABELS)
        assert all(math.isclose(a, b, abs_tol=1e-5) for a, b in zip(probabilities, expected, strict=True))


async def test_a_repeated_label_set_skips_the_text_encoder(config: Config) -> None:
    pool = ModelPool(config, cpu_only())
    async with pool.running():
        batcher = pool.clip("tiny-clip")
        await batcher.classify(photo("astronaut", 32), LABELS)
        assert (batcher.cache_hits, batcher.cache_misses) == (0, 5)
        encoded: list[int] = []
        async with pool.use("tiny-clip") as model:
            original = model.encode_texts
            model.encode_texts = lambda texts: encoded.append(len(texts)) or original(texts)
            await batcher.classify(photo("coffee", 32), [*LABELS, "a tree"])
        assert (batcher.cache_hits, batcher.cache_misses) == (5, 6)
        assert encoded == [1]  # only the new label went through the text encoder


async def test_batch_size_and_wait_are_configuration(tmp_path: Path, tiny_dir: Path) -> None:
    config = make_config(tmp_path, tiny_dir, tmp_path, pool={"clip_max_batch": 1, "text_cache_size": 0})
    pool = ModelPool(config, cpu_only())

    async def classify() -> None:
        await pool.clip("tiny-clip").classify(photo("astronaut", 32), LABELS)

    async with pool.running(), anyio.create_task_group() as tg:
        for _ in range(4):
            tg.start_soon(classify)
    stats = pool.clip("tiny-clip").stats()
    assert stats["batches"] == 4 and stats["label_cache_hits"] == 0 and stats["label_cache_size"] == 0


async def test_image_embeddings_are_unit_vectors_and_batched_with_classifications(config: Config) -> None:
    pool = ModelPool(config, cpu_only())
    async with pool.running():
        a, b = await pool.clip("tiny-clip").embed_many([photo("astronaut", 32), photo("astronaut", 32)])
    assert math.isclose(float(np.linalg.norm(a)), 1.0, rel_tol=1e-5)
    assert math.isclose(float(a @ b), 1.0, rel_tol=1e-5)
    assert pool.clip("tiny-clip").stats()["batches"] == 1


async def test_clip_classify_tool_calls_are_batched_through_mcp(config: Config) -> None:
    services = create_services(config, cpu_only())
    async with Client(build_server(config, services)) as client:
        image = (
            await call_ok(
                client, "clip_classify", {"image": data_uri(photo("chelsea", 48)), "labels": LABELS}
            )
        )["image"]["uri"]
        outputs: list[dict] = []

        async def call() -> None:
            outputs.append(await call_ok(client, "clip_classify", {"image": image, "labels": LABELS}))

        async with anyio.create_task_group() as tg:
            for _ in range(8):
                tg.start_soon(call)
    stats = services.pool.clip("tiny-clip").stats()
    assert stats["requests"] == 9 and stats["batches"] < 9
    assert all(out["labels"] == outputs[0]["labels"] for out in outputs)


async def test_a_batcher_used_before_the_pool_runs_fails_cleanly_and_works_afterwards(config: Config) -> None:
    pool = ModelPool(config, cpu_only())
    with pytest.raises(RuntimeError, match="the pool is not running"):
        await pool.clip("tiny-clip").classify(photo("astronaut", 32), LABELS)
    async with pool.running():
        with anyio.fail_after(30):
            scores = await pool.clip("tiny-clip").classify(photo("astronaut", 32), LABELS)
    assert math.isclose(sum(scores), 1.0, abs_tol=1e-5)
