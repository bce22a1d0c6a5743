"""CLIP throughput: concurrent ``clip_classify`` calls through MCP against a sequential transformers pipeline.

(a) N concurrent ``clip_classify`` calls (one shared MCP client session over stdio, an anyio task
    group) with one shared 10-label set, against the same N classifications done the way most
    servers do them: one ``pipeline("zero-shot-image-classification")`` call per request,
    sequentially, in this process.
(b) Batching alone and the label-embedding cache alone, each against neither: the same N concurrent
    calls against servers configured with ``[server.pool] clip_max_batch`` / ``text_cache_size`` =
    1/0 (neither), 32/0 (batching only), 1/4096 (cache only) and the defaults (both).

The model is a CLIP with the ViT-B/32 architecture and random weights, built once into a cache
directory. All five sides (the pipeline and four servers) are warmed up first and then measured in
alternation, round after round, so they share the machine's noise; each round uses its own prompt
template so the label cache starts cold in every round (it only helps within a run of N calls).

    python bench/clip_throughput.py            # 64 calls, 2 rounds (about 3 minutes on 2 CPU cores)
    python bench/clip_throughput.py --quick    # 32 calls, 1 round
"""

from __future__ import annotations

import argparse
import base64
import io
import sys
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    DEFAULT_CACHE,
    cached_build,
    call_tool,
    pool_status,
    print_header,
    record_ratio,
    server_parameters,
    table,
    temp_dir,
    wait_for_results,
    write_config,
)

MODEL_NAME = "bench-clip-b32"
IMAGE_NAMES = ["astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry"]
LABELS = [
    "a cat",
    "a dog",
    "an astronaut",
    "a cup of coffee",
    "a rocket",
    "a galaxy",
    "a bird",
    "a car",
    "a tree",
    "a house",
]
# One template per round, so every round starts with its label embeddings uncached on every server.
TEMPLATES = [
    "This is a photo of {}.",
    "A photo of {}.",
    "An image of {}.",
    "A picture showing {}.",
    "A close-up photo of {}.",
    "A blurry photo of {}.",
]
WARMUP_LABELS = ["warm-up label one", "warm-up label two"]

# (name, [server.pool] overrides); the last one is the shipped default.
CONFIGS: list[tuple[str, dict[str, int]]] = [
    ("neither", {"clip_max_batch": 1, "text_cache_size": 0}),
    ("batching only", {"clip_max_batch": 32, "text_cache_size": 0}),
    ("label cache only", {"clip_max_batch": 1, "text_cache_size": 4096}),
    ("both (defaults)", {}),
]


# --- the model ---------------------------------------------------------------------------------------


def build_clip_b32(target: Path) -> dict[str, Any]:
    """CLIP ViT-B/32 architecture, random weights, the tiny profile's offline tokenizer, 224 px processor."""
    import tempfile

    import torch
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPProcessor, CLIPTokenizer

    from multimodal_mcp.backends.tiny import build_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        build_tiny_model("clip", Path(tmp) / "clip")  # only for its hand-written tokenizer files
        tokenizer = CLIPTokenizer.from_pretrained(Path(tmp) / "clip")
    config = CLIPConfig(
        text_config={
            "vocab_size": len(tokenizer),  # the offline tokenizer's vocabulary (ViT-B/32's is 49408)
            "hidden_size": 512,
            "intermediate_size": 2048,
            "num_hidden_layers": 12,
            "num_attention_heads": 8,
            "max_position_embeddings": 77,
            "hidden_act": "quick_gelu",
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={
            "hidden_size": 768,
            "intermediate_size": 3072,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "image_size": 224,
            "patch_size": 32,
            "hidden_act": "quick_gelu",
        },
        projection_dim=512,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(32)
        model = CLIPModel(config).eval()
    model.save_pretrained(target, safe_serialization=True)
    # The PIL backend of CLIPImageProcessor (the default backend needs torchvision).
    processor = CLIPImageProcessorPil(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})
    CLIPProcessor(image_processor=processor, tokenizer=tokenizer).save_pretrained(target)
    return {"architecture": "CLIP ViT-B/32", "parameters": sum(p.numel() for p in model.parameters())}


def load_images() -> tuple[list[tuple[str, Any]], str]:
    """The test photos from skimage.data, or synthetic stand-ins of the same sizes without scikit-image."""
    from PIL import Image

    try:
        from skimage import data

        photos = [(name, Image.fromarray(getattr(data, name)()).convert("RGB")) for name in IMAGE_NAMES]
        return photos, "skimage.data"
    except ImportError:
        import numpy as np

        rng = np.random.default_rng(0)
        sizes = [(512, 512), (451, 300), (600, 400), (640, 427), (1000, 872), (512, 512)]
        images = []
        for name, (w, h) in zip(IMAGE_NAMES, sizes, strict=True):
            y, x = np.mgrid[0:h, 0:w]
            base = np.stack([x * 255 // w, y * 255 // h, (x + y) * 255 // (w + h)], axis=-1)
            pixels = (base + rng.integers(0, 40, size=(h, w, 3))).clip(0, 255).astype(np.uint8)
            images.append((f"synthetic-{name}", Image.fromarray(pixels)))
        return images, "synthetic gradients (scikit-image is not installed)"


def data_uri(image: Any) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


# --- the two sides -----------------------------------------------------------------------------------


class Baseline:
    """One transformers pipeline call per request, sequentially (built once, before timing)."""

    def __init__(self, model_dir: Path, device: str) -> None:
        import torch
        from transformers import pipeline

        kwargs: dict[str, Any] = {"device": device}
        if device.startswith("cuda"):
            kwargs["dtype"] = torch.float16
        self.pipe = pipeline("zero-shot-image-classification", model=str(model_dir), **kwargs)

    def classify(self, image: Any, labels: list[str], template: str) -> dict[str, float]:
        out = self.pipe(image, candidate_labels=labels, hypothesis_template=template)
        return {row["label"]: float(row["score"]) for row in out}

    def run(self, images: list[Any], n: int, labels: list[str], template: str) -> tuple[float, list[Any]]:
        started = time.perf_counter()
        results = [self.classify(images[i % len(images)], labels, template) for i in range(n)]
        return time.perf_counter() - started, results


class Server:
    """One server process, one MCP client session, and the image references it was sent."""

    def __init__(self, name: str, pool: dict[str, int], client: Any) -> None:
        self.name = name
        self.pool = pool
        self.client = client
        self.refs: list[str] = []

    async def upload(self, images: list[Any], use_ids: bool) -> None:
        """Send every image once (the warm-up: loads the model); later calls use image://<id>."""
        for image in images:
            uri = data_uri(image)
            result = await call_tool(self.client, "clip_classify", {"image": uri, "labels": WARMUP_LABELS})
            self.refs.append(result["image"]["uri"] if use_ids else uri)

    async def batcher_stats(self) -> dict[str, Any]:
        status = await pool_status(self.client)
        return dict(status.get("batchers", {}).get(MODEL_NAME, {}))

    async def run(self, n: int, labels: list[str], template: str) -> tuple[float, list[Any], dict[str, Any]]:
        before = await self.batcher_stats()
        results: list[Any] = [None] * n

        async def one(i: int) -> None:
            args = {"image": self.refs[i % len(self.refs)], "labels": labels, "template": template}
            result = await call_tool(self.client, "clip_classify", args)
            results[i] = {row["label"]: float(row["score"]) for row in result["labels"]}

        started = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for i in range(n):
                tg.start_soon(one, i)
        elapsed = time.perf_counter() - started
        after = await self.batcher_stats()
        return elapsed, results, _delta(before, after)


def _delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    keys = ("batches", "requests", "label_cache_hits", "label_cache_misses")
    out = {k: after.get(k, 0) - before.get(k, 0) for k in keys}
    out["mean_batch"] = out["requests"] / out["batches"] if out["batches"] else float("nan")
    return out


def _top(scores: dict[str, float]) -> str:
    return max(scores, key=lambda label: scores[label])


# --- main --------------------------------------------------------------------------------------------


async def main(args: argparse.Namespace) -> None:
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    print_header(
        "clip_throughput: concurrent clip_classify over MCP vs sequential transformers pipeline", device
    )

    model_dir, built = cached_build(
        args.model_dir or args.cache_dir / "clip-vit-b32-random", build_clip_b32, label="CLIP ViT-B/32"
    )
    named, origin = load_images()
    images = [image for _, image in named]
    n, rounds = args.requests, args.rounds
    state = "built now" if built else "cached"
    print(f"model:        CLIP ViT-B/32 architecture, random weights, {model_dir} ({state})")
    print(f"images:       {', '.join(f'{name} {im.width}x{im.height}' for name, im in named)} ({origin})")
    how = (
        "image://<id> (each sent once as a PNG data URI)"
        if args.images == "id"
        else "a PNG data URI each call"
    )
    print(f"server input: {how}; the pipeline gets the PIL images")
    print(
        f"workload:     {n} classifications per run over {len(LABELS)} labels, {rounds} round(s), "
        "one prompt template per round (label cache cold at the start of each round)"
    )
    print()

    dtype = "float16" if device.startswith("cuda") else "float32"
    baseline = await anyio.to_thread.run_sync(Baseline, model_dir, device)
    for image in images:  # warm-up: as many calls as each server gets
        await anyio.to_thread.run_sync(baseline.classify, image, WARMUP_LABELS, TEMPLATES[0])

    times: dict[str, list[float]] = {"pipeline": []}
    stats: dict[str, list[dict[str, Any]]] = {}
    disagreements: list[str] = []
    max_diff = 0.0
    with temp_dir("mmcp-bench-clip-", keep=args.keep) as tmp:
        async with AsyncExitStack() as stack:
            from mcp import Client

            servers: list[Server] = []
            for index, (name, pool) in enumerate(CONFIGS):
                config = write_config(
                    tmp / f"server-{index}.toml",
                    store_dir=tmp / f"store-{index}",
                    tiny_dir=tmp / "tiny",
                    server={"device": device},
                    pool={"keep_alive_seconds": 3600, **wait_for_results(), **pool},
                    models={
                        MODEL_NAME: {
                            "task": "clip",
                            "backend": "transformers",
                            "source": str(model_dir),
                            "dtype": dtype,
                        }
                    },
                    defaults={"clip": MODEL_NAME},
                )
                client = await stack.enter_async_context(
                    Client(server_parameters(config), read_timeout_seconds=900)
                )
                server = Server(name, pool, client)
                await server.upload(images, args.images == "id")
                servers.append(server)
                times[name] = []
                stats[name] = []

            for r in range(rounds):
                template = TEMPLATES[r % len(TEMPLATES)]
                elapsed, expected = await anyio.to_thread.run_sync(baseline.run, images, n, LABELS, template)
                times["pipeline"].append(elapsed)
                print(f"round {r + 1}: pipeline {elapsed:.2f} s", file=sys.stderr, flush=True)
                for server in servers:
                    elapsed, got, delta = await server.run(n, LABELS, template)
                    times[server.name].append(elapsed)
                    stats[server.name].append(delta)
                    print(f"round {r + 1}: {server.name} {elapsed:.2f} s", file=sys.stderr, flush=True)
                    for i, (ours, theirs) in enumerate(zip(got, expected, strict=True)):
                        max_diff = max(max_diff, max(abs(ours[k] - theirs[k]) for k in LABELS))
                        if _top(ours) != _top(theirs):
                            disagreements.append(
                                f"{server.name}, round {r + 1}, call {i} ({named[i % len(named)][0]}): "
                                f"server {_top(ours)!r}, pipeline {_top(theirs)!r}"
                            )
                if r == 0:
                    tops = {named[i][0]: _top(expected[i]) for i in range(min(n, len(images)))}

    best = {name: min(values) for name, values in times.items()}
    fmt = lambda values: "  ".join(f"{v:6.2f}" for v in values)  # noqa: E731

    print(f"(a) {n} concurrent clip_classify calls (one MCP session) vs {n} sequential pipeline calls")
    rows = [
        [
            "transformers pipeline, sequential, in-process",
            fmt(times["pipeline"]),
            f"{best['pipeline']:.2f}",
            f"{n / best['pipeline']:.1f}",
        ],
        [
            "multimodal-mcp clip_classify, concurrent (defaults)",
            fmt(times["both (defaults)"]),
            f"{best['both (defaults)']:.2f}",
            f"{n / best['both (defaults)']:.1f}",
        ],
    ]
    print(table(["side", "seconds per round", "best s", "calls/s"], rows))
    ratio = best["pipeline"] / best["both (defaults)"]
    print(f"ratio pipeline / multimodal-mcp (best of rounds): {ratio:.2f}x (target >= 2x)")
    record_ratio(
        f"CLIP: {n} concurrent clip_classify (speed-up)",
        ratio,
        alternative=f"{n} sequential transformers pipeline calls",
        target=2.0,
        higher_is_better=True,
    )
    agree = "yes" if not disagreements else f"NO ({len(disagreements)} calls differ)"
    print(
        f"top labels agree with the pipeline on every call of every server config: {agree}; "
        f"largest score difference {max_diff:.2e}"
    )
    print(
        "top label per image (random weights, so arbitrary): "
        + ", ".join(f"{k} -> {v}" for k, v in tops.items())
    )
    for line in disagreements[:10]:
        print(f"  disagreement: {line}")
    print()

    print(
        f"(b) the same {n} concurrent calls per server config; batcher stats from pool://status "
        "(this run only, best round)"
    )
    rows = []
    for name, pool in CONFIGS:
        i = times[name].index(best[name])
        s = stats[name][i]
        rows.append(
            [
                name,
                pool.get("clip_max_batch", "32 (default)"),
                pool.get("text_cache_size", "4096 (default)"),
                fmt(times[name]),
                f"{best[name]:.2f}",
                f"{best['neither'] / best[name]:.2f}x",
                s["batches"],
                f"{s['mean_batch']:.1f}",
                f"{s['label_cache_hits']}/{s['label_cache_misses']}",
            ]
        )
    print(
        table(
            [
                "config",
                "clip_max_batch",
                "text_cache_size",
                "seconds per round",
                "best s",
                "vs neither",
                "batches",
                "mean batch",
                "cache hits/misses",
            ],
            rows,
        )
    )
    print("(cache hits/misses count label texts: a batch looks up each distinct label once)")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, help="classifications per run (default 64; 32 with --quick)")
    parser.add_argument("--rounds", type=int, help="measurement rounds per side (default 2; 1 with --quick)")
    parser.add_argument("--quick", action="store_true", help="32 requests, 1 round")
    parser.add_argument(
        "--images",
        choices=["id", "data"],
        default="id",
        help="send images as image://<id> after one upload (default) or a data URI every call",
    )
    parser.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when available, else cpu")
    parser.add_argument("--model-dir", type=Path, help="reuse (or build into) this model directory")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=DEFAULT_CACHE,
        help=f"where built models are kept between runs (default {DEFAULT_CACHE})",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary store and configs")
    args = parser.parse_args()
    if args.requests is None:
        args.requests = 32 if args.quick else 64
    if args.rounds is None:
        args.rounds = 1 if args.quick else 2
    if not 1 <= args.rounds <= len(TEMPLATES):
        parser.error(f"--rounds must be 1..{len(TEMPLATES)} (one prompt template per round)")
    if args.requests < 1:
        parser.error("--requests must be at least 1")
    return args


if __name__ == "__main__":
    started = time.perf_counter()
    anyio.run(main, parse_args())
    print(f"\ntotal script time {time.perf_counter() - started:.0f} s")
