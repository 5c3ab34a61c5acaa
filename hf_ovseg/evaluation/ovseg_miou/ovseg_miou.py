"""mIoU for semantic segmentation, mmseg ``IoUMetric`` convention, as a local ``evaluate`` module.

    >>> import evaluate
    >>> from hf_ovseg.evaluation import METRIC_PATH
    >>> miou = evaluate.load(METRIC_PATH)
    >>> miou.compute(predictions=[pred], references=[mask], num_labels=21, ignore_index=255)

One confusion matrix is accumulated over the whole set (not averaged per image). Per class:
IoU = TP / (TP + FP + FN) and accuracy = TP / (TP + FN); a class absent from both the predictions and the
references has IoU NaN and is left out of the mean (so is a class absent from the references, for the
mean accuracy). Pixels whose reference is ``ignore_index`` are not counted. With ``reduce_labels``,
reference 0 becomes ``ignore_index`` and every other reference value is decreased by one.
"""

from __future__ import annotations

import datasets
import evaluate
import numpy as np

_DESCRIPTION = __doc__
_KWARGS_DESCRIPTION = """
Args:
    predictions: list of [H, W] integer label maps.
    references: list of [H, W] integer ground-truth maps (same sizes as the predictions).
    num_labels: number of classes.
    ignore_index: reference value that is not scored (default 255).
    reduce_labels: map reference 0 to ignore_index and k to k - 1 first (default False).
Returns:
    mean_iou, mean_accuracy, overall_accuracy (floats in [0, 1]), per_category_iou and
    per_category_accuracy (arrays with NaN for classes that cannot be scored), confusion_matrix.
"""


def confusion_matrix(
    prediction: np.ndarray, reference: np.ndarray, num_labels: int, ignore_index: int = 255, reduce_labels: bool = False
) -> np.ndarray:
    """[num_labels, num_labels + 1] int64 counts: rows = reference class, columns = predicted class; the last
    column counts predictions outside ``[0, num_labels)`` (wrong for every class)."""
    prediction, reference = np.asarray(prediction), np.asarray(reference).astype(np.int64)
    if prediction.shape != reference.shape:
        raise ValueError(f"prediction {prediction.shape} and reference {reference.shape} differ in shape")
    if reduce_labels:
        reference = np.where(reference == 0, ignore_index, reference - 1)
        reference = np.where(reference == ignore_index - 1, ignore_index, reference)
    valid = (reference != ignore_index) & (reference >= 0) & (reference < num_labels)
    predicted = prediction[valid].astype(np.int64)
    predicted = np.where((predicted >= 0) & (predicted < num_labels), predicted, num_labels)
    counts = np.bincount(reference[valid] * (num_labels + 1) + predicted, minlength=num_labels * (num_labels + 1))
    return counts.reshape(num_labels, num_labels + 1)


def metrics_from_confusion(matrix: np.ndarray) -> dict[str, object]:
    """IoU per class, mIoU, accuracy per class, mean accuracy and overall accuracy of a confusion matrix."""
    matrix = np.asarray(matrix, dtype=np.float64)
    num_labels = matrix.shape[0]
    true_positive = np.diag(matrix[:, :num_labels])
    reference_area = matrix.sum(axis=1)
    predicted_area = matrix[:, :num_labels].sum(axis=0)
    union = reference_area + predicted_area - true_positive
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, true_positive / union, np.nan)
        accuracy = np.where(reference_area > 0, true_positive / reference_area, np.nan)
    total = reference_area.sum()
    return {
        "mean_iou": float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan"),
        "mean_accuracy": float(np.nanmean(accuracy)) if np.isfinite(accuracy).any() else float("nan"),
        "overall_accuracy": float(true_positive.sum() / total) if total else float("nan"),
        "per_category_iou": iou,
        "per_category_accuracy": accuracy,
    }


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class OvsegMiou(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Sequence(datasets.Value("uint16"))),
                    "references": datasets.Sequence(datasets.Sequence(datasets.Value("uint16"))),
                }
            ),
        )

    def _compute(self, predictions, references, num_labels: int, ignore_index: int = 255, reduce_labels: bool = False):
        matrix = np.zeros((num_labels, num_labels + 1), dtype=np.int64)
        for prediction, reference in zip(predictions, references, strict=True):
            matrix += confusion_matrix(
                np.asarray(prediction), np.asarray(reference), num_labels, ignore_index, reduce_labels
            )
        return {**metrics_from_confusion(matrix), "confusion_matrix": matrix}
