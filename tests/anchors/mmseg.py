"""mmseg's ``IoUMetric`` re-implemented from its official file for the metric tests:
open-mmlab/mmsegmentation@3d50cc3:mmseg/evaluation/metrics/iou_metric.py (the same text as mmsegmentation 1.1.1,
the version SCLIP, NACLIP and SFP pin), ``intersect_and_union`` (164-200) and ``total_area_to_metrics``
(203-286) with ``metrics=['mIoU']``."""

from __future__ import annotations

import numpy as np
import torch


def intersect_and_union(pred: torch.Tensor, label: torch.Tensor, num_classes: int, ignore_index: int):
    """iou_metric.py:185-200: drop ``label == ignore_index`` pixels, then histograms with ``torch.histc(bins=n,
    min=0, max=n-1)`` (values outside the range are skipped)."""
    mask = label != ignore_index
    pred, label = pred[mask], label[mask]
    intersect = pred[pred == label]
    area_intersect = torch.histc(intersect.float(), bins=num_classes, min=0, max=num_classes - 1)
    area_pred_label = torch.histc(pred.float(), bins=num_classes, min=0, max=num_classes - 1)
    area_label = torch.histc(label.float(), bins=num_classes, min=0, max=num_classes - 1)
    area_union = area_pred_label + area_label - area_intersect
    return area_intersect, area_union, area_pred_label, area_label


def iou_metric(preds, labels, num_classes: int, ignore_index: int = 255) -> dict[str, np.ndarray | float]:
    """``IoUMetric.process`` + ``compute_metrics`` (77-86, 102-161): per-image histograms summed, then
    ``total_area_to_metrics`` (253: aAcc; 256-260: IoU and Acc), as fractions (before the x100 rounding)."""
    totals = [torch.zeros(num_classes, dtype=torch.float64) for _ in range(4)]
    for pred, label in zip(preds, labels, strict=True):
        areas = intersect_and_union(torch.as_tensor(pred).long(), torch.as_tensor(label).long(), num_classes,
                                    ignore_index)  # fmt: skip
        totals = [t + a.double() for t, a in zip(totals, areas, strict=True)]
    intersect, union, _, label_area = totals
    return {
        "aAcc": float(intersect.sum() / label_area.sum()),
        "IoU": (intersect / union).numpy(),
        "Acc": (intersect / label_area).numpy(),
    }
