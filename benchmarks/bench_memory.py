"""Peak resident memory of hf_ovseg on very large inputs (target: under 3 GB on CPU).

1. A 6000x4000 photo through one pipeline call (default). Crops are streamed in batches and the final resize
   to the original size runs in row chunks, so memory is bounded by the model, the decoded photo and the
   per-class masks at full resolution, not by the image area times the number of classes.
   ``--feature-upsampler`` runs ``segearth`` with SimFeatUp (``jbu_one``, random weights), which upsamples
   every crop's features to [512, 224, 224]; ``--proxy dino|dinov2|sam`` runs the ProxyCLIP preset with a
   ViT-B-sized random proxy (ProxyCLIP's 336 windows); ``--trident`` the trident preset with DINO ViT-B/16 and
   SAM ViT-B (Trident's VOC setting: short side 448, windows 336/224, SAM refinement on).
2. ``--raster``: a ``--width`` x ``--height`` RGB GeoTIFF (20000 x 20000 by default, written by blocks) through
   ``hf-ovseg segment`` in a child process: read and written by windows, tiles at native resolution
   (``--short-side none``), or resized. The child's peak resident memory is measured by the kernel.

    python benchmarks/bench_memory.py                                   # ViT-B/16 random weights, 21 labels
    python benchmarks/bench_memory.py --feature-upsampler
    python benchmarks/bench_memory.py --proxy dino
    python benchmarks/bench_memory.py --trident
    python benchmarks/bench_memory.py --raster --short-side none --stride 224   # needs the geo extra
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from random_vit import vit_b16_pipeline


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


def photo_memory(args: argparse.Namespace) -> None:
    from random_vit import PROXY_METHODS

    method = "segearth" if args.feature_upsampler else PROXY_METHODS.get(args.proxy, "seed")
    proxy, call = args.proxy, {"short_side": 336, "crop_size": 336, "stride": 112} if args.proxy else {}
    if args.trident:
        method, proxy, call = "trident", "dino16", {"short_side": 448, "crop_size": 336, "stride": 224}
    pipe = vit_b16_pipeline(method, feature_upsampler="jbu_one" if args.feature_upsampler else None, proxy=proxy,
                            sam=args.trident)  # fmt: skip
    labels = [f"class {i}" for i in range(args.labels)]
    pipe(np.zeros((64, 64, 3), np.uint8), candidate_labels=labels, **call)  # text cached, allocator warm
    # A smooth synthetic photo (gradients), so that classes can appear in large regions.
    x = np.linspace(0, 255, args.width, dtype=np.float32)[None, :]
    y = np.linspace(0, 255, args.height, dtype=np.float32)[:, None]
    photo = np.empty((args.height, args.width, 3), np.uint8)
    photo[..., 0], photo[..., 1], photo[..., 2] = x, y, (x + y) / 2
    photo = Image.fromarray(photo)
    before = current_rss_mb()
    reset_peak()
    start = time.perf_counter()
    segments = pipe(photo, candidate_labels=labels, **call)
    seconds = time.perf_counter() - start
    peak = peak_rss_mb()
    upsampler = ", SimFeatUp jbu_one on" if args.feature_upsampler else f", {proxy} proxy" if proxy else ""
    upsampler += ", SAM ViT-B" if args.trident else ""
    print(f"image {args.width}x{args.height}, {args.labels} labels, method {method}{upsampler}, "
          f"{len(segments)} segments, {seconds:.1f} s")  # fmt: skip
    print(f"resident before the call: {before:.0f} MB (model, photo); peak during the call: {peak:.0f} MB")
    print(f"peak / limit = {peak / args.limit_mb:.2f} ({'under' if peak < args.limit_mb else 'OVER'} "
          f"{args.limit_mb:.0f} MB)")  # fmt: skip


def write_orthophoto(path: Path, width: int, height: int) -> None:
    """A smooth RGB GeoTIFF (tiled, deflate), written block by block."""
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    profile = {"driver": "GTiff", "width": width, "height": height, "count": 3, "dtype": "uint8",
               "crs": "EPSG:32633", "transform": from_origin(500000, 4600000, 0.3, 0.3), "tiled": True,
               "blockxsize": 512, "blockysize": 512, "compress": "deflate", "BIGTIFF": "IF_SAFER"}  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        for top in range(0, height, 1024):
            rows = min(1024, height - top)
            y = np.arange(top, top + rows, dtype=np.float32)[:, None]
            x = np.arange(width, dtype=np.float32)[None, :]
            band = np.stack([(np.sin(x / 700) + np.cos(y / 500) + 2) * 60 + (x % 97 < 20) * 30,
                             (np.cos(x / 300) * np.sin(y / 900) + 1) * 110,
                             ((x + y) % 1500) / 1500 * 200 + 20])  # fmt: skip
            dst.write(band.astype(np.uint8), window=Window(0, top, width, rows))


# ``hf-ovseg segment`` in a child that reports its own peak (VmHWM, kB) on stderr; ``RUSAGE_CHILDREN`` would
# also count this process's resident size at the fork that started the child (Linux keeps it across exec).
SEGMENT_AND_REPORT_PEAK = """
import sys
from hf_ovseg.cli import main
code = main(sys.argv[1:])
with open("/proc/self/status") as status:
    print("VmHWM", next(line.split()[1] for line in status if line.startswith("VmHWM:")), file=sys.stderr)
sys.exit(code)
"""


def raster_memory(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        raster = tmp / "orthophoto.tif"
        start = time.perf_counter()
        write_orthophoto(raster, args.width, args.height)
        print(f"wrote a {args.width}x{args.height} RGB GeoTIFF in {time.perf_counter() - start:.0f} s")
        vit_b16_pipeline("seed").save_pretrained(tmp / "model")
        command = [sys.executable, "-c", SEGMENT_AND_REPORT_PEAK, "segment", str(raster), "--model", str(tmp / "model"),
                   "--labels", ",".join(f"class {i}" for i in range(args.labels)), "--out", str(tmp / "out"),
                   "--short-side", args.short_side, "--stride", str(args.stride), "--no-text-cache"]  # fmt: skip
        start = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        seconds = time.perf_counter() - start
        if result.returncode:
            sys.exit(f"segment failed ({result.returncode}): {result.stderr[-2000:]}")
        peak = int(result.stderr.split("VmHWM")[-1].split()[0]) / 1024
        print(f"hf-ovseg segment (ViT-B/16 random weights, {args.labels} labels, short side {args.short_side}, "
              f"crop 224 / stride {args.stride}): {seconds:.0f} s, peak resident memory {peak:.0f} MB")  # fmt: skip
        print(f"peak / limit = {peak / args.limit_mb:.2f} ({'under' if peak < args.limit_mb else 'OVER'} "
              f"{args.limit_mb:.0f} MB)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--raster", action="store_true", help="a GeoTIFF through hf-ovseg segment")
    parser.add_argument("--width", type=int, default=None, help="default 6000 (photo) or 20000 (raster)")
    parser.add_argument("--height", type=int, default=None, help="default 4000 (photo) or 20000 (raster)")
    parser.add_argument("--labels", type=int, default=21)
    parser.add_argument("--feature-upsampler", action="store_true", help="segearth with SimFeatUp (photo mode)")
    parser.add_argument("--proxy", choices=["dino", "dinov2", "sam"], default=None, help="ProxyCLIP (photo mode)")
    parser.add_argument("--trident", action="store_true", help="trident with DINO and SAM (photo mode)")
    parser.add_argument("--short-side", default="none", help="raster mode: 'none' (native) or pixels")
    parser.add_argument("--stride", type=int, default=112, help="raster mode: window stride (crop 224)")
    parser.add_argument("--limit-mb", type=float, default=3072)
    args = parser.parse_args()
    args.width = args.width or (20000 if args.raster else 6000)
    args.height = args.height or (20000 if args.raster else 4000)
    raster_memory(args) if args.raster else photo_memory(args)


if __name__ == "__main__":
    main()
