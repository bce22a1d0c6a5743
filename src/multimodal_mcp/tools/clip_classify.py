"""clip_classify: zero-shot classification of an image over caller-given labels with CLIP."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field, StringConstraints

from multimodal_mcp.errors import InvalidArgument
from multimodal_mcp.imaging.normalize import picture
from multimodal_mcp.tools.common import (
    READ_SIDE_CLIP,
    Clock,
    ImageArg,
    ImageRef,
    ModelArg,
    Params,
    Progress,
    Result,
    Services,
    Timings,
    approve_spending,
    check_limit,
    keeping_inputs,
    resolve_image,
)

Label = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]


class ClipClassifyParams(Params):
    image: ImageArg
    labels: Annotated[
        list[Label],
        Field(
            min_length=1,
            max_length=256,
            description="Labels, e.g. ['a cat', 'a dog']; one for SigLIP.",
        ),
    ]
    model: ModelArg = None
    template: Annotated[
        str | None,
        Field(
            max_length=200,
            description="A template with '{}' for the label, e.g. 'a photo of {}'.",
        ),
    ] = None


class LabelScore(BaseModel):
    label: str
    score: float = Field(
        description="Probability in [0, 1]: a softmax over the labels (CLIP: scores sum to 1), or the "
        "label's own sigmoid (SigLIP: independent, need not sum to 1)."
    )


class ClipClassifyResult(Result):
    labels: list[LabelScore] = Field(description="Every label with its score, highest first.")
    top_label: str
    model: str
    sigmoid_scores: bool = Field(
        default=False,
        description="True: each score is the label's own probability (SigLIP); false: a softmax (CLIP).",
    )
    template: str | None
    image: ImageRef
    timings: Timings

    def summary(self) -> str:
        ranked = ", ".join(f"{s.label} {s.score:.3f}" for s in self.labels[:5])
        more = f" (+{len(self.labels) - 5} more)" if len(self.labels) > 5 else ""
        return (
            f"{self.image.uri} is most likely '{self.top_label}' according to {self.model}: {ranked}{more}. "
            + (
                "Each score is that label's own probability (sigmoid); they need not sum to 1."
                if self.sigmoid_scores
                else "Scores are relative to the labels given; add labels to test other hypotheses."
            )
        )


async def clip_classify(
    params: ClipClassifyParams, services: Services, progress: Progress | None = None
) -> ClipClassifyResult:
    """Zero-shot classify an image over your labels with CLIP: each label's probability.

    CLIP: a softmax over the labels (add alternatives, e.g. 'something else'); SigLIP: each
    label alone.
    """
    # 1. Check inputs
    clock = Clock()
    name = services.hub.pick(params.model, "clip", "clip")
    check_limit(
        "number of labels", len(params.labels), services.config.server.limits.max_labels, "pass fewer labels"
    )
    sigmoid = services.hub.capabilities(name).sigmoid_scores
    if len(params.labels) < 2 and not sigmoid:
        siglip = [m for m in services.hub.models_for("clip") if services.hub.capabilities(m).sigmoid_scores]
        instead = (
            f", or a SigLIP model, which scores one label alone: model={siglip[0]!r}"
            if siglip
            else "; SigLIP models (sigmoid scores) take one label, and none is configured"
        )
        raise InvalidArgument(
            f"model {name!r} needs at least 2 labels: its scores are a softmax over the labels, so one "
            f"label always scores 1. Add an alternative, e.g. labels=[{params.labels[0][:60]!r}, "
            f"'something else']{instead}"
        )
    if len(set(params.labels)) != len(params.labels):
        duplicates = sorted({label for label in params.labels if params.labels.count(label) > 1})
        raise InvalidArgument(f"labels must be distinct; repeated: {duplicates}")
    template = params.template
    if template is not None and template.count("{}") != 1:
        raise InvalidArgument(
            f"template must contain '{{}}' exactly once (where the label goes); got {template!r}"
        )
    # replace(), not format(): a template is untrusted text, and format() would evaluate fields
    # such as '{0.__class__}' in it.
    texts = [template.replace("{}", label) if template else label for label in params.labels]
    read_side = services.hub.image_side(name) or READ_SIDE_CLIP
    source = await resolve_image(services, params.image, "image", min_side=read_side)
    await approve_spending(services, name, f"one classification of an image over {len(params.labels)} labels")

    # 2. Score, batched with concurrent calls; label embeddings come from the cache when seen before.
    # The input is stored meanwhile (off the critical path; stored before the result is returned).
    async with keeping_inputs(services, source), clock.infer():
        scores = await services.hub.embedder(name).classify(picture(source.image), texts)

    # 3. Rank
    ranked = sorted(
        (
            LabelScore(label=label, score=round(score, 6))
            for label, score in zip(params.labels, scores, strict=True)
        ),
        key=lambda s: s.score,
        reverse=True,
    )
    return ClipClassifyResult(
        labels=ranked,
        top_label=ranked[0].label,
        model=name,
        sigmoid_scores=sigmoid,
        template=template,
        image=ImageRef.of(source.record),
        timings=clock.timings(),
    )
