"""One-call loading of a ready pipeline from any CLIP source, with clear errors for devices, dtypes and
unreachable checkpoints."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

import torch

from .errors import first_line
from .image_processing_ovseg import OVSegImageProcessor
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


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hub's endpoint answers at all within ``timeout`` seconds (through the environment's proxies)."""
    import httpx
    from huggingface_hub import constants

    try:
        httpx.head(constants.ENDPOINT, timeout=timeout)
    except httpx.HTTPError:
        return False
    return True


def hub_options(source: str) -> dict[str, Any]:
    """``from_pretrained`` options for ``source``: ``{}`` for a folder or a reachable Hub, ``local_files_only`` when the
    Hub cannot be reached but the repo is in the local cache; a repo that is neither is a ``ValueError`` at once,
    instead of half a minute of retries (huggingface_hub's) and their warnings."""
    if os.path.isdir(source) or hub_offline() or hub_reachable():
        return {}
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(source, "config.json"), str):
        return {"local_files_only": True}
    raise _unreachable(source, ConnectionError("the Hugging Face Hub cannot be reached"))


def _unreachable(model: str, error: Exception) -> ValueError:
    if hub_offline():
        where = "the Hugging Face Hub is offline (HF_HUB_OFFLINE=1)"
    elif isinstance(error, ConnectionError):
        where = "the Hugging Face Hub cannot be reached from this machine"
    else:
        where = "it could not be fetched"
    return ValueError(
        f"cannot load model {model!r}: it is not a local folder, not in the local Hugging Face cache, and "
        f"{where}. With internet access it downloads once; offline, pass a local folder instead, e.g. "
        f"--model /path/to/clip-vit-base-patch16 (any HF CLIP checkpoint folder, or the output of "
        f"`hf-ovseg convert`). [{error.__class__.__name__}]"
    )


WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
MODEL_TYPES = ("clip", "ovseg")


def check_safetensors(path: str | os.PathLike) -> None:
    """Raise ``ValueError`` naming ``path`` when it is not a whole safetensors file: a header that does not
    parse, or tensor data that ends past the end of the file (a truncated download or copy)."""
    size = os.path.getsize(path)
    try:
        with open(path, "rb") as handle:
            length = struct.unpack("<Q", handle.read(8))[0]
            if 8 + length > size:
                raise ValueError("header longer than the file")
            header = json.loads(handle.read(length))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    except (OSError, ValueError, struct.error, KeyError, TypeError, MemoryError, OverflowError) as error:
        raise ValueError(
            f"{path} is corrupted: its safetensors header cannot be read ({error.__class__.__name__})"
        ) from None
    if 8 + length + end > size:
        raise ValueError(f"{path} is truncated: it holds {size:,d} bytes, its header describes {8 + length + end:,d}")


def check_model_folder(folder: str) -> None:
    """Raise ``ValueError`` saying what is wrong with a local model folder: no config.json, a model that is
    not CLIP (its model_type), no weights or broken weights, no tokenizer."""
    path = Path(folder)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ValueError(f"{folder} is not a model folder: it has no config.json")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except ValueError as error:
        raise ValueError(f"{config_file} is not valid JSON ({error})") from None
    model_type = config.get("model_type")
    if model_type not in MODEL_TYPES:
        kind = ", ".join(config.get("architectures") or []) or "unknown architecture"
        raise ValueError(
            f"{folder} holds a {model_type!r} model ({kind}), not CLIP: hf_ovseg needs a CLIP checkpoint "
            "(model_type 'clip', or 'ovseg' from hf-ovseg convert)"
        )
    weights = [name for name in WEIGHT_FILES if (path / name).is_file()]
    if not weights:
        raise ValueError(f"{folder} has no weights: expected model.safetensors (or pytorch_model.bin)")
    if weights[0] == "model.safetensors":
        check_safetensors(path / "model.safetensors")
    has_tokenizer = (path / "tokenizer.json").is_file() or all(
        (path / n).is_file() for n in ("vocab.json", "merges.txt")
    )
    if not has_tokenizer:
        raise ValueError(
            f"{folder} has no tokenizer (tokenizer.json, or vocab.json and merges.txt): copy it from the CLIP "
            "checkpoint the weights come from, or make the folder with `hf-ovseg convert`"
        )


def load_model_and_processor(
    model: str = DEFAULT_MODEL,
    method: str = "seed",
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    proxy: str | None = None,
    sam: str | None = None,
    **knobs: Any,
) -> tuple[OVSegModel, OVSegProcessor]:
    """Load an [`OVSegModel`] and its processor from an OVSeg folder, an HF CLIP folder or a Hub repo id.
    A folder without an image-processor config gets CLIP's normalisation. ``proxy``: a transformers folder or Hub
    id of a proxy vision model (DINO, DINOv2, SAM) to attach, as ``hf-ovseg convert --proxy`` embeds one; ``sam``:
    one of a whole ``SamModel`` (Trident's), as ``--sam`` embeds it."""
    torch_dtype, torch_device = resolve_dtype(dtype), resolve_device(device)
    if os.path.exists(model) and not os.path.isdir(model):
        raise ValueError(
            f"--model must be a folder or a Hub repo id, got the file {model}; convert it first with `hf-ovseg convert`"
        )
    if os.path.isdir(model):
        check_model_folder(model)
    options = hub_options(model)
    try:
        ovseg = OVSegModel.from_pretrained(model, method=method, dtype=torch_dtype, **options, **knobs)
        try:
            processor = OVSegProcessor.from_pretrained(model, **options)
        except (OSError, ValueError, TypeError, KeyError):
            from transformers import AutoImageProcessor, AutoTokenizer

            try:
                image_processor = AutoImageProcessor.from_pretrained(model, **options)
            except (OSError, ValueError):
                image_processor = OVSegImageProcessor()  # CLIP's mean and std
            processor = OVSegProcessor(image_processor, AutoTokenizer.from_pretrained(model, **options))
    except OSError as error:
        raise _unreachable(model, error) from None
    except Exception as error:  # a corrupted file in the Hub cache raises the loaders' own errors
        if "safetensor" not in error.__class__.__name__.lower() and "header" not in str(error).lower():
            raise
        raise ValueError(f"the weights of {model!r} are truncated or corrupted ({first_line(error, 200)})") from None
    if proxy is not None:
        from .convert import embed_proxy, read_proxy

        embed_proxy(ovseg, *read_proxy(proxy, **hub_options(proxy)))
    if sam is not None:
        from .convert import embed_sam, read_sam

        embed_sam(ovseg, *read_sam(sam, **hub_options(sam)))
    return ovseg.to(torch_device).eval(), processor


def load_pipeline(
    model: str = DEFAULT_MODEL,
    method: str = "seed",
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    proxy: str | None = None,
    sam: str | None = None,
    **knobs: Any,
) -> ZeroShotImageSegmentationPipeline:
    """A ready ``zero-shot-image-segmentation`` pipeline; see [`load_model_and_processor`]
    (``load_pipeline("openai/clip-vit-base-patch16", method="proxyclip", proxy="facebook/dino-vitb8")``)."""
    ovseg, processor = load_model_and_processor(model, method, dtype, device, proxy, sam, **knobs)
    return ZeroShotImageSegmentationPipeline(model=ovseg, processor=processor, task=TASK, device=ovseg.device)
