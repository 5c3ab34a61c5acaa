"""Where a pipeline call spends its time: cProfile of repeated calls on a ViT-B/16-sized random model.

python benchmarks/profile_pipeline.py --device cuda --dtype float16
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time

import numpy as np
import torch
from PIL import Image

from random_vit import vit_b16_pipeline


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--method", default="seed")
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--rows", type=int, default=30)
    args = parser.parse_args()
    pipe = vit_b16_pipeline(args.method, args.device, getattr(torch, args.dtype))
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (448, 672, 3), dtype=np.uint8))
    labels = [f"class {i}" for i in range(21)]
    pipe(image, candidate_labels=labels)
    start = time.perf_counter()
    for _ in range(args.calls):
        pipe(image, candidate_labels=labels)
    print(f"{(time.perf_counter() - start) / args.calls * 1000:.1f} ms per call")
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(args.calls):
        pipe(image, candidate_labels=labels)
    profile.disable()
    pstats.Stats(profile).sort_stats("tottime").print_stats(args.rows)


if __name__ == "__main__":
    main()
