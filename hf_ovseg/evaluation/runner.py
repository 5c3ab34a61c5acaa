"""Evaluate methods on a benchmark with the pipeline's inference, optionally data-parallel under
``accelerate launch`` (each process takes every n-th image; confusion matrices are summed)."""

from __future__ import annotations

import datetime
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..image_processing_ovseg import resized_pixels
from ..labels import parse_labels
from .benchmarks import BenchmarkDataset
from .metric import add_confusion, metrics_from_confusion

#: Knobs that apply to every method of an ablation (the others belong to the protocol's own preset).
SHARED_KNOBS = ("dense_logit_scale", "feature_upsampling")

CARD_START, CARD_END = "<!-- hf-ovseg:eval:start -->", "<!-- hf-ovseg:eval:end -->"


@dataclass
class EvaluationResult:
    """One (dataset, method) evaluation; ``to_dict`` is what ``--out`` writes."""

    dataset: str
    model: str
    method: str
    knobs: dict[str, Any]
    components: dict[str, Any]
    protocol: dict[str, Any]
    per_class_iou: dict[str, float]
    miou: float
    macc: float
    aacc: float
    images: int
    seconds: float
    confusion_matrix: list[list[int]] = field(repr=False, default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class BenchmarkImages(torch.utils.data.Dataset):
    """Decodes, reads the mask and resizes (as the pipeline does) in DataLoader workers:
    ``(index, pixels [1, 3, h, w] uint8, (H, W), mask [H, W] tensor, photo)``; ``photo`` is the decoded [H, W, 3]
    uint8 image with ``keep_photo`` (Trident's SAM reads it), else None."""

    def __init__(
        self, bench: BenchmarkDataset, indices: range, short_side: int | None, long_side: int | None,
        keep_photo: bool = False,
    ) -> None:  # fmt: skip
        self.bench, self.indices, self.short_side, self.long_side = bench, indices, short_side, long_side
        self.keep_photo = keep_photo

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int):
        item = self.bench[self.indices[position]]
        photo = np.asarray(item["image"], dtype=np.uint8)
        pixels = resized_pixels(photo, self.short_side, self.long_side)
        mask = torch.from_numpy(np.asarray(item["mask"]))
        return self.indices[position], pixels, photo.shape[:2], mask, photo if self.keep_photo else None


def evaluate_methods(
    pipe: Any,
    bench: BenchmarkDataset,
    methods: list[str],
    call_arguments: dict[str, Any],
    model_name: str,
    prompts: list[str] | None = None,
    record: dict[str, Any] | None = None,
    process_index: int = 0,
    num_processes: int = 1,
    reduce: Callable[[np.ndarray], np.ndarray] | None = None,
    progress: bool = True,
    num_workers: int = 0,
    synonym_separator: str | None = None,
) -> list[EvaluationResult]:
    """Run every method over this process's shard of ``bench`` and score it.

    Images are decoded in ``num_workers`` DataLoader workers and the crops of consecutive images share forward
    batches, as ``hf-ovseg segment`` does (the label maps equal the pipeline's, image by image).

    Args:
        pipe: a ``zero-shot-image-segmentation`` pipeline (weights are loaded once, reused by all methods).
        call_arguments: pipeline call arguments (resize, window, thresholds, refine, method knobs); a
            ``background_threshold`` > 0 needs ``background_index`` (the class thresholded pixels go to).
            Knobs other than ``SHARED_KNOBS`` apply only to the method given as ``call_arguments["method"]`` (a
            protocol's preset), so an ablation over several methods keeps each preset's own values.
        prompts: the class lines (synonyms comma-separated, or separated by ``synonym_separator``); default the
            dataset's class file.
        record: descriptive entries (protocol name, source, config) stored with the result.
        process_index, num_processes: this process takes images ``process_index::num_processes``.
        reduce: sums a confusion matrix over processes (identity on one process).
    """
    from tqdm.auto import tqdm

    from ..bulk import loader
    from ..configuration_ovseg import METHOD_KNOBS

    spec = bench.spec
    prompts = spec.prompts if prompts is None else prompts
    if len(prompts) != spec.num_classes:
        raise ValueError(f"{spec.name}: {len(prompts)} class lines for {spec.num_classes} classes")
    # the anchors' files may share a name between classes
    labels = parse_labels(prompts, strict=False, separator=synonym_separator)
    arguments = dict(call_arguments)
    protocol_method = arguments.pop("method", None)
    background_index = arguments.pop("background_index", spec.background_index)
    knobs = {k: arguments.pop(k) for k in METHOD_KNOBS if k in arguments}
    if background_index is not None:
        # where prob_thd sends pixels, and the class the area threshold leaves out whatever the threshold (SCLIP
        # and SFP skip class 0 in the area test unconditionally: wangf3014/SCLIP@b56bd30:clip_segmentor.py:165)
        arguments["background_label"] = labels.labels[background_index]
    elif (arguments.get("background_threshold") or 0) > 0:
        raise ValueError(f"{spec.name} has no background class, so a background threshold cannot be used")
    indices = range(process_index, len(bench), num_processes)
    device = next(pipe.model.parameters()).device
    shared = {k: v for k, v in knobs.items() if k in SHARED_KNOBS}
    own_knobs = {method: knobs if method == protocol_method else shared for method in methods}
    for method in methods:  # a missing SimFeatUp or proxy fails before the first image
        pipe.model.check_components(pipe.model.config.with_method(method, **own_knobs[method]))
    results = []
    for method in methods:
        own = own_knobs[method]
        resize, call = pipe.prepare(labels, method=method, **own, **arguments)
        images = BenchmarkImages(bench, indices, resize["short_side"], resize["long_side"],
                                 keep_photo=call.whole_image is not None)  # fmt: skip

        def stitchers(images=images, call=call):
            for _, pixels, size, mask, photo in loader(images, num_workers, pin_memory=device.type == "cuda"):
                image = pipe.processor.image_processor.normalize_pixels(pixels.to(device, non_blocking=True))
                yield (image, size, mask.to(device, non_blocking=True)), call.work(image, photo)

        # The whole per-image path stays on the device, with no host synchronisation: decoding and resizing in
        # DataLoader workers (pinned memory on a GPU), normalisation, windows, label prediction and the confusion
        # matrix. The running mIoU is read back every few seconds only. (Not so for trident: SAM's resize of the
        # photo and its refinement's region search read back to the host, as its official code does.)
        on_device = torch.zeros(spec.num_classes + 1, spec.num_classes + 1, dtype=torch.int64, device=device)
        start = shown = time.perf_counter()
        bar = tqdm(total=len(indices), desc=f"{spec.name} {method}", unit="img", disable=not progress,
                   dynamic_ncols=True)  # fmt: skip
        with torch.inference_mode():
            for (image, size, mask), logits in call.run(stitchers()):
                add_confusion(on_device, pipe.predict(logits, image, size, call).label_map, mask)
                bar.update()
                if progress and time.perf_counter() - shown > 2:
                    shown = time.perf_counter()
                    bar.set_postfix(mIoU=f"{100 * metrics_from_confusion(on_device.cpu())['mean_iou']:.1f}")
        matrix = on_device.cpu().numpy()
        bar.close()
        seconds = time.perf_counter() - start
        if reduce is not None:
            matrix = reduce(matrix)
        scores = metrics_from_confusion(matrix)
        settings = pipe.model.config.with_method(method, **own)
        results.append(
            EvaluationResult(
                dataset=spec.name,
                model=model_name,
                method=method,
                knobs=settings.method_knobs(),
                components=pipe.model.components(settings),
                protocol={**(record or {}), **arguments, "background_index": background_index, "classes": prompts},
                per_class_iou={
                    n: _percent(v) for n, v in zip(spec.class_names, scores["per_category_iou"], strict=True)
                },
                miou=_percent(scores["mean_iou"]),
                macc=_percent(scores["mean_accuracy"]),
                aacc=_percent(scores["overall_accuracy"]),
                images=len(bench),
                seconds=round(seconds, 2),
                confusion_matrix=matrix.tolist(),
            )
        )
    return results


def _percent(value: float) -> float | None:
    return None if value != value else round(100 * float(value), 2)  # NaN -> None (JSON null)


def markdown_table(results: list[EvaluationResult]) -> str:
    """One row per (dataset, method)."""
    lines = [
        "| dataset | method | mIoU | mAcc | aAcc | images | seconds |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        fmt = lambda v: "n/a" if v is None else f"{v:.2f}"  # noqa: E731
        lines.append(
            f"| {r.dataset} | {r.method} | {fmt(r.miou)} | {fmt(r.macc)} | {fmt(r.aacc)} | {r.images} "
            f"| {r.seconds:.1f} |"
        )
    return "\n".join(lines)


def update_model_card(card: str | Path, results: list[EvaluationResult]) -> None:
    """Write the results table between the evaluation markers of a model card (README.md)."""
    path = Path(card)
    text = path.read_text(encoding="utf-8")
    if CARD_START not in text or CARD_END not in text:
        raise ValueError(
            f"{path} has no evaluation block ({CARD_START} ... {CARD_END}); use a card from hf-ovseg convert"
        )
    protocol = results[0].protocol if results else {}
    summary = ", ".join(f"{k}={v}" for k, v in protocol.items())
    block = (
        f"{CARD_START}\n{markdown_table(results)}\n\nMeasured with `hf-ovseg evaluate` on "
        f"{datetime.date.today().isoformat()} ({summary}).\n{CARD_END}"
    )
    pattern = re.compile(re.escape(CARD_START) + r".*?" + re.escape(CARD_END), re.S)
    path.write_text(pattern.sub(lambda _: block, text), encoding="utf-8")
