"""Long and weighted prompts for the CLIP-encoded pipelines (Stable Diffusion 1.5, SDXL), with compel.

A CLIP text encoder reads 77 tokens (75 of text between BOS and EOS). The pipelines' own
``encode_prompt`` cuts a longer prompt there; compel (https://github.com/damian0815/compel) encodes
the whole prompt in 77-token chunks and joins the chunks' embeddings (``truncate_long_prompts=False``),
and reads weights in the prompt. SDXL gets both of its encoders (penultimate hidden states, not
normalised) and the pooled output of the second, as its pipeline does (compel's ``CompelForSDXL``).

Weighting syntax (compel's own, and the form other tools use, translated to it first):

- ``(red umbrella:1.3)``: the form most tools use (AUTOMATIC1111, ComfyUI); becomes ``(red umbrella)1.3``.
- ``(red umbrella)1.3``, ``red umbrella+`` (x1.1), ``umbrella++`` (x1.21), ``fog-`` (x0.9): compel's.

Only the ``(text:number)`` form is translated, where ``text`` has no parentheses or colon of its
own; bare ``(text)`` and ``[text]`` keep compel's meaning (a group of weight 1; literal brackets).

A prompt goes through compel only when it needs to: when it or the negative prompt holds weights
or is longer than the window. Any other prompt is encoded by the pipeline itself, exactly as
without this module. A model configured with ``capabilities = {prompt_weighting = false}`` never
goes through compel (for prompts with literal parentheses); the window then cuts long prompts again.
T5-encoded families (Flux, SD3) are not encoded here: they report their own window.
"""

from __future__ import annotations

import functools
import importlib.util
import re
from typing import Any

from multimodal_mcp.backends.base import RequestNote
from multimodal_mcp.errors import InvalidArgument

FAMILIES = ("sd", "sdxl")
"""The pipeline families whose prompts compel encodes (CLIP text encoders only)."""

COLON_WEIGHT = re.compile(r"\(([^():]+):\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+))\s*\)")
"""A weight in the form most tools use, ``(words:1.3)``: the words (group 1) and the weight (group 2)."""


def available() -> bool:
    """Whether compel is installed (a dependency of the server); found without importing it."""
    return importlib.util.find_spec("compel") is not None


def to_compel_syntax(text: str) -> str:
    """``text`` with each ``(words:weight)`` written as compel's ``(words)weight``; the rest as is.

    >>> to_compel_syntax("a (red umbrella:1.3) in (fog:0.8)")
    'a (red umbrella)1.3 in (fog)0.8'
    """
    return COLON_WEIGHT.sub(lambda m: f"({m.group(1).strip()}){m.group(2)}", text)


def weights(text: str) -> list[tuple[str, float]]:
    """The fragments of ``text`` whose weight is not 1, as compel parses it: (text, weight) pairs.

    Raises:
        InvalidArgument: compel cannot parse the prompt.
    """
    return [(fragment, weight) for fragment, weight in _parsed(text) if weight != 1.0]


_SYNTAX = re.compile(r"[()\[\]+-]")
"""Characters compel's syntax needs (weights, groups, .and()/.blend()); text without any is plain."""


@functools.lru_cache(maxsize=256)
def _parsed(text: str) -> tuple[tuple[str, float], ...]:
    """Every fragment of ``text`` as compel parses it, weights and all (the syntax removed).

    compel's parser (pyparsing) takes about 1 ms per word, so text without syntax characters is
    not parsed, and results are kept for the notes, the check and the encoding of one request.
    """
    if not _SYNTAX.search(text):
        return ((text, 1.0),)
    from compel.prompt_parser import PromptParser

    try:
        conjunction = PromptParser().parse_conjunction(to_compel_syntax(text))
    except Exception as exc:  # pyparsing's errors are several classes
        raise InvalidArgument(
            f"the prompt's weighting syntax could not be read ({type(exc).__name__}); write weights as "
            "(words:1.3), or set capabilities = {prompt_weighting = false} on the model for literal text"
        ) from None
    found = tuple(
        (str(getattr(fragment, "text", "")), round(float(getattr(fragment, "weight", 1.0)), 4))
        for prompt in conjunction.prompts
        for fragment in getattr(prompt, "children", [])
        if isinstance(getattr(fragment, "weight", 1.0), int | float)
    )
    return found or ((text, 1.0),)


class PromptEncoding:
    """compel for one loaded SD 1.5 or SDXL pipeline. Blocking; runs in the pool's worker thread.

    ``active`` is False (and nothing here is used) for other families, when compel is not
    installed, or when the model is configured with ``prompt_weighting = false``.
    """

    def __init__(self, pipe: Any, family: str, enabled: bool) -> None:
        self.pipe = pipe
        self.family = family
        self.active = enabled and family in FAMILIES and available()
        tokenizer = getattr(pipe, "tokenizer", None)
        window = getattr(tokenizer, "model_max_length", None)
        self.tokenizer: Any = tokenizer
        # Text tokens a chunk holds: the window less BOS and EOS.
        self.room = int(window) - 2 if isinstance(window, int) and 2 < window < 100_000 else None
        self._compel: Any = None

    def _tokens(self, text: str) -> int:
        plain = " ".join(fragment for fragment, _ in _parsed(text))
        return len(self.tokenizer(plain, add_special_tokens=False, verbose=False).input_ids)

    def needs(self, text: str | None) -> bool:
        """True when ``text`` holds weights (a ``(words:1.0)`` too: its syntax is not text) or is
        longer than one chunk."""
        if not self.active or not text or self.room is None:
            return False
        syntax = to_compel_syntax(text) != text
        return syntax or bool(weights(text)) or self._tokens(text) > self.room

    def used_for(self, prompt: str, negative_prompt: str | None) -> bool:
        """Whether this request's prompts go through compel (both do when either needs it: the
        positive and negative embeddings must be made the same way and padded to one length)."""
        return self.needs(prompt) or self.needs(negative_prompt)

    def notes(self, argument: str, text: str) -> list[RequestNote]:
        """What compel did with ``text`` (``argument``: prompt or negative_prompt), for the result's
        adjustments: a prompt longer than the window encoded whole, and the weights it read."""
        assert self.room is not None
        said: list[RequestNote] = []
        tokens = self._tokens(text)
        encoders = "text_encoder" + (" and text_encoder_2" if self.family == "sdxl" else "") + " (CLIP)"
        if tokens > self.room:
            chunks = -(-tokens // self.room)
            said.append(
                RequestNote(
                    argument,
                    f"{argument} is {tokens} tokens for {encoders}, which read {self.room} at a time: it was "
                    f"encoded whole, in {chunks} chunks of up to {self.room} tokens joined (compel); nothing "
                    "was cut.",
                )
            )
        found = weights(text)
        if found:
            listed = ", ".join(f"{fragment!r} x{weight:g}" for fragment, weight in found[:8])
            more = f" and {len(found) - 8} more" if len(found) > 8 else ""
            said.append(
                RequestNote(
                    argument,
                    f"{argument} weights were read (compel): {listed}{more}. Weights are written "
                    "(words:weight); the model's capabilities = {prompt_weighting = false} reads them as "
                    "text.",
                )
            )
        return said

    def embeddings(self, prompt: str, negative_prompt: str | None) -> dict[str, Any]:
        """Pipeline keyword arguments that replace ``prompt`` and ``negative_prompt``: the prompt
        embeddings (batch 1, 77 x k tokens), the negative ones padded to the same length, and for
        SDXL the pooled embeddings of both. The pipeline repeats them per image.

        Raises:
            InvalidArgument: compel cannot read the prompt.
        """
        import torch

        if self._compel is None:
            from compel import CompelForSD, CompelForSDXL

            wrapper = CompelForSDXL if self.family == "sdxl" else CompelForSD
            self._compel = wrapper(self.pipe)
        # SDXL checkpoints that zero the empty negative prompt (force_zeros_for_empty_prompt) get the
        # same zeros from the pipeline when no negative embeddings are passed; SD 1.5 encodes "".
        zeros = bool(getattr(self.pipe.config, "force_zeros_for_empty_prompt", False))
        negative = negative_prompt or (None if self.family == "sdxl" and zeros else "")
        try:
            with torch.inference_mode():
                encoded = self._compel(
                    to_compel_syntax(prompt),
                    negative_prompt=None if negative is None else to_compel_syntax(negative),
                )
        except (ValueError, TypeError, RuntimeError) as exc:
            raise InvalidArgument(
                f"the prompt could not be encoded with its weights ({exc}); write weights as (words:1.3), "
                "or set capabilities = {prompt_weighting = false} on the model for literal text"
            ) from None
        kwargs: dict[str, Any] = {"prompt_embeds": encoded.embeds}
        if encoded.negative_embeds is not None:
            kwargs["negative_prompt_embeds"] = encoded.negative_embeds
        if self.family == "sdxl":
            kwargs["pooled_prompt_embeds"] = encoded.pooled_embeds
            if encoded.negative_pooled_embeds is not None:
                kwargs["negative_pooled_prompt_embeds"] = encoded.negative_pooled_embeds
        return kwargs
