"""OVSegImageProcessor: images as the training-free OVSS anchors read them.

Loading (paths, URLs, PIL images, numpy arrays; EXIF orientation; any mode to RGB), the anchors' resize rule
(mmcv's keep-ratio ``imrescale``: short side ``short_side`` unless the long side would exceed ``long_side``,
OpenCV's bilinear without antialiasing, reproduced bit-exactly in numpy) and CLIP's normalisation. It is what
``AutoImageProcessor.from_pretrained(folder)`` returns for a folder saved by hf_ovseg, and the image half of
[`OVSegProcessor`].

    >>> processor = OVSegImageProcessor(short_side=336)
    >>> inputs = processor("street.jpg")            # resized as the anchors do, then CLIP-normalised
    >>> inputs["pixel_values"].shape, inputs["original_sizes"]
    (torch.Size([1, 3, 336, 448]), [(480, 640)])
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from .errors import first_line

#: The anchors' resize: mmseg's ``Resize(scale=(2048, S), keep_ratio=True)`` keeps the long side <= 2048.
DEFAULT_LONG_SIDE = 2048
#: hf_ovseg's default short side (the anchors use 336 or 448 depending on the dataset).
DEFAULT_SHORT_SIDE = 448
#: CLIP's normalisation (OpenAI CLIP ``clip/clip.py`` ``_transform``), the default of every CLIP checkpoint.
CLIP_MEAN = tuple(OPENAI_CLIP_MEAN)
CLIP_STD = tuple(OPENAI_CLIP_STD)


# -- loading ----------------------------------------------------------------------------------------


def open_image_file(source: str | os.PathLike) -> Image.Image:
    """Open an image file lazily (its header only). Raises ``ValueError`` for a missing file, a folder, or a
    file PIL does not recognise as an image."""
    source = str(source)
    if not os.path.exists(source):
        raise ValueError(f"image file not found: {source}")
    if os.path.isdir(source):
        raise ValueError(f"{source} is a folder, not an image file")
    try:
        return Image.open(source)
    except UnidentifiedImageError:
        raise ValueError(f"{source} is not an image file (no image format recognises it)") from None
    except (OSError, SyntaxError) as error:
        raise ValueError(f"{source} is truncated or corrupted ({first_line(error)})") from None


def upright(image: Image.Image) -> Image.Image:
    """The image as it is displayed: rotated/flipped by its EXIF orientation (unchanged, not copied, without one)."""
    return ImageOps.exif_transpose(image) if image.getexif().get(0x0112, 1) != 1 else image


def fetch_url(url: str, timeout: float = 30.0) -> Image.Image:
    """An image downloaded from ``url`` (with transformers' ``load_image``); any network or decoding failure is a
    one-line ``ValueError`` naming the URL, so that a run over many inputs records it and goes on."""
    from transformers.image_utils import load_image as fetch

    try:
        return fetch(url, timeout=timeout)
    except Exception as error:  # httpx's network errors, HTTP status errors and PIL's decoding errors
        raise ValueError(f"cannot read an image from {url} ({first_line(error, 200)})") from None


def load_image(image: Any) -> Image.Image:
    """An RGB PIL image from a path, URL, PIL image or numpy array (grayscale, RGBA, palette, 16-bit and
    float images are converted). Paths, URLs and PIL images are EXIF-rotated, as photos are displayed. Raises
    ``ValueError`` naming the problem for anything else (a missing file, a non-image, a truncated file, a URL
    that cannot be fetched)."""
    if isinstance(image, (str, os.PathLike)):
        source = str(image)
        if source.startswith(("http://", "https://")):
            return to_rgb(upright(fetch_url(source)))
        with open_image_file(source) as opened:
            try:
                opened.load()
                return to_rgb(upright(opened))
            except (OSError, SyntaxError, ValueError) as error:
                raise ValueError(f"{source} is truncated or corrupted ({first_line(error)})") from None
    if isinstance(image, Image.Image):
        return to_rgb(upright(image))
    if isinstance(image, np.ndarray):
        return to_rgb(Image.fromarray(_array_to_uint8(image)))
    raise ValueError(f"cannot read an image from a {type(image).__name__}: pass a path, URL, PIL image or numpy array")


def _array_to_uint8(array: np.ndarray) -> np.ndarray:
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise ValueError(f"a numpy image must be HxW, HxWx3 or HxWx4, got shape {array.shape}")
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.uint16:
        return (array.astype(np.float32) / 257.0).round().astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        scale = 255.0 if array.max(initial=0.0) <= 1.0 else 1.0
        return np.clip(array.astype(np.float32) * scale, 0, 255).round().astype(np.uint8)
    if np.issubdtype(array.dtype, np.integer):
        return np.clip(array, 0, 255).astype(np.uint8)
    raise ValueError(f"unsupported numpy image dtype {array.dtype}")


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB; 16/32-bit integer and float images are rescaled to 8 bits first."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        array = np.asarray(image)
        if array.dtype != np.uint16:
            array = np.clip(array, 0, 65535).astype(np.uint16)
        image = Image.fromarray(_array_to_uint8(array))
    elif image.mode == "F":
        array = np.asarray(image, dtype=np.float32)
        span = float(array.max() - array.min()) or 1.0
        image = Image.fromarray(((array - array.min()) / span * 255).round().astype(np.uint8))
    elif image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


# -- the anchors' resize ------------------------------------------------------------------------------


def rescale_size(height: int, width: int, short_side: int | None, long_side: int | None = None) -> tuple[int, int]:
    """The size mmcv's ``imrescale(img, (long_side, short_side))`` gives: one factor
    ``min(long_side / long, short_side / short)`` (up or down), sides rounded with ``int(x * f + 0.5)``
    (mmcv ``rescale_size`` / ``_scale_size``, used by every anchor's ``Resize(..., keep_ratio=True)``);
    a side never drops below 1 pixel. ``short_side=None`` keeps the size; ``long_side=None`` has no cap.
    """
    if short_side is None:
        return height, width
    factor = short_side / min(height, width)
    if long_side is not None:
        factor = min(factor, long_side / max(height, width))
    return max(1, int(height * factor + 0.5)), max(1, int(width * factor + 0.5))


def _linear_taps(source: int, target: int, clamp: bool) -> tuple[np.ndarray, ...]:
    """OpenCV's INTER_LINEAR taps along one axis: source indices of the two taps and their 11-bit weights.
    Positions ``(d + 0.5) * scale - 0.5`` in float32; along columns a position outside the image puts all
    the weight on the border pixel, along rows the weights stay and the rows are clamped (OpenCV's
    ``resize`` coefficient tables)."""
    scale = 1.0 / (target / source)
    position = ((np.arange(target) + 0.5) * scale - 0.5).astype(np.float32)
    first = np.floor(position).astype(np.int64)
    frac = (position - first).astype(np.float32)
    if clamp:
        outside = (first < 0) | (first >= source - 1)
        frac[outside] = 0
        first = np.clip(first, 0, source - 1)
    weight0 = np.round((np.float32(1) - frac) * 2048).astype(np.int32)
    weight1 = np.round(frac * 2048).astype(np.int32)
    return np.clip(first, 0, source - 1), np.clip(first + 1, 0, source - 1), weight0, weight1


def resize_array(array: np.ndarray, size: tuple[int, int], rows_per_chunk: int = 512) -> np.ndarray:
    """Bilinear resize of an [H, W, 3] uint8 image to ``size`` = (height, width), bit-identical to
    ``cv2.resize(..., interpolation=cv2.INTER_LINEAR)`` (what mmcv's ``imresize`` calls in every anchor):
    no antialiasing, 11-bit fixed-point weights, a horizontal pass in integers and OpenCV's vectorised
    vertical pass ``(((S0 >> 4) * b0 >> 16) + ((S1 >> 4) * b1 >> 16) + 2) >> 2``. Tested equal to OpenCV 4.10
    and 5.0 on real photos and random sizes. Output rows are made ``rows_per_chunk`` at a time."""
    height, width = size
    if (height, width) == array.shape[:2]:
        return array
    col0, col1, alpha0, alpha1 = _linear_taps(array.shape[1], width, clamp=True)
    row0, row1, beta0, beta1 = _linear_taps(array.shape[0], height, clamp=False)
    out = np.empty((height, width, array.shape[2]), dtype=np.uint8)
    for top in range(0, height, rows_per_chunk):
        rows = slice(top, top + rows_per_chunk)

        def horizontal(source_rows: np.ndarray) -> np.ndarray:
            picked = array[source_rows].astype(np.int32)
            return picked[:, col0] * alpha0[None, :, None] + picked[:, col1] * alpha1[None, :, None]

        upper = ((horizontal(row0[rows]) >> 4) * beta0[rows, None, None]) >> 16
        lower = ((horizontal(row1[rows]) >> 4) * beta1[rows, None, None]) >> 16
        out[rows] = np.clip((upper + lower + 2) >> 2, 0, 255)
    return out


def resized_pixels(
    photo: np.ndarray, short_side: int | None, long_side: int | None = DEFAULT_LONG_SIDE
) -> torch.Tensor:
    """An [H, W, 3] uint8 photo resized as the anchors do ([`rescale_size`], then [`resize_array`]):
    -> [1, 3, h, w] uint8 pixels (a copy of their own)."""
    size = rescale_size(photo.shape[0], photo.shape[1], short_side, long_side)
    return torch.from_numpy(np.array(resize_array(photo, size))).permute(2, 0, 1)[None]


# -- the image processor --------------------------------------------------------------------------------

class OVSegImageProcessor(BaseImageProcessor):
    r"""The anchors' image preprocessing: load, EXIF-rotate, resize (mmcv keep-ratio, OpenCV-exact bilinear),
    CLIP-normalise.

    Args:
        short_side (`int` or `None`, 448): resize so the short side is this, unless the long side would exceed
            ``long_side``; ``None`` keeps the original size.
        long_side (`int` or `None`, 2048): cap on the resized long side (``None``: no cap).
        image_mean, image_std (3 floats): normalisation in [0, 1] units (default CLIP's).

    The pipeline resizes in this processor's ``resize_image`` (on the CPU, in DataLoader workers for folders)
    and normalises on the model's device with ``normalize_pixels``; ``__call__`` does both.
    """

    model_input_names = ["pixel_values"]

    def __init__(
        self,
        short_side: int | None = DEFAULT_SHORT_SIDE,
        long_side: int | None = DEFAULT_LONG_SIDE,
        image_mean: list[float] | tuple[float, ...] = CLIP_MEAN,
        image_std: list[float] | tuple[float, ...] = CLIP_STD,
        **kwargs: Any,
    ) -> None:
        for name in ("size", "crop_size", "do_resize", "do_center_crop", "resample", "do_rescale", "rescale_factor",
                     "do_normalize", "do_convert_rgb"):  # fmt: skip
            kwargs.pop(name, None)  # a CLIP preprocessor_config's own resize settings do not apply here
        super().__init__(**kwargs)
        for name, value in (("short_side", short_side), ("long_side", long_side)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive number of pixels or None, got {value!r}")
        for name, value in (("image_mean", image_mean), ("image_std", image_std)):
            if len(value) != 3:
                raise ValueError(f"{name} must have 3 values (R, G, B), got {value!r}")
        if min(image_std) <= 0:
            raise ValueError(f"image_std must be positive, got {image_std!r}")
        self.short_side = short_side
        self.long_side = long_side
        self.image_mean = [float(v) for v in image_mean]
        self.image_std = [float(v) for v in image_std]

    @classmethod
    def from_image_processor(cls, image_processor: Any, **kwargs: Any) -> OVSegImageProcessor:
        """An ``OVSegImageProcessor`` with the normalisation of any image processor (a checkpoint's
        ``CLIPImageProcessor``); returned as is when it already is one."""
        if isinstance(image_processor, cls):
            return image_processor
        mean = getattr(image_processor, "image_mean", None) or CLIP_MEAN
        std = getattr(image_processor, "image_std", None) or CLIP_STD
        return cls(image_mean=list(mean), image_std=list(std), **kwargs)

    def resolve_sides(self, **sides: int | None) -> tuple[int | None, int | None]:
        """The ``(short_side, long_side)`` one call uses: those given (``None`` is a value: no resize, no cap),
        else this processor's."""
        unknown = sorted(set(sides) - {"short_side", "long_side"})
        if unknown:
            raise ValueError(f"unknown resize argument(s) {', '.join(unknown)}; valid: short_side, long_side")
        return sides.get("short_side", self.short_side), sides.get("long_side", self.long_side)

    def resize_image(self, image: Any, **sides: int | None) -> torch.Tensor:
        """Any image ([`load_image`]) -> [1, 3, h, w] uint8 pixels resized as the anchors do ([`rescale_size`],
        [`resize_array`]); ``short_side``/``long_side`` default to this processor's."""
        short_side, long_side = self.resolve_sides(**sides)
        return resized_pixels(np.asarray(load_image(image), dtype=np.uint8), short_side, long_side)

    def normalize_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 [B, 3, H, W] -> normalised float32 ``(x / 255 - mean) / std``, on the pixels' device."""
        mean = torch.tensor(self.image_mean, device=pixels.device).view(1, 3, 1, 1)
        std = torch.tensor(self.image_std, device=pixels.device).view(1, 3, 1, 1)
        return (pixels.float() / 255.0 - mean) / std

    def preprocess(self, images: Any, return_tensors: Any = "pt", **sides: int | None) -> BatchFeature:
        """One image or a list -> ``{"pixel_values", "original_sizes"}``: pixel_values [B, 3, h, w] float32 when
        every image has the same resized size, else a list of [1, 3, h, w]; original_sizes [(H, W), ...].
        ``short_side``/``long_side`` default to this processor's."""
        items = images if isinstance(images, (list, tuple)) else [images]
        if not items:
            raise ValueError("no image given")
        pixels, sizes = [], []
        for item in items:
            picture = load_image(item)
            sizes.append((picture.height, picture.width))
            pixels.append(self.normalize_pixels(self.resize_image(picture, **sides)))
        same = len({tuple(p.shape) for p in pixels}) == 1
        return BatchFeature({"pixel_values": torch.cat(pixels) if same else pixels, "original_sizes": sizes})


OVSegImageProcessor.register_for_auto_class("AutoImageProcessor")

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "DEFAULT_LONG_SIDE",
    "DEFAULT_SHORT_SIDE",
    "OVSegImageProcessor",
    "fetch_url",
    "load_image",
    "open_image_file",
    "rescale_size",
    "resize_array",
    "resized_pixels",
    "to_rgb",
    "upright",
]
