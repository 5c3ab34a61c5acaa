"""Trident's SAM refinement of a label map (YuHengsss/Trident@a93b346:seg_utils/utils.py:27-197).

Each class's connected regions prompt SAM (a point at the region's most probable pixel, its box, and the class's
probability map as mask prompt); the masks SAM is confident about (IoU prediction above ``sam_iou_threshold``)
then decide the labels: ``L_c = union of c's masks · max over c's masks of sigmoid(SAM logit) · p_c`` and each
pixel takes the class of the largest ``L_c`` (its coarse label where every ``L_c`` is 0).

Quirks of the official code kept here, each cited where it happens: the regions are found at half resolution,
SAM's prompts are mapped from that half-resolution frame (not from the image SAM encoded), the mask prompt is
passed unbatched (see ``sam.mask_embedding``), and failed regions change the returned probabilities but never the
labels (``map_failed_regions``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .inference import bilinear_weights, chunk_rows, class_probability_rows
from .sam import SAM_MASK_THRESHOLD, SamImage, predict_masks, preprocess_shape, scale_points, upscale_masks

#: seg_utils/utils.py:107: the regions are found on the label map halved.
DOWN_RATIO = 2


@dataclass(frozen=True)
class RefinementSettings:
    """The knobs of [`refine_with_sam`]: ``coarse_thresh``, ``minimal_area``, ``sam_mask_coff`` and
    ``sam_iou_thresh`` of Trident (configs/base_config.py:17-19, trident.py:33)."""

    coarse_threshold: float
    minimal_area: int
    mask_coefficient: float
    iou_threshold: float


class ClassProbabilities:
    """An image's class probabilities at its original size, as the refinement reads them: either a [C, H, W]
    tensor, or (``logits``, ``synonym_index``, ``size``) from which rows are computed on demand
    ([`class_probability_rows`]), so that the whole [C, H, W] tensor is never held (a 6000 x 4000 photo with 21
    classes would need 2 GB for it)."""

    def __init__(
        self, probs: torch.Tensor | None = None, logits: torch.Tensor | None = None,
        synonym_index: torch.Tensor | None = None, size: tuple[int, int] | None = None,
    ) -> None:  # fmt: skip
        self.probs, self.logits, self.synonym_index = probs, logits, synonym_index
        self.size = tuple(probs.shape[-2:]) if probs is not None else size
        self.num_classes = probs.shape[0] if probs is not None else synonym_index.shape[0]
        self.device = (probs if probs is not None else logits).device

    def rows(self, rows: slice) -> torch.Tensor:
        """[C, len(rows), W]."""
        if self.probs is not None:
            return self.probs[:, rows]
        return class_probability_rows(self.logits, self.synonym_index, self.size, rows)

    def halved(self, down: tuple[int, int]) -> torch.Tensor:
        """``F.interpolate(probs[None], down, mode="bilinear")[0]`` (seg_utils/utils.py:108-110): [C, h, w],
        made from blocks of the rows it reads, the same numbers in both forms (to rounding, F.interpolate's)."""
        (height, width), classes, device = self.size, self.num_classes, self.device
        low, high, frac = bilinear_weights(height, down[0], device)
        col_low, col_high, col_frac = bilinear_weights(width, down[1], device)
        out = torch.empty(classes, *down, device=device)
        block = max(1, chunk_rows(classes, width) // 2)  # output rows per block: about twice as many input rows
        for start in range(0, down[0], block):
            stop = min(start + block, down[0])
            first, last = int(low[start]), int(high[stop - 1])
            source = self.rows(slice(first, last + 1)).float()
            rows = torch.lerp(source[:, low[start:stop] - first], source[:, high[start:stop] - first],
                              frac[start:stop, None])  # fmt: skip
            out[:, start:stop] = torch.lerp(rows[:, :, col_low], rows[:, :, col_high], col_frac)
        return out

    def classes(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The maps of ``indices`` [K, H, W] and every pixel's best class probability [H, W]."""
        if self.probs is not None:
            return self.probs[indices], self.probs.amax(dim=0)
        height, width = self.size
        maps = torch.empty(len(indices), height, width, device=self.device)
        best = torch.empty(height, width, device=self.device)
        chunk = chunk_rows(self.num_classes, width)
        for top in range(0, height, chunk):
            rows = slice(top, top + chunk)
            probs = self.rows(rows)
            maps[:, rows], best[rows] = probs[indices], probs.amax(dim=0)
        return maps, best


def connected_regions(mask: torch.Tensor) -> torch.Tensor:
    """8-connected components of a [H, W] bool mask (``skimage.measure.label(mask, connectivity=2)``,
    seg_utils/utils.py:49): [H, W] int64, 0 outside the mask and one id per component inside (ids are not
    consecutive; the refinement never depends on their order). Each pixel starts with its own index and takes its
    neighbours' largest id until nothing changes, jumping through the pixel an id names to converge fast."""
    height, width = mask.shape
    if not mask.any():
        return torch.zeros_like(mask, dtype=torch.long)
    exact = torch.float32 if height * width < 2**24 else torch.float64  # ids are exact integers in it
    index = torch.arange(1, height * width + 1, device=mask.device, dtype=exact).view(height, width)
    labels = torch.where(mask, index, 0.0)
    while True:
        grown = F.max_pool2d(labels[None, None], 3, stride=1, padding=1)[0, 0] * mask
        flat = grown.flatten()
        jumped = torch.where(mask, flat[(grown.long() - 1).clamp(min=0)].view(height, width), 0.0)
        grown = torch.maximum(grown, jumped)
        if torch.equal(grown, labels):
            return labels.long()
        labels = grown


def split_regions(
    class_mask: torch.Tensor, probs: torch.Tensor, minimal_area: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """``split_connected_regions`` for one class (seg_utils/utils.py:27-69): its regions of at least
    ``minimal_area`` pixels, each with a point at its first most probable pixel (row-major) and its inclusive xyxy
    box (``masks_to_boxes``). Returns (masks [n, h, w] bool, points [n, 2] (x, y), boxes [n, 4]) or None."""
    labels = connected_regions(class_mask)
    ids, counts = torch.unique(labels[labels > 0], return_counts=True)
    ids = ids[counts >= minimal_area]
    if ids.numel() == 0:
        return None
    masks = labels[None] == ids[:, None, None]
    width = class_mask.shape[1]
    positions = (probs[None] * masks).flatten(1).argmax(dim=1)
    points = torch.stack([positions % width, positions // width], dim=1)
    ys, xs = (torch.arange(n, device=masks.device) for n in class_mask.shape)
    rows, cols = masks.any(dim=2), masks.any(dim=1)
    big = max(class_mask.shape)
    boxes = torch.stack([
        torch.where(cols, xs, big).amin(1), torch.where(rows, ys, big).amin(1),
        torch.where(cols, xs, -1).amax(1), torch.where(rows, ys, -1).amax(1),
    ], dim=1)  # fmt: skip
    return masks, points, boxes


def refine_with_sam(
    sam: nn.Module, image: SamImage, labels: torch.Tensor, probs: ClassProbabilities, settings: RefinementSettings,
    return_maps: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:  # fmt: skip
    """``sam_refinement`` (seg_utils/utils.py:92-197) of a coarse prediction at the image's original size.

    1. Labels (nearest) and probabilities (bilinear) halved; pixels whose best probability is below
       ``coarse_threshold`` (when > 0) belong to no class (103-126).
    2. Per class whose halved probability reaches ``coarse_threshold``: its regions ([`split_regions`]).
    3. Per class with regions (134-174): the mask prompt is its halved probability map resized so its longer side
       is ``4 g`` (SAM's mask input, 256 at 1024; with the original image's aspect), zero-padded to a square and
       ``p > coarse_threshold ? mask_coefficient · p : 0``; points and boxes go from the halved frame to SAM's;
       regions whose IoU prediction is at most ``iou_threshold`` fail.
    4. No region kept: the coarse result unchanged (176-177). Else the kept masks' logits at the original size
       (181-186) give ``L`` (``map_refinement_coarse``, 71-83) and the labels; pixels where every ``L_c`` is 0 keep
       their coarse label (190); inside failed regions ``L = max(L, p)`` (``map_failed_regions``, 85-90, whose
       label update never fires).

    Memory: the full-resolution maps of the classes with kept masks only, and one mask at a time; the labels come
    from a running maximum over the classes (``argmax``'s first-maximum rule), and the [C, H, W] ``L`` is made only
    with ``return_maps``.

    Args:
        sam: the SAM model. image: the image set in SAM (the stride-resized original, trident.py:135-140).
        labels: [H, W] coarse labels. probs: their class probabilities.
    Returns:
        labels [H, W], every pixel's best coarse probability [H, W] (its score; None when the labels are left as
        they are) and, with ``return_maps``, the probabilities [C, H, W] (the refined ``L`` when a region was kept,
        else ``probs``' own tensor; None when it has none).
    """
    num_classes, (height, width) = probs.num_classes, probs.size
    down = (height // DOWN_RATIO, width // DOWN_RATIO)
    if min(down) == 0:  # a one-pixel-high image has no half-resolution map (the official code fails on it)
        return labels, None, probs.probs
    labels_down = F.interpolate(labels[None, None].float(), down, mode="nearest")[0, 0].long()
    probs_down = probs.halved(down)
    coarse = settings.coarse_threshold
    if coarse > 0:
        labels_down[probs_down.max(0).values < coarse] = num_classes
    mask_side = 4 * sam.config.prompt_encoder_config.image_embedding_size  # 256 hard-coded, utils.py:142,145
    mask_h, mask_w = preprocess_shape(height, width, mask_side)
    long_side = sam.config.vision_config.image_size
    kept: dict[int, torch.Tensor] = {}  # class -> [n, 1, 4g, 4g] low-resolution logits of its kept masks
    failed = []
    for index in range(num_classes):
        if probs_down[index].max() < coarse:
            continue
        regions = split_regions(labels_down == index, probs_down[index], settings.minimal_area)
        if regions is None:
            continue
        masks, points, boxes = regions
        prompt = F.interpolate(probs_down[index][None, None], (mask_h, mask_w), mode="bilinear", align_corners=False)
        prompt = F.pad(prompt[0], (0, mask_side - mask_w, 0, mask_side - mask_h))
        prompt = torch.where(prompt > coarse, settings.mask_coefficient * prompt, 0.0)
        boxes = scale_points(boxes.view(-1, 2, 2), down, long_side).view(-1, 4)
        low_res, iou = predict_masks(sam, image, scale_points(points, down, long_side), boxes, prompt)
        valid = iou[:, 0] > settings.iou_threshold
        if not valid.all():
            failed.append(masks[~valid])
        if valid.any():
            kept[index] = low_res[valid]
    if not kept:
        return labels, None, probs.probs
    maps, best_coarse = probs.classes(list(kept))
    best = torch.zeros_like(best_coarse)  # max_c L_c and its first class
    best_class = torch.zeros_like(labels)
    refined = torch.zeros(num_classes, height, width, device=best.device) if return_maps else None
    for class_map, (index, low_res) in zip(maps, kept.items(), strict=True):
        value, union = torch.zeros_like(best), torch.zeros_like(labels, dtype=torch.bool)
        for region in low_res.split(1):  # one full-resolution mask at a time
            logits = upscale_masks(sam, image, region)[0, 0]
            if logits.shape != (height, width):  # SAM's image was the stride-resized original (181-186)
                logits = F.interpolate(logits[None, None], (height, width), mode="bilinear", align_corners=False)[0, 0]
            union |= logits > SAM_MASK_THRESHOLD
            value = torch.maximum(value, logits.sigmoid() * class_map)
        value = value * union
        best_class = torch.where(value > best, index, best_class)
        best = torch.maximum(best, value)
        if refined is not None:
            refined[index] = value
    new_labels = torch.where(best == 0, labels, best_class)  # every L_c >= 0: their sum is 0 where their max is
    if failed and refined is not None:
        area = torch.cat(failed).any(dim=0).float()
        area = F.interpolate(area[None, None], (height, width), mode="nearest")[0, 0].bool()
        full = probs.classes(list(range(num_classes)))[0]
        refined = torch.where(area & (full > refined), full, refined)
    return new_labels, best_coarse, refined


__all__ = [
    "DOWN_RATIO",
    "ClassProbabilities",
    "RefinementSettings",
    "connected_regions",
    "refine_with_sam",
    "split_regions",
]
