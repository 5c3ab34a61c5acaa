"""What the benchmarks share: a ViT-B/16-sized pipeline with random weights (speed and memory do not depend on
the values; no real weights exist on the machines these run on)."""

from __future__ import annotations

import torch
from transformers import Dinov2WithRegistersConfig, SamConfig, SamVisionConfig, ViTConfig

from hf_ovseg import TASK, OVSegModel, OVSegProcessor, ZeroShotImageSegmentationPipeline
from hf_ovseg.convert import ARCHS
from hf_ovseg.image_processing_ovseg import OVSegImageProcessor
from hf_ovseg.tokenizer_files import build_clip_tokenizer

#: ViT-B-sized proxies as ProxyCLIP runs them: DINO ViT-B/8 (facebook/dino-vitb8), DINOv2 ViT-B/14 with registers
#: (facebook/dinov2-with-registers-base), SAM's ViT-B image encoder (facebook/sam-vit-base); Trident's DINO ViT-B/16
#: (facebook/dino-vitb16).
PROXIES = {
    "dino": lambda: ViTConfig(patch_size=8, image_size=224, layer_norm_eps=1e-6),
    "dino16": lambda: ViTConfig(patch_size=16, image_size=224, layer_norm_eps=1e-6),
    "dinov2": lambda: Dinov2WithRegistersConfig(patch_size=14, image_size=518, num_register_tokens=4),
    "sam": lambda: SamVisionConfig(),
}
PROXY_METHODS = {"dino": "proxyclip", "dinov2": "proxyclip_dinov2", "sam": "proxyclip_sam"}


def vit_b16_pipeline(
    method: str = "seed",
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    feature_upsampler: str | None = None,
    proxy: str | None = None,
    sam: bool = False,
) -> ZeroShotImageSegmentationPipeline:
    """OpenAI's ViT-B/16 architecture with random weights (seed 0), the ``method`` preset and, optionally, a
    randomly initialised SimFeatUp (``"jbu_one"`` or ``"jbu_stack"``), a ViT-B-sized proxy (``PROXIES``) or a whole
    SAM ViT-B (``sam``: facebook/sam-vit-base's architecture, for trident), with the offline CLIP tokenizer."""
    torch.manual_seed(0)
    config = ARCHS["ViT-B-16"].config(method)
    config.feature_upsampler = feature_upsampler
    if proxy is not None:
        config.proxy_config = PROXIES[proxy]()
    if sam:
        config.sam_config = SamConfig()
    model = OVSegModel(config).to(device=device, dtype=dtype).eval()
    processor = OVSegProcessor(OVSegImageProcessor(), build_clip_tokenizer())
    return ZeroShotImageSegmentationPipeline(model=model, processor=processor, task=TASK, device=device)
