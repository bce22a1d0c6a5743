"""Fitting pictures to output sizes: the geometry is measured on the pictures it makes."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from multimodal_mcp.imaging.shaping import fit_size, plan_fit, shape, shape_mask


def _circle_map(size: tuple[int, int] = (300, 100), radius: int = 40) -> Image.Image:
    """A depth-map-like picture: a white disc centred on black."""
    image = Image.new("RGB", size, (0, 0, 0))
    cx, cy = size[0] / 2, size[1] / 2
    ImageDraw.Draw(image).ellipse(
        (cx - radius, cy - radius, cx + radius - 1, cy + radius - 1), fill=(255,) * 3
    )
    return image


def _extent(image: Image.Image) -> tuple[int, int]:
    """Width and height of the bright pixels' bounding box."""
    bright = np.asarray(image.convert("L")) >= 128
    xs, ys = np.nonzero(bright.any(axis=0))[0], np.nonzero(bright.any(axis=1))[0]
    return int(xs[-1] - xs[0] + 1), int(ys[-1] - ys[0] + 1)


@pytest.mark.parametrize("mode", ["crop_and_resize", "resize_and_fill"])
def test_a_circle_stays_a_circle_in_the_aspect_keeping_modes(mode: str) -> None:
    source = _circle_map()
    fit = plan_fit(source.size, (256, 256), mode)  # type: ignore[arg-type]
    out = shape(source, fit, fill=0 if mode == "resize_and_fill" else "edge")
    assert out.size == (256, 256)
    width, height = _extent(out)
    factor = fit.scaled[0] / 300
    assert abs(width - height) <= 2
    assert abs(width - 80 * factor) <= 3  # the disc scaled by the one factor the picture was


def test_just_resize_stretches_the_circle_into_an_ellipse_and_says_so() -> None:
    source = _circle_map()
    fit = plan_fit(source.size, (256, 256), "just_resize")
    width, height = _extent(shape(source, fit))
    assert abs(width - 80 * 256 / 300) <= 2 and abs(height - 80 * 256 / 100) <= 3
    assert abs(width / height - (256 / 300) / (256 / 100)) < 0.05  # 1/3 wide as tall
    note = fit.describe("control_image")
    assert note is not None and "stretched to 256x256" in note and "3.000 to 1.000" in note


def test_crop_and_resize_cuts_evenly_from_the_long_sides() -> None:
    fit = plan_fit((300, 100), (256, 256), "crop_and_resize")
    assert fit.scaled == (768, 256) and fit.offset == (-256, 0) and fit.cropped == (512, 0)
    source = Image.new("L", (300, 100), 0)
    source.paste(255, (0, 0, 100, 100))  # the outer thirds white, the middle third black
    source.paste(255, (200, 0, 300, 100))
    out = np.asarray(shape(source, fit, resample=Image.Resampling.NEAREST))
    # The middle third of the scaled picture is kept: columns 256..511 of 768, i.e. source x 100..199.
    assert out.max() == 0
    note = fit.describe("control_image")
    assert note is not None and "512 px cut off its left and right edges" in note


def test_resize_and_fill_stretches_the_edge_pixels_into_the_bands() -> None:
    source = Image.new("RGB", (300, 100), (10, 20, 30))
    source.paste((200, 0, 0), (0, 0, 300, 1))  # a red top row
    source.paste((0, 0, 200), (0, 99, 300, 100))  # a blue bottom row
    fit = plan_fit(source.size, (256, 256), "resize_and_fill")
    top, bottom = fit.offset[1], fit.offset[1] + fit.scaled[1]
    assert fit.scaled == (256, 85) and fit.filled == (0, 171)
    out = np.asarray(shape(source, fit, resample=Image.Resampling.NEAREST))
    assert (out[:top] == (200, 0, 0)).all() and (out[bottom:] == (0, 0, 200)).all()
    flat = np.asarray(shape(source, fit, fill=(1, 2, 3)))
    assert (flat[:top] == (1, 2, 3)).all() and (flat[bottom:] == (1, 2, 3)).all()


def test_a_mask_keeps_its_region_and_stays_binary() -> None:
    mask = Image.new("L", (32, 32), 0)
    mask.paste(255, (8, 8, 24, 24))
    fit = plan_fit(mask.size, (64, 64))
    out = np.asarray(shape_mask(mask, fit))
    assert set(np.unique(out)) == {0, 255}
    ys, xs = np.nonzero(out)
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (16, 47, 16, 47)
    padded = np.asarray(shape_mask(mask, plan_fit((32, 32), (64, 32), "resize_and_fill")))
    assert (padded[:, :16] == 255).all() and (padded[:, 48:] == 255).all()  # the bands are repainted
    assert padded[:, 16:48].mean() == 255 * 0.25


def test_a_picture_of_the_target_size_is_left_alone() -> None:
    image = Image.new("RGB", (64, 48), (5, 6, 7))
    fit = plan_fit(image.size, (64, 48), "just_resize")
    assert not fit.changed and fit.describe("init_image") is None and shape(image, fit) is image


@pytest.mark.parametrize(
    ("size", "multiple", "limits", "expected", "why"),
    [
        ((427, 640), 8, {}, (424, 640), None),
        ((427, 640), 16, {}, (432, 640), None),
        ((4032, 3024), 8, {"max_side": 2048}, (2048, 1536), "max_side"),
        ((4032, 3024), 8, {"max_side": 2048, "max_pixels": 1024 * 1024}, (1176, 880), "max_pixels"),
        ((60, 60), 8, {}, (64, 64), None),
    ],
)
def test_output_sizes_keep_the_aspect_ratio_in_the_models_step_within_the_limits(
    size: tuple[int, int], multiple: int, limits: dict[str, int], expected: tuple[int, int], why: str | None
) -> None:
    (w, h), reason = fit_size(size, multiple, **limits)
    assert (w, h) == expected and reason == why
    assert w % multiple == 0 and h % multiple == 0
    assert max(w, h) <= limits.get("max_side", 10**9) and w * h <= limits.get("max_pixels", 10**12)
    assert abs(w / h - size[0] / size[1]) < 2 * multiple / min(w, h)
