"""Shared fixtures: small random-weight CLIP configurations built in code (nothing downloads)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import Dinov2Config, Dinov2WithRegistersConfig, SamConfig, SamVisionConfig, ViTConfig, ViTModel

from hf_ovseg import OVSegConfig, OVSegModel
from hf_ovseg.proxy import build_proxy_model

FIXTURES = Path(__file__).resolve().parent / "fixtures"  # small real images and masks; see fixtures/README.md


def tiny_config(method: str = "seed", patch_size: int = 8, **knobs) -> OVSegConfig:
    """A 4-layer, 32-wide CLIP (patch 8, 32x32 native size) with the given preset and knobs."""
    text = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "vocab_size": 49408,
        "max_position_embeddings": 77,
    }
    vision = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "image_size": 4 * patch_size,
        "patch_size": patch_size,
    }
    return OVSegConfig(text_config=text, vision_config=vision, projection_dim=16, method=method, **knobs)


def tiny_model(method: str = "seed", seed: int = 0, **knobs) -> OVSegModel:
    torch.manual_seed(seed)
    return OVSegModel(tiny_config(method, **knobs)).eval()


#: The parity CLIP: ViT-B/16-shaped patch grid, 4 heads.
PATCH, HEADS = 16, 4


def parity_config(method: str = "seed", **extra) -> OVSegConfig:
    """A 12-layer, 64-wide ViT-B/16-shaped CLIP (SFP reads blocks 4..10) with a 2-layer text tower."""
    text = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": HEADS}
    vision = {
        "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 12, "num_attention_heads": HEADS,
        "image_size": 224, "patch_size": PATCH,
    }  # fmt: skip
    return OVSegConfig(text_config=text, vision_config=vision, projection_dim=32, method=method, **extra)


def peaky(model: OVSegModel, seed: int = 0) -> OVSegModel:
    """Random weights with large query/key projections and position embeddings, so that attention maps are
    peaky (with near-uniform attention, outlier and threshold differences would hide)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in model.vision_model.encoder.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj):
                proj.weight.copy_(torch.randn(proj.weight.shape, generator=generator) * 0.6)
        pos = model.vision_model.embeddings.position_embedding.weight
        pos.copy_(torch.randn(pos.shape, generator=generator))
    return model.eval()


# ---- tiny proxies (DINO, DINOv2, SAM) for the proxy stage ----------------------------------------

PROXY_HEADS = 2

#: Tiny proxies with the native grids of the real ones: DINO ViT-B/8 (28x28 at 224), DINOv2 ViT-B/14 (37x37 at
#: 518), SAM (an 8x8 grid here, windows of 3 padded to 9, one global block).
PROXY_CONFIGS = {
    "dino": lambda: ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=PROXY_HEADS,
                              intermediate_size=64, image_size=224, patch_size=8, layer_norm_eps=1e-6),
    "dinov2": lambda: Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=PROXY_HEADS, mlp_ratio=2,
                                   image_size=518, patch_size=14),
    "dinov2_reg": lambda: Dinov2WithRegistersConfig(hidden_size=32, num_hidden_layers=2, mlp_ratio=2,
                                                    num_attention_heads=PROXY_HEADS, image_size=518, patch_size=14,
                                                    num_register_tokens=4),
    "sam": lambda: SamVisionConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=PROXY_HEADS,
                                   output_channels=16, image_size=128, patch_size=16, window_size=3,
                                   global_attn_indexes=[1], mlp_dim=64),
}  # fmt: skip
METHODS = {"dino": "proxyclip", "dinov2": "proxyclip_dinov2", "dinov2_reg": "proxyclip_dinov2", "sam": "proxyclip_sam"}


def peaky_proxy(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights far from uniform attention: large query/key projections, position/CLS/register/rel-pos tables
    N(0, 1), LayerNorm and LayerScale weights around 1 and 0.5, everything else N(0, 0.2^2)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if any(key in name for key in ("q_proj", "k_proj", "qkv", "query", "key")) and name.endswith("weight"):
                param.copy_(noise * 0.5)
            elif any(key in name for key in ("position", "pos_embed", "cls_token", "register", "rel_pos")):
                param.copy_(noise)
            elif ("norm" in name or "layernorm" in name) and name.endswith("weight"):
                param.copy_(1 + 0.3 * noise)
            elif "lambda1" in name:
                param.copy_(0.5 + 0.3 * noise)
            else:
                param.copy_(0.2 * noise)
    return model.eval()


def tiny_proxy(kind: str, seed: int = 0) -> torch.nn.Module:
    """A tiny proxy of ``kind`` (a key of ``PROXY_CONFIGS``) with peaky random weights."""
    return peaky_proxy(build_proxy_model(PROXY_CONFIGS[kind]()), seed)


#: Trident test models: a tiny SAM with a 16 x 16 token grid beside a DINO with CLIP's 16-pixel patches.
SAM_SIZE, SAM_HEADS, SAM_WINDOW = 256, 2, 4


def randomise(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Weights ~ N(0, 1/fan_in), norms around 1, tables and biases N(0, 0.25): varied, finite outputs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if param.ndim >= 2 and not any(key in name for key in ("rel_pos", "pos_embed", "positional")):
                param.copy_(noise / param[0].numel() ** 0.5)
            elif name.endswith("weight") and param.ndim == 1:
                param.copy_(1 + 0.1 * noise)
            else:
                param.copy_(0.5 * noise)
    return model.eval()


def trident_dino_config(patch_size: int = 16) -> ViTConfig:
    return ViTConfig(image_size=224, patch_size=patch_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=128, layer_norm_eps=1e-6)  # fmt: skip


def trident_sam_config() -> SamConfig:
    return SamConfig(
        vision_config=dict(hidden_size=32, output_channels=32, num_hidden_layers=2, num_attention_heads=SAM_HEADS,
                           image_size=SAM_SIZE, window_size=SAM_WINDOW, global_attn_indexes=[1], num_pos_feats=16,
                           mlp_dim=64),
        prompt_encoder_config=dict(hidden_size=32, image_size=SAM_SIZE, image_embedding_size=SAM_SIZE // 16,
                                   mask_input_channels=8),
        mask_decoder_config=dict(hidden_size=32, mlp_dim=64, num_attention_heads=2, iou_head_hidden_dim=32),
    )  # fmt: skip


def tiny_trident_dino(patch_size: int = 16) -> ViTModel:
    model = randomise(build_proxy_model(trident_dino_config(patch_size)), 1)
    with torch.no_grad():  # diverse tokens: with a mean cosine above 1 / beta every proxy-attention row is empty
        model.embeddings.patch_embeddings.projection.weight.mul_(3)
        model.embeddings.position_embeddings.mul_(3)
    return model


def tiny_trident_model() -> OVSegModel:
    """The parity CLIP with a tiny DINO (patch 16) and a tiny whole SAM (256 input, 16 x 16 grid), for trident."""
    from transformers import SamModel

    torch.manual_seed(0)
    config = parity_config("trident", proxy_config=trident_dino_config().to_dict(),
                           sam_config=trident_sam_config().to_dict())  # fmt: skip
    model = peaky(OVSegModel(config))
    model.proxy_model = tiny_trident_dino()
    model.sam_model = randomise(SamModel(config.sam_config), 2)
    return model.eval()


@pytest.fixture
def fixtures() -> Path:
    return FIXTURES


TEMPLATES = ["a photo of a {}.", "itap of a {}."]


def tiny_processor(templates=TEMPLATES):
    from hf_ovseg import OVSegProcessor
    from hf_ovseg.image_processing_ovseg import OVSegImageProcessor
    from hf_ovseg.tokenizer_files import build_clip_tokenizer

    return OVSegProcessor(OVSegImageProcessor(), build_clip_tokenizer(), templates=templates)


def tiny_pipeline(method: str = "seed", **knobs):
    from hf_ovseg import TASK, ZeroShotImageSegmentationPipeline

    return ZeroShotImageSegmentationPipeline(model=tiny_model(method, **knobs), processor=tiny_processor(), task=TASK)


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory) -> Path:
    """A complete saved model folder (model, processor, pipeline code), as `hf-ovseg convert` makes."""
    folder = tmp_path_factory.mktemp("tiny-ovseg")
    tiny_pipeline().save_pretrained(folder)
    return folder


REPO_ROOT = os.path.realpath(Path(__file__).resolve().parents[1])

# Prepended to every clean-process script: hf_ovseg cannot be imported (even through an editable install),
# and the checkout and its tests are off sys.path (a virtualenv inside the checkout stays), so whatever
# loads must come from the saved folder's remote code.
CLEAN_PREAMBLE = f"""
import os, sys
sys.modules["hf_ovseg"] = None
sys.path = [p for p in sys.path if p and os.path.realpath(p) not in {{{REPO_ROOT!r}, {REPO_ROOT + "/tests"!r}}}]
"""


def run_clean_process(script: str, args: list[str], tmp_path: Path, env_extra: dict[str, str] | None = None) -> None:
    """Run ``script`` in a fresh interpreter without hf_ovseg, offline; fail the test with its stderr."""
    path = tmp_path / "child.py"
    path.write_text(CLEAN_PREAMBLE + textwrap.dedent(script))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update({"HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules"), **(env_extra or {})})
    result = subprocess.run(
        [sys.executable, str(path), *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]


def check_clean_process_segments(
    folder: Path, photo: Path, call: dict, expected: dict, tmp_path: Path, component: str
) -> None:
    """``pipeline("zero-shot-image-segmentation", model=folder, trust_remote_code=True)(photo, **call)`` in a clean
    process without hf_ovseg (see ``run_clean_process``), which also checks that ``model.<component>`` is a
    transformers module, gives exactly the ``expected`` in-process ``label_map`` and ``probabilities`` (3 labels),
    and those probabilities vary over the photo."""
    script = f"""
        import json, sys
        import numpy as np
        from transformers import pipeline
        folder, photo, output, call = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
        segmenter = pipeline("zero-shot-image-segmentation", model=folder, trust_remote_code=True)
        assert type(segmenter.model.{component}).__module__.startswith("transformers.models")
        result = segmenter(photo, **call)
        np.savez(output, label_map=result["label_map"], probabilities=result["probabilities"])
        """
    output = tmp_path / "out.npz"
    run_clean_process(script, [str(folder), str(photo), str(output), json.dumps(call)], tmp_path)
    got = np.load(output)
    assert np.array_equal(got["label_map"], expected["label_map"])
    assert np.array_equal(got["probabilities"], expected["probabilities"])
    assert expected["probabilities"].reshape(3, -1).std(axis=1).max() > 1e-4
