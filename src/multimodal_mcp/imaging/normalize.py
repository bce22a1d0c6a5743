"""One normalization path for every image that enters the server, by what it is used for.

Decoded images are first brought to the server's standard form (:func:`standardize`): 8-bit ``RGB``
or ``RGBA`` in sRGB, with no metadata. Then each use takes the form it needs:

========================  =====================================================================
use                       function and policy
========================  =====================================================================
model input, comparison,  :func:`picture`: RGB, transparency composited over white
init image, reference,    (:data:`PICTURE_BACKGROUND`), so the colour hidden under transparent
canny source              pixels never matters
control map given as is   :func:`control_map`: RGB, transparency composited over black
(depth, pose, lines)      (:data:`MAP_BACKGROUND`, the background of ControlNet's maps)
mask                      :func:`read_mask`: alpha is the mask when the image has transparency
                          (see the function for both editor conventions), else white = repaint
storage                   :func:`standardize`, transparency kept
========================  =====================================================================

Bit depth (:func:`to_8bit`): 16-bit samples are scaled by 255/65535 (not clipped), except in a 16-bit
colour or grey-and-alpha PNG, which Pillow reads as 8 bits a sample, keeping each one's high byte (within
one level of the scaling; the decoder notes it: ``codec.TRUNCATED_16_BIT``); 32-bit integer
samples (mode ``I``) are read as 16-bit when they all fit 0..65535 (what Pillow returns for 16-bit
files), else scaled from the mode's non-negative range 0..2**31-1 (negative values clip to 0);
float samples (mode ``F``) are read as 0.0..1.0 and clipped to it. Colour (:func:`to_srgb`): an
embedded ICC profile is converted to sRGB with Pillow's ImageCms (LittleCMS) at the profile's
rendering intent; a profile LittleCMS cannot read, or one that does not match the pixels, is
ignored and the pixels are taken as sRGB, as browsers do. EXIF orientation is applied by the
decoder, before all of this.
"""

from __future__ import annotations

import functools
import hashlib
import io
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from PIL import Image, ImageCms

if TYPE_CHECKING:  # imported where used: the server starts without numpy (issue 20)
    import numpy as np

logger = logging.getLogger(__name__)

PICTURE_BACKGROUND = (255, 255, 255)
"""What transparent pixels of a picture become for models and comparisons: white."""
MAP_BACKGROUND = (0, 0, 0)
"""What transparent pixels of a control map given as is become: black (a map's empty value)."""

_SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
_PROFILE_SPACES = {"RGB ": ("RGB",), "GRAY": ("L",), "CMYK": ("CMYK",)}


def has_transparency(image: Image.Image) -> bool:
    """Whether ``image`` carries any transparency: an alpha band, or a transparent colour or palette
    entry (``tRNS``). Says nothing about whether a pixel actually is transparent."""
    return image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info


def to_8bit(image: Image.Image) -> Image.Image:
    """``image`` with 8-bit samples: modes ``I;16*``, ``I`` and ``F`` become ``L`` scaled as the module
    docstring says; other modes are returned unchanged."""
    import numpy as np

    mode = image.mode
    if mode.startswith("I;16"):
        samples = np.asarray(image).astype(np.uint32)
        return Image.fromarray(((samples * 255 + 32767) // 65535).astype(np.uint8), mode="L")
    if mode == "I":
        samples = np.asarray(image).astype(np.int64)
        top = 65535 if samples.size == 0 or (samples.min() >= 0 and samples.max() <= 65535) else 2**31 - 1
        clipped = np.clip(samples, 0, top)
        return Image.fromarray(((clipped * 255 + top // 2) // top).astype(np.uint8), mode="L")
    if mode == "F":
        samples = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0, posinf=1.0, neginf=0.0)
        return Image.fromarray(np.rint(np.clip(samples, 0.0, 1.0) * 255).astype(np.uint8), mode="L")
    return image


@dataclass(frozen=True)
class ColourConversion:
    """What :func:`to_srgb` did: ``converted`` from the profile named ``profile``, or ``ignored`` it
    (and why); both None when the image had no profile."""

    profile: str | None = None
    converted: bool = False
    ignored: str | None = None


def to_srgb(image: Image.Image) -> tuple[Image.Image, ColourConversion]:
    """Convert an image with an embedded ICC profile (``image.info["icc_profile"]``) to sRGB.

    Returns the converted image (``RGB``/``RGBA`` for colour and CMYK profiles, ``L``/``LA`` kept for
    grey ones, without the profile) and what was done. Images without a profile come back unchanged.
    """
    icc = image.info.get("icc_profile")
    if not icc:
        return image, ColourConversion()
    if image.mode in ("RGB", "RGBA") and is_srgb_profile(icc):
        return _without_profile(image), ColourConversion(profile="sRGB")  # nothing to convert
    alpha = image.getchannel("A") if image.mode in ("RGBA", "LA") else None
    base = image.convert({"RGBA": "RGB", "LA": "L"}.get(image.mode, image.mode))
    try:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        name = (ImageCms.getProfileDescription(profile) or "").strip()[:80] or "unnamed"
        space = profile.profile.xcolor_space
        if base.mode not in _PROFILE_SPACES.get(space, ()):
            return _without_profile(image), ColourConversion(
                profile=name, ignored=f"a {space.strip()} profile on {image.mode} pixels"
            )
        out_mode = "L" if base.mode == "L" else "RGB"
        target = _SRGB if out_mode == "RGB" else ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
        if out_mode == "L":
            # LittleCMS converts grey to grey only through a grey profile; go through RGB and back.
            converted = ImageCms.profileToProfile(
                base, profile, target, outputMode="RGB", renderingIntent=_intent(profile)
            )
            assert converted is not None
            converted = converted.convert("L")
        else:
            converted = ImageCms.profileToProfile(
                base, profile, target, outputMode="RGB", renderingIntent=_intent(profile)
            )
            assert converted is not None
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError) as exc:
        logger.info("ignoring an unreadable ICC profile (%s); the pixels are taken as sRGB", exc)
        return _without_profile(image), ColourConversion(ignored="the profile is unreadable")
    if alpha is not None:
        converted = converted.convert("RGBA" if converted.mode == "RGB" else "LA")
        converted.putalpha(alpha)
    converted.info.clear()
    return converted, ColourConversion(profile=name, converted=True)


def is_srgb_profile(icc: bytes) -> bool:
    """Whether the ICC profile ``icc`` maps colours as sRGB does (within 1 of 255 on a set of probe
    colours: primaries, secondaries, greys and mid tones). Such a profile (cameras and editors embed
    one) needs no conversion, and dropping it changes nothing a colour-managed viewer shows."""
    return _is_srgb(hashlib.sha256(icc).hexdigest(), icc)


@functools.lru_cache(maxsize=64)
def _is_srgb(digest: str, icc: bytes) -> bool:
    try:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        if profile.profile.xcolor_space != "RGB ":
            return False
        probe = Image.frombytes("RGB", (len(_PROBES), 1), bytes(c for colour in _PROBES for c in colour))
        out = ImageCms.profileToProfile(probe, profile, _SRGB, outputMode="RGB")
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
        return False
    assert out is not None
    import numpy as np

    a = np.asarray(probe, dtype=np.int16)
    return bool(np.abs(np.asarray(out, dtype=np.int16) - a).max() <= 1)


_PROBES = [
    (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255), (255, 0, 255),
    (0, 0, 0), (64, 64, 64), (128, 128, 128), (192, 192, 192), (255, 255, 255),
    (200, 120, 40), (40, 160, 220), (90, 30, 150), (230, 200, 180), (20, 80, 30),
]  # fmt: skip


def _intent(profile: ImageCms.ImageCmsProfile) -> ImageCms.Intent:
    try:
        return ImageCms.Intent(ImageCms.getDefaultIntent(profile))
    except (ImageCms.PyCMSError, ValueError):
        return ImageCms.Intent.PERCEPTUAL


def _without_profile(image: Image.Image) -> Image.Image:
    copy = image.copy()
    copy.info.pop("icc_profile", None)
    return copy


def standardize(image: Image.Image) -> Image.Image:
    """The server's standard form: 8-bit ``RGB``, or ``RGBA`` when the image carries transparency;
    sRGB; no metadata (``info`` empty). Modes: ``1``, ``L``, ``LA``, ``P``/``PA`` (palette transparency
    becomes alpha), ``I;16``, ``I``, ``F``, ``RGB``, ``RGBA``, ``CMYK`` and anything Pillow converts."""
    image, _ = standardize_with_notes(image)
    return image


IGNORED_PROFILE = "ignored the embedded ICC profile"
"""How a note of :func:`standardize_with_notes` begins when the profile was left unapplied."""


def standardize_with_notes(image: Image.Image) -> tuple[Image.Image, tuple[str, ...]]:
    """:func:`standardize`, plus one short note per change a caller may want to report."""
    notes: list[str] = []
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        notes.append(f"{_depth(image.mode)} samples scaled to 8 bits")
        transparency = image.info.get("transparency")
        icc = image.info.get("icc_profile")
        image = to_8bit(image)
        if isinstance(transparency, int):  # a 16-bit tRNS grey value: the pixels equal to it
            notes.append("the tRNS transparent grey value of a high-bit-depth image is not applied")
        if icc:
            image.info["icc_profile"] = icc
    image, colour = to_srgb(image)
    if colour.converted:
        notes.append(f"converted from the embedded ICC profile '{colour.profile}' to sRGB")
    elif colour.ignored:
        notes.append(f"{IGNORED_PROFILE} ({colour.ignored}); pixels taken as sRGB")
    target = "RGBA" if has_transparency(image) else "RGB"
    out = image if image.mode == target else image.convert(target)
    if out is image:
        out = image.copy()
    out.info.clear()
    return out, tuple(notes)


def _depth(mode: str) -> str:
    return {"I": "32-bit integer", "F": "floating-point"}.get(mode, "16-bit")


def flatten(image: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """RGB ``image`` with its transparency composited (alpha-blended) over ``background``."""
    image = standardize(image) if image.mode not in ("RGB", "RGBA") or image.info else image
    if image.mode == "RGB":
        return image
    base = Image.new("RGBA", image.size, (*background, 255))
    return Image.alpha_composite(base, image).convert("RGB")


def picture(image: Image.Image) -> Image.Image:
    """The RGB picture a model, a comparison or an edge detector sees: transparency over white."""
    return flatten(image, PICTURE_BACKGROUND)


def control_map(image: Image.Image) -> Image.Image:
    """The RGB control map a ControlNet sees when the map is given as is: transparency over black."""
    return flatten(image, MAP_BACKGROUND)


MaskConvention = Literal["white_repaints", "opaque_strokes_repaint", "transparent_repaints"]

MASK_CONVENTIONS = (
    "A mask is black and white (white = repaint, black = keep), or has transparency, and then "
    "alpha is the mask: white or "
    "light strokes on a transparent layer mark what to repaint (an editor's brush layer), and a "
    "picture with the area to edit erased to transparent marks that area (OpenAI's convention)."
)
"""The mask conventions in one sentence, for tool descriptions and errors."""


@dataclass(frozen=True)
class MaskReading:
    """A mask as the pipeline takes it: ``mask`` is an ``L`` image, 255 = repaint, 0 = keep."""

    mask: Image.Image
    convention: MaskConvention
    repainted_fraction: float
    """Fraction of the pixels to repaint, in [0, 1]."""

    def describe(self) -> str:
        how = {
            "white_repaints": "white = repaint",
            "opaque_strokes_repaint": "opaque strokes on a transparent layer = repaint",
            "transparent_repaints": "transparent area = repaint (OpenAI's convention)",
        }[self.convention]
        return f"mask read as {how}: {self.repainted_fraction:.1%} of the picture repainted"


class MaskError(ValueError):
    """The image cannot be read as a mask under any accepted convention."""


def read_mask(image: Image.Image) -> MaskReading:
    """Read an inpainting mask, whichever convention it uses.

    - No transparent pixel: the mask must be black and white (greys allowed); luminance >= 128 =
      repaint. Colour pictures are refused: they are not masks.
    - Transparent pixels present (alpha < 128 somewhere): alpha is the mask, the colour under
      transparent pixels is never read. If every opaque pixel is light (luminance >= 128, e.g. white
      brush strokes), the opaque strokes are what to repaint; otherwise (the picture itself, or black,
      with a hole) the transparent area is what to repaint.

    Raises:
        MaskError: a colour picture without transparency.
    """
    import numpy as np

    image = standardize(image)
    if image.mode == "RGBA":
        alpha = np.asarray(image.getchannel("A"))
        transparent = alpha < 128
        if transparent.any():
            opaque = ~transparent
            luminance = np.asarray(image.convert("RGB").convert("L"))
            if opaque.any() and bool((luminance[opaque] >= 128).all()):
                return _reading(opaque, "opaque_strokes_repaint")
            return _reading(transparent, "transparent_repaints")
        image = image.convert("RGB")
    rgb = np.asarray(image, dtype=np.int16)
    spread = rgb.max(axis=2) - rgb.min(axis=2)
    if float((spread > 32).mean()) > 0.01:
        raise MaskError(
            "mask_image is a colour image without transparency, so it is not a mask. " + MASK_CONVENTIONS
        )
    return _reading(np.asarray(image.convert("L")) >= 128, "white_repaints")


def _reading(repaint: np.ndarray, convention: MaskConvention) -> MaskReading:
    import numpy as np

    mask = Image.fromarray(np.where(repaint, 255, 0).astype(np.uint8), mode="L")
    return MaskReading(mask, convention, float(repaint.mean()) if repaint.size else 0.0)
