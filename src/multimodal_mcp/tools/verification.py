"""Checking images against words with CLIP: prompt adherence, named things, and VLM descriptions.

Two scores, both from the configured default CLIP model through the pool's CLIP batcher:

- **prompt score**: the cosine similarity of the image's and the prompt's CLIP embeddings (what
  CLIPScore rescales). It is model-specific: with CLIP ViT-L/14 or ViT-B/32 a matching image scores
  about 0.25-0.35 and an unrelated one about 0.10-0.18, hence the default threshold 0.22. CLIP reads
  only the first 77 tokens of the prompt.
- **label score** (for ``verify_labels`` and for the phrases of a description): is the thing there?
  Each label is scored on its own against neutral captions, not against the other labels, so several
  labels can all be present: ``sigmoid(scale * (cos(image, "a photo of <label>") - mean cos(image,
  neutral)))`` with CLIP's own logit scale and the neutral captions below. It is the probability CLIP
  gives the label in a two-way choice between the label and a caption that names nothing; 0.5 means
  "no better than naming nothing". Negation prompts ("a photo without a dog") are not used: CLIP
  embeds "no dog" close to "dog".

Limits: CLIP sees the image at 224 px, so small objects are missed; it counts poorly ("three cats"),
binds attributes loosely ("a red cube and a blue ball" vs the colours swapped), and a related but absent
thing (a dog in a picture of a cat) can score above a neutral caption. The scores rank and flag; they
do not prove.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Annotated

from PIL import Image
from pydantic import BaseModel, Field, StringConstraints

from multimodal_mcp.errors import InvalidArgument
from multimodal_mcp.imaging.normalize import picture
from multimodal_mcp.tools.common import Services, check_limit
from multimodal_mcp.tools.phrases import noun_phrases

NEUTRAL_CAPTIONS = ("a photo", "an image", "a picture of something")
LABEL_TEMPLATE = "a photo of {}"

VerifyLabel = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
Verify = Annotated[
    bool,
    Field(description="Score the images against the prompt with CLIP."),
]
VerifyLabels = Annotated[
    list[VerifyLabel] | None,
    Field(
        min_length=1,
        max_length=32,
        description="Things it must show, e.g. ['a red hat'], checked with CLIP.",
    ),
]


class ImageVerification(BaseModel):
    """How well one image matches its prompt and labels."""

    image_id: str
    prompt_score: float = Field(
        description="CLIP cosine similarity of the image and the prompt (about 0.25-0.35 for a good match "
        "with CLIP ViT-L/14)."
    )
    label_scores: dict[str, float] = Field(
        description="Each verify_label's probability (0-1) that CLIP sees it rather than nothing specific."
    )
    missing_labels: list[str] = Field(description="Labels scoring under label_threshold.")
    passed: bool = Field(description="prompt_score >= prompt_threshold and no missing label.")
    prompt_threshold: float
    label_threshold: float
    clip_model: str


class PhraseScore(BaseModel):
    phrase: str
    score: float = Field(
        description="Probability (0-1) that CLIP sees the phrase rather than nothing specific."
    )
    supported: bool = Field(description="score >= threshold.")


class Grounding(BaseModel):
    """The noun phrases of a description, each checked against the image with CLIP."""

    phrases: list[PhraseScore]
    unsupported: list[str] = Field(description="Phrases CLIP does not find: possible hallucinations.")
    threshold: float
    clip_model: str


def check_labels(services: Services, labels: list[str] | None) -> None:
    if labels is None:
        return
    check_limit(
        "number of verify_labels", len(labels), services.config.server.limits.max_labels, "pass fewer labels"
    )
    if len(set(labels)) != len(labels):
        duplicates = sorted({label for label in labels if labels.count(label) > 1})
        raise InvalidArgument(f"verify_labels must be distinct; repeated: {duplicates}")


async def _score(
    services: Services, images: list[Image.Image], prompt: str | None, labels: list[str]
) -> tuple[str, list[tuple[float | None, dict[str, float]]]]:
    """(CLIP model, per image: (prompt cosine or None, label probabilities))."""
    clip = services.hub.pick(None, "clip", "clip")
    texts = [*([prompt] if prompt is not None else []), *(LABEL_TEMPLATE.format(x) for x in labels)]
    rows, scale = await services.hub.embedder(clip).similarities(
        [picture(image) for image in images], [*texts, *NEUTRAL_CAPTIONS]
    )
    out: list[tuple[float | None, dict[str, float]]] = []
    for row in rows:
        baseline = sum(row[len(texts) :]) / len(NEUTRAL_CAPTIONS)
        prompt_score = row[0] if prompt is not None else None
        first = 1 if prompt is not None else 0
        scores = {
            label: round(_sigmoid(scale * (cosine - baseline)), 4)
            for label, cosine in zip(labels, row[first : len(texts)], strict=True)
        }
        out.append((round(prompt_score, 4) if prompt_score is not None else None, scores))
    return clip, out


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


async def verify_images(
    services: Services, images: list[Image.Image], prompt: str, labels: list[str] | None
) -> list[ImageVerification]:
    """One verification per image, in order; ``image_id`` is left empty for the caller to fill in
    once the images are stored (the scores are stored with them, so they come first)."""
    settings = services.config.server.verification
    clip, scored = await _score(services, images, prompt, labels or [])
    checks = []
    for prompt_score, label_scores in scored:
        assert prompt_score is not None
        missing = [label for label, score in label_scores.items() if score < settings.label_threshold]
        checks.append(
            ImageVerification(
                image_id="",
                prompt_score=prompt_score,
                label_scores=label_scores,
                missing_labels=missing,
                passed=prompt_score >= settings.prompt_threshold and not missing,
                prompt_threshold=settings.prompt_threshold,
                label_threshold=settings.label_threshold,
                clip_model=clip,
            )
        )
    return checks


async def ground_description(services: Services, image: Image.Image, text: str) -> Grounding:
    """Score the noun phrases of ``text`` against ``image``; weakly supported ones are flagged."""
    settings = services.config.server.verification
    phrases = noun_phrases(text, limit=settings.max_phrases)
    clip = services.hub.pick(None, "clip", "clip")
    if not phrases:
        return Grounding(phrases=[], unsupported=[], threshold=settings.label_threshold, clip_model=clip)
    clip, ((_, scores),) = await _score(services, [image], None, phrases)
    scored = [
        PhraseScore(phrase=p, score=s, supported=s >= settings.label_threshold) for p, s in scores.items()
    ]
    return Grounding(
        phrases=scored,
        unsupported=[s.phrase for s in scored if not s.supported],
        threshold=settings.label_threshold,
        clip_model=clip,
    )


def verification_summary(checks: list[ImageVerification], seeds: Sequence[int | None] | None = None) -> str:
    """Sentences for the result text: each image's score and failed checks, and how to revise."""
    if not checks:
        return ""
    first = checks[0]
    lines = [
        f"Verification with {first.clip_model} (passes at prompt score >= {first.prompt_threshold} "
        f"and every label >= {first.label_threshold}):"
    ]
    for i, check in enumerate(checks):
        labels = ", ".join(f"'{label}' {score:.2f}" for label, score in check.label_scores.items())
        verdict = "passed" if check.passed else "FAILED"
        line = f"- image://{check.image_id} {verdict}: prompt score {check.prompt_score:.3f}"
        if check.prompt_score < check.prompt_threshold:
            line += f" (under {check.prompt_threshold})"
        if labels:
            line += f"; labels {labels}"
        if check.missing_labels:
            line += f"; missing: {', '.join(repr(label) for label in check.missing_labels)}"
        if seeds is not None and i < len(seeds) and seeds[i] is not None:
            line += f" (seed {seeds[i]})"
        lines.append(line)
    if not all(check.passed for check in checks):
        lines.append(
            "To improve: name the missing things early in the prompt and more concretely, raise "
            "guidance_scale (models that take it), or try another seed; the same seed with a revised "
            "prompt keeps the composition (models that take a seed)."
        )
    return "\n".join(lines)


def grounding_summary(grounding: Grounding) -> str:
    if not grounding.phrases:
        return "Grounding: the description names no checkable things."
    supported = [p.phrase for p in grounding.phrases if p.supported]
    text = f"Grounding with {grounding.clip_model} (supported at >= {grounding.threshold}): "
    text += f"supported: {', '.join(repr(p) for p in supported) or 'none'}"
    if grounding.unsupported:
        weak = ", ".join(f"'{p.phrase}' {p.score:.2f}" for p in grounding.phrases if not p.supported)
        text += (
            f"; possibly not in the image (hallucinated?): {weak}. Check them with clip_classify "
            "before relying on them."
        )
    return text + "."
