"""list_models: what models this server has, what they do, where they are and how busy."""

from __future__ import annotations

from pydantic import BaseModel, Field

from multimodal_mcp.backends.schedulers import choices_for
from multimodal_mcp.config import ModelDefaults
from multimodal_mcp.tools.common import Params, Progress, Result, Services


class ListModelsParams(Params):
    pass


class ModelInfo(BaseModel):
    name: str
    task: str = Field(description="text_to_image, controlnet, ip_adapter, clip, vlm or text.")
    backend: str
    paid: bool = Field(description="Calls cost money; the server may ask the user to confirm each one.")
    source: str
    description: str
    default_for: list[str] = Field(description="Tools' model choices this model is the default for.")
    loaded: bool
    location: str | None = Field(
        description="Where the weights are now (e.g. cuda:0, cpu when offloaded); null if not loaded."
    )
    device: str | None = Field(description="Where the model runs; null if not loaded.")
    memory_bytes: int | None = Field(
        description="Weights in memory (the larger of estimate and measurement)."
    )
    in_use: int = Field(description="Calls holding the model now.")
    queue_depth: int = Field(description="Calls waiting for its device.")
    last_used_seconds_ago: float | None
    defaults: ModelDefaults
    schedulers: list[str] | None = Field(description="Samplers this model accepts (text_to_image models).")
    control_type: str | None = None
    base_models: list[str] | None = None
    hosted: bool = Field(default=False, description="Runs on a provider's API (openai, gemini), not locally.")
    api_key_set: bool | None = Field(
        default=None,
        description="Hosted models: whether the provider's API key is configured (never the key).",
    )
    api_key_env: str | None = Field(
        default=None, description="Hosted models: the environment variable the key is read from."
    )


class ListModelsResult(Result):
    models: list[ModelInfo]
    device: str = Field(description="The preferred device (first GPU, else cpu).")
    devices: list[str] = Field(description="Every device models may use, GPUs first.")
    profile: str
    profile_reasons: list[str] = Field(
        default_factory=list, description="Profile 'auto': why it picked these models."
    )

    def summary(self) -> str:
        lines = [f"Profile {self.profile}; devices: {', '.join(self.devices)}."]
        lines += [f"  ({reason})" for reason in self.profile_reasons]
        for m in self.models:
            default = f" (default for {', '.join(m.default_for)})" if m.default_for else ""
            if m.hosted:
                key = "key set" if m.api_key_set else f"no key: set {m.api_key_env}"
                state = f"hosted ({m.backend}, {key})"
            else:
                state = f"on {m.location}" if m.loaded else "not loaded"
            paid = ", paid" if m.paid else ""
            lines.append(f"- {m.name}: {m.task}, {m.source}{paid}, {state}{default}")
        return "\n".join(lines)


async def list_models(
    params: ListModelsParams, services: Services, progress: Progress | None = None
) -> ListModelsResult:
    """List the configured models: task, source, defaults, and where each is loaded (device, size,
    queue); for hosted models (OpenAI, Gemini), whether the provider's API key is set.

    Pass a name from here as the model argument of another tool to use a model other than the
    default.
    """
    config = services.config
    states = {s.name: s for s in services.pool.states()}
    now = services.pool.now()
    models = []
    for name, spec in config.models.items():
        state = states[name]
        flow = spec.defaults.scheduler is not None and spec.defaults.scheduler.startswith("flow_")
        models.append(
            ModelInfo(
                name=name,
                task=spec.task,
                backend=spec.backend,
                paid=spec.is_paid,
                source=spec.source,
                description=spec.description,
                default_for=[key for key, value in config.defaults.items() if value == name],
                loaded=state.loaded,
                location=state.location,
                device=state.device,
                memory_bytes=state.memory_bytes,
                in_use=state.in_use,
                queue_depth=state.queue_depth,
                last_used_seconds_ago=round(now - state.last_used, 1)
                if state.last_used is not None
                else None,
                defaults=spec.defaults,
                schedulers=list(choices_for(flow)) if spec.task == "text_to_image" else None,
                control_type=spec.control_type,
                base_models=list(spec.base_models) or None,
            )
        )
        if spec.hosted:
            settings = config.hosted.for_backend(spec.backend)
            models[-1] = models[-1].model_copy(
                update={
                    "hosted": True,
                    "api_key_set": settings.key_from is not None,
                    "api_key_env": settings.api_key_env,
                }
            )
    return ListModelsResult(
        models=models,
        device=services.pool.device,
        devices=[d.name for d in services.pool.devices],
        profile=config.profile,
        profile_reasons=list(config.profile_reasons),
    )
