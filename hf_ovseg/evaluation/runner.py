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

from ..processing_ovseg import parse_labels
from .benchmarks import BenchmarkDataset
from .ovseg_miou.ovseg_miou import confusion_matrix, metrics_from_confusion

CARD_START, CARD_END = "<!-- hf-ovseg:eval:start -->", "<!-- hf-ovseg:eval:end -->"


@dataclass
class EvaluationResult:
    """One (dataset, method) evaluation; ``to_dict`` is what ``--out`` writes."""

    dataset: str
    model: str
    method: str
    knobs: dict[str, Any]
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


def pipeline_arguments(bench: BenchmarkDataset, protocol: dict[str, Any]) -> dict[str, Any]:
    """Pipeline call arguments for a benchmark: its prompts and the protocol, with thresholded pixels
    falling to the dataset's background class."""
    spec = bench.spec
    keys = ("short_side", "crop_size", "stride", "batch_size", "dense_logit_scale")
    kwargs = {k: v for k, v in protocol.items() if k in keys}
    threshold = protocol.get("background_threshold", 0.0) or 0.0
    if threshold > 0:
        if spec.background_index is None:
            raise ValueError(f"{spec.name} has no background class, so --background-threshold cannot be used")
        kwargs["background_threshold"] = threshold
        kwargs["background_label"] = parse_labels(spec.prompts).labels[spec.background_index]
    return kwargs


def evaluate_methods(
    pipe: Any,
    bench: BenchmarkDataset,
    methods: list[str],
    protocol: dict[str, Any],
    model_name: str,
    process_index: int = 0,
    num_processes: int = 1,
    reduce: Callable[[np.ndarray], np.ndarray] | None = None,
    progress: bool = True,
) -> list[EvaluationResult]:
    """Run every method over this process's shard of ``bench`` and score it.

    Args:
        pipe: a ``zero-shot-image-segmentation`` pipeline (weights are loaded once, reused by all methods).
        protocol: short_side, crop_size, stride, batch_size, background_threshold, optionally dense_logit_scale
            (a method knob applied to every method) and descriptive entries (name, source) that are recorded.
        process_index, num_processes: this process takes images ``process_index::num_processes``.
        reduce: sums a confusion matrix over processes (identity on one process).
    """
    from tqdm.auto import tqdm

    spec, prompts = bench.spec, bench.spec.prompts
    if len(prompts) != spec.num_classes:
        raise ValueError(f"{spec.name}: {len(prompts)} class lines for {spec.num_classes} classes")
    kwargs = pipeline_arguments(bench, protocol)
    indices = range(process_index, len(bench), num_processes)
    results = []
    for method in methods:
        matrix = np.zeros((spec.num_classes, spec.num_classes + 1), dtype=np.int64)
        overrides = {k: v for k, v in kwargs.items() if k == "dense_logit_scale"}
        with pipe.model.method_override(method=method, **overrides):
            knobs = pipe.model.config.method_knobs()
        start = time.perf_counter()
        bar = tqdm(indices, desc=f"{spec.name} {method}", unit="img", disable=not progress, dynamic_ncols=True)
        for index in bar:
            item = bench.dataset[index]
            out = pipe(item["image"], candidate_labels=prompts, method=method, return_label_map=True, **kwargs)
            matrix += confusion_matrix(out["label_map"], item["mask"], spec.num_classes)
            bar.set_postfix(mIoU=f"{100 * metrics_from_confusion(matrix)['mean_iou']:.1f}")
        seconds = time.perf_counter() - start
        if reduce is not None:
            matrix = reduce(matrix)
        scores = metrics_from_confusion(matrix)
        results.append(
            EvaluationResult(
                dataset=spec.name,
                model=model_name,
                method=method,
                knobs=knobs,
                protocol={
                    **protocol,
                    **kwargs,
                    "dense_logit_scale": knobs["dense_logit_scale"],
                    "classes": spec.prompts,
                },
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
