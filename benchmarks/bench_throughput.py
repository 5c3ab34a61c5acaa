"""Throughput of segmenting a folder: images/s before and after the bulk path, measured in one run.

- before: one image at a time in the main process (decode, resize, the pipeline call, the outputs), as
  ``hf-ovseg segment`` ran images before;
- after: ``hf_ovseg.bulk.segment_jobs``, what ``hf-ovseg segment`` runs now: DataLoader workers decode and
  resize while the model works, and the crops of consecutive images share forward batches.

Both write the same outputs (label map, overlay, JSON) for a folder of ``--images`` real-size photos (the test
fixtures repeated: VOC and ADE20K photos, a warehouse bin), with a ViT-B/16-sized model of random weights
(speed does not depend on the values), 21 labels, the VOC protocol's windows (short side 448, crop 224,
stride 112); the label maps of the two runs are checked to be identical.

    python benchmarks/bench_throughput.py                          # CPU, float32, 64 photos
    python benchmarks/bench_throughput.py --device cuda --dtype float16 --batch-size 32
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from hf_ovseg.bulk import class_shares, find_inputs, outputs_of, segment_jobs, write_image_outputs
from hf_ovseg.evaluation.benchmarks import VOC_NAMES
from hf_ovseg.image_processing_ovseg import load_image

from random_vit import vit_b16_pipeline

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures"


def photo_folder(root: Path, count: int) -> Path:
    photos = sorted(FIXTURES.glob("voc/JPEGImages/*.jpg")) + sorted(FIXTURES.glob("ade20k/images/validation/*.jpg"))
    photos.append(FIXTURES / "arc2017" / "image.jpg")
    folder = root / "photos"
    folder.mkdir()
    for index in range(count):
        source = photos[index % len(photos)]
        shutil.copy(source, folder / f"{index:03d}_{source.name}")
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--batch-size", type=int, default=8, help="crops per forward batch")
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: cores - 1, max 4)")
    args = parser.parse_args()
    from hf_ovseg.cli import default_workers

    workers = default_workers() if args.workers is None else args.workers
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    pipe = vit_b16_pipeline("seed", device, dtype)
    labels = list(VOC_NAMES)
    options = {"short_side": 448, "crop_size": 224, "stride": 112, "batch_size": args.batch_size}
    resize, call = pipe.prepare(labels, **options)
    pipe(np.zeros((224, 224, 3), np.uint8), candidate_labels=labels, **options)  # text cached, allocator warm
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        jobs = find_inputs([str(photo_folder(tmp, args.images))])
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for job in jobs:  # before: one image at a time
            photo = load_image(job.source)
            result = pipe(photo, candidate_labels=labels, return_label_map=True, **options)
            prediction = np.asarray(result["label_map"])
            record = {"image": job.source, "classes": class_shares(prediction, result["labels"])}
            write_image_outputs(outputs_of(tmp / "before", job, False), photo, prediction, result["labels"], record)
        if device.type == "cuda":
            torch.cuda.synchronize()
        before = time.perf_counter() - start
        start = time.perf_counter()
        records = list(segment_jobs(pipe, call, list(enumerate(jobs)), tmp / "after", {}, resize["short_side"],
                                    resize["long_side"], num_workers=workers, progress=False))  # fmt: skip
        if device.type == "cuda":
            torch.cuda.synchronize()
        after = time.perf_counter() - start
        assert not any("error" in r for r in records)
        same = all(
            np.array_equal(np.array(Image.open(tmp / "before" / f"{j.name}_labels.png")),
                           np.array(Image.open(tmp / "after" / f"{j.name}_labels.png")))
            for j in jobs
        )  # fmt: skip
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    threads = torch.get_num_threads()
    print(f"{len(jobs)} photos, ViT-B/16 random weights, {args.dtype} on {device} ({name}), {threads} threads, "
          f"batch {args.batch_size} crops, {workers} DataLoader workers")  # fmt: skip
    print("| path | seconds | images/s |")
    print("| --- | --- | --- |")
    print(f"| before: one image at a time | {before:.1f} | {len(jobs) / before:.2f} |")
    print(f"| after: workers + shared batches | {after:.1f} | {len(jobs) / after:.2f} |")
    print(f"after / before images/s = {before / after:.2f}; label maps identical: {same}")


if __name__ == "__main__":
    main()
