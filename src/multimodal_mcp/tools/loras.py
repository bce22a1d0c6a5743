"""The ``loras`` argument of generate_image and controlled_generate: configured LoRAs by name, each
with a scale, applied for one call.

A model's LoRAs are configured as models of task ``lora`` whose ``base_models`` name it (list_models
shows them in its ``capabilities.loras``). A LoRA's ``trigger_words`` are appended to the prompt
when it is missing them, and the result's adjustments say so.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from multimodal_mcp.errors import InvalidArgument
from multimodal_mcp.handles import Adjustment, LoraCondition
from multimodal_mcp.tools.common import Services
from multimodal_mcp.tools.generation import AppliedLora, Plan

MAX_LORAS = 4
MAX_SCALE = 2.0


# One LoRA for a call: a name from the model's ``capabilities.loras`` (list_models) and its scale
# (adapter weight: 1 as trained, 0 off, negative inverts it; None: its configured scale). Bounds but
# neither a docstring nor field descriptions here: those would be in every tool list a model reads
# (issue 14's token budget), so the ``loras`` argument's description says it in a few words, and
# ``LoraPlan.of`` checks the rest (names, repeats) with errors that name them.
class LoraChoice(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=64)
    scale: float | None = Field(default=None, ge=-MAX_SCALE, le=MAX_SCALE)


Loras = Annotated[
    list[LoraChoice] | None,
    Field(description="LoRAs (list_models) to combine.", max_length=MAX_LORAS),
]


@dataclass(frozen=True)
class LoraPlan:
    """The checked LoRAs of a call: what the model is given, and the trigger words to add."""

    conditions: tuple[LoraCondition, ...] = ()
    trigger_words: tuple[tuple[str, str], ...] = ()
    """(LoRA name, trigger word) pairs, in the order the LoRAs were given."""

    @classmethod
    def of(cls, services: Services, planned: Plan, chosen: list[LoraChoice] | None) -> LoraPlan:
        """Check ``chosen`` against the model's configured LoRAs (before any work) and fill in each
        one's configured scale.

        Raises:
            InvalidArgument: a name the model has no LoRA of (the message lists its LoRAs), or a
                LoRA given twice.
        """
        if not chosen:
            return cls()
        # How many and each scale's range are bounds of the argument's schema (LoraChoice, Loras).
        offered = planned.capabilities.loras
        names = [choice.name for choice in chosen]
        for name in names:
            if name not in offered:
                example = f'[{{"name": "{offered[0]}", "scale": 0.8}}]' if offered else "null"
                raise InvalidArgument(
                    f"model {planned.model!r} has no LoRA named {name[:64]!r}; its LoRAs: "
                    f"{', '.join(offered) or 'none'}. Pass e.g. loras={example} (list_models shows each "
                    "model's LoRAs)"
                )
        if len(set(names)) < len(names):
            twice = next(name for name in names if names.count(name) > 1)
            raise InvalidArgument(f"LoRA {twice!r} is given twice in loras; give each LoRA once")
        conditions, words = [], []
        for choice in chosen:
            spec = services.hub.spec(choice.name)
            scale = choice.scale if choice.scale is not None else spec.scale
            conditions.append(LoraCondition(choice.name, scale))
            words += [(choice.name, word) for word in spec.trigger_words]
        return cls(tuple(conditions), tuple(words))

    def apply(self, planned: Plan) -> tuple[Plan, list[Adjustment]]:
        """``planned`` with the trigger words its prompt lacks appended (after any prompt rewrite,
        so that they stay as written) and the LoRAs in its parameters (name and the scale used, as
        the result shows them), and the adjustment saying which words were added."""
        if not self.conditions:
            return planned, []
        prompt = planned.parameters.prompt
        added: list[tuple[str, str]] = []
        for lora, word in self.trigger_words:
            if word.lower() not in prompt.lower():
                prompt = f"{prompt}, {word}"
                added.append((lora, word))
        applied = [AppliedLora(name=c.name, scale=c.scale) for c in self.conditions]
        parameters = planned.parameters.model_copy(update={"prompt": prompt, "loras": applied})
        notes = []
        if added:
            listed = "; ".join(f"{word!r} (LoRA {lora!r})" for lora, word in added)
            notes.append(
                Adjustment(
                    argument="prompt",
                    message=f"The LoRAs' trigger words were appended to the prompt: {listed}.",
                )
            )
        return replace(planned, parameters=parameters), notes

    def stored(self) -> dict[str, Any]:
        """What the image records keep of the LoRAs (nothing without them)."""
        if not self.conditions:
            return {}
        return {"loras": [{"name": c.name, "scale": c.scale} for c in self.conditions]}
