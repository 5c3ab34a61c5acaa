"""mIoU for semantic segmentation, mmseg ``IoUMetric`` convention, as a local ``evaluate`` module.

    >>> import evaluate
    >>> from hf_ovseg.evaluation import METRIC_PATH
    >>> miou = evaluate.load(METRIC_PATH)
    >>> miou.compute(predictions=[pred], references=[mask], num_labels=21, ignore_index=255)

One confusion matrix is accumulated over the whole set (not averaged per image), counted as mmseg's
``intersect_and_union`` counts (see ``hf_ovseg.evaluation.metric``): only pixels whose reference is
``ignore_index`` are dropped; a reference outside the classes is no class's label but its prediction still
counts towards that class's union. Per class: IoU = TP / (TP + FP + FN) and accuracy = TP / (TP + FN); a
class absent from both the predictions and the references has IoU NaN and is left out of the mean (so is a
class absent from the references, for the mean accuracy). With ``reduce_labels``, reference 0 becomes
``ignore_index`` and every other reference value is decreased by one.
"""

from __future__ import annotations

import datasets
import evaluate
import numpy as np

from hf_ovseg.evaluation.metric import confusion_matrix, metrics_from_confusion

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
        matrix = np.zeros((num_labels + 1, num_labels + 1), dtype=np.int64)
        for prediction, reference in zip(predictions, references, strict=True):
            matrix += confusion_matrix(
                np.asarray(prediction), np.asarray(reference), num_labels, ignore_index, reduce_labels
            )
        return {**metrics_from_confusion(matrix), "confusion_matrix": matrix}
