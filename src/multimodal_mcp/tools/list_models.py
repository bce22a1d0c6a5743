"""list_models: what models this server has, what they do, where they are and how busy."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field

from multimodal_mcp.capabilities import Capabilities
from multimodal_mcp.config import ModelDefaults, Task
from multimodal_mcp.tools.common import Params, Progress, Result, Services


class ListModelsParams(Params):
    task: Annotated[
        Task | None, Field(description="Only the models of this task (e.g. 'vlm'); omit for all.")
    ] = None


class ModelInfo(BaseModel):
    name: str
    task: str = Field(description="text_to_image, controlnet, ip_adapter, lora, clip, vlm, text or detector.")
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
    capabilities: Capabilities = Field(
        description="What the model honours (arguments other models may take are refused for it)."
    )
    status: str = Field(description="Where it runs now, in a few words.")
    control_type: str | None = None
    base_models: list[str] | None = None
    trigger_words: list[str] | None = Field(default=None, description="LoRAs: added to the prompt.")
    default_scale: float | None = Field(default=None, description="LoRAs: the scale when a call gives none.")
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
            paid = ", paid" if m.paid else ""
            takes = "; ".join(m.capabilities.summary())
            lines.append(
                f"- {m.name}: {m.task}, {m.source}{paid}, {m.status}{default}"
                + (f"; takes {takes}" if takes else "")
            )
        return "\n".join(lines)


async def list_models(
    params: ListModelsParams, services: Services, progress: Progress | None = None
) -> ListModelsResult:
    """List the models: task, defaults, capabilities (the arguments each takes), where each runs,
    and whether a hosted one's API key is set.
    """
    config = services.config
    hub = services.hub
    await services.pool.discover()  # off the event loop, if the pool has not discovered them yet
    models = []
    for name, spec in config.models.items():
        if params.task is not None and spec.task != params.task:
            continue
        capabilities = hub.capabilities(name)
        models.append(
            ModelInfo(
                name=name,
                task=spec.task,
                backend=spec.backend,
                paid=spec.is_paid,
                source=spec.source,
                description=spec.description,
                default_for=[key for key, value in config.defaults.items() if value == name],
                defaults=spec.defaults,
                schedulers=list(capabilities.schedulers) if spec.task == "text_to_image" else None,
                capabilities=capabilities,
                control_type=spec.control_type,
                base_models=list(spec.base_models) or None,
                trigger_words=list(spec.trigger_words) if spec.task == "lora" else None,
                default_scale=spec.scale if spec.task == "lora" else None,
                **hub.where(name),
            )
        )
    return ListModelsResult(
        models=models,
        device=services.pool.device,
        devices=[d.name for d in services.pool.devices],
        profile=config.profile,
        profile_reasons=list(config.profile_reasons),
    )
