"""What the benchmarks share: a ViT-B/16-sized pipeline with random weights (speed and memory do not depend on
the values; no real weights exist on the machines these run on)."""

from __future__ import annotations

import torch

from hf_ovseg import TASK, OVSegModel, OVSegProcessor, ZeroShotImageSegmentationPipeline
from hf_ovseg.convert import ARCHS
from hf_ovseg.image_processing_ovseg import OVSegImageProcessor
from hf_ovseg.tokenizer_files import build_clip_tokenizer


def vit_b16_pipeline(
    method: str = "seed",
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    feature_upsampler: str | None = None,
) -> ZeroShotImageSegmentationPipeline:
    """OpenAI's ViT-B/16 architecture with random weights (seed 0), the ``method`` preset and, optionally, a
    randomly initialised SimFeatUp (``"jbu_one"`` or ``"jbu_stack"``), with the offline CLIP tokenizer."""
    torch.manual_seed(0)
    config = ARCHS["ViT-B-16"].config(method)
    config.feature_upsampler = feature_upsampler
    model = OVSegModel(config).to(device=device, dtype=dtype).eval()
    processor = OVSegProcessor(OVSegImageProcessor(), build_clip_tokenizer())
    return ZeroShotImageSegmentationPipeline(model=model, processor=processor, task=TASK, device=device)
