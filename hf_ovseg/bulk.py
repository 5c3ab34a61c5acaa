"""Segment many images: files, folders and globs, outputs that mirror the input tree, resumable runs.

- Inputs: files, folders (recursively, image files only) and glob patterns; each image's outputs go to
  ``<out>/<path relative to its folder or glob root>_labels.png`` (``.tif`` for a GeoTIFF), ``_overlay.png`` and
  ``.json``; two inputs that would write the same outputs are an error before any work.
- Decoding and resizing run in ``torch.utils.data.DataLoader`` worker processes while the model works; the crops
  of consecutive images share forward batches (``batch_size`` counts crops across images). On a GPU every forward
  runs a full batch (a partial one is padded, ``OVSegModel.forward(pad_to=...)``) so that cuBLAS runs the same
  kernels whatever shares the batch; on a CPU with one intra-op thread the logits do not depend on the batch at
  all, and with several threads they can differ in the last bits (torch splits elementwise kernels between the
  threads at batch-dependent positions). Label maps agreed in every measurement (benchmarks/bench_throughput.py).
- GeoTIFFs (with the ``geo`` extra) are segmented by windows in the main process (see ``raster.py``).
- ``summary.json`` lists every image (its outputs and class shares, in input order) and every failure with its
  message; a failed image does not stop the others. Nothing in it depends on timing or on the number of
  processes, so a sharded or resumed run writes the same files as a single uninterrupted one.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import tempfile
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import first_line
from .image_processing_ovseg import load_image, open_image_file, resized_pixels

logger = logging.getLogger(__name__)

#: Threads that encode and write the outputs of a folder while the model works.
OUTPUT_WRITERS = 4
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
SUMMARY = "summary.json"


@dataclass(frozen=True)
class Job:
    """One image to segment: ``source`` (a path or URL), ``name`` (its outputs' path under the output folder,
    without suffix) and whether it was named explicitly (then it is checked before any work)."""

    source: str
    name: str
    explicit: bool


def _is_glob(text: str) -> bool:
    return any(char in text for char in "*?[")


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def find_inputs(inputs: list[str]) -> list[Job]:
    """Expand files, folders and globs into jobs; raise ``ValueError`` for a missing path, a glob or folder
    without images, or two inputs whose outputs would collide."""
    jobs = []
    for text in inputs:
        text = str(text)
        if text.startswith(("http://", "https://")):
            jobs.append(Job(text, Path(text.split("?")[0]).stem or "image", True))
        elif os.path.isdir(text):
            files = _image_files(Path(text))
            if not files:
                raise ValueError(f"{text} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
            jobs += [Job(str(f), f.relative_to(text).with_suffix("").as_posix(), False) for f in files]
        elif os.path.exists(text) or not _is_glob(text):
            jobs.append(Job(text, Path(text).stem, True))
        else:
            matches = sorted(Path(p) for p in glob.glob(text, recursive=True))
            files = [p for p in matches if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
            if not files:
                raise ValueError(f"no image files match {text}")
            root = Path(os.path.commonpath([str(p.parent) for p in files]))
            jobs += [Job(str(f), f.relative_to(root).with_suffix("").as_posix(), False) for f in files]
    seen: dict[str, str] = {}
    for job in jobs:
        if job.name in seen:
            raise ValueError(
                f"{seen[job.name]} and {job.source} would write the same outputs ({job.name}_*); "
                "rename one or segment them into different --out folders"
            )
        seen[job.name] = job.source
    return jobs


def check_inputs(jobs: list[Job], bands: tuple[int, ...] | None = None) -> None:
    """Open the header of every explicitly named local file (a one-line ``ValueError`` for a bad one); a
    GeoTIFF is opened with rasterio when the ``geo`` extra is installed, and its bands checked against ``bands``."""
    from .raster import has_rasterio, is_raster, pick_bands, rasterio_module

    use_rasterio = has_rasterio()
    for job in jobs:
        if not job.explicit or job.source.startswith(("http://", "https://")):
            continue
        if use_rasterio and is_raster(job.source) and os.path.isfile(job.source):
            try:
                dataset = rasterio_module().open(job.source)
            except Exception as error:  # rasterio's RasterioIOError and GDAL errors
                raise ValueError(f"{job.source} is not a raster GDAL can read ({first_line(error)})") from None
            with dataset:
                try:
                    pick_bands(dataset, bands)
                except ValueError as error:
                    raise ValueError(f"{job.source}: {error}") from None
        else:
            open_image_file(job.source).close()


def check_output_dir(path: str | Path) -> None:
    """Fail before any work when ``path`` cannot hold the outputs: an existing file, a parent that is a file,
    or a location where no file can be created (read-only or missing permissions). Creates nothing."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"--out {path} exists and is a file, not a folder")
    ancestor = path
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ValueError(f"--out {path} cannot be created: {ancestor} is a file")
    check_writable(ancestor, f"--out {path}")


def check_writable(folder: Path, what: str) -> None:
    """Raise ``ValueError`` when no file can be created in ``folder`` (tried with a temporary file, so that
    read-only file systems and permissions are both caught)."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise ValueError(f"{what} cannot be written: {error.strerror or error} ({folder})") from None


def write_atomically(path: Path, payload: Any) -> None:
    """Write a PIL image (PNG) or a string so that ``path`` never holds a partial file; creates its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    try:
        if isinstance(payload, str):
            partial.write_text(payload, encoding="utf-8")
        else:
            payload.save(partial, format="PNG")
        os.replace(partial, path)
    finally:
        try:
            partial.unlink(missing_ok=True)
        except OSError:  # never hide the error that got us here
            pass


def outputs_of(out_dir: Path, job: Job, raster: bool) -> dict[str, Path]:
    suffix = ".tif" if raster else ".png"
    return {
        "labels": out_dir / f"{job.name}_labels{suffix}",
        "overlay": out_dir / f"{job.name}_overlay.png",
        "json": out_dir / f"{job.name}.json",
    }


class DecodedImages(torch.utils.data.Dataset):
    """Decodes and resizes (as the pipeline does) in DataLoader workers: ``(index, pixels [1, 3, h, w] uint8,
    photo [H, W, 3] uint8, error)`` (pixels and photo None and the message in error when the file fails)."""

    def __init__(self, jobs: list[Job], short_side: int | None, long_side: int | None) -> None:
        self.jobs, self.short_side, self.long_side = jobs, short_side, long_side

    def __len__(self) -> int:
        return len(self.jobs)

    def __getitem__(self, index: int):
        try:
            photo = np.asarray(load_image(self.jobs[index].source), dtype=np.uint8)
            return index, resized_pixels(photo, self.short_side, self.long_side), photo, None
        except Exception as error:  # any per-input failure (decoding, a URL, PIL's size limits) is this input's
            return index, None, None, first_line(error, 500)


def _as_is(item: Any) -> Any:
    return item  # keep numpy photos as they are (the default would turn them into tensors)


def loader(
    dataset: torch.utils.data.Dataset, num_workers: int = 0, pin_memory: bool = False
) -> torch.utils.data.DataLoader:
    """A DataLoader that yields ``dataset``'s items one by one, in order, prepared in ``num_workers`` processes
    (their tensors in page-locked memory with ``pin_memory``, for asynchronous copies to a GPU)."""
    return torch.utils.data.DataLoader(
        dataset, batch_size=None, num_workers=num_workers, collate_fn=_as_is, pin_memory=pin_memory,
        prefetch_factor=2 if num_workers else None,
    )  # fmt: skip


def class_shares(label_map: np.ndarray, names: list[str], score_sum: np.ndarray | None = None) -> dict[str, Any]:
    """Per class present: its pixel fraction (and mean winning probability when ``score_sum`` is given)."""
    counts = np.bincount(label_map.ravel(), minlength=len(names))
    total = max(int(counts.sum()), 1)
    classes = {}
    for index, name in enumerate(names):
        if counts[index]:
            classes[name] = {"pixel_fraction": int(counts[index]) / total}
            if score_sum is not None:
                classes[name]["mean_score"] = float(score_sum[index]) / int(counts[index])
    return classes


def write_image_outputs(
    paths: dict[str, Path], photo, label_map: np.ndarray, names: list[str], record: dict[str, Any]
) -> None:
    """The label map (palette or 16-bit PNG), the overlay and the JSON of one image."""
    from .visualize import label_map_format, label_map_image

    record["label_map_format"] = label_map_format(len(names))
    write_atomically(paths["labels"], label_map_image(label_map, len(names)))
    write_overlay_and_json(paths, photo, label_map, names, record)


def write_overlay_and_json(
    paths: dict[str, Path], photo, label_map: np.ndarray, names: list[str], record: dict[str, Any]
) -> None:
    """The overlay (its legend from the record's class shares) and the JSON record of one image."""
    from .visualize import overlay_image

    fractions = {name: c["pixel_fraction"] for name, c in record["classes"].items()}
    write_atomically(paths["overlay"], overlay_image(photo, label_map, names, fractions))
    write_atomically(paths["json"], json.dumps(record, indent=2, allow_nan=False))


@torch.inference_mode()
def segment_jobs(
    pipe: Any,
    call: Any,
    jobs: list[tuple[int, Job]],
    out_dir: Path,
    meta: dict[str, Any],
    short_side: int | None,
    long_side: int | None,
    num_workers: int = 0,
    skip_existing: bool = False,
    bands: tuple[int, ...] | None = None,
    tile_size: int | None = None,
    progress: bool = True,
) -> Iterator[dict[str, Any]]:
    """Segment ``(index, job)`` pairs and write their outputs; yield one record per job (in input order for
    the summary: ``{"index", "input", "outputs", "classes"}`` or ``{"index", "input", "error"}``)."""
    from tqdm.auto import tqdm

    from .raster import DEFAULT_TILE_SIZE, has_rasterio, is_raster, segment_raster

    use_rasterio = has_rasterio()
    if not use_rasterio and any(is_raster(job.source) for _, job in jobs):
        logger.warning("GeoTIFF inputs are read as plain images (no georeferencing): pip install 'hf_ovseg[geo]'")
    bar = tqdm(total=len(jobs), desc="segment", unit="img", disable=not progress, dynamic_ncols=True)
    todo, rasters = [], []  # the jobs to run: images (decoded in workers) and GeoTIFFs (read by windows)
    for index, job in jobs:
        raster = use_rasterio and is_raster(job.source)
        paths = outputs_of(out_dir, job, raster)
        if skip_existing and all(p.is_file() for p in paths.values()):
            bar.update()
            yield _existing_record(index, job, paths, out_dir)
        else:
            (rasters if raster else todo).append((index, job))
    dataset = DecodedImages([job for _, job in todo], short_side, long_side)
    device = next(pipe.model.parameters()).device
    decoded = loader(dataset, num_workers, pin_memory=device.type == "cuda")
    done: deque[tuple[int, Job, Any]] = deque()  # in input order: a record, or a writer's future of one

    def stitchers():
        for position, pixels, photo, error in decoded:
            index, job = todo[position]
            try:
                if error is not None:
                    raise ValueError(error)
                call.check_image(*pixels.shape[-2:])
            except ValueError as failure:
                done.append((index, job, {"index": index, "input": job.source, "error": first_line(failure)}))
                continue
            image = pipe.processor.image_processor.normalize_pixels(pixels.to(device, non_blocking=True))
            yield (index, job, photo, image), call.work(image, photo)

    def finished(limit: int) -> Iterator[dict[str, Any]]:
        """The records of the oldest jobs until at most ``limit`` outputs are still being written."""
        while len(done) > limit or (done and isinstance(done[0][2], dict)):
            index, job, outcome = done.popleft()
            if not isinstance(outcome, dict):
                try:
                    outcome = outcome.result()
                except (ValueError, OSError, RuntimeError) as error:
                    outcome = {"index": index, "input": job.source, "error": first_line(error)}
            bar.update()
            yield outcome

    # PNG encoding and writing run in a pool of threads (Pillow and zlib release the GIL) while the model works.
    with ThreadPoolExecutor(max_workers=OUTPUT_WRITERS, thread_name_prefix="hf_ovseg-writer") as writers:
        for (index, job, photo, image), logits in call.run(stitchers()):
            try:
                prediction = pipe.predict(logits, image, photo.shape[:2], call)
                label_map, score_sum = prediction.label_map.cpu().numpy(), prediction.score_sum.cpu().numpy()
            except (ValueError, RuntimeError) as error:
                done.append((index, job, {"index": index, "input": job.source, "error": first_line(error)}))
            else:
                done.append((index, job, writers.submit(write_image_job, index, job, photo, label_map, score_sum,
                                                        call.names, out_dir, meta)))  # fmt: skip
            yield from finished(2 * OUTPUT_WRITERS)
        yield from finished(0)
    for index, job in rasters:
        paths = outputs_of(out_dir, job, raster=True)
        try:
            yield _segment_raster(pipe, call, job, paths, meta, short_side, long_side, bands,
                                  tile_size or DEFAULT_TILE_SIZE, index, out_dir, segment_raster)  # fmt: skip
        except (ValueError, OSError, RuntimeError) as error:
            yield {"index": index, "input": job.source, "error": first_line(error)}
        finally:
            bar.update()
    bar.close()


def write_image_job(
    index: int, job: Job, photo: np.ndarray, label_map: np.ndarray, score_sum: np.ndarray, names: list[str],
    out_dir: Path, meta: dict[str, Any],
) -> dict[str, Any]:  # fmt: skip
    """Write one image's outputs (in a writer thread) and return its summary record."""
    from PIL import Image

    paths = outputs_of(out_dir, job, raster=False)
    record = {"image": job.source, "width": photo.shape[1], "height": photo.shape[0], **meta, "labels": names,
              "classes": class_shares(label_map, names, score_sum)}  # fmt: skip
    write_image_outputs(paths, Image.fromarray(photo), label_map, names, record)
    return _record(index, job, paths, out_dir, record)


def _segment_raster(pipe, call, job, paths, meta, short_side, long_side, bands, tile_size, index, out_dir, run):
    from .raster import preview

    paths["labels"].parent.mkdir(parents=True, exist_ok=True)
    partial = paths["labels"].with_name(paths["labels"].name + ".partial")
    try:
        result = run(pipe, call, job.source, partial, short_side, long_side, bands, tile_size)
        os.replace(partial, paths["labels"])
    finally:
        partial.unlink(missing_ok=True)
    record = {"image": job.source, **meta, "labels": call.names, **result.summary()}
    photo, label_map = preview(paths["labels"], job.source, result.raster)
    nodata = 255 if result.label_format == "uint8" else 65535
    label_map = np.where(label_map == nodata, -1, label_map)
    write_overlay_and_json(paths, photo, label_map, call.names, record)
    return _record(index, job, paths, out_dir, record)


def _record(index: int, job: Job, paths: dict[str, Path], out_dir: Path, record: dict[str, Any]) -> dict[str, Any]:
    return {
        "index": index,
        "input": job.source,
        "outputs": {kind: path.relative_to(out_dir).as_posix() for kind, path in paths.items()},
        "classes": {name: c["pixel_fraction"] for name, c in record["classes"].items()},
    }


def _existing_record(index: int, job: Job, paths: dict[str, Path], out_dir: Path) -> dict[str, Any]:
    try:
        record = json.loads(paths["json"].read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        return {"index": index, "input": job.source, "error": f"cannot read {paths['json']}: {first_line(error)}"}
    return _record(index, job, paths, out_dir, record)


def write_summary(out_dir: Path, records: list[dict[str, Any]], meta: dict[str, Any]) -> dict[str, Any]:
    """``summary.json``: every image and every failure, in input order."""
    records = sorted(records, key=lambda r: r["index"])
    summary = {
        **meta,
        "images": [{k: v for k, v in r.items() if k != "index"} for r in records if "error" not in r],
        "failures": [{k: v for k, v in r.items() if k != "index"} for r in records if "error" in r],
    }
    write_atomically(out_dir / SUMMARY, json.dumps(summary, indent=2, allow_nan=False))
    return summary


__all__ = [
    "IMAGE_SUFFIXES",
    "DecodedImages",
    "Job",
    "check_inputs",
    "check_output_dir",
    "check_writable",
    "class_shares",
    "find_inputs",
    "loader",
    "outputs_of",
    "segment_jobs",
    "write_atomically",
    "write_summary",
]
