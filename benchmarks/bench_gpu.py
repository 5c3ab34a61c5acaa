"""The one GPU benchmark: every speed figure the README quotes for a GPU, in one run of a few minutes.

ViT-B/16-sized random weights (speed does not depend on the values), 21 VOC labels, the VOC test fixtures
repeated (``--images``); prints markdown tables:

1. floor: the plain ``CLIPVisionModel`` forward, crops/s at batch 64 and 256 (224x224 crops);
2. ``evaluate``: images/s of ``evaluate_methods`` (what ``hf-ovseg evaluate`` runs) for the sclip, clearclip,
   segearth (with a random SimFeatUp; SegEarth-OV's settings on VOC images) and naclip (PAMR) protocols and
   the seed preset with the CLI's default windows, each against its floor: the plain forward of exactly that
   protocol's crops at batch 256;
3. pipeline call: seed / floor and vanilla / floor for a 448x672 image (15 crops) at batch 8 and 64;
4. folder: ``segment_jobs`` (what ``hf-ovseg segment`` runs) with every output written, images/s;
5. batch invariance: the folder run again in reverse order (other images share each batch): label maps
   compared image by image; one crop's logits at every position of a padded batch, largest difference;
6. SimFeatUp: its extra time per crop (segearth with and without it) against the ViT forward per crop, in
   float32, float16 and bfloat16;
7. peak GPU memory.

On the lent GPU machine (python3 with torch, transformers and accelerate; no ``datasets``, ``evaluate`` or
``open_clip_torch``): the package runs without the first two, and the CLIP tokenizer is built from the BPE file
inside the ``open_clip_torch`` wheel, which travels as a wheel. Here, in the repository's root::

    echo /.whl/ >> .git/info/exclude
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \\
        --platform manylinux2014_x86_64 --platform any -d .whl open_clip_torch==3.2.0

and there (carry ``.whl``)::

    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \\
        && export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 && timeout 420 python3 benchmarks/bench_gpu.py

A quick run on a CPU checks that every part works (the figures mean nothing there)::

    python benchmarks/bench_gpu.py --device cpu --quick
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import CLIPVisionModel

from hf_ovseg.bulk import find_inputs, segment_jobs
from hf_ovseg.evaluation import evaluate_methods, load_benchmark
from hf_ovseg.evaluation.benchmarks import VOC_NAMES
from hf_ovseg.evaluation.protocols import resolve_protocol
from hf_ovseg.image_processing_ovseg import rescale_size
from hf_ovseg.inference import window_boxes
from hf_ovseg.labels import parse_labels

from bench_speed import cpu_name, median_time, sync
from random_vit import vit_b16_pipeline

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures"
VOC21 = list(VOC_NAMES)
#: The CLI's windows without --protocol (cli.DEFAULT_PROTOCOL), for the seed preset.
SEED_PROTOCOL = {"method": "seed", "short_side": 448, "long_side": 2048, "crop_size": 224, "stride": 112,
                 "patch_padding": "center", "background_threshold": 0.0}  # fmt: skip


def voc_copies(root: Path, count: int) -> Path:
    """A VOC layout holding the fixture photos and masks ``count`` times (links, one split file)."""
    ids = (FIXTURES / "voc" / "ImageSets" / "Segmentation" / "val.txt").read_text().split()
    ids = [i for i in ids if (FIXTURES / "voc" / "SegmentationClass" / f"{i}.png").is_file()]
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / folder).mkdir(parents=True)
    names = []
    for index in range(count):
        source = ids[index % len(ids)]
        names.append(f"{index:04d}_{source}")
        os.symlink(FIXTURES / "voc" / "JPEGImages" / f"{source}.jpg", root / "JPEGImages" / f"{names[-1]}.jpg")
        os.symlink(FIXTURES / "voc" / "SegmentationClass" / f"{source}.png",
                   root / "SegmentationClass" / f"{names[-1]}.png")  # fmt: skip
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(names) + "\n")
    return root


def crop_shapes(arguments: dict, sizes: list[tuple[int, int]], patch: int) -> Counter:
    """How many crops of each shape (patch multiples) a protocol runs on images of ``sizes``."""
    shapes = Counter()
    for height, width in sizes:
        height, width = rescale_size(height, width, arguments["short_side"], arguments["long_side"])
        crop = arguments["crop_size"]
        boxes = [(0, height, 0, width)] if crop is None else window_boxes(height, width, crop, arguments["stride"])
        for top, bottom, left, right in boxes:
            shapes[(max(patch, (bottom - top) // patch * patch), max(patch, (right - left) // patch * patch))] += 1
    return shapes


class Floor:
    """The plain CLIP vision tower (same architecture, random weights): seconds per crop of a shape."""

    def __init__(self, config, device: torch.device, dtype: torch.dtype, repeats: int):
        self.model = CLIPVisionModel(config).to(device=device, dtype=dtype).eval()
        self.device, self.dtype, self.repeats, self.cache = device, dtype, repeats, {}

    def per_crop(self, shape: tuple[int, int], batch: int) -> float:
        if (shape, batch) not in self.cache:
            pixels = torch.randn(batch, 3, *shape, device=self.device, dtype=self.dtype)

            def forward() -> None:
                with torch.inference_mode():
                    self.model(pixel_values=pixels, interpolate_pos_encoding=True)

            self.cache[shape, batch] = median_time(forward, self.device, self.repeats) / batch
        return self.cache[shape, batch]

    def seconds(self, shapes: Counter, batch: int) -> float:
        return sum(count * self.per_crop(shape, batch) for shape, count in shapes.items())


def evaluate_rates(pipe, floor: Floor, root: Path, batch: int, floor_batch: int, workers: int) -> list[str]:
    bench = load_benchmark("voc21", root)
    sizes = [Image.open(root / "JPEGImages" / f"{i}.jpg").size[::-1] for i in
             (root / "ImageSets" / "Segmentation" / "val.txt").read_text().split()]  # fmt: skip
    patch = pipe.model.config.vision_config.patch_size
    rows = []
    for name in ("sclip", "clearclip", "segearth", "naclip", "seed"):
        if name == "seed":
            arguments, prompts, separator = dict(SEED_PROTOCOL), None, None
        else:
            protocol = resolve_protocol(name, "openearthmap" if name == "segearth" else "voc21")
            arguments, separator = protocol.pipeline_arguments(), protocol.synonym_separator
            prompts = None if name == "segearth" else protocol.prompts  # SegEarth-OV's settings on VOC's classes
        arguments["background_index"] = 0
        arguments["batch_size"] = batch  # whole images (crop_size None) run one per batch (call_settings)
        warm = load_benchmark("voc21", root, limit=2)
        evaluate_methods(pipe, warm, [arguments["method"]], arguments, "random", prompts, progress=False,
                         num_workers=0, synonym_separator=separator)  # fmt: skip
        sync(floor.device)
        start = time.perf_counter()
        evaluate_methods(pipe, bench, [arguments["method"]], arguments, "random", prompts, progress=False,
                         num_workers=workers, synonym_separator=separator)  # fmt: skip
        sync(floor.device)
        seconds = time.perf_counter() - start
        shapes = crop_shapes(arguments, sizes, patch)
        floor_seconds = floor.seconds(shapes, floor_batch if arguments["crop_size"] else 1)
        used = batch if arguments["crop_size"] else 1
        rates = f"{len(sizes) / seconds:.1f} | {len(sizes) / floor_seconds:.1f} | {floor_seconds / seconds:.0%}"
        rows.append(f"| {name} | {arguments['method']} | {sum(shapes.values()) / len(sizes):.1f} | {used} | {rates} |")
    return rows


def pipeline_rows(pipe, floor: Floor, repeats: int) -> list[str]:
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 255, (448, 672, 3), dtype=np.uint8))
    shapes = crop_shapes(SEED_PROTOCOL, [(448, 672)], 16)
    rows = []
    for batch in (8, 64):
        floor_seconds = floor.seconds(shapes, batch)
        line = f"| {batch} | {1000 * floor_seconds:.1f} |"
        for method in ("seed", "vanilla"):
            seconds = median_time(lambda m=method, b=batch: pipe(photo, candidate_labels=VOC21, method=m, batch_size=b),
                                  floor.device, repeats)  # fmt: skip
            line += f" {1000 * seconds:.1f} | {seconds / floor_seconds:.2f} |"
        rows.append(line)
    return rows


def folder_run(pipe, call, resize, folder: Path, out: Path, workers: int, reverse: bool = False) -> float:
    jobs = list(enumerate(find_inputs([str(folder)])))
    if reverse:
        jobs = jobs[::-1]
    sync(torch.device(pipe.device))
    start = time.perf_counter()
    records = list(segment_jobs(pipe, call, jobs, out, {}, resize["short_side"], resize["long_side"],
                                num_workers=workers, progress=False))  # fmt: skip
    sync(torch.device(pipe.device))
    failed = [r for r in records if "error" in r]
    if failed:
        raise RuntimeError(f"folder run failed: {failed[0]}")
    return time.perf_counter() - start


def folder_rows(pipe, images: int, batch: int, workers: int) -> tuple[list[str], list[str]]:
    options = {k: SEED_PROTOCOL[k] for k in ("short_side", "crop_size", "stride")}
    resize, call = pipe.prepare(VOC21, batch_size=batch, **options)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        photos = sorted(FIXTURES.glob("voc/JPEGImages/*.jpg")) + sorted(FIXTURES.glob("ade20k/**/*.jpg"))
        (tmp / "photos").mkdir()
        for index in range(images):
            shutil.copy(photos[index % len(photos)], tmp / "photos" / f"{index:04d}_{photos[index % len(photos)].name}")
        folder_run(pipe, call, resize, tmp / "photos", tmp / "warm", workers)
        seconds = folder_run(pipe, call, resize, tmp / "photos", tmp / "forward", workers)
        folder_run(pipe, call, resize, tmp / "photos", tmp / "reverse", workers, reverse=True)
        maps = sorted((tmp / "forward").glob("*_labels.png"))
        same = sum(np.array_equal(np.array(Image.open(p)), np.array(Image.open(tmp / "reverse" / p.name)))
                   for p in maps)  # fmt: skip
    folder = [f"| {images} | {batch} | {workers} | {seconds:.2f} | {images / seconds:.1f} |"]
    return folder, [f"folder label maps, forward vs reverse order (other batch neighbours): {same}/{len(maps)} "
                    "identical"]  # fmt: skip


def crop_invariance(pipe, batch: int) -> str:
    """One crop's logits at each position of a batch padded to ``batch`` (the rest: other random crops)."""
    model = pipe.model
    dtype = next(model.parameters()).dtype
    text = pipe.processor.text_embeddings(model, parse_labels(VOC21, pipe.processor.tokenizer))
    generator = torch.Generator().manual_seed(0)
    crops = torch.randn(batch, 3, 224, 224, generator=generator).to(model.device, dtype)
    reference = None
    largest = 0.0
    with torch.inference_mode():
        for position, count in ((0, 1), (1, 2), (batch // 2, batch // 2 + 3), (batch - 1, batch)):
            batch_crops = crops[:count].clone()
            batch_crops[position] = crops[0]
            logits = model(batch_crops, text_embeds=text, pad_to=batch).logits[position].float()
            reference = logits if reference is None else reference
            largest = max(largest, (logits - reference).abs().max().item())
    return f"one crop's logits at 4 positions in batches of 1-{batch} real crops padded to {batch}: " \
           f"largest difference {largest:.3g}"


def simfeatup_rows(device: torch.device, dtypes: list[str], repeats: int, batch: int) -> list[str]:
    rows = []
    for name in dtypes:
        dtype = getattr(torch, name)
        pipe = vit_b16_pipeline("segearth", device, dtype, feature_upsampler="jbu_one")
        model = pipe.model
        text = pipe.processor.text_embeddings(model, parse_labels(VOC21, pipe.processor.tokenizer))
        crops = torch.randn(batch, 3, 224, 224, device=device, dtype=dtype)

        def forward(upsampling: bool, model=model, text=text, crops=crops) -> None:
            settings = model.config.with_method("segearth", feature_upsampling=upsampling)
            with torch.inference_mode():
                model(crops, text_embeds=text, settings=settings)

        without = median_time(lambda: forward(False), device, repeats) / batch
        with_up = median_time(lambda: forward(True), device, repeats) / batch
        vit = Floor(model.config.vision_config, device, dtype, repeats).per_crop((224, 224), batch)
        rows.append(f"| {name} | {batch} | {1000 * (with_up - without):.2f} | {1000 * vit:.2f} | "
                    f"{(with_up - without) / vit:.2f} |")  # fmt: skip
        del pipe, model
    return rows


def table(header: list[str], rows: list[str]) -> str:
    return "\n".join(["| " + " | ".join(header) + " |", "|" + " --- |" * len(header), *rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, help="model precision (default float16 on CUDA, float32 on CPU)")
    parser.add_argument("--images", type=int, default=400, help="VOC images (the fixtures repeated) to evaluate")
    parser.add_argument("--folder-images", type=int, default=192)
    parser.add_argument("--batch-size", type=int, default=64, help="crops per forward in evaluate and folders")
    parser.add_argument("--workers", type=int, default=min(8, (os.cpu_count() or 2) - 1))
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="a few images and repeats: checks the script runs")
    args = parser.parse_args()
    floor_batches = (64, 256)
    if args.quick:
        args.images, args.folder_images, args.repeats, args.batch_size, floor_batches = 5, 4, 1, 8, (4, 8)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype or ("float16" if device.type == "cuda" else "float32"))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    print(f"device: {device} ({name}), torch {torch.__version__}, {str(dtype)[6:]}, ViT-B/16 random weights, "
          f"21 VOC labels, {args.workers} DataLoader workers, median of {args.repeats}\n", flush=True)  # fmt: skip
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    pipe = vit_b16_pipeline("seed", device, dtype, feature_upsampler="jbu_one")
    floor = Floor(pipe.model.config.vision_config, device, dtype, args.repeats)
    rates = [f"| {b} | {1 / floor.per_crop((224, 224), b):.0f} |" for b in floor_batches]
    print(table(["batch", "floor crops/s (224x224)"], rates) + "\n", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = voc_copies(Path(tmp) / "voc", args.images)
        rows = evaluate_rates(pipe, floor, root, args.batch_size, floor_batches[-1], args.workers)
    print(f"evaluate, {args.images} VOC images, batch {args.batch_size}; floor: the plain forward of the same crops "
          f"at batch {floor_batches[-1]}:")
    print(table(["protocol", "method", "crops/image", "batch", "images/s", "floor images/s", "of the floor"], rows))
    print(flush=True)
    print("pipeline call, 448x672 image, 15 crops of 224, seed's windows:")
    print(table(["batch", "floor ms", "seed ms", "seed / floor", "vanilla ms", "vanilla / floor"],
                pipeline_rows(pipe, floor, args.repeats)) + "\n", flush=True)  # fmt: skip
    folder, invariance = folder_rows(pipe, args.folder_images, args.batch_size, args.workers)
    print("folder (hf-ovseg segment: label PNG, overlay, JSON written), seed:")
    print(table(["images", "batch", "workers", "seconds", "images/s"], folder) + "\n")
    print("batch invariance:")
    print("\n".join(invariance))
    print(crop_invariance(pipe, args.batch_size) + "\n", flush=True)
    del pipe
    dtypes = ["float32", "float16", "bfloat16"] if device.type == "cuda" else ["float32", "bfloat16"]
    print("SimFeatUp (segearth, random jbu_one) per crop:")
    print(table(["dtype", "batch", "SimFeatUp ms/crop", "ViT forward ms/crop", "SimFeatUp / ViT"],
                simfeatup_rows(device, dtypes, args.repeats, args.batch_size)) + "\n")  # fmt: skip
    if device.type == "cuda":
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
