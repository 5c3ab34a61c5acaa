"""Dense inference protocol of the training-free OVSS anchors, as pure functions.

Sliding windows over a resized image (crops batched and streamed), bilinear upsampling of each crop's
logits, stitching by averaging overlaps, and the final resize to the original size done in row chunks so
that a very large image never needs a [classes, H, W] tensor at full resolution.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def window_boxes(height: int, width: int, crop: int, stride: int) -> list[tuple[int, int, int, int]]:
    """mmseg's slide-inference windows ``(top, bottom, left, right)`` covering a ``height x width`` image.

    The last window in each direction is shifted back so it ends at the border; an image smaller than
    ``crop`` gives windows clipped to the image.
    """
    if crop <= 0 or stride <= 0:
        raise ValueError(f"crop_size and stride must be positive, got {crop} and {stride}")
    rows = max(height - crop + stride - 1, 0) // stride + 1
    cols = max(width - crop + stride - 1, 0) // stride + 1
    boxes = []
    for r in range(rows):
        for c in range(cols):
            bottom, right = min(r * stride + crop, height), min(c * stride + crop, width)
            boxes.append((max(bottom - crop, 0), bottom, max(right - crop, 0), right))
    return boxes


def pad_image(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Zero-pad [B, C, h, w] at the bottom and right to at least ``height x width``."""
    pad_h, pad_w = max(height - image.shape[-2], 0), max(width - image.shape[-1], 0)
    return F.pad(image, (0, pad_w, 0, pad_h)) if pad_h or pad_w else image


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def batched(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def slide_logits(
    forward: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    patch_size: int,
    crop_size: int | None = 224,
    stride: int = 112,
    batch_size: int = 8,
) -> torch.Tensor:
    """Stitched dense logits of one image.

    Args:
        forward: maps crops [b, 3, c, c] to logits [b, Q, c/patch, c/patch].
        image: [1, 3, H, W] normalised image.
        crop_size: window side (a multiple of ``patch_size``), or None for one forward on the whole image
            (padded to a multiple of the patch size).
    Returns:
        [Q, H, W] float32 logits: each crop's logits upsampled bilinearly to the crop, averaged over overlaps.
    """
    height, width = image.shape[-2:]
    if crop_size is None:
        padded = pad_image(image, round_up(height, patch_size), round_up(width, patch_size))
        logits = forward(padded).float()
        logits = F.interpolate(logits, size=padded.shape[-2:], mode="bilinear", align_corners=False)
        return logits[0, :, :height, :width]
    if crop_size % patch_size:
        raise ValueError(f"crop_size {crop_size} must be a multiple of the patch size {patch_size}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    padded = pad_image(image, crop_size, crop_size)  # an image smaller than a crop is padded, then cut back
    full_h, full_w = padded.shape[-2:]
    total = count = None
    for boxes in batched(window_boxes(full_h, full_w, crop_size, stride), batch_size):
        crops = torch.cat([padded[..., t:b, l:r] for t, b, l, r in boxes])
        logits = forward(crops).float()
        logits = F.interpolate(logits, size=(crop_size, crop_size), mode="bilinear", align_corners=False)
        if total is None:
            total = logits.new_zeros(logits.shape[1], full_h, full_w)
            count = logits.new_zeros(1, full_h, full_w)
        for crop_logits, (t, b, l, r) in zip(logits, boxes, strict=True):
            total[:, t:b, l:r] += crop_logits
            count[:, t:b, l:r] += 1
    return (total / count)[:, :height, :width]


def bilinear_weights(in_size: int, out_size: int, device: torch.device | None = None):
    """Source indices and weights of a 1-D bilinear resize (``align_corners=False``, no antialias), as in
    ``F.interpolate(mode="bilinear")``: output ``o`` = ``x[low[o]] * (1 - frac[o]) + x[high[o]] * frac[o]``."""
    scale = in_size / out_size
    src = ((torch.arange(out_size, device=device, dtype=torch.float64) + 0.5) * scale - 0.5).clamp(min=0)
    low = src.floor().long().clamp(max=in_size - 1)
    high = (low + 1).clamp(max=in_size - 1)
    return low, high, (src - low).float()


def resize_bilinear(x: torch.Tensor, size: tuple[int, int], rows: slice | None = None) -> torch.Tensor:
    """Bilinear resize of [C, h, w] to ``size``, returning only output ``rows``: [C, len(rows), W].

    Equal to ``F.interpolate(x[None], size, mode="bilinear")[0, :, rows]`` at O(C * rows * W) cost, so a
    large output can be produced in chunks of bounded memory.
    """
    rows = rows or slice(0, size[0])
    if x.shape[1] == size[0]:  # same height: bilinear is the identity along rows
        x = x[:, rows]
    else:
        low, high, frac = (t[rows] for t in bilinear_weights(x.shape[1], size[0], x.device))
        x = torch.lerp(x[:, low], x[:, high], frac[:, None].to(x.dtype))
    if x.shape[2] == size[1]:
        return x
    low, high, frac = bilinear_weights(x.shape[2], size[1], x.device)
    return torch.lerp(x[:, :, low], x[:, :, high], frac.to(x.dtype))


@dataclass
class DensePrediction:
    """Per-pixel result at the original size.

    label_map: [H, W] int32 class ids (``background_index`` where below the threshold).
    score_sum, pixel_count: [num_labels] sums of the winning probability and pixel counts per id.
    probabilities: [C, H, W] float32 class probabilities (synonyms merged), only on request.
    """

    label_map: torch.Tensor
    score_sum: torch.Tensor
    pixel_count: torch.Tensor
    probabilities: torch.Tensor | None = None


def predict_labels(
    logits: torch.Tensor,
    synonym_index: torch.Tensor,
    size: tuple[int, int],
    background_threshold: float = 0.0,
    background_index: int | None = None,
    return_probabilities: bool = False,
    max_chunk_elements: int = 1 << 24,
) -> DensePrediction:
    """Resize logits to ``size``, softmax over all synonyms, max over each class's synonyms, threshold.

    Args:
        logits: [Q, h, w] stitched logits, one row per synonym.
        synonym_index: [C, S] rows of ``logits`` belonging to each class (padded by repeating a row).
        size: (H, W) original image size; the resize is done in row chunks of bounded memory.
        background_threshold: pixels whose best class probability is below it get ``background_index``.
    """
    height, width = size
    if background_threshold > 0 and background_index is None:
        raise ValueError("background_threshold > 0 needs a background_index")
    num_classes = synonym_index.shape[0]
    num_labels = num_classes + int(background_index is not None and background_index >= num_classes)
    device = logits.device  # everything stays on the logits' device (the GPU, in a CUDA pipeline)
    label_map = torch.empty(height, width, dtype=torch.int32, device=device)
    score_sum = torch.zeros(num_labels, dtype=torch.float64, device=device)
    pixel_count = torch.zeros(num_labels, dtype=torch.int64, device=device)
    probabilities = torch.empty(num_classes, height, width, device=device) if return_probabilities else None
    synonym_index = synonym_index.to(logits.device)
    chunk = max(1, max_chunk_elements // max(1, logits.shape[0] * width))
    for top in range(0, height, chunk):
        probs = resize_bilinear(logits, size, slice(top, top + chunk)).softmax(dim=0)  # [Q, r, W]
        # [C, r, W]: max over each class's synonyms (nothing to merge when every class has one name)
        class_probs = probs if synonym_index.shape[0] == probs.shape[0] else probs[synonym_index].amax(dim=1)
        best, labels = class_probs.max(dim=0)
        if background_index is not None:
            labels = torch.where(best < background_threshold, torch.full_like(labels, background_index), labels)
        label_map[top : top + chunk] = labels.to(torch.int32)
        score_sum.index_add_(0, labels.flatten(), best.flatten().double())
        pixel_count += torch.bincount(labels.flatten(), minlength=num_labels)
        if probabilities is not None:
            probabilities[:, top : top + chunk] = class_probs
    return DensePrediction(label_map, score_sum, pixel_count, probabilities)
