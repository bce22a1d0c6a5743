"""Image comparison and edge detection.

Backs the ``compare_images`` tool (SSIM, pixel difference, changed regions, heat map) and the
canny ControlNet preprocessing. Pure numpy + OpenCV + Pillow.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from PIL import Image

from multimodal_mcp.imaging.normalize import picture

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
# numpy and OpenCV are imported by the functions that use them: the server starts without them
# (issue 20: a quick start), and the first comparison or edge map pays for them.

__all__ = ["Box", "CannyEdges", "Comparison", "align_sizes", "canny_edges", "compare", "ssim"]

_SSIM_WINDOW = 11
_SSIM_SIGMA = 1.5
_SSIM_DATA_RANGE = 255.0
_SSIM_K1 = 0.01
_SSIM_K2 = 0.03

_HEATMAP_COLORMAP = "COLORMAP_INFERNO"  # the cv2 constant's name


@dataclass(frozen=True)
class Box:
    """A changed region: pixel bounding box in image_a's coordinates."""

    x: int
    y: int
    width: int
    height: int
    area_fraction: float
    """Changed pixels inside the box divided by the total number of image pixels."""


@dataclass(frozen=True)
class Comparison:
    """Result of :func:`compare`."""

    ssim: float
    """Mean SSIM over the luminance (grayscale) channel, in [-1, 1]."""
    pixel_difference: float
    """Fraction of pixels whose max abs channel difference exceeds the threshold, in [0, 1]."""
    changed_regions: list[Box]
    """Sorted by ``area_fraction`` descending, at most ``max_regions`` entries."""
    heatmap: Image.Image
    """RGB heat map of the per-pixel difference, same size as the compared images."""


def align_sizes(a: Image.Image, b: Image.Image) -> tuple[Image.Image, Image.Image, bool]:
    """Bring two images to a common RGB format and size.

    Both images are converted to RGB (alpha is composited over white). If the sizes differ,
    ``b`` is resized to ``a``'s size with Lanczos resampling.

    Returns:
        ``(a, b, resized)`` where ``resized`` tells whether ``b`` had to be resized.
    """
    a_rgb = picture(a)
    b_rgb = picture(b)
    if b_rgb.size == a_rgb.size:
        return a_rgb, b_rgb, False
    return a_rgb, b_rgb.resize(a_rgb.size, Image.Resampling.LANCZOS), True


def ssim(a: npt.NDArray[np.generic], b: npt.NDArray[np.generic]) -> float:
    """Structural similarity of two 2-D images (uint8 or float, data range 255).

    Gaussian-weighted SSIM (Wang et al. 2004): 11x11 window, sigma 1.5, K1=0.01, K2=0.03,
    population (not sample) statistics, local statistics computed with ``cv2.GaussianBlur``
    using reflected borders. The result is the mean of the SSIM map; as in the reference
    formulation (and scikit-image), a border of half a window is excluded from the mean
    when the image is large enough, because statistics there depend on the padding.

    Raises:
        ValueError: if the arrays are not 2-D, differ in shape, or are empty.
    """
    import cv2
    import numpy as np

    if a.ndim != 2 or b.ndim != 2:
        raise ValueError(f"ssim expects 2-D arrays, got shapes {a.shape} and {b.shape}")
    if a.shape != b.shape:
        raise ValueError(f"ssim expects arrays of equal shape, got {a.shape} and {b.shape}")
    if a.size == 0:
        raise ValueError("ssim expects non-empty arrays")

    x = a.astype(np.float64)
    y = b.astype(np.float64)
    c1 = (_SSIM_K1 * _SSIM_DATA_RANGE) ** 2
    c2 = (_SSIM_K2 * _SSIM_DATA_RANGE) ** 2

    def blur(img: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        # BORDER_REFLECT (edge pixel repeated) matches scipy.ndimage's "reflect" mode used by
        # scikit-image, so the two implementations agree to floating-point precision.
        out = cv2.GaussianBlur(
            img,
            (_SSIM_WINDOW, _SSIM_WINDOW),
            sigmaX=_SSIM_SIGMA,
            sigmaY=_SSIM_SIGMA,
            borderType=cv2.BORDER_REFLECT,
        )
        return np.asarray(out, dtype=np.float64)

    mu_x = blur(x)
    mu_y = blur(y)
    var_x = blur(x * x) - mu_x * mu_x
    var_y = blur(y * y) - mu_y * mu_y
    cov_xy = blur(x * y) - mu_x * mu_y

    numerator = (2.0 * mu_x * mu_y + c1) * (2.0 * cov_xy + c2)
    denominator = (mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2)
    ssim_map = numerator / denominator

    pad = (_SSIM_WINDOW - 1) // 2
    if ssim_map.shape[0] > 2 * pad and ssim_map.shape[1] > 2 * pad:
        ssim_map = ssim_map[pad:-pad, pad:-pad]
    return float(np.clip(ssim_map.mean(), -1.0, 1.0))


def _changed_regions(
    changed: npt.NDArray[np.bool_], min_region_fraction: float, max_regions: int
) -> list[Box]:
    """Bounding boxes of connected changed areas, largest first."""
    import cv2
    import numpy as np

    total = changed.size
    # Close first so fragments of one edit (anti-aliased edges, text strokes) merge into a
    # single component, then open to drop isolated speckles from noise or compression.
    closed = cv2.morphologyEx(changed.astype(np.uint8), cv2.MORPH_CLOSE, np.ones((5, 5), np.uint8))
    cleaned = cv2.morphologyEx(closed, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))

    count, _labels, stats, _centroids = cv2.connectedComponentsWithStats(cleaned, connectivity=8)
    min_area = min_region_fraction * total
    boxes: list[Box] = []
    for label in range(1, count):  # label 0 is the background
        if stats[label, cv2.CC_STAT_AREA] < min_area:
            continue
        x = int(stats[label, cv2.CC_STAT_LEFT])
        y = int(stats[label, cv2.CC_STAT_TOP])
        w = int(stats[label, cv2.CC_STAT_WIDTH])
        h = int(stats[label, cv2.CC_STAT_HEIGHT])
        inside = int(np.count_nonzero(changed[y : y + h, x : x + w]))
        boxes.append(Box(x=x, y=y, width=w, height=h, area_fraction=inside / total))
    boxes.sort(key=lambda box: (-box.area_fraction, box.y, box.x))
    return boxes[:max_regions]


def compare(
    a: Image.Image,
    b: Image.Image,
    *,
    threshold: int = 16,
    min_region_fraction: float = 0.001,
    max_regions: int = 10,
) -> Comparison:
    """Compare two images.

    The images are first passed through :func:`align_sizes` (RGB, ``b`` resized to ``a``'s
    size if needed). The per-pixel difference is the maximum absolute difference over the RGB
    channels (0..255).

    Args:
        a: Reference image; region boxes are in its coordinates.
        b: Image compared against ``a``.
        threshold: A pixel counts as changed when its difference is strictly greater than this
            (0..255).
        min_region_fraction: Changed regions covering less than this fraction of the image
            (after morphological clean-up) are ignored.
        max_regions: Maximum number of regions returned.

    Returns:
        A :class:`Comparison` with grayscale SSIM, the changed-pixel fraction, the largest
        changed regions, and an RGB heat map. The heat map maps the difference 0..255 directly
        onto the colormap (no per-image normalisation), so identical images give a uniformly
        cold map and maps are comparable between calls.

    Raises:
        ValueError: on out-of-range arguments or empty images.
    """
    if not 0 <= threshold <= 255:
        raise ValueError(f"threshold must be in 0..255, got {threshold}")
    if not 0.0 <= min_region_fraction <= 1.0:
        raise ValueError(f"min_region_fraction must be in [0, 1], got {min_region_fraction}")
    if max_regions < 0:
        raise ValueError(f"max_regions must be >= 0, got {max_regions}")

    a_rgb, b_rgb, _resized = align_sizes(a, b)
    if a_rgb.width == 0 or a_rgb.height == 0:
        raise ValueError(f"cannot compare empty images (size {a_rgb.size})")

    import cv2
    import numpy as np

    arr_a = np.asarray(a_rgb, dtype=np.uint8)
    arr_b = np.asarray(b_rgb, dtype=np.uint8)

    diff = cv2.absdiff(arr_a, arr_b).max(axis=2)
    changed = diff > threshold

    similarity = ssim(
        cv2.cvtColor(arr_a, cv2.COLOR_RGB2GRAY),
        cv2.cvtColor(arr_b, cv2.COLOR_RGB2GRAY),
    )
    heat_bgr = cv2.applyColorMap(np.ascontiguousarray(diff), getattr(cv2, _HEATMAP_COLORMAP))
    heatmap = Image.fromarray(cv2.cvtColor(heat_bgr, cv2.COLOR_BGR2RGB), mode="RGB")

    return Comparison(
        ssim=similarity,
        pixel_difference=float(np.count_nonzero(changed)) / changed.size,
        changed_regions=_changed_regions(changed, min_region_fraction, max_regions),
        heatmap=heatmap,
    )


class CannyEdges:
    """The canny control map as a :class:`~multimodal_mcp.handles.ControlPreprocessor`: settings
    ``low_threshold`` and ``high_threshold`` (0..255); OpenCV runs off the event loop."""

    control_type = "canny"

    async def __call__(self, image: Image.Image, settings: Mapping[str, Any]) -> Image.Image:
        import anyio.to_thread

        low, high = int(settings.get("low_threshold", 100)), int(settings.get("high_threshold", 200))
        return await anyio.to_thread.run_sync(canny_edges, image, low, high)


def canny_edges(image: Image.Image, low_threshold: int = 100, high_threshold: int = 200) -> Image.Image:
    """Canny edge map in the form ControlNet canny models expect.

    The image is converted to RGB (alpha over white), then to 8-bit grayscale with
    ``cv2.cvtColor``, and passed to ``cv2.Canny`` (3x3 Sobel aperture, L1 gradient).

    Returns:
        An RGB image of the input's size with edges white (255) on black, all three channels
        identical.

    Raises:
        ValueError: if a threshold is outside 0..255 or ``low_threshold > high_threshold``.
    """
    for name, value in (("low_threshold", low_threshold), ("high_threshold", high_threshold)):
        if not 0 <= value <= 255:
            raise ValueError(f"{name} must be in 0..255, got {value}")
    if low_threshold > high_threshold:
        raise ValueError(
            f"low_threshold ({low_threshold}) must not be greater than high_threshold ({high_threshold})"
        )

    rgb = picture(image)
    if rgb.width == 0 or rgb.height == 0:
        return Image.new("RGB", rgb.size)
    import cv2
    import numpy as np

    gray = cv2.cvtColor(np.asarray(rgb, dtype=np.uint8), cv2.COLOR_RGB2GRAY)
    edges = cv2.Canny(gray, float(low_threshold), float(high_threshold))
    return Image.fromarray(np.repeat(edges[:, :, None], 3, axis=2), mode="RGB")


def keep_outside_mask(
    original: Image.Image, generated: Image.Image, mask: Image.Image, *, feather: int = 4
) -> Image.Image:
    """Inpainting's final composite: ``original`` wherever ``mask`` is 0 (bit for bit), ``generated``
    inside, blended over ``feather`` pixels *inside* the mask's edge so the seam does not show.

    ``mask`` is an L image of the same size (255 = repainted); ``generated`` is resized to it if needed.
    """
    if generated.size != original.size:
        generated = generated.resize(original.size, Image.Resampling.LANCZOS)
    import cv2
    import numpy as np

    inside = np.asarray(mask.convert("L")) >= 128
    if feather > 0:
        # Distance to the nearest outside pixel: 1 on the boundary, growing inward.
        distance = cv2.distanceTransform(inside.astype(np.uint8), cv2.DIST_L2, 3)
        alpha = np.clip(distance / feather, 0.0, 1.0)
    else:
        alpha = inside.astype(np.float64)
    alpha = np.where(inside, alpha, 0.0)[..., None]
    a = np.asarray(picture(original), dtype=np.float64)
    b = np.asarray(picture(generated), dtype=np.float64)
    out = np.where(alpha > 0, np.rint(a * (1 - alpha) + b * alpha), a)
    return Image.fromarray(out.astype(np.uint8), mode="RGB")
