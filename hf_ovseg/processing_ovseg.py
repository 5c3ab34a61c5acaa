"""OVSegProcessor: the image processor, the CLIP tokenizer and the prompt templates; it owns the text side.

A class may carry synonyms (``"sky,clouds"``, see ``labels.py``); each synonym is embedded with every prompt
template, and a synonym's embedding is the normalised mean of its normalised template embeddings. Embeddings
are cached per (model, synonyms, templates) in memory and, optionally, on disk (``text_cache.py``), so repeated
calls with the same labels do no text encoding. The image side (loading, the anchors' resize, normalisation)
is [`OVSegImageProcessor`].
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from transformers import ProcessorMixin

from .image_processing_ovseg import OVSegImageProcessor
from .labels import LabelSet
from .text_cache import DiskTextCache, TextEmbeddingCache

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


class OVSegProcessor(ProcessorMixin):
    """[`OVSegImageProcessor`] + CLIP tokenizer + prompt templates.

    Args:
        image_processor: an [`OVSegImageProcessor`]; any other image processor (a CLIP checkpoint's) gives one
            with its normalisation (mean, std), since dense inference resizes to a short side instead of CLIP's
            centre crop.
        tokenizer: a CLIP tokenizer.
        templates: prompt templates with one ``{}``; default: the 80 OpenAI ImageNet templates.
        text_cache_size: label sets whose embeddings are kept (an LRU; see [`TextEmbeddingCache`]).

    ``disk_cache`` (a [`DiskTextCache`], default None) keeps embeddings on disk across processes;
    ``progress_bar`` (default False) shows a progress bar while a long label list is encoded (the CLI and the
    demo turn it on).
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
        if image_processor is not None:
            image_processor = OVSegImageProcessor.from_image_processor(image_processor)
        super().__init__(image_processor, tokenizer, **kwargs)
        self.text_cache_size = text_cache_size
        self.text_cache = TextEmbeddingCache(text_cache_size)
        self.disk_cache: DiskTextCache | None = None
        self.progress_bar = False

    def prompts(self, name: str, templates: list[str] | None = None) -> list[str]:
        return [template.format(name) for template in (templates or self.templates)]

    @torch.inference_mode()
    def text_embeddings(
        self, model: torch.nn.Module, labels: LabelSet, templates: list[str] | None = None, chunk_size: int = 256
    ) -> torch.Tensor:
        """[Q, P] normalised embeddings of every synonym in ``labels.flat`` (cached; see module docstring).

        Prompts are encoded ``chunk_size`` at a time and each synonym's mean is taken as soon as its templates
        are in, so memory stays at a chunk of prompts plus the [Q, P] result whatever the number of labels."""
        from tqdm.auto import tqdm

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
        per_name = len(templates)
        means, pending = [], []  # pending: normalised template embeddings of synonyms not yet complete
        bar = tqdm(total=len(prompts), desc="text encoding", unit="prompt", dynamic_ncols=True,
                   disable=not self.progress_bar or len(prompts) <= chunk_size)  # fmt: skip
        for start in range(0, len(prompts), chunk_size):
            tokens = self.tokenizer(
                prompts[start : start + chunk_size], padding=True, truncation=True, max_length=77, return_tensors="pt"
            ).to(param.device)
            embeds = model.encode_text(tokens["input_ids"], tokens["attention_mask"]).float()
            pending.append(F.normalize(embeds, dim=-1))
            done = torch.cat(pending)
            complete = done.shape[0] // per_name * per_name
            if complete:
                means.append(done[:complete].view(-1, per_name, done.shape[-1]).mean(dim=1))
            pending = [done[complete:]]
            bar.update(tokens["input_ids"].shape[0])
        bar.close()
        result = F.normalize(torch.cat(means), dim=-1).to(param.dtype)
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

__all__ = ["OPENAI_IMAGENET_TEMPLATES", "OVSegProcessor", "check_templates"]
