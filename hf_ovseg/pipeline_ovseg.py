"""``zero-shot-image-segmentation``: an image and any class names in, a label map and per-class masks out.

    >>> from transformers import pipeline
    >>> segmenter = pipeline("zero-shot-image-segmentation", model="my-ovseg", trust_remote_code=True)
    >>> segments = segmenter("street.jpg", candidate_labels=["road", "building", "tree", "sky,clouds"])
    >>> [(s["label"], round(s["score"], 2)) for s in segments]   # s["mask"]: PIL "L" image, 0/255

The protocol is that of the training-free OVSS anchors: resize (short side ``short_side``, long side at most
``long_side``, bilinear without antialiasing), sliding windows of ``crop_size``/``stride`` run in batches of
``batch_size``, logits stitched by averaging overlaps, resized to the original size, optionally refined by
PAMR, softmax over classes, synonyms merged by max, optional area and background thresholds.

Every per-call setting (the method and its knobs included) lives in that call only: the shared model is
never changed, so one pipeline can serve several threads with different settings at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import AutoModel, Pipeline
from transformers.pipelines import PIPELINE_REGISTRY

from .image_processing_ovseg import load_image
from .inference import (
    DensePrediction,
    Stitcher,
    add_counts,
    check_patch_padding,
    check_windows,
    predict_labels,
    resize_bilinear,
    run_windows,
)  # fmt: skip
from .labels import LabelSet, parse_labels
from .postprocess import pamr
from .processing_ovseg import check_templates
from .sam_refinement import ClassProbabilities, RefinementSettings, refine_with_sam
from .trident import TridentLogits, trident_logits

TASK = "zero-shot-image-segmentation"
REFINEMENTS = ("pamr",)

PREPROCESS_KEYS = ("short_side", "long_side")
FORWARD_KEYS = (
    "crop_size",
    "stride",
    "crop_batch_size",
    "patch_padding",
    "templates",
    "background_threshold",
    "background_label",
    "area_threshold",
    "refine",
    "return_probabilities",
    "normalize_probabilities",
)
POSTPROCESS_KEYS = ("return_label_map", "return_probabilities")


def _check_size(name: str, value: Any, allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        none = " or None" if allow_none else ""
        raise ValueError(f"{name} must be a positive number of pixels{none}, got {value!r}")


def auto_batch_size(model: Any, crop_size: int | None) -> int:
    """Crops per forward pass for ``model`` on its device: 8 on a CPU (its cores are busy within one crop already);
    on a GPU the largest power of two up to 256 whose activations (estimated per crop from its tokens, width and
    heads, with a margin of 4) fit in the free memory."""
    param = next(model.parameters())
    if param.device.type != "cuda" or crop_size is None:
        return 8
    free, _ = torch.cuda.mem_get_info(param.device)
    vision = model.config.vision_config
    tokens = (crop_size // vision.patch_size) ** 2 + 1
    per_crop = param.element_size() * tokens * (24 * vision.hidden_size + 3 * vision.num_attention_heads * tokens)
    batch = 8
    while batch < 256 and 4 * 2 * batch * per_crop <= free:
        batch *= 2
    return batch


def kernels_depend_on_shapes(device: torch.device) -> bool:
    """Whether the kernels run on ``device`` depend on the batch's shape (a GPU's: cuBLAS picks them by shape),
    so that fixed-shape batches are needed for results independent of the batch."""
    return device.type != "cpu"


def check_call_arguments(kwargs: dict[str, Any], names: dict[str, str] | None = None) -> None:
    """Raise ``ValueError`` naming the first bad protocol argument, before any work is done. ``names`` maps the
    arguments to what the user typed (the CLI's flags: ``{"crop_size": "--crop-size", ...}``)."""
    names = {"crop_batch_size": "batch_size", **(names or {})}
    for name in ("short_side", "long_side", "crop_size", "stride"):
        _check_size(names.get(name, name), kwargs.get(name))
    if kwargs.get("crop_batch_size", "auto") != "auto":
        _check_size(names["crop_batch_size"], kwargs["crop_batch_size"], allow_none=False)
    crop, stride = kwargs.get("crop_size", 224), kwargs.get("stride")
    if crop is not None and stride is not None:
        check_windows(crop, stride, names.get("crop_size", "crop_size"), names.get("stride", "stride"))
    check_patch_padding(kwargs.get("patch_padding", "center"))
    if kwargs.get("refine") not in (None, *REFINEMENTS):
        raise ValueError(f"unknown refine {kwargs['refine']!r}; valid values: None, {', '.join(REFINEMENTS)}")
    for name in ("background_threshold", "area_threshold"):
        value = kwargs.get(name)
        if value is not None and not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"{names.get(name, name)} must lie in [0, 1], got {value}")
    if "templates" in kwargs and kwargs["templates"] is not None:
        check_templates(kwargs["templates"])


#: Trident's SAM refinement: (logits, coarse labels [H, W], class probabilities) -> refined labels, every pixel's
#: best coarse probability and the refined maps (None unless the call returns probabilities).
Refine = Callable[
    [TridentLogits, torch.Tensor, ClassProbabilities], tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]
]


@dataclass(frozen=True)
class CallSettings:
    """One call's resolved settings (see ``ZeroShotImageSegmentationPipeline.call_settings``)."""

    forward: Callable[[torch.Tensor], torch.Tensor]
    labels: LabelSet
    names: list[str]
    window_multiple: int  # windows are padded to multiples of this (CLIP's patch, or a proxy's multiple)
    crop_size: int | None
    stride: int | None
    batch_size: int
    padding: str
    background_threshold: float
    background_index: int | None
    area_threshold: float | None
    refine: str | None
    return_probabilities: bool
    normalize_probabilities: bool = False
    min_window: int = 1  # the smallest window side the model runs (patch_padding "none", SimFeatUp)
    # Trident: the logits of a whole image from (normalised image, original photo), and the SAM refinement
    whole_image: Callable[[torch.Tensor, np.ndarray], TridentLogits] | None = None
    sam_refine: Refine | None = None

    def check_image(self, height: int, width: int) -> None:
        """Raise ``ValueError`` when a resized ``height x width`` image gives a window smaller than the model runs."""
        sides = [min(side, self.crop_size or side) for side in (height, width)]
        if min(sides) < self.min_window:
            reason = "one patch" if self.padding == "none" else "SimFeatUp's smallest grid"
            raise ValueError(
                f"a {height}x{width} image (after resizing) gives {sides[0]}x{sides[1]} windows, smaller than "
                f"{reason} ({self.min_window} pixels): use a larger image or short side"
            )

    def work(self, image: torch.Tensor, photo: Any) -> Any:
        """What [`run`] takes for one image: its windows (a [`Stitcher`]), or for a whole-image method (Trident)
        the normalised image [1, 3, h, w] and the original [H, W, 3] uint8 photo (array or tensor)."""
        if self.whole_image is not None:
            return image, np.asarray(photo)
        return Stitcher.windows(image, self.crop_size, self.stride)

    def run(self, items: Iterable[tuple[Any, Any]]) -> Iterator[tuple[Any, Any]]:
        """Logits ``(key, [Q, H, W])`` of many images, in order, from ``(key, work(image, photo))`` pairs: stitched
        from this call's windows (see ``run_windows``), or the [`TridentLogits`] of each whole image."""
        if self.whole_image is not None:
            return ((key, self.whole_image(*item)) for key, item in items)
        return run_windows(self.forward, items, self.window_multiple, self.batch_size, self.padding)


def trident_prediction(logits: TridentLogits, size: tuple[int, int], call: CallSettings) -> DensePrediction:
    """Trident's post-processing (YuHengsss/Trident@a93b346:trident.py:260-283): the logits resized to ``size``,
    softmax, synonyms (its background names) merged by max, ``prob_thd``, then the SAM refinement, whose
    probabilities (the refined ``L`` maps) are the ones returned. A segment's score is, as for every method, the
    mean over its pixels of their best (coarse) class probability. The [C, H, W] probabilities are made only when
    the call returns them (see ``sam_refinement.ClassProbabilities``)."""
    synonym_index = call.labels.synonym_index
    prediction = predict_labels(
        logits.logits, synonym_index, size, call.background_threshold, call.background_index,
        call.return_probabilities, call.area_threshold,
    )  # fmt: skip
    if call.sam_refine is None:
        return prediction
    probs = (
        ClassProbabilities(prediction.probabilities) if call.return_probabilities
        else ClassProbabilities(logits=logits.logits, synonym_index=synonym_index, size=size)
    )  # fmt: skip
    labels, scores, refined = call.sam_refine(logits, prediction.label_map.long(), probs)
    if scores is None:  # no region kept: the coarse prediction
        return prediction
    pixel_count = torch.zeros_like(prediction.pixel_count)
    add_counts(pixel_count, labels)
    score_sum = torch.zeros_like(prediction.score_sum)
    score_sum.index_add_(0, labels.flatten(), scores.flatten().double())
    return DensePrediction(labels.to(torch.int32), score_sum, pixel_count, refined)


class ZeroShotImageSegmentationPipeline(Pipeline):
    """Open-vocabulary semantic segmentation with an [`OVSegModel`] and its [`OVSegProcessor`].

    Call arguments (all optional except ``candidate_labels``):
        candidate_labels: list of class names; ``"sky,clouds"`` (or ``"sky|clouds"``) makes synonyms of one
            class; names the CLIP tokenizer cannot tell apart are an error (see ``parse_labels``).
        short_side / long_side (the image processor's: 448 / 2048): resize so the short side is ``short_side``
            unless the long side would exceed ``long_side`` (mmcv's keep-ratio rule, as every anchor);
            ``short_side=None`` keeps the original size.
        crop_size (224) / stride (``crop_size // 2``): sliding window (``stride <= crop_size``);
            ``crop_size=None`` runs the whole image at once.
        patch_padding ("center"): a window whose sides are not patch multiples is zero-padded on both sides
            (``"center"``) or loses the remainder, its logits stretched over it (``"none"``).
        batch_size (8): crops per forward pass, or ``"auto"`` (8 on a CPU, up to 256 on a GPU: see
            ``auto_batch_size``).
        refine (None): ``"pamr"`` refines the full-resolution logits with PAMR (NACLIP's setting).
        area_threshold (None): classes covering at most this share of the non-background prediction are
            dropped (their pixels go to their next-best class), as SCLIP and SFP do.
        background_threshold (0.0) / background_label: pixels whose best probability is below the
            threshold get ``background_label`` (one of the labels, or a new one; default "background").
        return_label_map: return ``{"segments", "label_map", "labels"}`` instead of the segment list;
        return_probabilities: also ``"probabilities"`` [C, H, W] (implies ``return_label_map``);
        normalize_probabilities (False): those probabilities divided by their sum over the classes after the
            labels are chosen, as NACLIP returns them (sinahmr/NACLIP@0cac3a6:naclip.py:153; labels and scores
            unchanged).
        method / any method knob (``outlier_top_k=10``, ...): per-call setting, weights not reloaded.
        templates: prompt templates overriding the processor's.

    A PIL image or path is EXIF-rotated (as photos are displayed) before anything else.
    """

    _load_processor = True
    _load_image_processor = False
    _load_tokenizer = False
    _load_feature_extractor = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not hasattr(self.processor, "text_embeddings"):
            raise ValueError(
                "the zero-shot-image-segmentation pipeline needs an OVSegProcessor: pass processor=..., or load "
                "a folder saved by hf-ovseg convert / model.save_pretrained"
            )

    def __call__(self, images: Any, candidate_labels: Any = None, **kwargs: Any) -> Any:
        if candidate_labels is None:
            raise ValueError("candidate_labels is required, e.g. candidate_labels=['road', 'tree', 'sky']")
        if "batch_size" in kwargs:  # crops per forward; images are processed one at a time
            kwargs["crop_batch_size"] = kwargs.pop("batch_size")
        labels = self.label_set(candidate_labels)
        if isinstance(images, (list, tuple)):
            return [
                super(ZeroShotImageSegmentationPipeline, self).__call__(im, labels=labels, **kwargs) for im in images
            ]
        return super().__call__(images, labels=labels, **kwargs)

    def _sanitize_parameters(self, labels: LabelSet | None = None, method: str | None = None, **kwargs: Any):
        from .configuration_ovseg import METHOD_KNOBS

        unknown = sorted(set(kwargs) - set(PREPROCESS_KEYS + FORWARD_KEYS + POSTPROCESS_KEYS + METHOD_KNOBS))
        if unknown:
            raise ValueError(f"unknown argument(s) {', '.join(unknown)} for the {TASK} pipeline")
        check_call_arguments(kwargs)
        preprocess = {k: kwargs[k] for k in PREPROCESS_KEYS if k in kwargs}
        forward = {k: kwargs[k] for k in FORWARD_KEYS if k in kwargs}  # label prediction runs on the model's device
        postprocess = {k: kwargs[k] for k in POSTPROCESS_KEYS if k in kwargs}
        knobs = {k: kwargs[k] for k in METHOD_KNOBS if k in kwargs}
        if method is not None or knobs:
            forward["settings"] = self.model.config.with_method(method, **knobs)  # a bad value fails here
        if labels is not None:
            forward["labels"] = labels
        return preprocess, forward, postprocess

    def label_set(self, candidate_labels: Any) -> LabelSet:
        """``candidate_labels`` parsed with this model's tokenizer (see ``parse_labels``); a [`LabelSet`] is used
        as it is (already parsed, e.g. an anchor's class file with ``parse_labels(strict=False)``)."""
        if isinstance(candidate_labels, LabelSet):
            return candidate_labels
        return parse_labels(candidate_labels, tokenizer=self.processor.tokenizer)

    def prepare(self, candidate_labels: Any, **kwargs: Any) -> tuple[dict[str, Any], CallSettings]:
        """Resolve call arguments once for many images (what ``__call__`` does per image): the resize
        arguments of ``preprocess`` and the [`CallSettings`] of ``call_settings``, with fixed-shape batches on a
        GPU, so that an image's result does not depend on which images share its batch."""
        if "batch_size" in kwargs:
            kwargs["crop_batch_size"] = kwargs.pop("batch_size")
        preprocess, forward, _ = self._sanitize_parameters(labels=self.label_set(candidate_labels), **kwargs)
        short_side, long_side = self.processor.image_processor.resolve_sides(**preprocess)
        return {"short_side": short_side, "long_side": long_side}, self.call_settings(**forward, fixed_batches=True)

    def preprocess(self, image: Any, **sides: int | None) -> dict[str, Any]:
        """Load (EXIF-rotated) and resize as the anchors do; ``short_side``/``long_side`` default to the image
        processor's."""
        picture = load_image(image)
        return {
            "pixels": self.processor.image_processor.resize_image(picture, **sides),  # uint8: normalised on the device
            "original_size": (picture.height, picture.width),
            "picture": picture,  # Trident's SAM reads the original image
        }

    def _forward(self, model_inputs: dict[str, Any], **params: Any) -> dict[str, Any]:
        call = self.call_settings(**params)
        image = self.processor.image_processor.normalize_pixels(model_inputs["pixels"])
        ((_, logits),) = call.run([(None, call.work(image, model_inputs["picture"]))])
        return self.finish(logits, image, model_inputs["original_size"], call)

    def call_settings(
        self,
        labels: LabelSet,
        crop_size: int | None = 224,
        stride: int | None = None,
        crop_batch_size: int | str = 8,
        patch_padding: str = "center",
        templates: list[str] | None = None,
        background_threshold: float = 0.0,
        background_label: str | None = None,
        area_threshold: float | None = None,
        refine: str | None = None,
        return_probabilities: bool = False,
        normalize_probabilities: bool = False,
        settings: Any = None,
        fixed_batches: bool = False,
    ) -> CallSettings:
        """Everything one call needs besides the image: the text embeddings (cached), the forward of a crop
        batch with this call's method settings, and the protocol values. With ``fixed_batches``, every crop batch
        on a GPU is padded to ``crop_batch_size`` (see ``forward``)."""
        model = self.model
        cfg = settings or model.config
        model.check_components(cfg)  # a missing SimFeatUp or proxy fails before any work
        if crop_batch_size == "auto":
            crop_batch_size = auto_batch_size(model, crop_size)
        if fixed_batches and crop_size is None:
            crop_batch_size = 1  # whole images differ in shape: padding one to a full batch would waste the rest
        text = self.processor.text_embeddings(model, labels, templates)

        def forward(crops: torch.Tensor) -> torch.Tensor:
            # Many images sharing batches (folders, evaluation): on a GPU every batch is padded to its full size, as
            # the matrix kernels cuBLAS picks depend on the shapes, so a crop's logits would depend on how many
            # crops share its batch. (On a CPU they depend on how torch splits each kernel between threads instead,
            # which padding does not change.) A single call is not padded: its crops share a batch only with
            # themselves, and padding 6 crops to 64 would cost 10 times the work.
            pad_to = crop_batch_size if fixed_batches and kernels_depend_on_shapes(crops.device) else None
            return model(crops, text_embeds=text, settings=settings, pad_to=pad_to).logits

        names = list(labels.labels)
        background_index = None
        if background_threshold > 0 or background_label is not None:
            background_label = background_label or "background"
            if background_label not in names:
                names.append(background_label)
            background_index = names.index(background_label)
        if stride is None and crop_size is not None:
            stride = max(1, crop_size // 2)
        multiple = model.window_multiple(settings)
        min_window = multiple if patch_padding == "none" else 1
        if cfg.feature_upsampling:
            min_window = multiple * model.feature_upsampler.min_grid()
        whole_image = sam_refine = None
        if cfg.attention_mode == "trident":
            unsupported = {"refine": refine, "normalize_probabilities": normalize_probabilities,
                           "area_threshold": area_threshold}  # fmt: skip
            for name, value in unsupported.items():
                if value:
                    raise ValueError(f"{name}={value!r} is not part of Trident (no config of it sets {name})")
            whole_image, sam_refine = self.trident_steps(cfg, text, crop_size, stride, return_probabilities)
        return CallSettings(
            forward, labels, names, multiple, crop_size, stride, crop_batch_size, patch_padding, background_threshold,
            background_index, area_threshold, refine, return_probabilities, normalize_probabilities, min_window,
            whole_image, sam_refine,
        )  # fmt: skip

    def trident_steps(
        self, cfg: Any, text: torch.Tensor, crop_size: int | None, stride: int | None, return_maps: bool = False
    ) -> tuple[Callable[[torch.Tensor, np.ndarray], TridentLogits], Refine | None]:
        """Trident's whole-image forward and its SAM refinement (None when ``sam_refinement`` is off; its refined
        class maps are made only with ``return_maps``)."""
        model = self.model
        patch = model.config.vision_config.patch_size
        if crop_size is None or stride is None:
            raise ValueError("the trident method runs sliding windows: give crop_size and stride (336 / 224)")
        if crop_size % patch or stride % patch:  # its windows must start and end on CLIP's patches (trident.py:214)
            raise ValueError(
                f"the trident method splices its windows on CLIP's {patch}-pixel patches: crop_size ({crop_size}) "
                f"and stride ({stride}) must be multiples of {patch} (Trident's: 336 / 224)"
            )

        def whole_image(image: torch.Tensor, photo: np.ndarray) -> TridentLogits:
            return trident_logits(model, image, photo, text, cfg, crop_size, stride)

        if not cfg.sam_refinement:
            return whole_image, None
        settings = RefinementSettings(cfg.sam_coarse_threshold, cfg.sam_minimal_area, cfg.sam_mask_coefficient,
                                      cfg.sam_iou_threshold)  # fmt: skip

        def sam_refine(
            logits: TridentLogits, labels: torch.Tensor, probs: ClassProbabilities
        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
            return refine_with_sam(model.sam_model, logits.sam_image, labels, probs, settings, return_maps)

        return whole_image, sam_refine

    @staticmethod
    def predict(
        logits: torch.Tensor | TridentLogits, image: torch.Tensor, size: tuple[int, int], call: CallSettings
    ) -> DensePrediction:
        """From stitched logits [Q, h, w] of the normalised image [1, 3, h, w] to the label map at ``size``, on the
        logits' device: PAMR (optional), resize, softmax, synonyms, area and background thresholds. Trident's
        [`TridentLogits`] are then refined with SAM (``sam_refinement``)."""
        if isinstance(logits, TridentLogits):
            return trident_prediction(logits, size, call)
        if call.refine == "pamr":  # NACLIP: the normalised image, resized bilinearly to the original size, guides PAMR
            logits = resize_bilinear(logits, size)
            guide = F.interpolate(image, size=size, mode="bilinear", align_corners=False)[0]
            logits = pamr(guide, logits)
        return predict_labels(
            logits, call.labels.synonym_index, size, call.background_threshold, call.background_index,
            call.return_probabilities, call.area_threshold, normalize_probabilities=call.normalize_probabilities,
        )  # fmt: skip

    def finish(
        self, logits: torch.Tensor, image: torch.Tensor, size: tuple[int, int], call: CallSettings
    ) -> dict[str, Any]:
        """[`predict`], then the masks of the classes present."""
        prediction = self.predict(logits, image, size, call)
        present = torch.nonzero(prediction.pixel_count).flatten()
        # [P, H, W] 0/255 masks made on the model's device; the bool->uint8 view and in-place scale avoid two
        # extra full-resolution copies (this is most of the memory of a very large image).
        masks = (prediction.label_map[None] == present[:, None, None]).view(torch.uint8).mul_(255)
        return {"prediction": prediction, "names": call.names, "present": present, "masks": masks}

    def postprocess(
        self, model_outputs: dict[str, Any], return_label_map: bool = False, return_probabilities: bool = False
    ) -> Any:
        prediction, names = model_outputs["prediction"], model_outputs["names"]
        counts, scores = prediction.pixel_count.tolist(), prediction.score_sum.tolist()
        segments = [
            {"label": names[index], "score": scores[index] / counts[index], "mask": Image.fromarray(mask.numpy())}
            for index, mask in zip(model_outputs["present"].tolist(), model_outputs["masks"], strict=True)
        ]
        if not (return_label_map or return_probabilities):
            return segments
        result = {"segments": segments, "label_map": prediction.label_map.cpu().numpy(), "labels": names}
        if return_probabilities:
            result["probabilities"] = prediction.probabilities.cpu().numpy()
        return result

    def save_pretrained(self, save_directory: str, **kwargs: Any) -> None:
        """Model (with ``custom_pipelines`` and this pipeline's code) and processor."""
        super().save_pretrained(save_directory, **kwargs)
        self.processor.save_pretrained(save_directory)


PIPELINE_REGISTRY.register_pipeline(TASK, pipeline_class=ZeroShotImageSegmentationPipeline, pt_model=AutoModel)

__all__ = [
    "REFINEMENTS",
    "TASK",
    "CallSettings",
    "ZeroShotImageSegmentationPipeline",
    "auto_batch_size",
    "check_call_arguments",
]
