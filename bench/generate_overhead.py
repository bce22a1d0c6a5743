"""generate_image overhead: an MCP tool call against the same diffusers pipeline called directly.

(c) ``generate_image`` through a real MCP client session over stdio against
    ``AutoPipelineForText2Image.from_pretrained(dir)`` then ``pipe(...)`` in this process, with the
    same prompt, size, steps, guidance, seed (a CPU generator, as the server uses) and scheduler
    (DPMSolverMultistepScheduler with ``algorithm_type="dpmsolver++"``, the server's ``dpm++``).
    Steps are calibrated so that the direct call takes about ``--target`` seconds (default 1 s).
    The two measurements alternate (and swap order every run) so they share the machine's noise;
    the medians of ``--runs`` runs each and their ratio tool/direct are printed (target <= 1.05 for
    the tiny model on the CPU, 1.03 for the real architectures on a GPU).
(d) warm vs cold: the first ``generate_image`` call of a fresh server (which loads the model)
    against its second call.

Both sides use the same pipeline with random weights, built once into a cache dir:

    python bench/generate_overhead.py                              # --arch tiny: the tiny sd15, CPU
    python bench/generate_overhead.py --arch sd15 --device cuda    # real SD 1.5 architecture, 512 px, fp16
    python bench/generate_overhead.py --arch sdxl --device cuda    # real SDXL architecture, 1024 px, fp16
    python bench/generate_overhead.py --arch sd15 --device cpu --size 256 --steps 1 --runs 1   # smoke test
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    DEFAULT_CACHE,
    cached_build,
    call_tool,
    median,
    print_header,
    read_png,
    record_ratio,
    server_parameters,
    table,
    temp_dir,
    wait_for_results,
    write_config,
)

MODEL_NAME = "bench-pipeline"
PROMPT = "a lighthouse on a rocky coast at dusk, watercolor"
SEED = 1234
GUIDANCE = 7.5
MAX_STEPS = 200  # the generate_image schema's limit

# Stable Diffusion 1.5's own component configs (runwayml / stable-diffusion-v1-5), written out so that
# nothing is downloaded. Only the tokenizer differs: the tiny profile's offline vocabulary stands in for
# CLIP's 49408-token BPE (prompts are padded to 77 tokens either way, so the compute is the same).
SD15_UNET: dict[str, Any] = {
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 768,
    "down_block_types": [
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}
SD15_VAE: dict[str, Any] = {
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 512,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}
SD15_TEXT_ENCODER: dict[str, Any] = {
    "attention_dropout": 0.0,
    "dropout": 0.0,
    "hidden_act": "quick_gelu",
    "hidden_size": 768,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "intermediate_size": 3072,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 77,
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "projection_dim": 768,
    "vocab_size": 49408,
}
SD15_SCHEDULER: dict[str, Any] = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
}

# Stable Diffusion XL 1.0's (stabilityai / stable-diffusion-xl-base-1.0): its first text encoder is SD
# 1.5's (CLIP ViT-L/14, above); the second is OpenCLIP ViT-bigG/14's text tower with its projection.
SDXL_UNET: dict[str, Any] = {
    "act_fn": "silu",
    "addition_embed_type": "text_time",
    "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256,
    "attention_head_dim": [5, 10, 20],
    "block_out_channels": [320, 640, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 2048,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "projection_class_embeddings_input_dim": 2816,
    "sample_size": 128,
    "transformer_layers_per_block": [1, 2, 10],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "use_linear_projection": True,
}
SDXL_VAE: dict[str, Any] = {**SD15_VAE, "force_upcast": True, "sample_size": 1024, "scaling_factor": 0.13025}
SDXL_TEXT_ENCODER_2: dict[str, Any] = {
    **SD15_TEXT_ENCODER,
    "hidden_act": "gelu",
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_attention_heads": 20,
    "num_hidden_layers": 32,
    "projection_dim": 1280,
}
SDXL_SCHEDULER: dict[str, Any] = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "use_karras_sigmas": False,
}
ARCHITECTURES = {
    # --arch: (name in the cache dir, default side in px, what the build is)
    "tiny": ("sd15-tiny", 256, "the tiny sd15 (multimodal_mcp.backends.tiny)"),
    "sd15": ("sd15-random-fp16", 512, "Stable Diffusion 1.5 (random weights, float16)"),
    "sdxl": ("sdxl-random-fp16", 1024, "Stable Diffusion XL 1.0 (random weights, float16)"),
}


def target_for(arch: str, device: str) -> float:
    """Tool / direct: 1.03 for a real-size architecture on a GPU (issue 20, item 5), else 1.05 (the
    tiny model on a CPU, or any pipeline there: a call of tens of ms makes the fixed cost loom)."""
    return 1.03 if arch != "tiny" and device.startswith("cuda") else 1.05


# --- building the pipelines --------------------------------------------------------------------------


def build_tiny(target: Path) -> dict[str, Any]:
    from multimodal_mcp.backends.tiny import build_tiny_model

    build_tiny_model("sd15", target)
    return {"architecture": ARCHITECTURES["tiny"][2]}


def build_real(target: Path, device: str, arch: str) -> dict[str, Any]:
    """SD 1.5's (UNet 860M parameters) or SDXL's (UNet 2.6B, two text encoders) pipeline at real
    size with random weights, saved in float16.

    On CUDA the modules are created directly on the GPU (random init there takes well under a second);
    on the CPU the init of the UNet takes a while.
    """
    import tempfile

    import torch
    from transformers import CLIPTokenizer

    from multimodal_mcp.backends.tiny import build_tiny_model

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        build_tiny_model("sd15", Path(tmp) / "sd15")  # only for its hand-written tokenizer files
        tokenizer = CLIPTokenizer.from_pretrained(Path(tmp) / "sd15" / "tokenizer")
    if len(tokenizer) > SD15_TEXT_ENCODER["vocab_size"]:
        raise RuntimeError("the offline tokenizer does not fit CLIP's vocabulary size")

    with torch.random.fork_rng(devices=[]):
        if device.startswith("cuda"):
            try:
                with torch.device(device):
                    modules = make_modules(arch, tokenizer)
            except Exception as exc:  # an older torch/library without device-context support
                print(f"creating on {device} failed ({exc!r}); creating on the CPU", file=sys.stderr)
                modules = make_modules(arch, tokenizer)
        else:
            modules = make_modules(arch, tokenizer)
    modules = {name: m.to(device, torch.float16).eval() for name, m in modules.items()}
    created = time.perf_counter() - started
    pipe = assemble(arch, modules, tokenizer)
    pipe.save_pretrained(target, safe_serialization=True)
    info: dict[str, Any] = {"architecture": ARCHITECTURES[arch][2]}
    info.update({f"{name}_parameters": sum(p.numel() for p in m.parameters()) for name, m in modules.items()})
    info.update(
        created_on=device,
        create_seconds=round(created, 2),
        total_build_seconds=round(time.perf_counter() - started, 2),
    )
    del pipe, modules
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return info


def make_modules(arch: str, tokenizer: Any) -> dict[str, Any]:
    """The pipeline's modules with random weights (seeded), on the current default device."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    def text_config(config: dict[str, Any]) -> Any:
        return CLIPTextConfig(
            **config,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )

    torch.manual_seed(15)
    if arch == "sd15":
        return {
            "unet": UNet2DConditionModel(**SD15_UNET),
            "vae": AutoencoderKL(**SD15_VAE),
            "text_encoder": CLIPTextModel(text_config(SD15_TEXT_ENCODER)),
        }
    return {
        "unet": UNet2DConditionModel(**SDXL_UNET),
        "vae": AutoencoderKL(**SDXL_VAE),
        "text_encoder": CLIPTextModel(text_config(SD15_TEXT_ENCODER)),
        "text_encoder_2": CLIPTextModelWithProjection(text_config(SDXL_TEXT_ENCODER_2)),
    }


def assemble(arch: str, modules: dict[str, Any], tokenizer: Any) -> Any:
    """The diffusers pipeline of ``arch`` around ``modules``, with its public scheduler config."""
    from diffusers import (
        EulerDiscreteScheduler,
        PNDMScheduler,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
    )

    if arch == "sd15":
        scheduler: Any = PNDMScheduler(**SD15_SCHEDULER)
        scheduler.register_to_config(clip_sample=False)  # a key the public SD 1.5 config also has
        return StableDiffusionPipeline(
            **modules,
            tokenizer=tokenizer,
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    scheduler = EulerDiscreteScheduler(**SDXL_SCHEDULER)
    # Keys the public SDXL scheduler config also carries (read by schedulers swapped in by from_config).
    scheduler.register_to_config(
        clip_sample=False, sample_max_value=1.0, set_alpha_to_one=False, skip_prk_steps=True
    )
    return StableDiffusionXLPipeline(
        **modules, tokenizer=tokenizer, tokenizer_2=tokenizer, scheduler=scheduler
    )


# --- the direct side ----------------------------------------------------------------------------------


class Direct:
    """The pipeline as most servers hold it: loaded once, called in-process."""

    def __init__(self, model_dir: Path, device: str) -> None:
        import torch
        from diffusers import AutoPipelineForText2Image, DPMSolverMultistepScheduler

        self.torch = torch
        self.device = device
        dtype = torch.float16 if device.startswith("cuda") else torch.float32
        pipe = AutoPipelineForText2Image.from_pretrained(str(model_dir), dtype=dtype, use_safetensors=True)
        pipe.scheduler = DPMSolverMultistepScheduler.from_config(
            pipe.scheduler.config, algorithm_type="dpmsolver++"
        )
        pipe.set_progress_bar_config(disable=True)
        self.pipe = pipe.to(device)

    def generate(self, size: int, steps: int) -> tuple[float, Any]:
        torch = self.torch
        started = time.perf_counter()
        with torch.inference_mode():
            out = self.pipe(
                prompt=PROMPT,
                width=size,
                height=size,
                num_inference_steps=steps,
                guidance_scale=GUIDANCE,
                num_images_per_prompt=1,
                generator=[torch.Generator(device="cpu").manual_seed(SEED)],
                output_type="pil",
            )
        image = out.images[0]  # PIL: the GPU work is finished once it exists
        return time.perf_counter() - started, image


def calibrate(direct: Direct, size: int, target: float) -> tuple[int, list[str]]:
    """Steps at which the direct call takes about ``target`` seconds: a line through two step counts."""
    notes = []
    for _ in range(2):  # warm-up (kernels, allocator, caches)
        direct.generate(size, 2)
    s1, s2 = 4, 16
    t1 = min(direct.generate(size, s1)[0] for _ in range(2))
    t2 = min(direct.generate(size, s2)[0] for _ in range(2))
    per_step = max((t2 - t1) / (s2 - s1), 1e-6)
    fixed = max(t1 - per_step * s1, 0.0)
    steps = round((target - fixed) / per_step)
    notes.append(
        f"calibration at {size}x{size}: {s1} steps {t1:.3f} s, {s2} steps {t2:.3f} s "
        f"-> {per_step * 1000:.1f} ms/step + {fixed * 1000:.0f} ms fixed"
    )
    if steps > MAX_STEPS:
        notes.append(f"{target:.2f} s would need {steps} steps; capped at {MAX_STEPS} (use a larger --size)")
    if steps < 1:
        notes.append(f"even 1 step takes longer than {target:.2f} s (use a smaller --size)")
    steps = min(max(steps, 1), MAX_STEPS)
    check = direct.generate(size, steps)[0]
    notes.append(f"chosen {steps} steps: direct call {check:.3f} s")
    return steps, notes


# --- the tool side ------------------------------------------------------------------------------------


async def tool_generate(client: Any, size: int, steps: int) -> tuple[float, dict[str, Any]]:
    arguments = {
        "prompt": PROMPT,
        "model": MODEL_NAME,
        "width": size,
        "height": size,
        "steps": steps,
        "guidance_scale": GUIDANCE,
        "scheduler": "dpm++",
        "seed": SEED,
        "num_images": 1,
    }
    started = time.perf_counter()
    result = await call_tool(client, "generate_image", arguments)
    elapsed = time.perf_counter() - started
    if "images" not in result:
        raise RuntimeError(f"generate_image returned no images: {sorted(result)}")
    return elapsed, result


def pixel_difference(png: bytes, image: Any) -> int:
    import numpy as np
    from PIL import Image

    ours = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)
    theirs = np.asarray(image.convert("RGB"), dtype=np.int16)
    if ours.shape != theirs.shape:
        return -1
    return int(np.abs(ours - theirs).max())


# --- main ---------------------------------------------------------------------------------------------


async def main(args: argparse.Namespace) -> None:
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda, but torch sees no CUDA device")
    print_header(
        "generate_overhead: generate_image over MCP vs the same diffusers pipeline in-process", device
    )

    cache_name, default_size, label = ARCHITECTURES[args.arch]
    target_dir = args.model_dir or args.cache_dir / cache_name
    if args.arch == "tiny":
        model_dir, built = cached_build(target_dir, build_tiny, label=label)
    else:
        model_dir, built = cached_build(target_dir, lambda t: build_real(t, device, args.arch), label=label)
    size = args.size or default_size
    target = target_for(args.arch, device)
    dtype = "float16" if device.startswith("cuda") else "float32"
    info_file = model_dir / "BENCH_BUILD_OK.json"
    built_info = (
        info_file.read_text().strip().replace("\n", " ") if info_file.is_file() else "(not a bench build)"
    )
    print(f"model:        {args.arch}: {model_dir} ({'built now' if built else 'cached'}) {built_info}")

    started = time.perf_counter()
    from diffusers import AutoPipelineForText2Image, StableDiffusionPipeline  # noqa: F401

    direct_import = time.perf_counter() - started  # 0 when building the model imported them already
    started = time.perf_counter()
    direct = await anyio.to_thread.run_sync(Direct, model_dir, device)
    direct_load = time.perf_counter() - started

    if args.steps:
        steps = args.steps
        for _ in range(2 if args.runs > 1 else 1):
            await anyio.to_thread.run_sync(direct.generate, size, steps)  # warm-up
        notes = [f"steps given: {steps} (no calibration)"]
    else:
        steps, notes = await anyio.to_thread.run_sync(calibrate, direct, size, args.target)
    print(
        f"parameters:   {size}x{size}, {steps} steps, dpm++ (DPMSolverMultistepScheduler, dpmsolver++), "
        f"guidance {GUIDANCE}, seed {SEED}, {dtype} on {device}, prompt {PROMPT!r}"
    )
    for note in notes:
        print(f"              {note}")
    print()

    from mcp import Client

    with temp_dir("mmcp-bench-gen-", keep=args.keep) as tmp:
        pool: dict[str, Any] = {"keep_alive_seconds": 3600, **wait_for_results()}
        config = write_config(
            tmp / "server.toml",
            store_dir=tmp / "store",
            tiny_dir=tmp / "tiny",
            server={"device": device},
            pool=pool,
            limits={"max_steps": MAX_STEPS},
            models={
                MODEL_NAME: {
                    "task": "text_to_image",
                    "backend": "diffusers",
                    "source": str(model_dir),
                    "dtype": dtype,
                    "defaults": {
                        "steps": steps,
                        "guidance_scale": GUIDANCE,
                        "width": size,
                        "height": size,
                        "scheduler": "dpm++",
                    },
                }
            },
            defaults={"text_to_image": MODEL_NAME, "controlled": MODEL_NAME},
        )
        started = time.perf_counter()
        async with Client(server_parameters(config), read_timeout_seconds=1800) as client:
            server_start = time.perf_counter() - started
            cold, cold_result = await tool_generate(client, size, steps)
            warm, warm_result = await tool_generate(client, size, steps)

            tool_times: list[float] = []
            direct_times: list[float] = []
            server_totals: list[float] = []
            server_inference: list[float] = []
            for run in range(args.runs):
                order = ("direct", "tool") if run % 2 == 0 else ("tool", "direct")
                for side in order:
                    if side == "direct":
                        elapsed, direct_image = await anyio.to_thread.run_sync(direct.generate, size, steps)
                        direct_times.append(elapsed)
                    else:
                        elapsed, result = await tool_generate(client, size, steps)
                        tool_times.append(elapsed)
                        server_totals.append(result["timings"]["total_seconds"])
                        server_inference.append(result["timings"]["inference_seconds"])
                print(
                    f"run {run + 1}: direct {direct_times[-1]:.3f} s, tool {tool_times[-1]:.3f} s",
                    file=sys.stderr,
                    flush=True,
                )
            png = await read_png(client, result["images"][0]["uri"])
            diff = pixel_difference(png, direct_image)

    fmt = lambda values: ", ".join(f"{v:.3f}" for v in values)  # noqa: E731
    md, mt = median(direct_times), median(tool_times)
    print(
        f"(c) generate_image tool call vs direct pipeline call, median of {args.runs} alternating runs each"
    )
    rows = [
        ["direct pipe(...) in-process", f"{md:.3f}", fmt(direct_times)],
        ["generate_image over MCP stdio (client wall time)", f"{mt:.3f}", fmt(tool_times)],
        [
            "  of which server-side total (timings.total_seconds)",
            f"{median(server_totals):.3f}",
            fmt(server_totals),
        ],
        [
            "  of which in the pool (timings.inference_seconds)",
            f"{median(server_inference):.3f}",
            fmt(server_inference),
        ],
    ]
    print(table(["side", "median s", "runs (s)"], rows))
    print(
        f"ratio tool / direct (medians): {mt / md:.3f} (target <= {target}); "
        f"overhead {(mt - md) * 1000:+.0f} ms per call"
    )
    record_ratio(
        f"generate_image tool ({args.arch}, {size} px, {steps} steps)",
        mt / md,
        alternative="the same diffusers pipeline called directly",
        target=target,
    )
    paired = median([t / d for t, d in zip(tool_times, direct_times, strict=True)])
    fastest = min(tool_times) / min(direct_times)
    print(
        f"  cross-checks: median of the {args.runs} paired ratios (each tool run / the direct run next to "
        f"it) {paired:.3f}; fastest runs min(tool) / min(direct) {fastest:.3f}"
    )
    same = (
        "identical pixels"
        if diff == 0
        else ("different sizes" if diff < 0 else f"max pixel difference {diff}")
    )
    print(f"same image from both sides (seed {SEED}): {same}")
    print()
    print(
        "(d) cold vs warm: first generate_image call of a fresh server (loads the model) vs its second call"
    )
    rows = [
        ["server start (process + MCP initialize)", f"{server_start:.3f}", "-"],
        ["1st call (cold)", f"{cold:.3f}", f"{cold_result['timings']['load_seconds']:.3f}"],
        ["2nd call (warm)", f"{warm:.3f}", f"{warm_result['timings']['load_seconds']:.3f}"],
        ["(direct side: from_pretrained + .to(device))", f"{direct_load:.3f}", "-"],
        ["(direct side: importing the diffusers pipelines before that)", f"{direct_import:.3f}", "-"],
    ]
    print(table(["call", "client wall s", "server load_seconds"], rows))
    print(
        f"ratio cold / warm: {cold / warm:.2f}x (the server's load_seconds include importing the diffusers "
        "pipeline modules, which it does lazily on the first load)"
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--arch",
        choices=list(ARCHITECTURES),
        default="tiny",
        help="tiny: the tiny sd15 (CPU); sd15, sdxl: the real SD 1.5 or SDXL architecture, random weights",
    )
    parser.add_argument(
        "--device", choices=["cpu", "cuda"], help="where both sides run (default: cuda if available)"
    )
    parser.add_argument(
        "--size", type=int, help="image side in pixels (default: 256 tiny, 512 sd15, 1024 sdxl)"
    )
    parser.add_argument("--steps", type=int, help="denoising steps (default: calibrated to --target)")
    parser.add_argument(
        "--target", type=float, default=1.0, help="direct-call seconds to calibrate to (default 1)"
    )
    parser.add_argument("--runs", type=int, help="alternating runs per side (default 11; 5 with --quick)")
    parser.add_argument("--quick", action="store_true", help="5 runs per side")
    parser.add_argument("--model-dir", type=Path, help="reuse (or build into) this pipeline directory")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=DEFAULT_CACHE,
        help=f"where built models are kept between runs (default {DEFAULT_CACHE})",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary store and config")
    args = parser.parse_args()
    if args.runs is None:
        args.runs = 5 if args.quick else 11
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if args.size is not None and (args.size % 8 or args.size < 64):
        parser.error("--size must be a multiple of 8, at least 64")
    if args.steps is not None and not 1 <= args.steps <= MAX_STEPS:
        parser.error(f"--steps must be 1..{MAX_STEPS}")
    return args


if __name__ == "__main__":
    started = time.perf_counter()
    anyio.run(main, parse_args())
    print(f"\ntotal script time {time.perf_counter() - started:.0f} s")
