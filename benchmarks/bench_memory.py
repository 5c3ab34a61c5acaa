"""Peak resident memory of one pipeline call on a 6000x4000 image (target: under 3 GB on CPU).

Crops are streamed in batches and the final resize to the original size runs in row chunks, so memory is
bounded by the model, the decoded photo and the per-class masks at full resolution, not by the image area
times the number of classes.

    python benchmarks/bench_memory.py            # ViT-B/16 random weights, 21 labels, float32, CPU
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import torch
from PIL import Image
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from hf_ovseg import TASK, OVSegModel, OVSegProcessor, ZeroShotImageSegmentationPipeline
from hf_ovseg.convert import ARCHS
from hf_ovseg.tokenizer_files import build_clip_tokenizer


def reset_peak() -> None:
    """Reset the kernel's resident high-water mark (VmHWM) of this process (Linux)."""
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")


def peak_rss_mb() -> float:
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def current_rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**20


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--width", type=int, default=6000)
    parser.add_argument("--height", type=int, default=4000)
    parser.add_argument("--labels", type=int, default=21)
    parser.add_argument("--limit-mb", type=float, default=3072)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = OVSegModel(ARCHS["ViT-B-16"].config("seed")).eval()
    processor = OVSegProcessor(CLIPImageProcessorPil(), build_clip_tokenizer())
    pipe = ZeroShotImageSegmentationPipeline(model=model, processor=processor, task=TASK, device="cpu")
    labels = [f"class {i}" for i in range(args.labels)]
    pipe(np.zeros((64, 64, 3), np.uint8), candidate_labels=labels)  # text embeddings cached, allocator warm
    # A smooth synthetic photo (gradients), so that classes can appear in large regions.
    x = np.linspace(0, 255, args.width, dtype=np.float32)[None, :]
    y = np.linspace(0, 255, args.height, dtype=np.float32)[:, None]
    photo = np.empty((args.height, args.width, 3), np.uint8)
    photo[..., 0], photo[..., 1], photo[..., 2] = x, y, (x + y) / 2
    photo = Image.fromarray(photo)
    before = current_rss_mb()
    reset_peak()
    start = time.perf_counter()
    segments = pipe(photo, candidate_labels=labels)
    seconds = time.perf_counter() - start
    peak = peak_rss_mb()
    print(f"image {args.width}x{args.height}, {args.labels} labels, {len(segments)} segments, {seconds:.1f} s")
    print(f"resident before the call: {before:.0f} MB (model, photo); peak during the call: {peak:.0f} MB")
    print(
        f"peak / limit = {peak / args.limit_mb:.2f} ({'under' if peak < args.limit_mb else 'OVER'} "
        f"{args.limit_mb:.0f} MB)"
    )


if __name__ == "__main__":
    main()
