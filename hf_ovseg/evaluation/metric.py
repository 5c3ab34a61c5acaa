"""mIoU as every anchor's published number computes it: mmseg's ``IoUMetric``.

mmseg (open-mmlab/mmsegmentation@3d50cc3:mmseg/evaluation/metrics/iou_metric.py, the same text as the
mmsegmentation 1.1.1 the anchors pin) drops only the pixels whose ground truth is ``ignore_index`` (185-187) and
counts the rest with ``torch.histc(x, bins=n, min=0, max=n-1)`` (190-198), which skips values outside
``[0, n)``. So a ground-truth value ``>= n`` that is not ``ignore_index`` (JPEG noise in WBS-SI's 0/1 masks, say)
is no class's label, but the prediction at that pixel still counts towards the predicted class's area and
union; a prediction ``>= n`` is a miss for its ground-truth class. Per class ``IoU = intersect / union``,
``Acc = intersect / label`` (256-260; NaN when 0/0, left out of the means), ``aAcc = sum(intersect) /
sum(label)`` (253), mIoU and mAcc are NaN-means (135-138).

Both are kept in one confusion matrix ``[n + 1, n + 1]``: rows are the ground truth (row ``n``: a value outside
``[0, n)`` other than ``ignore_index``), columns the prediction (column ``n``: outside ``[0, n)``). One matrix is
accumulated over the whole set (not averaged per image). The torch version adds into a matrix on the prediction's
device with ``index_add_`` (``torch.bincount`` would read a maximum back to the host), so an evaluation neither
copies a label map to the host nor waits for the device per image.
"""

from __future__ import annotations

import numpy as np
import torch

IGNORE_INDEX = 255


def confusion_matrix(
    prediction: np.ndarray, reference: np.ndarray, num_labels: int, ignore_index: int = IGNORE_INDEX,
    reduce_labels: bool = False,
) -> np.ndarray:  # fmt: skip
    """[n + 1, n + 1] int64 counts of (reference, prediction) pairs of numpy label maps, out-of-range values in
    row/column ``n`` (counted by [`add_confusion`]). ``reduce_labels``: mmseg's ``reduce_zero_label`` first
    (reference 0 -> ``ignore_index``, k -> k - 1)."""
    prediction, reference = np.asarray(prediction), np.asarray(reference).astype(np.int64)
    if prediction.shape != reference.shape:
        raise ValueError(f"prediction {prediction.shape} and reference {reference.shape} differ in shape")
    if reduce_labels:
        reference = np.where(reference == 0, ignore_index, reference - 1)
        reference = np.where(reference == ignore_index - 1, ignore_index, reference)
    predicted = torch.from_numpy(prediction.astype(np.int64))
    return confusion_matrix_torch(predicted, torch.from_numpy(reference), num_labels, ignore_index).numpy()


def add_confusion(
    matrix: torch.Tensor, prediction: torch.Tensor, reference: torch.Tensor, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """Add the (reference, prediction) counts of one image to ``matrix`` [n + 1, n + 1] (int64, on the device of
    the label maps) in place, as [`confusion_matrix`] counts them, without a host synchronisation."""
    if prediction.shape != reference.shape:
        raise ValueError(f"prediction {tuple(prediction.shape)} and reference {tuple(reference.shape)} differ")
    num_labels = matrix.shape[0] - 1
    reference, predicted = reference.flatten().long(), prediction.flatten().long()
    weights = (reference != ignore_index).long()  # ignored pixels add 0 (no boolean indexing: no sync)
    reference = torch.where((reference >= 0) & (reference < num_labels), reference, num_labels)
    predicted = torch.where((predicted >= 0) & (predicted < num_labels), predicted, num_labels)
    return matrix.view(-1).index_add_(0, reference * matrix.shape[1] + predicted, weights).view_as(matrix)


def confusion_matrix_torch(
    prediction: torch.Tensor, reference: torch.Tensor, num_labels: int, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """[n + 1, n + 1] int64 counts as [`confusion_matrix`], computed on the tensors' device."""
    matrix = torch.zeros(num_labels + 1, num_labels + 1, dtype=torch.int64, device=prediction.device)
    return add_confusion(matrix, prediction, reference, ignore_index)


def metrics_from_confusion(matrix: np.ndarray) -> dict[str, object]:
    """mmseg's IoU and accuracy per class, mIoU, mAcc and aAcc (fractions, not percent) of a confusion matrix
    [n + 1, n + 1] (an older [n, n + 1] matrix, without the out-of-range row, is read as one with it empty)."""
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.shape[0] == matrix.shape[1] - 1:
        matrix = np.vstack([matrix, np.zeros((1, matrix.shape[1]))])
    num_labels = matrix.shape[0] - 1
    intersect = np.diag(matrix)[:num_labels]
    label_area = matrix[:num_labels].sum(axis=1)  # in-range references only (histc of the label)
    predicted_area = matrix[:, :num_labels].sum(axis=0)  # every kept pixel, out-of-range references included
    union = label_area + predicted_area - intersect
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = intersect / union
        accuracy = intersect / label_area
    total = label_area.sum()
    return {
        "mean_iou": float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan"),
        "mean_accuracy": float(np.nanmean(accuracy)) if np.isfinite(accuracy).any() else float("nan"),
        "overall_accuracy": float(intersect.sum() / total) if total else float("nan"),
        "per_category_iou": iou,
        "per_category_accuracy": accuracy,
    }


__all__ = ["IGNORE_INDEX", "add_confusion", "confusion_matrix", "confusion_matrix_torch", "metrics_from_confusion"]
