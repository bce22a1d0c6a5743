"""MCP prompts: the workflows people run with these tools, as commands a client can offer.

Clients show prompts as slash commands or menu entries (Claude Code: ``/mcp__multimodal__make_and_check``);
picking one fills in its arguments and puts the message below in front of the model, which then calls
the tools. Each prompt is a plain function of its (string) arguments returning that message. The
tool and argument names they mention are checked against tools/list by tests/server/test_prompts.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from pydantic import Field

Text = Annotated[str, Field(min_length=1, max_length=4000)]
ATTEMPTS_PATTERN = r"^[1-5]?$"


def make_and_check(
    subject: Annotated[Text, Field(description="What the image should show, in your own words.")],
    must_show: Annotated[
        str,
        Field(
            max_length=1000,
            description="Things it must show, comma-separated (e.g. 'a red hat, a dog'); empty for none.",
        ),
    ] = "",
    attempts: Annotated[
        str, Field(pattern=ATTEMPTS_PATTERN, description="How many tries at most, 1-5 (default 3).")
    ] = "",
) -> str:
    """Make an image and check it: generate, verify it against the prompt, fix and retry."""
    labels = [label.strip() for label in must_show.split(",") if label.strip()]
    checks = (
        f"verify_labels={labels!r} so each of these is checked with CLIP"
        if labels
        else "verify='fast' so it is scored against the prompt with CLIP"
    )
    return (
        f"Make an image of: {subject}\n\n"
        f"1. Write a detailed prompt for it and call generate_image with it and {checks}.\n"
        "2. Look at the result's verification. If a check failed, or to be sure, call describe_image "
        "on the image (image://<id> from the result) and ask what it shows.\n"
        "3. If it misses something, change the prompt (keep the seed from the result to keep the "
        f"composition) and generate again; at most {attempts or '3'} tries in all.\n"
        "4. Show me the best image and say which checks passed. If the models are random test models "
        "(list_models: the 'tiny' profile), say so instead of judging the pictures."
    )


def edit_with_mask(
    image: Annotated[
        Text, Field(description="The photo: image://<id>, an absolute file path, or a data: URI.")
    ],
    mask: Annotated[
        Text,
        Field(description="A black-and-white mask the size of the photo; white is the part to repaint."),
    ],
    change: Annotated[Text, Field(description="What the white part should show instead.")],
) -> str:
    """Edit a photo with a mask: repaint the white part of the mask, keep the rest exactly."""
    return (
        f"Edit this photo: {image}\nMask (white = repaint): {mask}\nThe masked part should show: {change}\n\n"
        f"1. Call controlled_generate with init_image={image!r}, mask_image={mask!r} and a prompt "
        "describing the whole picture as it should look after the edit; verify_labels with the new "
        "content checks that it is there. Pixels outside the mask come back unchanged.\n"
        "2. Call compare_images with image_a as the photo and image_b as the result to confirm that "
        "only the masked region changed (its changed regions should lie inside the mask).\n"
        "3. If the edit is not right, adjust the prompt or strength (1.0 repaints the region "
        "entirely) and try once more. Show me the result and the comparison."
    )


def compare_before_after(
    before: Annotated[
        Text, Field(description="The earlier image: image://<id>, a file path or a data: URI.")
    ],
    after: Annotated[Text, Field(description="The later image, in the same forms.")],
    focus: Annotated[
        str, Field(max_length=1000, description="What to pay attention to (optional), e.g. 'the sky'.")
    ] = "",
) -> str:
    """Compare before and after: what changed between two images, where, and how much."""
    return (
        f"Compare the image before ({before}) with the image after ({after}).\n\n"
        f"1. Call compare_images with image_a={before!r}, image_b={after!r} and describe=True.\n"
        "2. Report the scores in plain words (ssim: 1 = identical structure; pixel_difference: the "
        "share of pixels that changed; clip_similarity: how alike in content), where the changed "
        "regions are, and what the narrative says changed."
        + (f"\n3. Say in particular what happened to: {focus}." if focus.strip() else "")
    )


PROMPTS: list[tuple[Callable[..., str], str]] = [
    (make_and_check, "Make an image and check it"),
    (edit_with_mask, "Edit a photo with a mask"),
    (compare_before_after, "Compare before and after"),
]
"""Each prompt function with its title; the name is the function's."""
