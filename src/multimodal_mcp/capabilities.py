"""Capabilities as data: which arguments a model honours, and the one check that refuses the rest.

Every model handle carries a :class:`Capabilities` (declared by its backend, optionally overridden in
the model's config table). Before any work, :func:`refusals` compares what a call was given with it
and writes the error from the data: the argument, what this model takes instead, and the configured
models that do take it. No argument is ever silently ignored, and no message names a provider: only
model names and argument names.

A capability's "not supported" value is its default, so a backend declares only what it supports.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

EditMode = Literal["img2img", "inpaint"]
StructuredOutput = Literal["none", "prompted", "native"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SizeRule(_Frozen):
    """The output sizes a generator makes: any size that is a multiple of ``multiple_of`` (up to
    ``max_side``), or exactly one of ``fixed``."""

    multiple_of: int | None = Field(default=None, ge=1, le=256, description="Sides must be multiples of it.")
    fixed: tuple[tuple[int, int], ...] = Field(
        default=(), description="The only (width, height) pairs made; the first is the default."
    )
    max_side: int | None = Field(default=None, ge=16, description="Longest side the model makes (px).")
    labels: tuple[str, ...] = Field(
        default=(), description="A name for each fixed size, e.g. its aspect ratio '16:9'."
    )

    @model_validator(mode="after")
    def _one_kind(self) -> SizeRule:
        if (self.multiple_of is None) == (not self.fixed):
            raise ValueError("a size rule has either multiple_of or fixed sizes, not both or neither")
        return self

    def describe(self) -> str:
        if self.fixed:
            named = zip(self.fixed, [*self.labels, *[""] * len(self.fixed)], strict=False)
            return ", ".join(f"{w}x{h}" + (f" ({label})" if label else "") for (w, h), label in named)
        limit = f" up to {self.max_side} px" if self.max_side else ""
        return f"multiples of {self.multiple_of}{limit}"

    def resolve(self, model: str, width: int | None, height: int | None) -> tuple[int | None, int | None]:
        """The size to make for the requested ``width``/``height`` (either may be None).

        Fixed sizes: the one allowed size matching what was given (None, None when neither was given:
        the model's own choice). Free sizes: the values given, checked.

        Raises:
            ValueError: with a message naming the sizes this model makes.
        """
        if self.fixed:
            if width is None and height is None:
                return None, None
            fitting = [
                (w, h)
                for w, h in self.fixed
                if (width is None or w == width) and (height is None or h == height)
            ]
            asked = f"{width or '?'}x{height or '?'}"
            if not fitting:
                raise ValueError(
                    f"model {model!r} makes images of {self.describe()} only, not {asked}; pass one of "
                    "these as width and height (or omit both for the model's default)"
                )
            if len(fitting) > 1:
                raise ValueError(
                    f"width/height {asked} fits several sizes of model {model!r} ({self.describe()}); "
                    "pass both"
                )
            return fitting[0]
        assert self.multiple_of is not None
        for side, value in (("width", width), ("height", height)):
            if value is None:
                continue
            if value % self.multiple_of:
                low = value - value % self.multiple_of or self.multiple_of
                high = value - value % self.multiple_of + self.multiple_of
                either = f"{low} or {high}" if self.max_side is None or high <= self.max_side else str(low)
                raise ValueError(
                    f"{side}={value} is not a multiple of {self.multiple_of}, which model {model!r} needs; "
                    f"use {side}={either}"
                )
            if self.max_side is not None and value > self.max_side:
                raise ValueError(
                    f"{side}={value} is more than model {model!r} makes ({self.max_side} px); ask for at "
                    f"most {self.max_side}"
                )
        return width, height


class Capabilities(_Frozen):
    """What one model honours. Every field's default means "not supported"."""

    # --- image generation (task text_to_image) ---
    seed: bool = Field(default=False, description="Reproducible from a seed.")
    negative_prompt: bool = False
    steps: bool = Field(default=False, description="Takes the number of denoising steps.")
    guidance_scale: bool = False
    schedulers: tuple[str, ...] = Field(default=(), description="Samplers it takes (scheduler=).")
    sizes: SizeRule | None = Field(default=None, description="Output sizes; null: width/height not taken.")
    max_images: int = Field(default=1, ge=1, description="Images per request (num_images).")
    qualities: tuple[str, ...] = Field(default=(), description="Quality levels it takes (quality=).")
    edit_modes: tuple[EditMode, ...] = Field(
        default=(), description="img2img (init_image) and inpaint (init_image with mask_image)."
    )
    strength: bool = Field(default=False, description="Takes strength= with init_image.")
    control_types: tuple[str, ...] = Field(
        default=(), description="ControlNet control types it can be steered by (control_image=, controls=)."
    )
    reference_images: int = Field(default=0, ge=0, description="Reference pictures per request.")
    reference_scale: bool = Field(default=False, description="Takes reference_scale= (IP-Adapter).")
    exact_outside_mask: bool = Field(
        default=False, description="Inpainting returns every pixel outside the mask unchanged."
    )
    loras: tuple[str, ...] = Field(default=(), description="The configured LoRAs it takes (loras=), by name.")
    prompt_weighting: bool = Field(
        default=False,
        description="Reads weights in prompts, (words:1.3), and encodes prompts past the text encoder's "
        "window whole, in chunks (compel); false in a model's config reads parentheses as text.",
    )
    # --- vision and text chat (tasks vlm, text) ---
    images_per_request: int = Field(default=0, ge=0, description="Images one question may carry.")
    detail_levels: tuple[str, ...] = Field(default=(), description="Levels it takes for detail=.")
    structured_output: StructuredOutput = Field(
        default="none",
        description="response_schema: 'native' (the model's own structured output), 'prompted' (asked for "
        "JSON and validated), 'none'.",
    )
    yes_probability: bool = Field(
        default=False,
        description="Scores a yes/no question by the probability of 'yes' (token probabilities); "
        "without it verify='thorough' parses the answer (score 1 or 0).",
    )
    # --- image-text embedding (task clip) ---
    sigmoid_scores: bool = Field(
        default=False, description="Trained with a sigmoid loss (SigLIP): has a logit bias."
    )

    def merged(self, overrides: Mapping[str, object]) -> Capabilities:
        """These capabilities with ``overrides`` (a config table) applied and validated."""
        return Capabilities.model_validate({**self.model_dump(), **overrides})

    def within(self, max_images: int, max_side: int) -> Capabilities:
        """These capabilities narrowed to a server's limits (images per call, largest side), so that
        listings and the models an error suggests never promise what the server refuses."""
        sizes = self.sizes
        if sizes is not None and sizes.multiple_of is not None:
            sizes = sizes.model_copy(update={"max_side": min(sizes.max_side or max_side, max_side)})
        return self.model_copy(update={"max_images": min(self.max_images, max_images), "sizes": sizes})

    def summary(self) -> list[str]:
        """The supported capabilities as short phrases, for listings."""
        out: list[str] = []
        for name, field in Capabilities.model_fields.items():
            value = getattr(self, name)
            if value == field.default:
                continue
            if isinstance(value, bool):
                out.append(name)
            elif isinstance(value, SizeRule):
                out.append(f"sizes {value.describe()}")
            elif isinstance(value, tuple):
                out.append(f"{name} {', '.join(value)}")
            else:
                out.append(f"{name} {value}")
        return out


@dataclass(frozen=True)
class Rule:
    """How one tool argument maps onto capabilities.

    ``takes(capabilities, value)`` says whether a model honours the value; ``offers(capabilities)``
    lists what it takes instead (for the message), or None for yes/no capabilities. The value is the
    tool argument as validated by the tool's parameters model, so its type depends on the argument.
    """

    takes: Callable[[Capabilities, Any], bool]
    offers: Callable[[Capabilities], str | None] = lambda _c: None


def _values(values: Iterable[str]) -> str | None:
    listed = ", ".join(values)
    return listed or None


def _controls(c: Capabilities, _value: object) -> bool:
    return bool(c.control_types)


RULES: dict[str, Rule] = {
    "negative_prompt": Rule(lambda c, _v: c.negative_prompt),
    "seed": Rule(lambda c, _v: c.seed),
    "steps": Rule(lambda c, _v: c.steps),
    "guidance_scale": Rule(lambda c, _v: c.guidance_scale),
    "scheduler": Rule(lambda c, v: v in c.schedulers, lambda c: _values(c.schedulers)),
    "quality": Rule(lambda c, v: v in c.qualities, lambda c: _values(c.qualities)),
    "num_images": Rule(lambda c, v: int(v) <= c.max_images, lambda c: f"at most {c.max_images}"),
    "width": Rule(lambda c, _v: c.sizes is not None),
    "height": Rule(lambda c, _v: c.sizes is not None),
    "init_image": Rule(lambda c, _v: bool(c.edit_modes)),
    "mask_image": Rule(lambda c, _v: "inpaint" in c.edit_modes),
    "strength": Rule(lambda c, _v: c.strength),
    "control_image": Rule(_controls),
    "controls": Rule(_controls),
    "controlnet": Rule(_controls),
    "control_type": Rule(lambda c, v: v in c.control_types, lambda c: _values(c.control_types)),
    "conditioning_scale": Rule(_controls),
    "control_start": Rule(_controls),
    "control_end": Rule(_controls),
    "low_threshold": Rule(lambda c, _v: "canny" in c.control_types),
    "high_threshold": Rule(lambda c, _v: "canny" in c.control_types),
    "reference_image": Rule(lambda c, _v: c.reference_images > 0),
    "reference_scale": Rule(lambda c, _v: c.reference_scale),
    "loras": Rule(lambda c, v: bool(c.loras) or not v, lambda c: _values(c.loras)),
    "detail": Rule(lambda c, v: v in c.detail_levels, lambda c: _values(c.detail_levels)),
    "response_schema": Rule(lambda c, _v: c.structured_output != "none"),
}
"""Tool arguments that only some models honour. Arguments not listed here every model of the tool's
task takes (prompt, image, max_tokens, ...)."""


def _shown(value: object) -> str:
    if isinstance(value, str):
        return repr(value[:40])
    if isinstance(value, bool | int | float):
        return repr(value)
    return ""


def refusal(
    model: str, capabilities: Capabilities, given: Mapping[str, object], others: Mapping[str, Capabilities]
) -> str | None:
    """The error for the arguments in ``given`` that ``model`` does not honour, or None: the first in
    full (what the model takes instead, the models that do take it), the others named after it.

    Args:
        model: The model's configured name.
        capabilities: Its capabilities.
        given: The arguments the caller gave (name -> value); arguments left out are not here.
        others: Every configured model of the same task, name -> capabilities, to name the ones that
            honour the argument.
    """
    refused = [a for a, v in given.items() if a in RULES and not RULES[a].takes(capabilities, v)]
    if not refused:
        return None
    argument, rest = refused[0], refused[1:]
    value, rule = given[argument], RULES[argument]
    shown = _shown(value) if argument in _VALUED else ""
    text = f"model {model!r} does not take " + (f"{argument}={shown}" if shown else f"`{argument}`")
    offered = rule.offers(capabilities)
    if offered is not None:
        text += f" (it takes {argument}: {offered})"
    able = [name for name, caps in others.items() if name != model and rule.takes(caps, value)]
    if able:
        text += f"; models that do: {', '.join(able)}. Omit {argument}, or pass model= one of those."
    else:
        text += f"; no configured model does (list_models shows what each takes). Omit {argument}."
    if rest:
        text += f" It does not take {', '.join(f'`{a}`' for a in rest)} either."
    return text


_VALUED = frozenset({"scheduler", "quality", "num_images", "detail", "control_type"})
"""Arguments whose value (not just presence) decides whether a model takes them: shown in messages."""
