"""Prompt rewriting: a terse prompt becomes a detailed one, written by a text model, before generating.

``generate_image`` and ``controlled_generate`` call this with ``enhance_prompt=True``. The model is
``[defaults] prompt_rewrite`` (a ``task = "text"`` model). Its answer is sanitised (chat artefacts,
preambles and commentary removed, whitespace collapsed, cut to ``limits.max_prompt_chars``); when
nothing usable is left the original prompt is used and the result says so.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, Field

from multimodal_mcp.config import Config
from multimodal_mcp.errors import UnsupportedOperation
from multimodal_mcp.tools.common import Clock, Progress, Services

REWRITE_SYSTEM = """\
You turn short image requests into detailed prompts for a text-to-image diffusion model.

Keep everything the request asks for: its subject, any style, medium, colours, counts, named \
things and text to show. Never contradict it, change its subject or add a second subject.

Add what the request leaves open, as concrete visual detail:
- the subject: appearance, materials, pose or action, setting;
- the style or medium (e.g. photograph, watercolour, isometric 3D illustration) and its qualities;
- lighting and time of day; the colour palette;
- composition: framing, camera angle or viewpoint, depth of field;
- the mood.

Put the subject and style first. Write one paragraph of descriptive phrases or plain sentences, \
at most 80 words.

Reply with the prompt only: no preamble, no title, no quotes, no markdown, no explanation, no \
negative prompt."""

DEFAULT_REWRITE_TOKENS = 160
MIN_LETTERS = 3

# Special tokens and turn markers of common chat templates (ChatML, Llama 3, Mistral, Gemma, ...).
_SPECIAL = re.compile(
    r"<\|[^|<>\s]{1,40}\|>|</?s>|<unk>|<pad>|\[/?INST\]|<</?SYS>>|<(?:start|end)_of_turn>|<image>",
    re.IGNORECASE,
)
_THINKING = re.compile(r"<think>.*?(?:</think>|$)", re.IGNORECASE | re.DOTALL)
# The model went on to write the next turn of the conversation, or a negative prompt.
_NEXT_TURN = re.compile(
    r"(?:^|\n)[ \t]*(?:user|human|system)[ \t]*(?::|\n)|\bnegative prompt\s*:", re.IGNORECASE
)
# A role label ("ASSISTANT:", or ChatML's "assistant" line after <|im_start|>).
_ROLE_LABEL = re.compile(r"^\s*(?:assistant|model|ai)[ \t]*(?::|\n)\s*", re.IGNORECASE)
_PREAMBLE = re.compile(
    r"^\s*(?:(?:sure|okay|ok|certainly|of course)\b[!,.]?\s*)?"
    r"(?:(?:here\s+is|here's)\b[^:\n]{0,80}:|"
    r"(?:(?:enhanced|detailed|rewritten|improved|refined|final|image)\s+)?prompt\s*:)\s*",
    re.IGNORECASE,
)
_MARKDOWN = re.compile(r"```[a-z]*|\*\*|__|^#+\s*", re.IGNORECASE | re.MULTILINE)
_QUOTES = "\"'`“”‘’«»"


class PromptRewrite(BaseModel):
    """How the prompt was rewritten before generating."""

    original: str = Field(description="The prompt as given.")
    prompt: str = Field(description="The prompt the images were generated from.")
    model: str = Field(description="The text model that rewrote it.")
    rewritten: bool = Field(
        description="False when the model returned nothing usable and the original prompt was used."
    )
    note: str | None = Field(default=None, description="Why the original prompt was used, if it was.")
    tokens: int = Field(description="Tokens the text model generated.")

    def stored(self) -> dict[str, object]:
        """What is recorded with the image besides the prompt used (PNG metadata and store record)."""
        return {
            "original_prompt": self.original,
            "prompt_rewrite_model": self.model,
            "prompt_rewritten": self.rewritten,
        }

    def summary(self) -> str:
        if not self.rewritten:
            return f" Prompt not rewritten ({self.note}); the original prompt was used."
        return f' Prompt rewritten by {self.model}: "{self.prompt}".'


def pick_rewriter(config: Config) -> str:
    """The text model that rewrites prompts: ``[defaults] prompt_rewrite``."""
    name = config.defaults.get("prompt_rewrite")
    if name is None:
        text_models = config.models_for("text")
        raise UnsupportedOperation(
            "enhance_prompt=True needs a text model to rewrite the prompt, and this server has none set: "
            "the server config must name one in [defaults] prompt_rewrite (a model with task = 'text'; "
            f"configured text models: {', '.join(text_models) or 'none'}). Call again without "
            "enhance_prompt, writing the detailed prompt yourself."
        )
    # The configuration checked that the name exists and is a text model.
    return name


def rewrite_tokens(services: Services, name: str) -> int:
    """Token budget for one rewrite: the model's default, within the server's max_tokens."""
    spec = services.hub.spec(name)
    return min(spec.defaults.max_tokens or DEFAULT_REWRITE_TOKENS, services.config.server.limits.max_tokens)


def rewrite_purchase(services: Services, name: str) -> str:
    """What a rewrite buys from a paid text model, as the user is asked about it."""
    return f"one chat completion (up to {rewrite_tokens(services, name)} tokens) to rewrite the prompt"


async def complete(
    services: Services,
    clock: Clock,
    name: str,
    system: str,
    prompt: str,
    max_tokens: int,
    progress: Progress | None = None,
) -> tuple[str, int]:
    """One chat completion from text model ``name``: (text, tokens generated), wherever it runs."""
    chat = services.hub.text_chat(name)
    async with clock.infer():
        answer = await chat.complete(system, prompt, max_tokens=max_tokens, progress=progress)
    clock.loaded(answer.load_seconds)
    return answer.text, answer.tokens


def sanitize_rewrite(text: str, max_chars: int) -> str:
    """The prompt inside a chat model's answer: no special tokens, thinking, role labels, preamble,
    markdown, surrounding quotes, next turns or commentary; whitespace collapsed; at most
    ``max_chars`` characters, cut at a word boundary. Empty when nothing usable is left."""
    text = _THINKING.sub(" ", text)
    text = _SPECIAL.sub("\n", text)
    turn = _NEXT_TURN.search(text)
    if turn is not None:
        text = text[: turn.start()]
    text = _ROLE_LABEL.sub("", text)
    text = _MARKDOWN.sub("", text)
    text = _PREAMBLE.sub("", text, count=1)
    # Commentary after the prompt comes as a further paragraph; keep the first one with content.
    paragraphs = [p for p in re.split(r"\n\s*\n", text) if p.strip()]
    text = paragraphs[0] if paragraphs else ""
    text = " ".join(text.split()).strip(_QUOTES + " ")
    if len(text) > max_chars:
        cut = text[: max_chars + 1]
        space = cut.rfind(" ")
        text = (cut[:space] if space > max_chars // 2 else text[:max_chars]).rstrip(" ,;:-")
    if sum(c.isalpha() for c in text) < MIN_LETTERS:
        return ""
    return text


async def rewrite_prompt(
    services: Services, clock: Clock, name: str, prompt: str, progress: Progress | None = None
) -> PromptRewrite:
    """Rewrite ``prompt`` with text model ``name``; falls back to ``prompt`` when the answer is unusable."""
    if progress is not None:
        await progress(0, None, f"rewriting the prompt with {name}")
    answer, tokens = await complete(
        services, clock, name, REWRITE_SYSTEM, prompt, rewrite_tokens(services, name), progress
    )
    rewritten = sanitize_rewrite(answer, services.config.server.limits.max_prompt_chars)
    if not rewritten:
        return PromptRewrite(
            original=prompt,
            prompt=prompt,
            model=name,
            rewritten=False,
            note=f"{name} returned no usable prompt",
            tokens=tokens,
        )
    return PromptRewrite(original=prompt, prompt=rewritten, model=name, rewritten=True, tokens=tokens)
