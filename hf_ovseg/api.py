"""One-call loading of a ready pipeline from any CLIP source, with clear errors for devices, dtypes and
unreachable checkpoints."""

from __future__ import annotations

import os
from typing import Any

import torch

from .modeling_ovseg import OVSegModel
from .pipeline_ovseg import TASK, ZeroShotImageSegmentationPipeline
from .processing_ovseg import OVSegProcessor

DEFAULT_MODEL = "openai/clip-vit-base-patch16"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise ValueError(f"unsupported dtype {dtype}; choose one of {', '.join(DTYPES)}")
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"unsupported dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unsupported device {device!r}; use cpu, cuda or cuda:N") from None
    if resolved.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {device!r}; use cpu, cuda or cuda:N")
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} was requested but no CUDA GPU is available; use --device cpu")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r} does not exist: {torch.cuda.device_count()} CUDA device(s) found")
    return resolved


def _unreachable(model: str, error: Exception) -> ValueError:
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    where = "the Hugging Face Hub is offline (HF_HUB_OFFLINE=1)" if offline else "it could not be fetched"
    return ValueError(
        f"cannot load model {model!r}: it is not a local folder, not in the local Hugging Face cache, and "
        f"{where}. With internet access it downloads once; offline, pass a local folder instead, e.g. "
        f"--model /path/to/clip-vit-base-patch16 (any HF CLIP checkpoint folder, or the output of "
        f"`hf-ovseg convert`). [{error.__class__.__name__}]"
    )


def load_model_and_processor(
    model: str = DEFAULT_MODEL,
    method: str = "seed",
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    **knobs: Any,
) -> tuple[OVSegModel, OVSegProcessor]:
    """Load an [`OVSegModel`] and its processor from an OVSeg folder, an HF CLIP folder or a Hub repo id."""
    torch_dtype, torch_device = resolve_dtype(dtype), resolve_device(device)
    if os.path.exists(model) and not os.path.isdir(model):
        raise ValueError(
            f"--model must be a folder or a Hub repo id, got the file {model}; convert it first with `hf-ovseg convert`"
        )
    if os.path.isdir(model) and not os.path.isfile(os.path.join(model, "config.json")):
        raise ValueError(f"{model} is not a model folder: it has no config.json")
    try:
        ovseg = OVSegModel.from_pretrained(model, method=method, dtype=torch_dtype, **knobs)
        try:
            processor = OVSegProcessor.from_pretrained(model)
        except (OSError, ValueError, TypeError, KeyError):
            from transformers import AutoImageProcessor, AutoTokenizer

            processor = OVSegProcessor(AutoImageProcessor.from_pretrained(model), AutoTokenizer.from_pretrained(model))
    except OSError as error:
        raise _unreachable(model, error) from None
    return ovseg.to(torch_device).eval(), processor


def load_pipeline(
    model: str = DEFAULT_MODEL,
    method: str = "seed",
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    **knobs: Any,
) -> ZeroShotImageSegmentationPipeline:
    """A ready ``zero-shot-image-segmentation`` pipeline; see [`load_model_and_processor`]."""
    ovseg, processor = load_model_and_processor(model, method, dtype, device, **knobs)
    return ZeroShotImageSegmentationPipeline(model=ovseg, processor=processor, task=TASK, device=ovseg.device)
