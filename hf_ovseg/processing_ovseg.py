"""OVSegProcessor: CLIP image normalisation, the CLIP tokenizer, prompt templates and class-name parsing.

The processor owns the text side of open-vocabulary segmentation: a class may carry synonyms
(``"sky,clouds"``), each synonym is embedded with every prompt template, and a synonym's embedding is the
normalised mean of its normalised template embeddings. Embeddings are cached per (model, synonyms,
templates), so repeated calls with the same labels do no text encoding.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError
from transformers import ProcessorMixin

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


def parse_labels(candidate_labels: str | list[str] | tuple[str, ...]) -> LabelSet:
    """Parse class names: a list gives one class per item (``"sky,clouds"`` = two synonyms of one class);
    a single string is split on commas into classes. Raises ``ValueError`` on empty or duplicate labels."""
    if isinstance(candidate_labels, str):
        items = [[name] for name in candidate_labels.split(",")]
    elif isinstance(candidate_labels, (list, tuple)):
        if not all(isinstance(item, str) for item in candidate_labels):
            raise ValueError("candidate_labels must be strings")
        items = [item.split(",") for item in candidate_labels]
    else:
        raise ValueError(
            f"candidate_labels must be a string or a list of strings, got {type(candidate_labels).__name__}"
        )
    synonyms = [tuple(n.strip() for n in names if n.strip()) for names in items]
    synonyms = [names for names in synonyms if names]
    if not synonyms:
        raise ValueError("candidate_labels is empty: give at least one class name, e.g. ['road', 'tree', 'sky']")
    labels = [names[0] for names in synonyms]
    duplicates = sorted({name for name in labels if labels.count(name) > 1})
    if duplicates:
        raise ValueError(f"candidate_labels has duplicate labels: {', '.join(duplicates)}")
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
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise ValueError(f"{source} is not an image file ({error.__class__.__name__})") from None


def load_image(image: Any) -> Image.Image:
    """An RGB PIL image from a path, URL, PIL image or numpy array (grayscale, RGBA, palette, 16-bit and
    float images are converted). Raises ``ValueError`` naming the problem for anything else."""
    if isinstance(image, (str, os.PathLike)):
        source = str(image)
        if source.startswith(("http://", "https://")):
            from transformers.image_utils import load_image as fetch

            return to_rgb(fetch(source))
        with open_image_file(source) as opened:
            try:
                opened.load()
            except (OSError, SyntaxError) as error:
                raise ValueError(f"{source} is not an image file ({error.__class__.__name__})") from None
            return to_rgb(ImageOps.exif_transpose(opened))
    if isinstance(image, Image.Image):
        return to_rgb(image)
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


class OVSegProcessor(ProcessorMixin):
    """CLIP image processor + CLIP tokenizer + prompt templates.

    Args:
        image_processor: a CLIP image processor; only its normalisation (mean, std) is used, since
            dense inference resizes to a short side instead of CLIP's centre crop.
        tokenizer: a CLIP tokenizer.
        templates: prompt templates with one ``{}``; default: the 80 OpenAI ImageNet templates.
    """

    def __init__(self, image_processor=None, tokenizer=None, templates: list[str] | None = None, **kwargs: Any):
        templates = list(templates) if templates is not None else list(OPENAI_IMAGENET_TEMPLATES)
        if not templates or any("{}" not in t for t in templates):
            raise ValueError("every prompt template must contain '{}' where the class name goes")
        self.templates = templates
        super().__init__(image_processor, tokenizer, **kwargs)
        self._text_cache: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self.text_cache_hits = 0
        self.text_cache_misses = 0

    # -- images ------------------------------------------------------------------------------------

    def preprocess_image(self, image: Image.Image, short_side: int | None = None) -> torch.Tensor:
        """Resize (keeping the aspect ratio) so the short side is ``short_side``, then CLIP-normalise.

        Returns:
            [1, 3, H, W] float32 tensor.
        """
        return self.normalize(self.resize(image, short_side))

    def resize(self, image: Image.Image, short_side: int | None = None) -> torch.Tensor:
        """[1, 3, H, W] uint8 pixels, resized (bilinear, aspect kept) so the short side is ``short_side``."""
        if short_side is not None:
            width, height = image.size
            scale = short_side / min(width, height)
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            if size != image.size:
                image = image.resize(size, Image.Resampling.BILINEAR)
        return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)[None]

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
        templates = list(templates or self.templates)
        param = next(model.parameters())
        key = (id(model), model.config._name_or_path, param.dtype, param.device, labels.flat, tuple(templates))
        if key in self._text_cache:
            self.text_cache_hits += 1
            self._text_cache.move_to_end(key)
            return self._text_cache[key]
        self.text_cache_misses += 1
        prompts = [p for name in labels.flat for p in self.prompts(name, templates)]
        embeds = []
        for start in range(0, len(prompts), chunk_size):
            tokens = self.tokenizer(
                prompts[start : start + chunk_size], padding=True, truncation=True, max_length=77, return_tensors="pt"
            ).to(param.device)
            embeds.append(F.normalize(model.encode_text(tokens["input_ids"], tokens["attention_mask"]).float(), dim=-1))
        per_template = torch.cat(embeds).view(len(labels.flat), len(templates), -1)
        result = F.normalize(per_template.mean(dim=1), dim=-1).to(param.dtype)
        self._text_cache[key] = result
        while len(self._text_cache) > 16:
            self._text_cache.popitem(last=False)
        return result


OVSegProcessor.register_for_auto_class("AutoProcessor")

__all__ = [
    "OPENAI_IMAGENET_TEMPLATES",
    "LabelSet",
    "OVSegProcessor",
    "load_image",
    "open_image_file",
    "parse_labels",
    "to_rgb",
]
