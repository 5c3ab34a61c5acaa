"""OVSegProcessor: CLIP image normalisation, the CLIP tokenizer, prompt templates and class-name parsing.

The processor owns the text side of open-vocabulary segmentation: a class may carry synonyms
(``"sky,clouds"``), each synonym is embedded with every prompt template, and a synonym's embedding is the
normalised mean of its normalised template embeddings. Embeddings are cached per (model, synonyms,
templates), so repeated calls with the same labels do no text encoding.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError
from transformers import ProcessorMixin

logger = logging.getLogger(__name__)

#: The 80 prompt templates OpenAI used for zero-shot ImageNet, the default of every training-free OVSS method.
OPENAI_IMAGENET_TEMPLATES: tuple[str, ...] = (
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "a photo of a {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
    "a plushie {}.",
    "a photo of the nice {}.",
    "a photo of the small {}.",
    "a photo of the weird {}.",
    "the cartoon {}.",
    "art of the {}.",
    "a drawing of the {}.",
    "a photo of the large {}.",
    "a black and white photo of a {}.",
    "the plushie {}.",
    "a dark photo of a {}.",
    "itap of a {}.",
    "graffiti of the {}.",
    "a toy {}.",
    "itap of my {}.",
    "a photo of a cool {}.",
    "a photo of a small {}.",
    "a tattoo of the {}.",
)


@dataclass(frozen=True)
class LabelSet:
    """Parsed class names. ``labels[c]`` is the display name of class c; ``synonyms[c]`` its names to embed."""

    labels: tuple[str, ...]
    synonyms: tuple[tuple[str, ...], ...]

    @property
    def flat(self) -> tuple[str, ...]:
        """Every synonym in class order: the rows of the text embedding matrix."""
        return tuple(name for names in self.synonyms for name in names)

    @property
    def synonym_index(self) -> torch.Tensor:
        """[C, S] rows of ``flat`` for each class, S = most synonyms; shorter rows repeat their first entry
        (harmless under a max)."""
        width = max(len(names) for names in self.synonyms)
        rows, start = [], 0
        for names in self.synonyms:
            row = list(range(start, start + len(names)))
            rows.append(row + [start] * (width - len(row)))
            start += len(names)
        return torch.tensor(rows)


#: Separates the synonyms of one class everywhere; in a list item (and a labels file line) a comma does too.
SYNONYM_SEPARATOR = "|"


def _split_synonyms(item: str, commas: bool) -> tuple[str, ...]:
    names = item.replace(",", SYNONYM_SEPARATOR).split(SYNONYM_SEPARATOR) if commas else item.split(SYNONYM_SEPARATOR)
    return tuple(name.strip() for name in names if name.strip())


def _token_key(name: str, tokenizer: Any) -> tuple:
    """What the text tower sees of a name: its token ids (the CLIP tokenizer lowercases and folds white
    space), or that normalisation itself when no tokenizer is given."""
    if tokenizer is None:
        return (" ".join(name.lower().split()),)
    return tuple(tokenizer(name, add_special_tokens=False)["input_ids"])


def parse_labels(
    candidate_labels: str | list[str] | tuple[str, ...], tokenizer: Any = None, strict: bool = True
) -> LabelSet:
    """Parse class names.

    A list gives one class per item, whose synonyms are separated by commas or ``|`` (``"sky,clouds"``); a
    single string gives one class per comma, synonyms separated by ``|`` (``"road,sky|clouds"``).

    Raises ``ValueError`` on an empty list and on names the text tower cannot tell apart (same tokens, e.g.
    ``cat`` and ``Cat``): duplicate classes, a synonym repeated in its class, or (with ``strict``) a synonym
    shared by two classes. ``strict=False`` allows the last, which some anchors' class files contain
    (COCO-Object's "bed" is both a background word and a class).
    """
    if isinstance(candidate_labels, str):
        synonyms = [_split_synonyms(item, commas=False) for item in candidate_labels.split(",")]
    elif isinstance(candidate_labels, (list, tuple)):
        if not all(isinstance(item, str) for item in candidate_labels):
            raise ValueError("candidate_labels must be strings")
        synonyms = [_split_synonyms(item, commas=True) for item in candidate_labels]
    else:
        raise ValueError(
            f"candidate_labels must be a string or a list of strings, got {type(candidate_labels).__name__}"
        )
    synonyms = [names for names in synonyms if names]
    if not synonyms:
        raise ValueError("candidate_labels is empty: give at least one class name, e.g. ['road', 'tree', 'sky']")
    labels = [names[0] for names in synonyms]
    duplicates = sorted({name for name in labels if labels.count(name) > 1})
    if duplicates:
        raise ValueError(f"candidate_labels has duplicate labels: {', '.join(duplicates)}")
    owners: dict[tuple, tuple[int, str]] = {}
    for index, names in enumerate(synonyms):
        for name in names:
            key = _token_key(name, tokenizer)
            if key not in owners:
                owners[key] = (index, name)
                continue
            other_index, other = owners[key]
            if other_index == index:
                raise ValueError(
                    f"class {labels[index]!r} lists {other!r} and {name!r}, which the text tower cannot tell apart "
                    "(the CLIP tokenizer ignores case and extra spaces): give each synonym once"
                )
            if other == labels[other_index] and name == labels[index]:
                raise ValueError(
                    f"candidate_labels has duplicate labels: {other!r} and {name!r} tokenize identically "
                    "(the CLIP tokenizer ignores case and extra spaces)"
                )
            if strict:
                raise ValueError(
                    f"{name!r} (class {labels[index]!r}) and {other!r} (class {labels[other_index]!r}) tokenize "
                    "identically: a name can belong to one class only"
                )
    return LabelSet(tuple(labels), tuple(synonyms))


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


def first_line(error: BaseException, max_chars: int | None = None) -> str:
    """An error's message cut to its first line (and to ``max_chars``), or its class name when it has none."""
    return str(error).splitlines()[0][:max_chars] if str(error) else error.__class__.__name__


def load_image(image: Any) -> Image.Image:
    """An RGB PIL image from a path, URL, PIL image or numpy array (grayscale, RGBA, palette, 16-bit and
    float images are converted). Paths and PIL images are EXIF-rotated, as photos are displayed. Raises
    ``ValueError`` naming the problem for anything else (a missing file, a non-image, a truncated file)."""
    if isinstance(image, (str, os.PathLike)):
        source = str(image)
        if source.startswith(("http://", "https://")):
            from transformers.image_utils import load_image as fetch

            return to_rgb(upright(fetch(source)))
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


#: The anchors' resize cap: mmseg's ``Resize(scale=(2048, S), keep_ratio=True)`` keeps the long side <= 2048.
DEFAULT_LONG_SIDE = 2048


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


class TextEmbeddingCache:
    """A thread-safe LRU cache of text embeddings, bounded to ``max_entries`` label sets (least recently used
    first out). Two threads asking for the same missing key may both compute it; the entries never mix."""

    def __init__(self, max_entries: int = 32) -> None:
        if max_entries < 1:
            raise ValueError(f"the text cache needs max_entries >= 1, got {max_entries}")
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: tuple) -> torch.Tensor | None:
        with self._lock:
            value = self._entries.get(key)
            if value is None:
                self.misses += 1
            else:
                self.hits += 1
                self._entries.move_to_end(key)
            return value

    def put(self, key: tuple, value: torch.Tensor) -> None:
        with self._lock:
            self._entries[key] = value
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def __deepcopy__(self, memo: dict) -> TextEmbeddingCache:
        return TextEmbeddingCache(self.max_entries)  # a copied processor starts with an empty cache


def text_tower_fingerprint(model: torch.nn.Module) -> str:
    """sha256 of the weights that determine text embeddings (the text tower and its projection), computed
    once per model object."""
    cached = getattr(model, "_hf_ovseg_text_fingerprint", None)
    if cached is None:
        digest = hashlib.sha256()
        for name, tensor in sorted(model.state_dict().items()):
            if name.startswith(("text_model.", "text_projection.")):
                digest.update(name.encode())
                digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
        cached = digest.hexdigest()
        model._hf_ovseg_text_fingerprint = cached
    return cached


class DiskTextCache:
    """Text embeddings kept on disk across processes, one safetensors file per (text-tower weights, dtype,
    templates, labels): a second ``hf-ovseg segment`` with the same labels runs no text tower. Each file
    stores its key and the sha256 of its tensor; a file that does not read back whole is recomputed.

    The default folder is ``$HF_HOME/hf_ovseg/text_embeddings`` (``~/.cache/huggingface/...``)."""

    def __init__(self, folder: str | os.PathLike | None = None) -> None:
        if folder is None:
            from huggingface_hub import constants

            folder = Path(constants.HF_HOME) / "hf_ovseg" / "text_embeddings"
        self.folder = Path(folder)

    @staticmethod
    def key(model: torch.nn.Module, dtype: torch.dtype, templates: list[str], names: tuple[str, ...]) -> str:
        payload = json.dumps([text_tower_fingerprint(model), str(dtype), list(templates), list(names)])
        return hashlib.sha256(payload.encode()).hexdigest()

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.safetensors"

    def get(self, key: str) -> torch.Tensor | None:
        path = self.path(key)
        if not path.is_file():
            return None
        from safetensors import safe_open

        try:
            with safe_open(path, "pt") as entry:
                metadata = entry.metadata() or {}
                tensor = entry.get_tensor("embeddings")
            intact = metadata.get("key") == key and metadata.get("sha256") == _tensor_digest(tensor)
        except Exception as error:  # safetensors raises its own errors for a damaged file
            logger.warning("text cache entry %s cannot be read (%s): recomputing it", path, first_line(error))
            return None
        if not intact:
            logger.warning("text cache entry %s is corrupted (checksum mismatch): recomputing it", path)
            return None
        return tensor

    def put(self, key: str, tensor: torch.Tensor) -> None:
        from safetensors.torch import save_file

        tensor = tensor.detach().to("cpu").contiguous()
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            partial = self.path(key).with_suffix(f".{os.getpid()}.partial")
            save_file({"embeddings": tensor}, partial, metadata={"key": key, "sha256": _tensor_digest(tensor)})
            os.replace(partial, self.path(key))
        except OSError as error:  # a read-only cache folder only costs the text tower next time
            logger.warning("cannot write the text cache in %s (%s)", self.folder, first_line(error))


def _tensor_digest(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.to(torch.float32).contiguous().numpy().tobytes()).hexdigest()


class OVSegProcessor(ProcessorMixin):
    """CLIP image processor + CLIP tokenizer + prompt templates.

    Args:
        image_processor: a CLIP image processor; only its normalisation (mean, std) is used, since
            dense inference resizes to a short side instead of CLIP's centre crop.
        tokenizer: a CLIP tokenizer.
        templates: prompt templates with one ``{}``; default: the 80 OpenAI ImageNet templates.
        text_cache_size: label sets whose embeddings are kept (an LRU; see [`TextEmbeddingCache`]).
    """

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        templates: list[str] | None = None,
        text_cache_size: int = 32,
        **kwargs: Any,
    ):
        self.templates = check_templates(OPENAI_IMAGENET_TEMPLATES if templates is None else templates)
        super().__init__(image_processor, tokenizer, **kwargs)
        self.text_cache_size = text_cache_size
        self.text_cache = TextEmbeddingCache(text_cache_size)
        self.disk_cache: DiskTextCache | None = None  # set it (e.g. DiskTextCache()) to keep embeddings on disk

    # -- images ------------------------------------------------------------------------------------

    def preprocess_image(
        self, image: Image.Image, short_side: int | None = None, long_side: int | None = DEFAULT_LONG_SIDE
    ) -> torch.Tensor:
        """Resize (see [`resize`]), then CLIP-normalise: -> [1, 3, H, W] float32."""
        return self.normalize(self.resize(image, short_side, long_side))

    def resize(
        self, image: Image.Image, short_side: int | None = None, long_side: int | None = DEFAULT_LONG_SIDE
    ) -> torch.Tensor:
        """[1, 3, H, W] uint8 pixels resized as the anchors do: [`rescale_size`] (short side ``short_side``,
        long side at most ``long_side``) and [`resize_array`] (bilinear, no antialiasing)."""
        return resized_pixels(np.asarray(image, dtype=np.uint8), short_side, long_side)

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 [B, 3, H, W] -> CLIP-normalised float32, on the pixels' device."""
        mean = torch.tensor(self.image_processor.image_mean, device=pixels.device).view(1, 3, 1, 1)
        std = torch.tensor(self.image_processor.image_std, device=pixels.device).view(1, 3, 1, 1)
        return (pixels.float() / 255.0 - mean) / std

    # -- text --------------------------------------------------------------------------------------

    def prompts(self, name: str, templates: list[str] | None = None) -> list[str]:
        return [template.format(name) for template in (templates or self.templates)]

    @torch.inference_mode()
    def text_embeddings(
        self, model: torch.nn.Module, labels: LabelSet, templates: list[str] | None = None, chunk_size: int = 256
    ) -> torch.Tensor:
        """[Q, P] normalised embeddings of every synonym in ``labels.flat`` (cached; see module docstring)."""
        templates = self.templates if templates is None else check_templates(templates)
        param = next(model.parameters())
        key = (id(model), model.config._name_or_path, param.dtype, param.device, labels.flat, tuple(templates))
        cached = self.text_cache.get(key)
        if cached is not None:
            return cached
        disk_key = self.disk_cache.key(model, param.dtype, templates, labels.flat) if self.disk_cache else None
        stored = self.disk_cache.get(disk_key) if disk_key else None
        if stored is not None:
            result = stored.to(param.device, param.dtype)
            self.text_cache.put(key, result)
            return result
        prompts = [p for name in labels.flat for p in self.prompts(name, templates)]
        self.warn_truncated(prompts)
        embeds = []
        for start in range(0, len(prompts), chunk_size):
            tokens = self.tokenizer(
                prompts[start : start + chunk_size], padding=True, truncation=True, max_length=77, return_tensors="pt"
            ).to(param.device)
            embeds.append(F.normalize(model.encode_text(tokens["input_ids"], tokens["attention_mask"]).float(), dim=-1))
        per_template = torch.cat(embeds).view(len(labels.flat), len(templates), -1)
        result = F.normalize(per_template.mean(dim=1), dim=-1).to(param.dtype)
        self.text_cache.put(key, result)
        if disk_key:
            self.disk_cache.put(disk_key, result)
        return result

    def warn_truncated(self, prompts: list[str]) -> None:
        """Log a warning naming the prompts longer than the text tower's 77 tokens (they are truncated)."""
        long = [p for p in dict.fromkeys(prompts) if len(self.tokenizer(p)["input_ids"]) > 77]
        if long:
            logger.warning(
                "%d prompt(s) exceed the text tower's 77 tokens and are truncated, e.g. %r",
                len(long),
                long[0][:120] + ("..." if len(long[0]) > 120 else ""),
            )


def check_templates(templates: Any) -> list[str]:
    """Prompt templates: a non-empty list of strings, each with exactly one ``{}`` for the class name."""
    if isinstance(templates, str) or not isinstance(templates, (list, tuple)):
        raise ValueError(f"templates must be a list of strings, got {type(templates).__name__}")
    templates = list(templates)
    if not templates:
        raise ValueError("templates is empty: give at least one prompt template, e.g. ['a photo of a {}.']")
    bad = [t for t in templates if not isinstance(t, str) or t.count("{}") != 1]
    if bad:
        raise ValueError(f"every prompt template needs exactly one '{{}}' where the class name goes; got {bad[0]!r}")
    return templates


OVSegProcessor.register_for_auto_class("AutoProcessor")

__all__ = [
    "DEFAULT_LONG_SIDE",
    "DiskTextCache",
    "OPENAI_IMAGENET_TEMPLATES",
    "SYNONYM_SEPARATOR",
    "TextEmbeddingCache",
    "check_templates",
    "first_line",
    "rescale_size",
    "resize_array",
    "resized_pixels",
    "LabelSet",
    "OVSegProcessor",
    "load_image",
    "open_image_file",
    "parse_labels",
    "to_rgb",
]
