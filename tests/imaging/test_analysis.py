"""Tests for multimodal_mcp.imaging.analysis."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image
from skimage import data, metrics

from multimodal_mcp.imaging.analysis import Box, Comparison, align_sizes, canny_edges, compare, ssim

INFERNO_COLD = tuple(
    int(v) for v in cv2.applyColorMap(np.zeros((1, 1), np.uint8), cv2.COLORMAP_INFERNO)[0, 0, ::-1]
)


@pytest.fixture(scope="module")
def astronaut() -> Image.Image:
    return Image.fromarray(data.astronaut())


@pytest.fixture(scope="module")
def coffee() -> Image.Image:
    return Image.fromarray(data.coffee())


@pytest.fixture(scope="module")
def chelsea() -> Image.Image:
    return Image.fromarray(data.chelsea())


def paint(image: Image.Image, *boxes: tuple[int, int, int, int]) -> Image.Image:
    """Copy of image with each (x, y, w, h) box filled with a colour far from the original."""
    arr = np.asarray(image).copy()
    for x, y, w, h in boxes:
        # Flipping each channel to the far end guarantees a difference of at least 128.
        arr[y : y + h, x : x + w] = np.where(arr[y : y + h, x : x + w] > 127, 0, 255)
    return Image.fromarray(arr)


# --- compare -------------------------------------------------------------------------------


def test_identical_images_are_perfectly_similar_with_no_changes(astronaut: Image.Image) -> None:
    result = compare(astronaut, astronaut.copy())

    assert isinstance(result, Comparison)
    assert result.ssim == pytest.approx(1.0, abs=1e-9)
    assert result.pixel_difference == 0.0
    assert result.changed_regions == []


def test_identical_images_give_a_uniformly_cold_rgb_heatmap_of_the_same_size(astronaut: Image.Image) -> None:
    heatmap = compare(astronaut, astronaut.copy()).heatmap

    assert heatmap.mode == "RGB"
    assert heatmap.size == astronaut.size
    pixels = np.asarray(heatmap).reshape(-1, 3)
    assert (pixels == INFERNO_COLD).all()


def test_heatmap_scale_is_fixed_rather_than_normalised_per_image(astronaut: Image.Image) -> None:
    arr = np.asarray(astronaut).astype(np.int16)
    small = Image.fromarray(np.clip(arr + 20, 0, 255).astype(np.uint8))
    large = Image.fromarray(np.clip(arr + 120, 0, 255).astype(np.uint8))

    small_heat = np.asarray(compare(astronaut, small).heatmap).astype(int).sum(axis=2)
    large_heat = np.asarray(compare(astronaut, large).heatmap).astype(int).sum(axis=2)

    # With per-image min-max scaling a uniform shift would look the same in both maps.
    assert np.median(large_heat) > np.median(small_heat)


def test_our_ssim_matches_scikit_image_on_a_blurred_noisy_copy() -> None:
    gray = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2GRAY)
    rng = np.random.default_rng(0)
    blurred = cv2.GaussianBlur(gray, (5, 5), 1.0).astype(np.float64)
    noisy = np.clip(blurred + rng.normal(0, 10, gray.shape), 0, 255).astype(np.uint8)

    expected = metrics.structural_similarity(
        gray, noisy, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255
    )

    assert ssim(gray, noisy) == pytest.approx(expected, abs=1e-3)
    assert 0.2 < ssim(gray, noisy) < 0.9


def test_ssim_accepts_float_arrays_and_rejects_mismatched_shapes() -> None:
    gray = cv2.cvtColor(data.chelsea(), cv2.COLOR_RGB2GRAY)

    assert ssim(gray.astype(np.float32), gray.astype(np.float64)) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="shape"):
        ssim(gray, gray[:-1])
    with pytest.raises(ValueError, match="2-D"):
        ssim(data.chelsea(), data.chelsea())


def test_a_painted_rectangle_is_found_as_exactly_one_matching_region(astronaut: Image.Image) -> None:
    x, y, w, h = 100, 150, 80, 40
    edited = paint(astronaut, (x, y, w, h))

    result = compare(astronaut, edited)

    assert len(result.changed_regions) == 1
    box = result.changed_regions[0]
    assert isinstance(box, Box)
    assert abs(box.x - x) <= 2 and abs(box.y - y) <= 2
    assert abs(box.width - w) <= 3 and abs(box.height - h) <= 3
    total = astronaut.width * astronaut.height
    assert result.pixel_difference == pytest.approx(w * h / total, rel=0.02)
    assert box.area_fraction == pytest.approx(w * h / total, rel=0.02)
    assert result.ssim < 1.0


def test_two_rectangles_are_two_regions_sorted_largest_first(astronaut: Image.Image) -> None:
    small = (350, 50, 30, 30)
    large = (60, 300, 120, 90)
    edited = paint(astronaut, small, large)

    regions = compare(astronaut, edited).changed_regions

    assert len(regions) == 2
    assert regions[0].area_fraction > regions[1].area_fraction
    assert (regions[0].x, regions[0].y) == pytest.approx(large[:2], abs=2)
    assert (regions[1].x, regions[1].y) == pytest.approx(small[:2], abs=2)


def test_max_regions_caps_the_list_keeping_the_largest(astronaut: Image.Image) -> None:
    edited = paint(astronaut, (350, 50, 30, 30), (60, 300, 120, 90), (300, 300, 50, 50))

    assert len(compare(astronaut, edited).changed_regions) == 3
    capped = compare(astronaut, edited, max_regions=1).changed_regions
    assert len(capped) == 1
    assert (capped[0].x, capped[0].y) == (60, 300)


def test_regions_smaller_than_min_region_fraction_are_dropped(astronaut: Image.Image) -> None:
    edited = paint(astronaut, (350, 50, 30, 30), (60, 300, 120, 90))

    # 30x30 of 512x512 is ~0.34 %, 120x90 is ~4.1 %.
    regions = compare(astronaut, edited, min_region_fraction=0.01).changed_regions

    assert len(regions) == 1
    assert regions[0].width == pytest.approx(120, abs=3)


def test_isolated_changed_pixels_count_as_difference_but_not_as_regions(astronaut: Image.Image) -> None:
    arr = np.asarray(astronaut).copy()
    arr[::20, ::20] = 255 - arr[::20, ::20]
    edited = Image.fromarray(arr)

    result = compare(astronaut, edited)

    assert result.pixel_difference > 0
    assert result.changed_regions == []


def test_differences_at_or_below_the_threshold_are_not_changes(astronaut: Image.Image) -> None:
    arr = np.asarray(astronaut).astype(np.int16)
    shifted = Image.fromarray(np.clip(arr + 10, 0, 255).astype(np.uint8))

    assert compare(astronaut, shifted, threshold=10).pixel_difference == 0.0
    assert compare(astronaut, shifted, threshold=9).pixel_difference > 0.5


def test_different_photos_have_low_ssim_and_high_pixel_difference(
    astronaut: Image.Image, coffee: Image.Image
) -> None:
    result = compare(astronaut, coffee.resize(astronaut.size))

    assert result.ssim < 0.4
    assert result.pixel_difference > 0.7
    assert 1 <= len(result.changed_regions) <= 10


def test_compare_resizes_the_second_image_to_the_first_images_size(
    astronaut: Image.Image, coffee: Image.Image
) -> None:
    result = compare(astronaut, coffee)

    assert result.heatmap.size == astronaut.size


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"threshold": 256}, "threshold"),
        ({"threshold": -1}, "threshold"),
        ({"min_region_fraction": 1.5}, "min_region_fraction"),
        ({"max_regions": -1}, "max_regions"),
    ],
)
def test_compare_rejects_out_of_range_arguments(
    astronaut: Image.Image, kwargs: dict[str, float], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        compare(astronaut, astronaut, **kwargs)  # type: ignore[arg-type]


# --- align_sizes ---------------------------------------------------------------------------


def test_align_sizes_resizes_b_to_a_and_flags_it(astronaut: Image.Image, coffee: Image.Image) -> None:
    a, b, resized = align_sizes(astronaut, coffee)

    assert resized is True
    assert a.size == b.size == astronaut.size
    assert a.mode == b.mode == "RGB"


def test_align_sizes_leaves_equal_sizes_alone(astronaut: Image.Image) -> None:
    _, b, resized = align_sizes(astronaut, astronaut.convert("L"))

    assert resized is False
    assert b.mode == "RGB"
    assert b.size == astronaut.size


def test_align_sizes_composites_transparency_over_white() -> None:
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0] = 200  # red channel
    rgba[:, :4, 3] = 255  # left half opaque, right half fully transparent
    rgba[:, 4:6, 3] = 0
    rgba[:, 6:, 3] = 128  # half transparent

    a, _, _ = align_sizes(Image.fromarray(rgba, mode="RGBA"), Image.new("RGB", (8, 8)))
    out = np.asarray(a)

    assert a.mode == "RGB"
    assert tuple(out[0, 0]) == (200, 0, 0)
    assert tuple(out[0, 4]) == (255, 255, 255)
    r, g, bl = (int(v) for v in out[0, 7])
    assert 225 <= r <= 230 and 125 <= g <= 130 and 125 <= bl <= 130


# --- canny_edges ---------------------------------------------------------------------------


def test_canny_marks_the_border_of_a_filled_square_and_nothing_else() -> None:
    arr = np.zeros((64, 64), np.uint8)
    arr[20:44, 20:44] = 255  # square covers rows/cols 20..43

    edges = canny_edges(Image.fromarray(arr).convert("RGB"))
    out = np.asarray(edges)
    e = out[..., 0]

    assert edges.mode == "RGB"
    assert edges.size == (64, 64)
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 0] == out[..., 2]).all()
    assert set(np.unique(e)) <= {0, 255}

    edge_rows, edge_cols = np.nonzero(e)
    assert edge_rows.size > 0
    # Every edge pixel lies on the square's outline (within one pixel of it).
    near_outline = (
        (np.abs(edge_rows - 19.5) <= 1.5)
        | (np.abs(edge_rows - 43.5) <= 1.5)
        | (np.abs(edge_cols - 19.5) <= 1.5)
        | (np.abs(edge_cols - 43.5) <= 1.5)
    )
    assert near_outline.all()
    # Nothing deep inside the square or away from it.
    assert not e[23:41, 23:41].any()
    assert not e[:17].any() and not e[47:].any() and not e[:, :17].any() and not e[:, 47:].any()
    # Each side of the outline is traced: the middle row/column crosses exactly two edges.
    assert np.count_nonzero(e[32]) == 2
    assert np.count_nonzero(e[:, 32]) == 2


def test_canny_output_is_rgb_and_same_size_for_rgba_and_gray_inputs(chelsea: Image.Image) -> None:
    for image in (chelsea.convert("RGBA"), chelsea.convert("L")):
        edges = canny_edges(image)
        assert edges.mode == "RGB"
        assert edges.size == chelsea.size


def test_canny_matches_cv2_and_higher_thresholds_give_fewer_edges(chelsea: Image.Image) -> None:
    gray = cv2.cvtColor(np.asarray(chelsea), cv2.COLOR_RGB2GRAY)
    counts = []
    for low, high in [(50, 100), (100, 200), (150, 250)]:
        ours = np.asarray(canny_edges(chelsea, low, high))[..., 0]
        np.testing.assert_array_equal(ours, cv2.Canny(gray, low, high))
        counts.append(int(np.count_nonzero(ours)))

    assert counts[0] >= counts[1] >= counts[2]
    assert counts[0] > counts[2] > 0


@pytest.mark.parametrize(("low", "high"), [(200, 100), (-1, 100), (100, 256), (300, 400)])
def test_canny_rejects_bad_thresholds_naming_the_values(chelsea: Image.Image, low: int, high: int) -> None:
    with pytest.raises(ValueError) as excinfo:
        canny_edges(chelsea, low, high)

    message = str(excinfo.value)
    assert str(low) in message or str(high) in message
    assert "threshold" in message


def test_keep_outside_mask_is_exact_outside_and_feathers_only_inside() -> None:
    from multimodal_mcp.imaging.analysis import keep_outside_mask

    original = Image.new("RGB", (40, 40), (0, 0, 0))
    generated = Image.new("RGB", (40, 40), (200, 200, 200))
    mask = Image.new("L", (40, 40), 0)
    mask.paste(255, (10, 10, 30, 30))
    out = np.asarray(keep_outside_mask(original, generated, mask, feather=4))
    inside = np.asarray(mask) == 255
    assert (out[~inside] == 0).all()  # outside: the original, bit for bit
    assert (out[20, 20] == 200).all()  # deep inside: the generated image
    assert 0 < out[20, 10, 0] < 200  # on the mask's edge: blended
