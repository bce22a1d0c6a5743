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
import time
from collections.abc import Sequence
from typing import Annotated, Literal

from PIL import Image
from pydantic import BaseModel, Field, StrictBool, StringConstraints, WithJsonSchema

from multimodal_mcp.errors import InvalidArgument, UnsupportedOperation
from multimodal_mcp.imaging.normalize import picture
from multimodal_mcp.tools.claims import (
    Claim,
    FoundBox,
    approve_questions,
    check_facts,
    draw_boxes,
    ground_text,
)
from multimodal_mcp.tools.common import Services, check_limit, in_thread
from multimodal_mcp.tools.facts import Fact, prompt_facts
from multimodal_mcp.tools.phrases import noun_phrases

NEUTRAL_CAPTIONS = ("a photo", "an image", "a picture of something")
LABEL_TEMPLATE = "a photo of {}"

VerifyLabel = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
Level = Literal["fast", "thorough"]
Verify = Annotated[
    StrictBool | Level | None,
    # Advertised as a nullable string enum, the form every converter keeps with its description;
    # true (= 'fast') and false (= null) are still accepted.
    WithJsonSchema({"type": ["string", "null"], "enum": ["fast", "thorough", None]}),
    Field(description="'fast' (or true): CLIP scores; 'thorough': each fact checked too."),
]


def level_of(verify: bool | Level | None) -> Level | None:
    """The verification level a ``verify`` argument asks for: True is 'fast', False/None none."""
    if verify is True:
        return "fast"
    return verify or None


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
    passed: bool = Field(
        description="prompt_score >= prompt_threshold, no missing label and (thorough) no unsupported claim."
    )
    prompt_threshold: float
    label_threshold: float
    clip_model: str
    level: Level = "fast"
    claims: list[Claim] | None = Field(
        default=None, description="verify='thorough': each fact of the prompt as checked."
    )
    facts: list[Fact] | None = Field(default=None, description="verify='thorough': the prompt's facts.")
    facts_source: str | None = Field(default=None, description="The text model that listed them, or 'rules'.")
    boxes: list[FoundBox] | None = Field(default=None, description="Detector boxes, in image pixels.")
    overlay_id: str | None = Field(default=None, description="Stored image of the boxes: image://<id>.")
    seconds: dict[str, float] = Field(
        default_factory=dict, description="Seconds per check: clip, facts, vlm, detector, ocr."
    )


class PhraseScore(BaseModel):
    phrase: str
    score: float = Field(
        description="Probability (0-1) that CLIP sees the phrase rather than nothing specific."
    )
    supported: bool = Field(description="score >= threshold.")


class Grounding(BaseModel):
    """The noun phrases of a description checked against the image with CLIP, and its numbers and
    quoted strings against the image's OCR."""

    phrases: list[PhraseScore]
    unsupported: list[str] = Field(description="Phrases CLIP does not find: possible hallucinations.")
    threshold: float
    clip_model: str
    claims: list[Claim] = Field(
        default_factory=list,
        description="Each phrase (kind object), number and quoted string (kinds number, text) as checked.",
    )
    seconds: dict[str, float] = Field(default_factory=dict, description="Seconds per check: clip, ocr.")


def check_level(services: Services, verify: bool | Level | None) -> None:
    """Refuse verify='thorough' before any work when no vision model is set to ask the facts of.

    Raises:
        UnsupportedOperation: naming the configured VLMs and the fast level as the alternative.
    """
    if level_of(verify) != "thorough" or services.config.defaults.get("vlm") is not None:
        return
    vlms = services.config.models_for("vlm")
    raise UnsupportedOperation(
        "verify='thorough' asks a vision-language model about each fact of the prompt, and this server "
        f"names none in [defaults] vlm (configured vlm models: {', '.join(vlms) or 'none'}); "
        "call again with verify='fast'"
    )


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
    services: Services,
    images: list[Image.Image],
    prompt: str,
    labels: list[str] | None,
    level: Level = "fast",
) -> list[ImageVerification]:
    """One verification per image, in order; ``image_id`` is left empty for the caller to fill in
    once the images are stored (the scores are stored with them, so they come first).

    ``level`` 'fast': CLIP only. 'thorough': also the prompt's facts (:mod:`.facts`), each checked
    by :func:`~multimodal_mcp.tools.claims.check_facts`; the detector's boxes are drawn on a stored
    overlay image (``overlay_id``). ``seconds`` holds each check's wall time.
    """
    settings = services.config.server.verification
    started = time.perf_counter()
    clip, scored = await _score(services, images, prompt, labels or [])
    clip_seconds = round(time.perf_counter() - started, 4)
    listed = None
    facts_seconds = 0.0
    if level == "thorough":
        started = time.perf_counter()
        listed = await prompt_facts(services, prompt)
        facts_seconds = round(time.perf_counter() - started, 4)
        await approve_questions(services, len(images), len(listed.facts))
    checks = []
    for image, (prompt_score, label_scores) in zip(images, scored, strict=True):
        assert prompt_score is not None
        missing = [label for label, score in label_scores.items() if score < settings.label_threshold]
        passed = prompt_score >= settings.prompt_threshold and not missing
        check = ImageVerification(
            image_id="",
            prompt_score=prompt_score,
            label_scores=label_scores,
            missing_labels=missing,
            passed=passed,
            prompt_threshold=settings.prompt_threshold,
            label_threshold=settings.label_threshold,
            clip_model=clip,
            seconds={"clip": clip_seconds},
        )
        if listed is not None:
            checked = await check_facts(services, picture(image), listed.facts)
            overlay = await _store_overlay(services, image, checked.boxes) if checked.boxes else None
            check = check.model_copy(
                update={
                    "level": "thorough",
                    "claims": checked.claims,
                    "facts": listed.facts,
                    "facts_source": listed.source + (f" ({listed.note})" if listed.note else ""),
                    "boxes": checked.boxes,
                    "overlay_id": overlay,
                    "passed": passed and all(c.supported is not False for c in checked.claims),
                    "seconds": {"clip": clip_seconds, "facts": facts_seconds, **checked.seconds},
                }
            )
        checks.append(check)
    return checks


async def _store_overlay(services: Services, image: Image.Image, boxes: list[FoundBox]) -> str:
    boxes_stored = [b.model_dump() for b in boxes]

    def draw_and_store() -> str:
        drawn = draw_boxes(picture(image), boxes)
        return services.store.put(drawn, kind="overlay", parameters={"boxes": boxes_stored}).id

    return await in_thread(draw_and_store)


async def ground_description(services: Services, image: Image.Image, text: str) -> Grounding:
    """Score the noun phrases of ``text`` against ``image``; weakly supported ones are flagged."""
    settings = services.config.server.verification
    phrases = noun_phrases(text, limit=settings.max_phrases)
    clip = services.hub.pick(None, "clip", "clip")
    scored: list[PhraseScore] = []
    seconds: dict[str, float] = {}
    if phrases:
        started = time.perf_counter()
        clip, ((_, scores),) = await _score(services, [image], None, phrases)
        seconds["clip"] = round(time.perf_counter() - started, 4)
        scored = [
            PhraseScore(phrase=p, score=s, supported=s >= settings.label_threshold) for p, s in scores.items()
        ]
    read, ocr_seconds = await ground_text(services, image, text)
    if read:
        seconds["ocr"] = ocr_seconds
    claims = [
        Claim(
            claim=s.phrase,
            kind="object",
            supported=s.supported,
            score=s.score,
            evidence=f"CLIP: P(phrase rather than a neutral caption) = {s.score:.2f}",
            checked_by=clip,
        )
        for s in scored
    ]
    return Grounding(
        phrases=scored,
        unsupported=[s.phrase for s in scored if not s.supported],
        threshold=settings.label_threshold,
        clip_model=clip,
        claims=[*claims, *read],
        seconds=seconds,
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
        if check.claims is not None:
            lines.extend(_claim_lines(check))
    if not all(check.passed for check in checks):
        lines.append(
            "To improve: name the missing things early in the prompt and more concretely, raise "
            "guidance_scale (models that take it), or try another seed; the same seed with a revised "
            "prompt keeps the composition (models that take a seed)."
        )
        if any(c.supported is False for check in checks for c in check.claims or []):
            lines.append(
                "For failed claims: state each plainly and early (a count as 'exactly three apples', text "
                "in quotes, a position as 'X on the left, Y on the right')."
            )
    return "\n".join(lines)


def _claim_lines(check: ImageVerification) -> list[str]:
    claims = check.claims or []
    held = sum(c.supported is True for c in claims)
    took = ", ".join(f"{name} {s:.1f} s" for name, s in check.seconds.items())
    out = [f"  {held} of {len(claims)} facts held (facts from {check.facts_source}; {took})"]
    for claim in claims:
        if claim.supported is not True:
            verdict = "NOT SHOWN" if claim.supported is False else "unchecked"
            out.append(f"  - {verdict} [{claim.kind}] {claim.claim}: {claim.evidence}")
    if check.overlay_id:
        out.append(f"  Boxes drawn on image://{check.overlay_id}")
    return out


def grounding_summary(grounding: Grounding) -> str:
    read = [c for c in grounding.claims if c.kind in ("number", "text")]
    text_line = ""
    if read:
        missing = [c for c in read if c.supported is False]
        text_line = (
            f"\nText check with OCR: {len(read) - len(missing)} of {len(read)} numbers and quotes found"
        )
        text_line += (
            f"; NOT in the image's text: {', '.join(repr(c.claim) for c in missing)}. Treat them as possibly "
            "misread or made up."
            if missing
            else "."
        )
    if not grounding.phrases:
        return "Grounding: the description names no checkable things." + text_line
    supported = [p.phrase for p in grounding.phrases if p.supported]
    text = f"Grounding with {grounding.clip_model} (supported at >= {grounding.threshold}): "
    text += f"supported: {', '.join(repr(p) for p in supported) or 'none'}"
    if grounding.unsupported:
        weak = ", ".join(f"'{p.phrase}' {p.score:.2f}" for p in grounding.phrases if not p.supported)
        text += (
            f"; possibly not in the image (hallucinated?): {weak}. Check them with clip_classify "
            "before relying on them."
        )
    return text + "." + text_line
