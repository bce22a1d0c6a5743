"""Named samplers. Every request builds its own scheduler instance: schedulers hold per-run state
and are not safe to share between concurrent generations."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from multimodal_mcp.errors import InvalidArgument


@dataclass(frozen=True)
class SchedulerChoice:
    class_name: str
    overrides: dict[str, Any] = field(default_factory=dict)
    description: str = ""


# For noise-prediction diffusion models (SD 1.5, SDXL and relatives).
DIFFUSION_SCHEDULERS: dict[str, SchedulerChoice] = {
    "dpm++": SchedulerChoice(
        "DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}, "DPM-Solver++ 2M"
    ),
    "dpm++_karras": SchedulerChoice(
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "use_karras_sigmas": True},
        "DPM-Solver++ 2M with Karras sigmas",
    ),
    "euler": SchedulerChoice("EulerDiscreteScheduler", {}, "Euler"),
    "euler_a": SchedulerChoice("EulerAncestralDiscreteScheduler", {}, "Euler ancestral (stochastic)"),
    "heun": SchedulerChoice("HeunDiscreteScheduler", {}, "Heun (two model calls per step)"),
    "ddim": SchedulerChoice("DDIMScheduler", {}, "DDIM"),
    "unipc": SchedulerChoice("UniPCMultistepScheduler", {}, "UniPC multistep"),
    "pndm": SchedulerChoice("PNDMScheduler", {"skip_prk_steps": True}, "PNDM (PLMS)"),
}

# For flow-matching models (Flux, SD3): they integrate a velocity field and need flow schedulers.
FLOW_SCHEDULERS: dict[str, SchedulerChoice] = {
    "flow_euler": SchedulerChoice("FlowMatchEulerDiscreteScheduler", {}, "Flow-matching Euler"),
    "flow_euler_karras": SchedulerChoice(
        "FlowMatchEulerDiscreteScheduler", {"use_karras_sigmas": True}, "Flow-matching Euler, Karras sigmas"
    ),
    "flow_euler_sde": SchedulerChoice(
        "FlowMatchEulerDiscreteScheduler", {"stochastic_sampling": True}, "Flow-matching Euler, stochastic"
    ),
}

ALL_SCHEDULERS: tuple[str, ...] = (*DIFFUSION_SCHEDULERS, *FLOW_SCHEDULERS)


def choices_for(flow_matching: bool) -> dict[str, SchedulerChoice]:
    return FLOW_SCHEDULERS if flow_matching else DIFFUSION_SCHEDULERS


def check_scheduler(name: str, *, flow_matching: bool, model: str) -> SchedulerChoice:
    """The named sampler, if it fits the model's family; the error lists the ones that do."""
    choices = choices_for(flow_matching)
    choice = choices.get(name)
    if choice is None:
        kind = "flow-matching" if flow_matching else "diffusion"
        raise InvalidArgument(
            f"scheduler {name!r} does not fit model {model!r} (a {kind} model); "
            f"choose one of {', '.join(choices)}"
        )
    return choice


def build_scheduler(name: str, base_config: Any, *, flow_matching: bool, model: str) -> Any:
    """A fresh scheduler instance for one request, configured from the checkpoint's own scheduler."""
    import diffusers

    choice = check_scheduler(name, flow_matching=flow_matching, model=model)
    cls = getattr(diffusers, choice.class_name)
    return cls.from_config(base_config, **choice.overrides)
