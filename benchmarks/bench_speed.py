"""Speed of hf_ovseg against the physical floor: the plain CLIP ViT forward over the same crops.

Builds a ViT-B/16-sized OVSegModel with random weights (speed does not depend on the values) and times,
in one run and for each dtype:

1. floor: ``CLIPVisionModel`` (same weights, unmodified) over exactly the crops the pipeline makes for a
   448x672 image (short side 448, crop 224, stride 112: 15 crops), in the pipeline's batches;
2. the full pipeline call on that image, 21 labels, ``method="seed"`` (text embeddings cached);
3. the same with ``method="vanilla"``.

Prints a markdown table with the medians, the ratio pipeline/floor, images/s and peak memory.

With ``--feature-upsampler`` it instead times ``method="segearth"`` with and without SimFeatUp (``jbu_one``,
random weights of the published checkpoint's shape) on the same crops and prints the extra time per crop.

    python benchmarks/bench_speed.py                       # fp32 and bf16 on CPU (fp16 on CUDA if present)
    python benchmarks/bench_speed.py --device cuda --dtypes float16
    python benchmarks/bench_speed.py --feature-upsampler --dtypes float32
"""

from __future__ import annotations

import argparse
import platform
import resource
import statistics
import time

import numpy as np
import torch
from PIL import Image
from transformers import CLIPVisionModel

from hf_ovseg.evaluation.benchmarks import VOC_NAMES
from hf_ovseg.inference import batched, window_boxes

from random_vit import vit_b16_pipeline

VOC21 = list(VOC_NAMES)
HEIGHT, WIDTH, CROP, STRIDE, BATCH = 448, 672, 224, 112, 8


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            return next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def median_time(fn, device: torch.device, repeats: int) -> float:
    fn()  # warm-up (allocator, kernels, text cache)
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def bench(dtype: torch.dtype, device: torch.device, repeats: int) -> dict[str, float]:
    pipe = vit_b16_pipeline("seed", device, dtype)
    floor_model = CLIPVisionModel(pipe.model.config.vision_config).to(device=device, dtype=dtype).eval()
    floor_model.load_state_dict(pipe.model.vision_model.state_dict())
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 255, (HEIGHT, WIDTH, 3), dtype=np.uint8))
    pixels = pipe.processor.image_processor(photo, short_side=HEIGHT)["pixel_values"].to(device=device, dtype=dtype)
    boxes = window_boxes(HEIGHT, WIDTH, CROP, STRIDE)

    def floor() -> None:
        with torch.inference_mode():
            for group in batched(boxes, BATCH):
                floor_model(pixel_values=torch.cat([pixels[..., t:b, l:r] for t, b, l, r in group]))

    def run(method: str):
        return lambda: pipe(photo, candidate_labels=VOC21, method=method, batch_size=BATCH)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    result = {"floor": median_time(floor, device, repeats)}
    result["seed"] = median_time(run("seed"), device, repeats)
    result["vanilla"] = median_time(run("vanilla"), device, repeats)
    result["peak_mb"] = peak_memory_mb(device)
    result["crops"] = len(boxes)
    return result


def bench_upsampler(dtype: torch.dtype, device: torch.device, repeats: int) -> dict[str, float]:
    pipe = vit_b16_pipeline("segearth", device, dtype, feature_upsampler="jbu_one")
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 255, (HEIGHT, WIDTH, 3), dtype=np.uint8))

    def run(upsampling: bool):
        return lambda: pipe(photo, candidate_labels=VOC21, feature_upsampling=upsampling, batch_size=BATCH)

    crops = len(window_boxes(HEIGHT, WIDTH, CROP, STRIDE))
    without, with_up = median_time(run(False), device, repeats), median_time(run(True), device, repeats)
    return {"without": without, "with": with_up, "per_crop": (with_up - without) / crops, "crops": crops}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--dtypes", default=None, help="comma-separated; default float32,bfloat16 (CPU), float16 (CUDA)"
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--feature-upsampler", action="store_true", help="time SimFeatUp's extra cost per crop")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtypes = (
        args.dtypes.split(",") if args.dtypes else (["float16"] if device.type == "cuda" else ["float32", "bfloat16"])
    )
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    print(
        f"device: {device} ({name}), torch {torch.__version__}, {torch.get_num_threads()} CPU threads, "
        f"ViT-B/16 random weights, {HEIGHT}x{WIDTH} image, crop {CROP}/stride {STRIDE}, batch {BATCH}, "
        f"21 labels, median of {args.repeats}"
    )
    print()
    if args.feature_upsampler:
        print("| dtype | segearth without SimFeatUp (s) | with (s) | crops | extra per crop (s) | with / without |")
        print("| --- | --- | --- | --- | --- | --- |")
        for dtype_name in dtypes:
            r = bench_upsampler(getattr(torch, dtype_name), device, args.repeats)
            print(
                f"| {dtype_name} | {r['without']:.3f} | {r['with']:.3f} | {r['crops']} | {r['per_crop']:.3f} "
                f"| {r['with'] / r['without']:.2f} |",
                flush=True,
            )
        return
    header = "| dtype | floor (s) | seed (s) | vanilla (s) | seed / floor | vanilla / floor | seed images/s | peak MB |"
    print(header)
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for dtype_name in dtypes:
        r = bench(getattr(torch, dtype_name), device, args.repeats)
        print(
            f"| {dtype_name} | {r['floor']:.3f} | {r['seed']:.3f} | {r['vanilla']:.3f} | {r['seed'] / r['floor']:.3f} "
            f"| {r['vanilla'] / r['floor']:.3f} | {1 / r['seed']:.2f} | {r['peak_mb']:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
