"""Where does generate_image's extra time go on a GPU? In-process variants of the same SD 1.5 call.

Needs CUDA. Times plain ``pipe(...)`` against the same call with a step callback, on a fresh pipeline
object, through ``DiffusionModel.generate``, and on other threads. On an H100 it showed that running on
a thread that had not done CUDA work before cost 36-46% per call, which is why each device lane now has
its own long-lived thread.

    python bench/thread_probe.py
"""

import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, "bench")
import anyio
import torch
from diffusers import AutoPipelineForText2Image, DPMSolverMultistepScheduler
from generate_overhead import build_real

from multimodal_mcp.backends.base import CancelToken, GenerationRequest
from multimodal_mcp.backends.diffusion import DiffusionModel, _pipeline_over
from multimodal_mcp.config import ModelSpec

target = Path("/tmp/sd15r")
if not (target / "model_index.json").exists():
    build_real(target, "cuda", "sd15")
pipe = AutoPipelineForText2Image.from_pretrained(target, dtype=torch.float16).to("cuda")
pipe.set_progress_bar_config(disable=True)
pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config, algorithm_type="dpmsolver++")
STEPS = 40
kw = dict(
    prompt="a lighthouse",
    width=512,
    height=512,
    num_inference_steps=STEPS,
    guidance_scale=7.5,
    output_type="pil",
)
spec = ModelSpec(task="text_to_image", backend="diffusers", source=str(target))
model = DiffusionModel("sd15", spec, pipe, "cuda")
req = GenerationRequest("a lighthouse", None, 512, 512, STEPS, 7.5, "dpm++", [1234])


def direct():
    return pipe(**kw, generator=[torch.Generator("cpu").manual_seed(1234)]).images


def with_cb():
    return pipe(
        **kw, generator=[torch.Generator("cpu").manual_seed(1234)], callback_on_step_end=lambda p, i, t, k: k
    ).images


def fresh_pipe():
    p = _pipeline_over(
        type(pipe),
        pipe,
        {
            "scheduler": DPMSolverMultistepScheduler.from_config(
                pipe.scheduler.config, algorithm_type="dpmsolver++"
            )
        },
    )
    p.set_progress_bar_config(disable=True)
    return p(**kw, generator=[torch.Generator("cpu").manual_seed(1234)]).images


def ours():
    return model.generate(req, lambda s, t: None, CancelToken())


def ours_no_inference_mode():
    return model.generate(req, None, CancelToken())


def thread(fn):
    out = []
    t = threading.Thread(target=lambda: out.append(fn()))
    t.start()
    t.join()
    return out


async def pool_like(fn):
    return await anyio.to_thread.run_sync(fn)


variants = {
    "direct": direct,
    "direct+callback": with_cb,
    "fresh pipeline object": fresh_pipe,
    "model.generate": ours,
    "model.generate(no on_step)": ours_no_inference_mode,
    "direct in a thread": lambda: thread(direct),
    "model.generate via anyio.to_thread": lambda: anyio.run(pool_like, ours),
}
for fn in variants.values():
    fn()
times = {k: [] for k in variants}
for _ in range(7):
    for name, fn in variants.items():
        torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times[name].append(time.perf_counter() - t)
base = statistics.median(times["direct"])
for name, ts in times.items():
    m = statistics.median(ts)
    print(f"{name:40s} median {m * 1000:8.1f} ms  ratio {m / base:.3f}  min {min(ts) * 1000:.1f}")
