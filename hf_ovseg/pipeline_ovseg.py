"""``zero-shot-image-segmentation``: an image and any class names in, a label map and per-class masks out.

    >>> from transformers import pipeline
    >>> segmenter = pipeline("zero-shot-image-segmentation", model="my-ovseg", trust_remote_code=True)
    >>> segments = segmenter("street.jpg", candidate_labels=["road", "building", "tree", "sky,clouds"])
    >>> [(s["label"], round(s["score"], 2)) for s in segments]   # s["mask"]: PIL "L" image, 0/255

The protocol is that of the training-free OVSS anchors: resize to ``short_side``, sliding windows of
``crop_size``/``stride`` run in batches of ``batch_size``, logits stitched by averaging overlaps, resized to
the original size, softmax over classes, synonyms merged by max, optional background threshold.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Any

import torch
from PIL import Image
from transformers import AutoModel, Pipeline
from transformers.pipelines import PIPELINE_REGISTRY

from .inference import predict_labels, slide_logits
from .processing_ovseg import LabelSet, load_image, parse_labels

TASK = "zero-shot-image-segmentation"

PREPROCESS_KEYS = ("short_side",)
FORWARD_KEYS = (
    "crop_size",
    "stride",
    "crop_batch_size",
    "templates",
    "background_threshold",
    "background_label",
    "return_probabilities",
)
POSTPROCESS_KEYS = ("return_label_map", "return_probabilities")


class ZeroShotImageSegmentationPipeline(Pipeline):
    """Open-vocabulary semantic segmentation with an [`OVSegModel`] and its [`OVSegProcessor`].

    Call arguments (all optional except ``candidate_labels``):
        candidate_labels: list of class names; ``"sky,clouds"`` makes synonyms of one class.
        short_side (448): resize so the short side has this length; None keeps the original size.
        crop_size (224) / stride (112): sliding window; ``crop_size=None`` runs the whole image at once.
        batch_size (8): crops per forward pass.
        background_threshold (0.0) / background_label: pixels whose best probability is below the
            threshold get ``background_label`` (one of the labels, or a new one; default "background").
        return_label_map: return ``{"segments", "label_map", "labels"}`` instead of the segment list;
        return_probabilities: also ``"probabilities"`` [C, H, W] (implies ``return_label_map``).
        method / any method knob (``outlier_top_k=10``, ...): per-call override, weights not reloaded.
        templates: prompt templates overriding the processor's.
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
                "a folder saved by hf-ovseg convert / pipeline.save_pretrained"
            )

    def __call__(self, images: Any, candidate_labels: Any = None, **kwargs: Any) -> Any:
        if candidate_labels is None:
            raise ValueError("candidate_labels is required, e.g. candidate_labels=['road', 'tree', 'sky']")
        if "batch_size" in kwargs:  # crops per forward; images are processed one at a time
            kwargs["crop_batch_size"] = kwargs.pop("batch_size")
        labels = parse_labels(candidate_labels)
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
        preprocess = {k: kwargs[k] for k in PREPROCESS_KEYS if k in kwargs}
        forward = {k: kwargs[k] for k in FORWARD_KEYS if k in kwargs}  # label prediction runs on the model's device
        postprocess = {k: kwargs[k] for k in POSTPROCESS_KEYS if k in kwargs}
        knobs = {k: kwargs[k] for k in METHOD_KNOBS if k in kwargs}
        if method is not None or knobs:
            copy.deepcopy(self.model.config).set_method(method, **knobs)  # a bad value fails here, before any work
            forward["method_knobs"] = {"method": method, **knobs}
        if labels is not None:
            forward["labels"] = labels
        return preprocess, forward, postprocess

    def preprocess(self, image: Any, short_side: int | None = 448) -> dict[str, Any]:
        if short_side is not None and short_side < 1:
            raise ValueError(f"short_side must be a positive number of pixels or None, got {short_side}")
        picture = load_image(image)
        return {
            "pixels": self.processor.resize(picture, short_side),  # uint8: normalised on the model's device
            "original_size": (picture.height, picture.width),
        }

    def _forward(
        self,
        model_inputs: dict[str, Any],
        labels: LabelSet,
        crop_size: int | None = 224,
        stride: int = 112,
        crop_batch_size: int = 8,
        templates: list[str] | None = None,
        background_threshold: float = 0.0,
        background_label: str | None = None,
        return_probabilities: bool = False,
        method_knobs: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        model = self.model
        text = self.processor.text_embeddings(model, labels, templates)
        dtype = next(model.parameters()).dtype
        pixel_values = self.processor.normalize(model_inputs["pixels"]).to(dtype)
        patch_size = model.config.vision_config.patch_size

        def forward(crops: torch.Tensor) -> torch.Tensor:
            return model(crops, text_embeds=text).logits

        with model.method_override(**method_knobs) if method_knobs else contextlib.nullcontext():
            logits = slide_logits(forward, pixel_values, patch_size, crop_size, stride, crop_batch_size)

        names = list(labels.labels)
        background_index = None
        if background_threshold > 0 or background_label is not None:
            background_label = background_label or "background"
            if background_label not in names:
                names.append(background_label)
            background_index = names.index(background_label)
        prediction = predict_labels(
            logits,
            labels.synonym_index,
            model_inputs["original_size"],
            background_threshold,
            background_index,
            return_probabilities,
        )
        present = torch.nonzero(prediction.pixel_count).flatten()
        # [P, H, W] 0/255 masks made on the model's device; the bool->uint8 view and in-place scale avoid two
        # extra full-resolution copies (this is most of the memory of a very large image).
        masks = (prediction.label_map[None] == present[:, None, None]).view(torch.uint8).mul_(255)
        return {"prediction": prediction, "names": names, "present": present, "masks": masks}

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
        """Model, processor, and this pipeline's code with ``custom_pipelines`` in ``config.json``."""
        super().save_pretrained(save_directory, **kwargs)
        self.processor.save_pretrained(save_directory)


PIPELINE_REGISTRY.register_pipeline(TASK, pipeline_class=ZeroShotImageSegmentationPipeline, pt_model=AutoModel)

__all__ = ["TASK", "ZeroShotImageSegmentationPipeline"]
