"""Turn a CLIP checkpoint into a Hub-ready OVSeg folder, losslessly.

Sources: an HF CLIP folder or repo id; an OpenAI CLIP checkpoint (TorchScript archive or plain state
dict); an OpenCLIP state dict (``.pt``/``.bin``/``.safetensors``, optionally wrapped in ``state_dict`` and
prefixed with ``module.``). The architecture is read off the tensor shapes unless ``arch`` names it.
"""

from __future__ import annotations

import logging
import os
import re
import string
import sys
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from .configuration_ovseg import OVSegConfig
from .errors import first_line
from .modeling_ovseg import OVSegModel
from .pipeline_ovseg import TASK, ZeroShotImageSegmentationPipeline
from .processing_ovseg import OVSegProcessor

logger = logging.getLogger(__name__)

ACTIVATIONS = ("quick_gelu", "gelu")


@dataclass(frozen=True)
class ClipArch:
    """Shape of a CLIP ViT: everything needed to build the HF configuration."""

    image_size: int
    patch_size: int
    vision_width: int
    vision_layers: int
    vision_heads: int
    vision_mlp: int
    text_width: int
    text_layers: int
    text_heads: int
    text_mlp: int
    context_length: int
    vocab_size: int
    projection_dim: int
    activation: str = "quick_gelu"

    def config(self, method: str = "seed") -> OVSegConfig:
        return OVSegConfig(
            vision_config={
                "hidden_size": self.vision_width,
                "intermediate_size": self.vision_mlp,
                "num_hidden_layers": self.vision_layers,
                "num_attention_heads": self.vision_heads,
                "image_size": self.image_size,
                "patch_size": self.patch_size,
                "hidden_act": self.activation,
                "projection_dim": self.projection_dim,
            },
            text_config={
                "hidden_size": self.text_width,
                "intermediate_size": self.text_mlp,
                "num_hidden_layers": self.text_layers,
                "num_attention_heads": self.text_heads,
                "max_position_embeddings": self.context_length,
                "vocab_size": self.vocab_size,
                "hidden_act": self.activation,
                "projection_dim": self.projection_dim,
                "bos_token_id": 49406,
                "eos_token_id": 49407,
                "pad_token_id": 49407,
            },
            projection_dim=self.projection_dim,
            method=method,
        )


def _text(width: int, layers: int, proj: int) -> dict[str, int]:
    return {
        "text_width": width,
        "text_layers": layers,
        "text_heads": width // 64,
        "text_mlp": 4 * width,
        "context_length": 77,
        "vocab_size": 49408,
        "projection_dim": proj,
    }


#: The supported shapes, by OpenCLIP name (append ``-quickgelu`` to force QuickGELU).
ARCHS: dict[str, ClipArch] = {
    "ViT-B-32": ClipArch(224, 32, 768, 12, 12, 3072, **_text(512, 12, 512)),
    "ViT-B-16": ClipArch(224, 16, 768, 12, 12, 3072, **_text(512, 12, 512)),
    "ViT-L-14": ClipArch(224, 14, 1024, 24, 16, 4096, **_text(768, 12, 768)),
    "ViT-L-14-336": ClipArch(336, 14, 1024, 24, 16, 4096, **_text(768, 12, 768)),
    "ViT-H-14": ClipArch(224, 14, 1280, 32, 16, 5120, **_text(1024, 24, 1024)),
}

#: Heads per width where CLIP's rule "width / 64" does not hold (ViT-H, -g, -bigG use 16 wide heads).
HEADS_BY_WIDTH = {1280: 16, 1408: 16, 1664: 16}

REQUIRED_KEYS = (
    "visual.conv1.weight",
    "visual.class_embedding",
    "visual.positional_embedding",
    "visual.ln_pre.weight",
    "visual.ln_post.weight",
    "visual.proj",
    "token_embedding.weight",
    "positional_embedding",
    "ln_final.weight",
    "text_projection",
)


class ConversionError(ValueError):
    """A source that cannot be converted; the message names what is wrong or missing."""


# -- reading sources ---------------------------------------------------------------------------------


def is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("constants.pkl") or "/code/" in name for name in archive.namelist())


def read_state_dict(path: str | Path, trust_torchscript: bool = False) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file: safetensors, a pickled state dict (``weights_only``), or a TorchScript
    archive (only with ``trust_torchscript``, since loading one runs its code)."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"checkpoint not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(path)
        if is_torchscript(path):
            if not trust_torchscript:
                raise ConversionError(
                    f"{path.name} is a TorchScript archive; loading it executes code from the file. "
                    "If you trust it, pass --trust-torchscript"
                )
            return dict(torch.jit.load(str(path), map_location="cpu").state_dict())
        state = torch.load(path, map_location="cpu", weights_only=True)
    except ConversionError:
        raise
    except Exception as error:  # torch/safetensors raise many types for a bad file
        raise ConversionError(
            f"cannot read checkpoint {path.name}: the file is truncated, corrupt or not a checkpoint "
            f"({error.__class__.__name__}: {str(error).splitlines()[0][:200] if str(error) else ''})"
        ) from None
    return unwrap_state_dict(state)


def unwrap_state_dict(state: Any) -> dict[str, torch.Tensor]:
    """Strip ``{"state_dict": ...}`` / ``{"model": ...}`` wrappers and ``module.`` prefixes."""
    for key in ("state_dict", "model", "module"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ConversionError(f"the checkpoint holds a {type(state).__name__}, not a state dict")
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if tensors and all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module.") :]: v for k, v in tensors.items()}
    return tensors


# -- architecture ------------------------------------------------------------------------------------


def _count_blocks(state: dict[str, torch.Tensor], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    return len({int(m.group(1)) for k in state if (m := pattern.match(k))})


def _heads(width: int) -> int:
    return HEADS_BY_WIDTH.get(width, max(1, width // 64))


def infer_arch(state: dict[str, torch.Tensor], activation: str = "quick_gelu") -> ClipArch:
    """Read a CLIP ViT's architecture off its OpenAI/OpenCLIP-layout tensors."""
    missing = [key for key in REQUIRED_KEYS if key not in state and key + ".weight" not in state]
    if missing:
        hint = " (a ResNet or timm-trunk CLIP is not supported)" if any(k.startswith("visual.") for k in state) else ""
        raise ConversionError(f"not a CLIP ViT checkpoint{hint}: missing {', '.join(missing)}")
    conv = state["visual.conv1.weight"]
    vision_width, patch = conv.shape[0], conv.shape[-1]
    grid = round((state["visual.positional_embedding"].shape[0] - 1) ** 0.5)
    vision_proj = state["visual.proj"]
    text_proj = _text_projection(state)
    text_width = state["ln_final.weight"].shape[0]
    if vision_proj.shape[0] != vision_width:
        raise ConversionError(f"visual.proj is {tuple(vision_proj.shape)} but the vision width is {vision_width}")
    if text_proj.shape[0] != text_width:
        raise ConversionError(f"text_projection is {tuple(text_proj.shape)} but the text width is {text_width}")
    if vision_proj.shape[1] != text_proj.shape[1]:
        raise ConversionError(
            f"the towers do not match: visual.proj projects to {vision_proj.shape[1]} dimensions but "
            f"text_projection to {text_proj.shape[1]}"
        )
    vision_layers = _count_blocks(state, "visual.transformer.resblocks.")
    text_layers = _count_blocks(state, "transformer.resblocks.")
    if not vision_layers or not text_layers:
        raise ConversionError(
            "not a CLIP ViT checkpoint: missing visual.transformer.resblocks.* or transformer.resblocks.*"
        )
    return ClipArch(
        image_size=grid * patch,
        patch_size=patch,
        vision_width=vision_width,
        vision_layers=vision_layers,
        vision_heads=_heads(vision_width),
        vision_mlp=state["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
        text_width=text_width,
        text_layers=text_layers,
        text_heads=_heads(text_width),
        text_mlp=state["transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
        context_length=state["positional_embedding"].shape[0],
        vocab_size=state["token_embedding.weight"].shape[0],
        projection_dim=vision_proj.shape[1],
        activation=activation,
    )


def resolve_arch(name: str) -> ClipArch:
    base, quick = (name[: -len("-quickgelu")], True) if name.endswith("-quickgelu") else (name, False)
    if base not in ARCHS:
        raise ConversionError(f"unknown --arch {name!r}; known: auto, {', '.join(ARCHS)} (optionally -quickgelu)")
    return replace(ARCHS[base], activation="quick_gelu" if quick else ARCHS[base].activation)


def _text_projection(state: dict[str, torch.Tensor]) -> torch.Tensor:
    """[text_width, proj]: a Parameter in OpenAI's layout, an ``nn.Linear`` ([proj, width]) in some OpenCLIP ones."""
    if "text_projection" in state:
        return state["text_projection"]
    return state["text_projection.weight"].T


# -- key mapping -------------------------------------------------------------------------------------


def _blocks_to_hf(state: dict[str, torch.Tensor], source: str, target: str, layers: int) -> dict[str, torch.Tensor]:
    out = {}
    for i in range(layers):
        s, t = f"{source}{i}.", f"{target}{i}."
        for suffix in ("weight", "bias"):
            q, k, v = state[f"{s}attn.in_proj_{suffix}"].chunk(3, dim=0)
            out[f"{t}self_attn.q_proj.{suffix}"] = q
            out[f"{t}self_attn.k_proj.{suffix}"] = k
            out[f"{t}self_attn.v_proj.{suffix}"] = v
            out[f"{t}self_attn.out_proj.{suffix}"] = state[f"{s}attn.out_proj.{suffix}"]
            out[f"{t}layer_norm1.{suffix}"] = state[f"{s}ln_1.{suffix}"]
            out[f"{t}layer_norm2.{suffix}"] = state[f"{s}ln_2.{suffix}"]
            out[f"{t}mlp.fc1.{suffix}"] = state[f"{s}mlp.c_fc.{suffix}"]
            out[f"{t}mlp.fc2.{suffix}"] = state[f"{s}mlp.c_proj.{suffix}"]
    return out


def openclip_to_hf(state: dict[str, torch.Tensor], arch: ClipArch) -> dict[str, torch.Tensor]:
    """Rename (and split the fused q/k/v of) an OpenAI/OpenCLIP state dict into HF CLIP parameter names."""
    try:
        out = {
            "vision_model.embeddings.class_embedding": state["visual.class_embedding"],
            "vision_model.embeddings.patch_embedding.weight": state["visual.conv1.weight"],
            "vision_model.embeddings.position_embedding.weight": state["visual.positional_embedding"],
            "vision_model.pre_layrnorm.weight": state["visual.ln_pre.weight"],
            "vision_model.pre_layrnorm.bias": state["visual.ln_pre.bias"],
            "vision_model.post_layernorm.weight": state["visual.ln_post.weight"],
            "vision_model.post_layernorm.bias": state["visual.ln_post.bias"],
            "visual_projection.weight": state["visual.proj"].T,
            "text_model.embeddings.token_embedding.weight": state["token_embedding.weight"],
            "text_model.embeddings.position_embedding.weight": state["positional_embedding"],
            "text_model.final_layer_norm.weight": state["ln_final.weight"],
            "text_model.final_layer_norm.bias": state["ln_final.bias"],
            "text_projection.weight": _text_projection(state).T,
            "logit_scale": state.get("logit_scale", torch.tensor(4.6052)).reshape(()),
        }
        out.update(
            _blocks_to_hf(state, "visual.transformer.resblocks.", "vision_model.encoder.layers.", arch.vision_layers)
        )
        out.update(_blocks_to_hf(state, "transformer.resblocks.", "text_model.encoder.layers.", arch.text_layers))
    except KeyError as error:
        raise ConversionError(f"the checkpoint is missing {error.args[0]}") from None
    return {k: v.contiguous().float() for k, v in out.items()}


def model_from_state_dict(state: dict[str, torch.Tensor], arch: ClipArch, method: str = "seed") -> OVSegModel:
    """An [`OVSegModel`] holding exactly the checkpoint's weights (no missing or unexpected keys)."""
    from transformers.initialization import no_init_weights

    with no_init_weights():
        model = OVSegModel(arch.config(method))
    try:
        model.load_state_dict(openclip_to_hf(state, arch), strict=True)
    except RuntimeError as error:
        raise ConversionError(f"the checkpoint does not fit the inferred architecture: {str(error)[:500]}") from None
    return model.eval()


# -- SimFeatUp ---------------------------------------------------------------------------------------

#: SegEarth-OV stores the upsampler inside a Lightning module; its segmentor strips this prefix
#: (likyoo/SegEarth-OV@3e22a96:segearth_segmentor.py:158-160).
UPSAMPLER_PREFIX = "upsampler."


def read_upsampler_checkpoint(path: str | Path, trust_pickle: bool = False) -> tuple[str, dict[str, torch.Tensor]]:
    """A SimFeatUp checkpoint (e.g. SegEarth-OV's ``xclip_jbu_one_million_aid.ckpt``): its kind
    (``"jbu_one"`` or ``"jbu_stack"``) and its upsampler tensors with the ``upsampler.`` prefix stripped.

    Read with ``torch.load(weights_only=True)``; a file that needs full unpickling (Lightning can store
    arbitrary objects beside the weights) is refused unless ``trust_pickle``, since unpickling runs code."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"feature upsampler checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # an UnpicklingError names the global it would need
        if not trust_pickle:
            raise ConversionError(
                f"{path.name} holds more than tensors and cannot be read safely ({first_line(error, 200)}); "
                "loading it in full runs code from the file. If you trust it, pass --trust-pickle"
            ) from None
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as inner:
            raise ConversionError(
                f"cannot read feature upsampler checkpoint {path.name}: the file is truncated, corrupt or not a "
                f"checkpoint ({inner.__class__.__name__})"
            ) from None
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        raise ConversionError(f"{path.name} holds a {type(checkpoint).__name__}, not a checkpoint with a state_dict")
    tensors = {k[len(UPSAMPLER_PREFIX) :]: v for k, v in state.items() if k.startswith(UPSAMPLER_PREFIX)}
    if "up.range_temp" in tensors:
        return "jbu_one", tensors
    if "up1.range_temp" in tensors:
        return "jbu_stack", tensors
    found = ", ".join(sorted(state)[:5]) or "nothing"
    raise ConversionError(
        f"{path.name} is not a SimFeatUp JBU checkpoint: expected keys upsampler.up.* (jbu_one) or "
        f"upsampler.up1.* (jbu_stack), found {found}"
    )


def embed_feature_upsampler(model: OVSegModel, kind: str, tensors: dict[str, torch.Tensor]) -> None:
    """Give ``model`` a ``kind`` upsampler holding exactly ``tensors`` (no missing or unexpected key)."""
    from .upsampler import build_feature_upsampler

    channels = tensors["fixup_proj.1.weight"].shape[0] if "fixup_proj.1.weight" in tensors else None
    if channels != model.config.projection_dim:
        raise ConversionError(
            f"the feature upsampler works on {channels}-channel features, but this CLIP projects to "
            f"{model.config.projection_dim}: use an upsampler trained for this CLIP"
        )
    upsampler = build_feature_upsampler(kind, channels)
    try:
        upsampler.load_state_dict({k: v.float() for k, v in tensors.items()}, strict=True)
    except RuntimeError as error:
        raise ConversionError(f"the feature upsampler checkpoint does not fit {kind}: {str(error)[:500]}") from None
    model.feature_upsampler = upsampler.eval()
    model.config.feature_upsampler = kind


def read_proxy(source: str, **options: Any) -> tuple[Any, torch.nn.Module]:
    """A proxy's ``(config, model)`` (see [`load_proxy`]); any failure is a one-line ``ConversionError``."""
    from .proxy import load_proxy

    try:
        return load_proxy(source, **options)
    except (OSError, ValueError, RuntimeError) as error:
        raise ConversionError(f"cannot use {source!r} as a proxy: {first_line(error, 300)}") from None


def embed_proxy(model: OVSegModel, config: Any, proxy_model: torch.nn.Module) -> None:
    """Give ``model`` the proxy ``proxy_model`` (weights under ``proxy_model.*``, ``config.proxy_config``)."""
    model.config.proxy_config = config
    model.proxy_model = proxy_model.to(next(model.parameters()).dtype).eval()


def read_sam(source: str, **options: Any) -> tuple[Any, torch.nn.Module]:
    """A whole SAM's ``(config, model)`` (a transformers ``SamModel`` folder or Hub id such as
    facebook/sam-vit-base), on the CPU in float32; any failure is a one-line ``ConversionError``."""
    from transformers import AutoConfig, SamModel

    try:
        config = AutoConfig.from_pretrained(source, **options)
        if config.model_type != "sam":
            raise ValueError(f"it is a {config.model_type!r} model, not a SamModel (e.g. facebook/sam-vit-base)")
        model = SamModel.from_pretrained(source, dtype=torch.float32, **options)
    except (OSError, ValueError, RuntimeError) as error:
        raise ConversionError(f"cannot use {source!r} as SAM: {first_line(error, 300)}") from None
    return model.config, model.eval()


def embed_sam(model: OVSegModel, config: Any, sam_model: torch.nn.Module) -> None:
    """Give ``model`` SAM (weights under ``sam_model.*``, ``config.sam_config``), for the trident preset."""
    model.config.sam_config = config
    model.sam_model = sam_model.to(next(model.parameters()).dtype).eval()


# -- folders -----------------------------------------------------------------------------------------


def build_processor(arch: ClipArch, tokenizer: str | None = None, bpe_path: str | None = None) -> OVSegProcessor:
    from transformers import AutoTokenizer

    from .image_processing_ovseg import OVSegImageProcessor
    from .tokenizer_files import build_clip_tokenizer

    text = AutoTokenizer.from_pretrained(tokenizer) if tokenizer else build_clip_tokenizer(bpe_path)
    return OVSegProcessor(OVSegImageProcessor(), text)  # CLIP's mean and std: every CLIP checkpoint's


def template_path(name: str = "ovseg_model_card.md") -> Path:
    """The model-card template: in the repository's ``model_cards/`` or in the installed data files."""
    for root in (Path(__file__).resolve().parents[1], Path(sys.prefix) / "share" / "hf_ovseg"):
        if (root / "model_cards" / name).is_file():
            return root / "model_cards" / name
    raise FileNotFoundError(f"model card template {name} not found")


#: Licences of the proxies' usual Hub checkpoints (their model cards), for the model card's component list.
PROXY_LICENSES = {"facebook/dino": "apache-2.0", "facebook/dinov2": "apache-2.0", "facebook/sam": "apache-2.0"}


def proxy_license(source: str) -> str:
    return next((lic for prefix, lic in PROXY_LICENSES.items() if source.startswith(prefix)), "see its model card")


def render_model_card(
    config: OVSegConfig, source: str, license_id: str, base_model: str | None, proxy: str | None = None,
    upsampler: str | None = None, sam: str | None = None,
) -> str:  # fmt: skip
    """The model card: the method, its knobs, usage, and every component with its source and licence."""
    knobs = "\n".join(f"| `{k}` | `{v}` |" for k, v in config.method_knobs().items())
    components = [f"- CLIP: `{source}` (licence: {license_id})"]
    if proxy is not None:
        kind, model_type = config.proxy_model_kind, config.proxy_config.model_type
        components.append(f"- proxy vision model ({kind}, `{model_type}`): `{proxy}` (licence: "
                          f"{proxy_license(proxy)}); used by the proxy presets (proxyclip, seed_proxy, "
                          "trident)")  # fmt: skip
    if sam is not None:
        components.append(f"- SAM (`SamModel`: image encoder, prompt encoder, mask decoder): `{sam}` (licence: "
                          f"{proxy_license(sam)}); used by the trident preset")  # fmt: skip
    if upsampler is not None:
        components.append(f"- SimFeatUp `{config.feature_upsampler}` weights: `{upsampler}` (SegEarth-OV's, "
                          "Apache-2.0); used by the segearth preset")  # fmt: skip
    values = {
        "license": license_id,
        "base_model": f"base_model: {base_model}\n" if base_model else "",
        "source": source,
        "method": config.method,
        "knobs": knobs,
        "patch_size": config.vision_config.patch_size,
        "image_size": config.vision_config.image_size,
        "components": "\n".join(components),
    }
    return string.Template(template_path().read_text(encoding="utf-8")).substitute(values)


def _default_license(source: str) -> str:
    lowered = source.lower()
    return "mit" if lowered.startswith(("openai/", "laion/")) or "vit-b-16.pt" in lowered else "other"


def convert(
    source: str,
    out_dir: str | os.PathLike,
    method: str = "seed",
    arch: str = "auto",
    activation: str | None = None,
    tokenizer: str | None = None,
    trust_torchscript: bool = False,
    license_id: str | None = None,
    feature_upsampler: str | None = None,
    trust_pickle: bool = False,
    proxy: str | None = None,
    sam: str | None = None,
) -> Path:
    """Convert ``source`` into a complete OVSeg folder at ``out_dir``; see the module docstring.
    ``feature_upsampler``: a SimFeatUp checkpoint to embed (see [`read_upsampler_checkpoint`]); ``proxy``: a
    transformers folder or Hub id of a proxy vision model to embed (DINO, DINOv2 or SAM; see ``proxy.py``);
    ``sam``: one of a whole ``SamModel`` (Trident's SAM)."""
    from .api import hub_options

    out = Path(out_dir)
    upsampler = read_upsampler_checkpoint(feature_upsampler, trust_pickle) if feature_upsampler else None
    proxy_parts = read_proxy(proxy, **hub_options(proxy)) if proxy else None
    sam_parts = read_sam(sam, **hub_options(sam)) if sam else None
    path = Path(source)
    base_model = None
    if path.is_file():
        state = read_state_dict(path, trust_torchscript)
        default_activation = "quick_gelu" if is_torchscript(path) or "input_resolution" in state else "gelu"
        if activation is not None and activation not in ACTIVATIONS:
            raise ConversionError(f"unknown activation {activation!r}; valid: {', '.join(ACTIVATIONS)}")
        if arch == "auto":
            spec = infer_arch(state, activation or default_activation)
        else:
            spec = resolve_arch(arch)
            if activation is not None or not arch.endswith("-quickgelu"):
                spec = replace(spec, activation=activation or default_activation)
        logger.info("architecture: %s", spec)
        model = model_from_state_dict(state, spec, method)
        processor = build_processor(spec, tokenizer)
    else:
        from .api import load_model_and_processor

        if path.exists() and not path.is_dir():
            raise ConversionError(f"{source} is neither a checkpoint file nor a model folder")
        if arch != "auto" or activation is not None:
            flag = "--arch" if arch != "auto" else "--activation"
            raise ConversionError(
                f"{flag} applies to OpenAI/OpenCLIP checkpoint files only: a Hugging Face folder or repo id "
                "carries its own architecture in config.json"
            )
        model, processor = load_model_and_processor(source, method, device="cpu")
        if tokenizer:
            from transformers import AutoTokenizer

            processor = OVSegProcessor(processor.image_processor, AutoTokenizer.from_pretrained(tokenizer))
        base_model = None if path.is_dir() else source
    if upsampler is not None:
        embed_feature_upsampler(model, *upsampler)
    if proxy_parts is not None:
        embed_proxy(model, *proxy_parts)
    if sam_parts is not None:
        embed_sam(model, *sam_parts)
    pipe = ZeroShotImageSegmentationPipeline(model=model, processor=processor, task=TASK, device="cpu")
    pipe.save_pretrained(out)
    card = render_model_card(model.config, source, license_id or _default_license(source), base_model, proxy,
                             feature_upsampler, sam)  # fmt: skip
    (out / "README.md").write_text(card, encoding="utf-8")
    return out


__all__ = [
    "ARCHS",
    "ClipArch",
    "ConversionError",
    "convert",
    "embed_feature_upsampler",
    "embed_proxy",
    "embed_sam",
    "infer_arch",
    "openclip_to_hf",
    "read_state_dict",
    "read_upsampler_checkpoint",
]
