"""GPU check (needs CUDA): the pipeline gives the same result on CUDA as on CPU, in float32, for every
method, and runs in float16 / bfloat16. Uses a small random-weight model; prints one line per check.

    python benchmarks/cuda_consistency.py
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from hf_ovseg import METHOD_PRESETS, TASK, OVSegConfig, OVSegModel, OVSegProcessor, ZeroShotImageSegmentationPipeline
from hf_ovseg.image_processing_ovseg import OVSegImageProcessor
from hf_ovseg.tokenizer_files import build_clip_tokenizer


def main() -> None:
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device")
    torch.manual_seed(0)
    vision = {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 12,
        "num_attention_heads": 4,
        "image_size": 64,
        "patch_size": 16,
    }
    text = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4}
    model = OVSegModel(OVSegConfig(vision_config=vision, text_config=text, projection_dim=32)).eval()
    processor = OVSegProcessor(OVSegImageProcessor(), build_clip_tokenizer(), templates=["a photo of a {}."])
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 420, 3), dtype=np.uint8))
    labels = ["road", "sky,clouds", "tree", "car"]
    cpu = ZeroShotImageSegmentationPipeline(model=model, processor=processor, task=TASK, device="cpu")
    gpu_model = OVSegModel(model.config).eval()
    gpu_model.load_state_dict(model.state_dict())
    gpu = ZeroShotImageSegmentationPipeline(model=gpu_model.cuda(), processor=processor, task=TASK, device="cuda")
    for method in METHOD_PRESETS:
        a = cpu(photo, candidate_labels=labels, method=method, return_probabilities=True)
        b = gpu(photo, candidate_labels=labels, method=method, return_probabilities=True)
        agree = (a["label_map"] == b["label_map"]).mean()
        diff = np.abs(a["probabilities"] - b["probabilities"]).max()
        print(f"{method:>9}: CPU vs CUDA float32 label agreement {agree:.4%}, max probability difference {diff:.2e}")
    reference = cpu(photo, candidate_labels=labels, method="seed", return_probabilities=True)
    for dtype in (torch.float16, torch.bfloat16):
        half = ZeroShotImageSegmentationPipeline(
            model=gpu_model.to(dtype), processor=processor, task=TASK, device="cuda"
        )
        c = half(photo, candidate_labels=labels, return_probabilities=True)
        agree = (reference["label_map"] == c["label_map"]).mean()
        finite = np.isfinite(c["probabilities"]).all()
        print(f"seed {str(dtype):>14}: finite={finite}, labels agree with CPU float32 on {agree:.2%} of pixels")


if __name__ == "__main__":
    main()
