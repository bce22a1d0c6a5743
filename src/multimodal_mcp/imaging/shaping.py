"""Fitting a picture to another size: the three resize modes of the field, and output sizes.

The modes, as A1111 and the ControlNet extension name them:

- ``just_resize``: scale each side to the target on its own; the aspect ratio changes when the
  target's differs (a circle becomes an ellipse).
- ``crop_and_resize``: scale so the picture covers the target, keeping its aspect ratio, and cut
  off what sticks out, evenly from both sides.
- ``resize_and_fill``: scale so the whole picture fits inside the target, keeping its aspect
  ratio, and fill the bands left over (the picture's edge pixels stretched outward, or a given
  colour).

:func:`plan_fit` works out the geometry (a :class:`Fit`), :func:`shape` and :func:`shape_mask`
apply it, :meth:`Fit.describe` says in a sentence what was done. :func:`fit_size` picks an output
size for a picture: its aspect ratio, in multiples of a model's size step, within size limits.
Pure Pillow; sizes are ``(width, height)`` in pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, get_args

from PIL import Image

ResizeMode = Literal["crop_and_resize", "resize_and_fill", "just_resize"]
RESIZE_MODES: tuple[str, ...] = get_args(ResizeMode)
DEFAULT_RESIZE_MODE: ResizeMode = "crop_and_resize"

Size = tuple[int, int]
Fill = Literal["edge"] | int | tuple[int, ...]
"""What fills resize_and_fill's bands: ``"edge"`` (the picture's outermost pixels stretched
outward) or a colour (an int for L images, a tuple for RGB)."""


@dataclass(frozen=True)
class Fit:
    """How a picture of ``source`` size becomes ``target`` size under ``mode``.

    The whole picture is first scaled to ``scaled``; that is placed with its top-left corner at
    ``offset`` in the target: a negative offset crops, a positive one leaves a band to fill.
    """

    source: Size
    target: Size
    mode: ResizeMode
    scaled: Size
    offset: tuple[int, int]

    @property
    def changed(self) -> bool:
        """Whether the picture is changed at all (False when it already has the target size)."""
        return self.source != self.target

    @property
    def cropped(self) -> tuple[int, int]:
        """Scaled pixels cut off, (horizontally, vertically), both sides together."""
        return (max(0, self.scaled[0] - self.target[0]), max(0, self.scaled[1] - self.target[1]))

    @property
    def filled(self) -> tuple[int, int]:
        """Target pixels filled, (horizontally, vertically), both sides together."""
        return (max(0, self.target[0] - self.scaled[0]), max(0, self.target[1] - self.scaled[1]))

    def describe(self, what: str, fill: str = "its edge pixels stretched outward") -> str | None:
        """One sentence saying what was done to ``what`` (an argument name), or None if nothing."""
        if not self.changed:
            return None
        (sw, sh), (tw, th) = self.source, self.target
        text = f"{what} {sw}x{sh} was "
        cut, padded = self.cropped, self.filled
        if self.mode == "just_resize":
            before, after = sw / sh, tw / th
            if abs(before - after) / before < 0.005:
                return text + f"resized to {tw}x{th} (resize_mode='just_resize')."
            return text + (
                f"stretched to {tw}x{th} (resize_mode='just_resize'): its aspect ratio changed from "
                f"{before:.3f} to {after:.3f} (width/height), so shapes in it are distorted."
            )
        scaled = f"scaled to {self.scaled[0]}x{self.scaled[1]} and " if self.scaled != self.source else ""
        if any(cut):
            side = "left and right" if cut[0] else "top and bottom"
            return text + (
                f"{scaled}cropped to {tw}x{th} (resize_mode='crop_and_resize'): "
                f"{max(cut)} px cut off its {side} edges."
            )
        if any(padded):
            side = "left and right" if padded[0] else "top and bottom"
            return text + (
                f"{scaled}padded to {tw}x{th} (resize_mode='resize_and_fill'): "
                f"{max(padded)} px of bands at its {side}, filled with {fill}."
            )
        return text + f"resized to {tw}x{th} (resize_mode={self.mode!r}; aspect ratio kept)."


def plan_fit(source: Size, target: Size, mode: ResizeMode = DEFAULT_RESIZE_MODE) -> Fit:
    """The geometry that turns a ``source``-sized picture into a ``target``-sized one.

    Raises:
        ValueError: a side under 1 px, or an unknown mode.
    """
    (sw, sh), (tw, th) = source, target
    if min(sw, sh, tw, th) < 1:
        raise ValueError(f"sizes must be at least 1x1 px, not {sw}x{sh} -> {tw}x{th}")
    if mode == "just_resize" or source == target:
        return Fit(source, target, mode, target, (0, 0))
    if mode == "crop_and_resize":
        scale = max(tw / sw, th / sh)
        scaled = (max(tw, round(sw * scale)), max(th, round(sh * scale)))
    elif mode == "resize_and_fill":
        scale = min(tw / sw, th / sh)
        scaled = (min(tw, max(1, round(sw * scale))), min(th, max(1, round(sh * scale))))
    else:
        raise ValueError(f"resize_mode must be one of {', '.join(RESIZE_MODES)}, not {mode!r}")
    offset = ((tw - scaled[0]) // 2, (th - scaled[1]) // 2)
    return Fit(source, target, mode, scaled, offset)


def scale(image: Image.Image, fit: Fit, resample: Image.Resampling = Image.Resampling.LANCZOS) -> Image.Image:
    """``image`` scaled to ``fit.scaled`` (the first half of :func:`shape`; a preprocessor such as
    canny may run between the halves, on the scaled picture).

    Raises:
        ValueError: ``image`` is not of ``fit.source`` size.
    """
    if image.size != fit.source:
        raise ValueError(
            f"the fit is for a {fit.source[0]}x{fit.source[1]} picture, not {image.width}x{image.height}"
        )
    return image if image.size == fit.scaled else image.resize(fit.scaled, resample)


def place(scaled: Image.Image, fit: Fit, fill: Fill = "edge") -> Image.Image:
    """``scaled`` (a picture of ``fit.scaled`` size) cropped or padded to ``fit.target`` (the second
    half of :func:`shape`)."""
    (tw, th), (x, y) = fit.target, fit.offset
    if scaled.size == fit.target:
        return scaled
    left, top = max(0, -x), max(0, -y)
    inner = scaled.crop((left, top, left + min(tw, scaled.width), top + min(th, scaled.height)))
    if inner.size == fit.target:
        return inner
    px, py = max(0, x), max(0, y)
    (w, h), edge = inner.size, fill == "edge"
    canvas = Image.new(inner.mode, fit.target, 0 if edge else fill)
    canvas.paste(inner, (px, py))
    if not edge:
        return canvas
    # Stretch the outermost columns sideways, then the outermost rows (now full width) up and down.
    if px:
        canvas.paste(inner.crop((0, 0, 1, h)).resize((px, h)), (0, py))
    if tw - px - w:
        canvas.paste(inner.crop((w - 1, 0, w, h)).resize((tw - px - w, h)), (px + w, py))
    if py:
        canvas.paste(canvas.crop((0, py, tw, py + 1)).resize((tw, py)), (0, 0))
    if th - py - h:
        canvas.paste(canvas.crop((0, py + h - 1, tw, py + h)).resize((tw, th - py - h)), (0, py + h))
    return canvas


def shape(
    image: Image.Image,
    fit: Fit,
    *,
    fill: Fill = "edge",
    resample: Image.Resampling = Image.Resampling.LANCZOS,
) -> Image.Image:
    """``image`` (of ``fit.source`` size) made ``fit.target`` size by ``fit``'s mode."""
    return place(scale(image, fit, resample), fit, fill)


def shape_mask(mask: Image.Image, fit: Fit, fill: int = 255) -> Image.Image:
    """A binary L mask (0 or 255) shaped by ``fit``: scaled smoothly, then re-thresholded at 128 so
    it stays binary; resize_and_fill's bands get ``fill`` (255: the bands are repainted)."""
    scaled = scale(mask.convert("L"), fit, Image.Resampling.BILINEAR).point(lambda v: 255 if v >= 128 else 0)
    return place(scaled, fit, fill)


def fit_size(
    size: Size, multiple: int, *, max_side: int | None = None, max_pixels: int | None = None
) -> tuple[Size, str | None]:
    """An output size with ``size``'s aspect ratio, sides in multiples of ``multiple``, within
    ``max_side`` (longest side, px) and ``max_pixels`` (width*height).

    Returns the size and, when the picture had to be made smaller to fit, which limit decided it
    ("max_side" or "max_pixels"); None when it fits as it is (up to rounding to the multiple).
    """
    w, h = size
    factor, why = 1.0, None
    if max_side is not None and max(w, h) > max_side:
        factor, why = max_side / max(w, h), "max_side"
    if max_pixels is not None and w * h * factor * factor > max_pixels:
        factor, why = math.sqrt(max_pixels / (w * h)), "max_pixels"

    def side(value: float, limit: int | None) -> int:
        rounded = max(multiple, int(value / multiple + 0.5) * multiple)
        if limit is not None and rounded > limit:
            rounded = max(multiple, limit // multiple * multiple)
        return rounded

    out_w, out_h = side(w * factor, max_side), side(h * factor, max_side)
    if max_pixels is not None and out_w * out_h > max_pixels:
        # Rounding up overshot the pixel limit: round both sides down instead.
        out_w = max(multiple, int(w * factor / multiple) * multiple)
        out_h = max(multiple, int(h * factor / multiple) * multiple)
    while max_pixels is not None and out_w * out_h > max_pixels and max(out_w, out_h) > multiple:
        # Only the one-step minimum is left over the limit: take steps off the longer side.
        if out_w >= out_h:
            out_w -= multiple
        else:
            out_h -= multiple
    return (out_w, out_h), why
