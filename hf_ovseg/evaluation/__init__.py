"""Benchmark harness: standard OVSS datasets as lazy ``datasets`` objects, an ``evaluate`` mIoU metric and
an accelerate-parallel runner."""

from .benchmarks import DATASETS, BenchmarkDataset, DatasetSpec, load_benchmark
from .runner import EvaluationResult, evaluate_methods, markdown_table, update_model_card

METRIC_PATH = __path__[0] + "/ovseg_miou"  # evaluate.load(METRIC_PATH)

__all__ = [
    "DATASETS",
    "METRIC_PATH",
    "BenchmarkDataset",
    "DatasetSpec",
    "EvaluationResult",
    "evaluate_methods",
    "load_benchmark",
    "markdown_table",
    "update_model_card",
]
