"""bench/generate_overhead.py's real-size architectures (issue 20, item 5: SD 1.5 at 512 px and SDXL
at 1024 px with random weights, on a GPU): their configs build the public models' shapes. Built on
torch's meta device (no memory, no time), so that a config typo is found here and not on a lent GPU."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"

pytestmark = pytest.mark.model  # torch and diffusers

# Parameter counts of the public checkpoints (runwayml/stable-diffusion-v1-5,
# stabilityai/stable-diffusion-xl-base-1.0), per component.
PUBLIC = {
    "sd15": {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480},
    "sdxl": {
        "unet": 2_567_463_684,
        "vae": 83_653_863,
        "text_encoder": 123_060_480,
        "text_encoder_2": 694_659_840,
    },
}


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_the_bench_builds_the_public_architecture_with_its_pipeline_class(arch: str) -> None:
    import torch

    sys.path.insert(0, str(BENCH))
    try:
        import generate_overhead as bench
    finally:
        sys.path.remove(str(BENCH))
    from multimodal_mcp.backends.tiny_diffusion import make_clip_tokenizer

    tokenizer = make_clip_tokenizer()  # the offline vocabulary the bench builds with
    with torch.device("meta"):
        modules = bench.make_modules(arch, tokenizer)
    counts = {name: sum(p.numel() for p in module.parameters()) for name, module in modules.items()}
    assert counts == PUBLIC[arch]
    pipe = bench.assemble(arch, modules, tokenizer)
    expected = {"sd15": "StableDiffusionPipeline", "sdxl": "StableDiffusionXLPipeline"}[arch]
    assert type(pipe).__name__ == expected
    assert bench.ARCHITECTURES[arch][1] == {"sd15": 512, "sdxl": 1024}[arch]
    assert bench.target_for(arch, "cuda") == 1.03 and bench.target_for(arch, "cpu") == 1.05
