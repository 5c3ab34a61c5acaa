"""Speed of hf_ovseg against the physical floor: the plain CLIP ViT forward over the same crops.

Builds a ViT-B/16-sized OVSegModel with random weights (speed does not depend on the values) and times,
in one run and for each dtype:

1. floor: ``CLIPVisionModel`` (same weights, unmodified) over exactly the crops the pipeline makes for a
   448x672 image (short side 448, crop 224, stride 112: 15 crops), in the pipeline's batches;
2. the full pipeline call on that image, 21 labels, ``method="seed"`` (text embeddings cached);
3. the same with ``method="vanilla"``.

Prints a markdown table with the medians, the ratio pipeline/floor, images/s and peak memory.

With ``--feature-upsampler`` it instead times ``method="segearth"`` with and without SimFeatUp (``jbu_one``,
random weights of the published checkpoint's shape) on the same crops and prints the extra time per crop, and
that extra time over the ViT forward of one crop (the floor's time per crop).

With ``--proxy dino|dinov2|sam`` it times the ProxyCLIP preset of that proxy (ViT-B-sized random weights) with
ProxyCLIP's VOC setting (short side 336, crop 336, stride 112: a 336x504 image gives 3 crops) against its floor:
the plain CLIP forward plus the proxy's plain forward (``ViTModel``, ``Dinov2WithRegistersModel``, SAM's
``SamVisionModel`` on the 1024x1024 stretch) over the same crops.

    python benchmarks/bench_speed.py                       # fp32 and bf16 on CPU (fp16 on CUDA if present)
    python benchmarks/bench_speed.py --device cuda --dtypes float16
    python benchmarks/bench_speed.py --feature-upsampler --dtypes float32
With ``--trident`` it times the trident preset (DINO ViT-B/16 and SAM ViT-B, random weights) with Trident's VOC
setting (short side 448, crop 336, stride 224: a 448x672 image gives 6 windows) with and without its SAM
refinement, against its floor: the plain CLIP and DINO forwards over the same windows plus one SAM ViT-B encoder
forward at 1024x1024.

    python benchmarks/bench_speed.py --proxy dino --dtypes float32
    python benchmarks/bench_speed.py --trident --dtypes float32
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

    boxes = window_boxes(HEIGHT, WIDTH, CROP, STRIDE)
    floor_model = CLIPVisionModel(pipe.model.config.vision_config).to(device=device, dtype=dtype).eval()
    pixels = torch.randn(len(boxes), 3, CROP, CROP, device=device, dtype=dtype)

    def floor() -> None:
        with torch.inference_mode():
            for start in range(0, len(boxes), BATCH):
                floor_model(pixel_values=pixels[start : start + BATCH])

    crops = len(boxes)
    without, with_up = median_time(run(False), device, repeats), median_time(run(True), device, repeats)
    vit = median_time(floor, device, repeats) / crops
    return {"without": without, "with": with_up, "per_crop": (with_up - without) / crops, "crops": crops, "vit": vit}


#: ProxyCLIP's VOC setting (configs/cfg_voc21.py: short side 336; segmentor: crop 336, stride 112).
PROXY_HEIGHT, PROXY_WIDTH, PROXY_CROP, PROXY_STRIDE = 336, 504, 336, 112


def bench_proxy(kind: str, dtype: torch.dtype, device: torch.device, repeats: int) -> dict[str, float]:
    from hf_ovseg.proxy import proxy_features

    from random_vit import PROXY_METHODS

    pipe = vit_b16_pipeline(PROXY_METHODS[kind], device, dtype, proxy=kind)
    model = pipe.model
    floor_model = CLIPVisionModel(model.config.vision_config).to(device=device, dtype=dtype).eval()
    floor_model.load_state_dict(model.vision_model.state_dict())
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 255, (PROXY_HEIGHT, PROXY_WIDTH, 3), np.uint8))
    boxes = window_boxes(PROXY_HEIGHT, PROXY_WIDTH, PROXY_CROP, PROXY_STRIDE)
    pixels = torch.randn(len(boxes), 3, PROXY_CROP, PROXY_CROP, device=device, dtype=torch.float32)

    def floor() -> None:
        with torch.inference_mode():
            for start in range(0, len(boxes), BATCH):
                crops = pixels[start : start + BATCH]
                floor_model(pixel_values=crops.to(dtype), interpolate_pos_encoding=True)
                proxy_features(model.proxy_model, crops)

    def run() -> None:
        pipe(photo, candidate_labels=VOC21, short_side=PROXY_HEIGHT, crop_size=PROXY_CROP, stride=PROXY_STRIDE,
             batch_size=BATCH)  # fmt: skip

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    result = {"floor": median_time(floor, device, repeats), "pipeline": median_time(run, device, repeats)}
    result["peak_mb"] = peak_memory_mb(device)
    result["crops"] = len(boxes)
    return result


TRIDENT_HEIGHT, TRIDENT_WIDTH, TRIDENT_CROP, TRIDENT_STRIDE = 448, 672, 336, 224


def bench_trident(dtype: torch.dtype, device: torch.device, repeats: int) -> dict[str, float]:
    from hf_ovseg.proxy import proxy_features

    pipe = vit_b16_pipeline("trident", device, dtype, proxy="dino16", sam=True)
    model = pipe.model
    floor_model = CLIPVisionModel(model.config.vision_config).to(device=device, dtype=dtype).eval()
    floor_model.load_state_dict(model.vision_model.state_dict())
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 255, (TRIDENT_HEIGHT, TRIDENT_WIDTH, 3), np.uint8))
    boxes = window_boxes(TRIDENT_HEIGHT, TRIDENT_WIDTH, TRIDENT_CROP, TRIDENT_STRIDE)
    windows = torch.randn(len(boxes), 3, TRIDENT_CROP, TRIDENT_CROP, device=device)
    size = model.config.sam_config.vision_config.image_size
    sam_pixels = torch.randn(1, 3, size, size, device=device, dtype=dtype)

    def floor() -> None:
        with torch.inference_mode():  # Trident runs all windows of an image as one batch
            floor_model(pixel_values=windows.to(dtype), interpolate_pos_encoding=True)
            proxy_features(model.proxy_model, windows)
            model.sam_model.vision_encoder(pixel_values=sam_pixels)

    def run(refinement: bool) -> None:
        pipe(photo, candidate_labels=VOC21, short_side=TRIDENT_HEIGHT, crop_size=TRIDENT_CROP, stride=TRIDENT_STRIDE,
             sam_refinement=refinement)  # fmt: skip

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    result = {
        "floor": median_time(floor, device, repeats),
        "coarse": median_time(lambda: run(False), device, repeats),
        "pipeline": median_time(lambda: run(True), device, repeats),
    }
    result["peak_mb"] = peak_memory_mb(device)
    result["crops"] = len(boxes)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--dtypes", default=None, help="comma-separated; default float32,bfloat16 (CPU), float16 (CUDA)"
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--feature-upsampler", action="store_true", help="time SimFeatUp's extra cost per crop")
    parser.add_argument("--proxy", choices=["dino", "dinov2", "sam"], default=None, help="time a ProxyCLIP preset")
    parser.add_argument("--trident", action="store_true", help="time the trident preset (DINO + SAM)")
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
    def table(header: str, measure, row) -> None:
        """A markdown table: ``header``'s columns, one row per dtype from ``row(dtype name, measure(dtype))``."""
        print(header)
        print("|" + " --- |" * header.count(" | ") + " --- |")
        for dtype_name in dtypes:
            print(f"| {dtype_name} | " + " | ".join(row(measure(getattr(torch, dtype_name)))) + " |", flush=True)

    if args.feature_upsampler:
        table(
            "| dtype | segearth without SimFeatUp (s) | with (s) | crops | SimFeatUp per crop (s) "
            "| ViT forward per crop (s) | SimFeatUp / ViT |",
            lambda dtype: bench_upsampler(dtype, device, args.repeats),
            lambda r: [f"{r['without']:.3f}", f"{r['with']:.3f}", f"{r['crops']}", f"{r['per_crop']:.4f}",
                       f"{r['vit']:.4f}", f"{r['per_crop'] / r['vit']:.2f}"],
        )  # fmt: skip
    elif args.trident:
        print(f"Trident with random DINO ViT-B/16 and SAM ViT-B: {TRIDENT_HEIGHT}x{TRIDENT_WIDTH} image, crop "
              f"{TRIDENT_CROP}/stride {TRIDENT_STRIDE}")  # fmt: skip
        table(
            "| dtype | floor: CLIP + DINO + SAM encoder (s) | trident, no refinement (s) | trident (s) | windows "
            "| no refinement / floor | trident / floor | peak MB |",
            lambda dtype: bench_trident(dtype, device, args.repeats),
            lambda r: [f"{r['floor']:.3f}", f"{r['coarse']:.3f}", f"{r['pipeline']:.3f}", f"{r['crops']}",
                       f"{r['coarse'] / r['floor']:.3f}", f"{r['pipeline'] / r['floor']:.3f}", f"{r['peak_mb']:.0f}"],
        )  # fmt: skip
    elif args.proxy:
        print(f"ProxyCLIP with a random {args.proxy} proxy: {PROXY_HEIGHT}x{PROXY_WIDTH} image, crop {PROXY_CROP}/"
              f"stride {PROXY_STRIDE}")  # fmt: skip
        table(
            "| dtype | floor: CLIP + proxy (s) | proxyclip (s) | crops | proxyclip / floor | images/s | peak MB |",
            lambda dtype: bench_proxy(args.proxy, dtype, device, args.repeats),
            lambda r: [f"{r['floor']:.3f}", f"{r['pipeline']:.3f}", f"{r['crops']}",
                       f"{r['pipeline'] / r['floor']:.3f}", f"{1 / r['pipeline']:.2f}", f"{r['peak_mb']:.0f}"],
        )  # fmt: skip
    else:
        table(
            "| dtype | floor (s) | seed (s) | vanilla (s) | seed / floor | vanilla / floor | seed images/s | peak MB |",
            lambda dtype: bench(dtype, device, args.repeats),
            lambda r: [f"{r['floor']:.3f}", f"{r['seed']:.3f}", f"{r['vanilla']:.3f}", f"{r['seed'] / r['floor']:.3f}",
                       f"{r['vanilla'] / r['floor']:.3f}", f"{1 / r['seed']:.2f}", f"{r['peak_mb']:.0f}"],
        )  # fmt: skip

if __name__ == "__main__":
    main()
