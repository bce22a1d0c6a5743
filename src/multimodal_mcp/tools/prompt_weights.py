"""Weights in a prompt that the chosen model does not read: a note, so that the caller knows the
``(words:1.3)`` it wrote reached the model as plain text.

Models read weights when their ``capabilities.prompt_weighting`` is true (Stable Diffusion 1.5 and
SDXL with compel installed; see :mod:`multimodal_mcp.backends.prompt_encoding`). Other models (SD3,
Flux, hosted APIs, or a model configured with ``prompt_weighting = false``) get the text as written,
parentheses and numbers included. The form looked for is the one most tools use, ``(words:weight)``,
found with the regular expression the prompt encoding translates (no torch, no compel).
"""

from __future__ import annotations

from multimodal_mcp.backends.prompt_encoding import COLON_WEIGHT
from multimodal_mcp.handles import Adjustment
from multimodal_mcp.tools.common import Services

MAX_SHOWN = 3


def unread_weights(services: Services, model: str, prompts: dict[str, str | None]) -> list[Adjustment]:
    """A note for each of ``prompts`` (argument name: text) holding ``(words:weight)`` when ``model``
    does not read weights, naming the text-to-image models that do; nothing when it reads them."""
    if services.hub.capabilities(model).prompt_weighting:
        return []
    notes: list[Adjustment] = []
    for argument, text in prompts.items():
        found = [match.group(0) for match in COLON_WEIGHT.finditer(text or "")]
        if not found:
            continue
        readers = [
            name
            for name in services.hub.models_for("text_to_image")
            if services.hub.capabilities(name).prompt_weighting
        ]
        shown = ", ".join(repr(weight) for weight in found[:MAX_SHOWN])
        more = f" and {len(found) - MAX_SHOWN} more" if len(found) > MAX_SHOWN else ""
        where = (
            f"models that read them (capabilities.prompt_weighting): {', '.join(readers)}"
            if readers
            else "no configured model reads them"
        )
        notes.append(
            Adjustment(
                argument=argument,
                message=f"{argument}'s weights {shown}{more} were read as plain text: model {model!r} does "
                f"not read prompt weights ({where}).",
            )
        )
    return notes
