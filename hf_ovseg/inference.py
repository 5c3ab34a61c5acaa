"""Dense inference protocol of the training-free OVSS anchors, as pure functions.

Sliding windows over a resized image (crops batched and streamed), bilinear upsampling of each crop's
logits, stitching by averaging overlaps, and the final resize to the original size done in row chunks so
that a very large image never needs a [classes, H, W] tensor at full resolution. The order of steps is the
anchors' (wangf3014/SCLIP@b56bd30:clip_segmentor.py:80-179): slide, stitch, resize to the original size,
softmax over every class name, max over synonyms, area threshold, background threshold.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .postprocess import area_keep_mask

#: How a crop whose sides are not multiples of the patch size reaches the model:
#: ``"center"``: zero-padded on both sides to the next multiple, the logits cut back to the crop
#: (mc-lan/ClearCLIP@ad68a40:clearclip_segmentor.py:168-180, likyoo/SegEarth-OV@3e22a96:segearth_segmentor.py:251-263);
#: ``"none"``: the patch grid drops the remainder rows and columns and the logits are stretched over the whole
#: crop (wangf3014/SCLIP@b56bd30:clip_segmentor.py:59-78, sinahmr/NACLIP@0cac3a6:naclip.py:54-69).
PATCH_PADDINGS = ("center", "none")


def check_patch_padding(patch_padding: str) -> None:
    if patch_padding not in PATCH_PADDINGS:
        raise ValueError(f"unknown patch_padding {patch_padding!r}; valid values: {', '.join(PATCH_PADDINGS)}")


def check_windows(crop: int, stride: int, crop_name: str = "crop_size", stride_name: str = "stride") -> None:
    """Raise ``ValueError`` unless ``crop`` and ``stride`` are positive and the windows cover every pixel (the
    messages name the arguments as ``crop_name`` and ``stride_name``: the CLI's flags)."""
    if crop <= 0 or stride <= 0:
        raise ValueError(f"{crop_name} and {stride_name} must be positive, got {crop} and {stride}")
    if stride > crop:
        raise ValueError(
            f"{stride_name} {stride} is larger than {crop_name} {crop}: the windows would leave pixels uncovered; "
            f"use a {stride_name} of at most {crop}"
        )


def axis_windows(length: int, crop: int, stride: int) -> list[tuple[int, int]]:
    """mmseg's windows ``(start, end)`` along one axis: every ``stride``, the last one shifted back to end at
    the border, clipped to ``length`` when it is shorter than ``crop`` (SCLIP clip_segmentor.py:96-108)."""
    check_windows(crop, stride)
    count = max(length - crop + stride - 1, 0) // stride + 1
    ends = [min(index * stride + crop, length) for index in range(count)]
    return [(max(end - crop, 0), end) for end in ends]


def window_boxes(height: int, width: int, crop: int, stride: int) -> list[tuple[int, int, int, int]]:
    """mmseg's slide-inference windows ``(top, bottom, left, right)`` covering a ``height x width`` image, in
    row-major order. An image smaller than ``crop`` gives windows clipped to the image (run as they are,
    never padded to the crop size)."""
    return [(t, b, l, r) for t, b in axis_windows(height, crop, stride) for l, r in axis_windows(width, crop, stride)]


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def batched(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def crop_logits(
    forward: Callable[[torch.Tensor], torch.Tensor], crops: torch.Tensor, patch_size: int, patch_padding: str
) -> torch.Tensor:
    """Logits of same-sized crops at their pixel size: [b, 3, h, w] -> [b, Q, h, w] float32 (bilinear
    upsampling of the model's patch logits; see ``PATCH_PADDINGS`` for sides that are not patch multiples;
    ``run_windows`` has checked ``patch_padding``)."""
    height, width = crops.shape[-2:]
    if patch_padding == "none":
        rows, cols = height // patch_size, width // patch_size
        if rows == 0 or cols == 0:
            raise ValueError(
                f"a {height}x{width} image is smaller than one {patch_size}x{patch_size} patch "
                "(patch_padding='none' drops what does not fill a patch); use a larger image or patch_padding='center'"
            )
        logits = forward(crops[..., : rows * patch_size, : cols * patch_size]).float()
        return F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
    pad_h, pad_w = round_up(height, patch_size) - height, round_up(width, patch_size) - width
    top, left = pad_h // 2, pad_w // 2
    padded = F.pad(crops, (left, pad_w - left, top, pad_h - top)) if pad_h or pad_w else crops
    logits = forward(padded).float()
    logits = F.interpolate(logits, size=padded.shape[-2:], mode="bilinear", align_corners=False)
    return logits[..., top : top + height, left : left + width]


@dataclass
class Stitcher:
    """The sliding windows of one image and the logits stitched so far (each crop's logits upsampled to the
    crop, summed, divided by the number of windows covering each pixel)."""

    image: torch.Tensor  # [1, 3, H, W] normalised
    boxes: list[tuple[int, int, int, int]]
    total: torch.Tensor | None = None
    count: torch.Tensor | None = None
    added: int = 0

    @classmethod
    def windows(cls, image: torch.Tensor, crop_size: int | None, stride: int | None) -> Stitcher:
        """``crop_size=None``: one window on the whole image."""
        height, width = image.shape[-2:]
        if crop_size is None:
            return cls(image, [(0, height, 0, width)])
        return cls(image, window_boxes(height, width, crop_size, stride))

    def crop(self, index: int) -> torch.Tensor:
        top, bottom, left, right = self.boxes[index]
        return self.image[..., top:bottom, left:right]

    def add(self, index: int, logits: torch.Tensor) -> None:
        """Add window ``index``'s [Q, h, w] logits."""
        if self.total is None:
            self.total = logits.new_zeros(logits.shape[0], *self.image.shape[-2:])
            self.count = logits.new_zeros(1, *self.image.shape[-2:])
        top, bottom, left, right = self.boxes[index]
        self.total[:, top:bottom, left:right] += logits
        self.count[:, top:bottom, left:right] += 1
        self.added += 1

    @property
    def finished(self) -> bool:
        return self.added == len(self.boxes)

    def result(self) -> torch.Tensor:
        """[Q, H, W] float32 stitched logits."""
        return self.total / self.count


def run_windows(
    forward: Callable[[torch.Tensor], torch.Tensor],
    stitchers: Iterable[tuple[Any, Stitcher]],
    patch_size: int,
    batch_size: int = 8,
    patch_padding: str = "center",
) -> Iterator[tuple[Any, torch.Tensor]]:
    """Stitched logits of many images, ``(key, [Q, H, W])`` in input order, with the crops of consecutive
    images sharing forward batches of ``batch_size`` (crops of one shape per batch). Images are pulled from
    ``stitchers`` only when a batch needs their crops, so memory stays bounded. When ``forward`` runs every batch
    at one shape (the pipeline pads a partial batch to ``batch_size``), a crop's logits do not depend on the batch
    it is in, so the result equals running the images one at a time."""
    check_patch_padding(patch_padding)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    pending: deque[tuple[Any, Stitcher]] = deque()  # images whose crops are queued, in input order
    queue: deque[tuple[Stitcher, int]] = deque()  # crops not run yet
    source = iter(stitchers)
    exhausted = False
    while True:
        while not exhausted and len(queue) < batch_size:
            item = next(source, None)
            if item is None:
                exhausted = True
                break
            pending.append(item)
            queue.extend((item[1], index) for index in range(len(item[1].boxes)))
        if not queue:
            return
        shape = queue[0][0].crop(queue[0][1]).shape
        group = []
        while queue and len(group) < batch_size and queue[0][0].crop(queue[0][1]).shape == shape:
            group.append(queue.popleft())
        logits = crop_logits(forward, torch.cat([s.crop(i) for s, i in group]), patch_size, patch_padding)
        for (stitcher, index), crop in zip(group, logits, strict=True):
            stitcher.add(index, crop)
        while pending and pending[0][1].finished:
            key, stitcher = pending.popleft()
            yield key, stitcher.result()


def slide_logits(
    forward: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    patch_size: int,
    crop_size: int | None = 224,
    stride: int | None = 112,
    batch_size: int = 8,
    patch_padding: str = "center",
) -> torch.Tensor:
    """Stitched dense logits of one image.

    Args:
        forward: maps crops [b, 3, c, c] (sides multiples of ``patch_size``) to logits [b, Q, rows, cols].
        image: [1, 3, H, W] normalised image.
        crop_size: window side, or None for one window on the whole image.
        patch_padding: ``"center"`` or ``"none"`` (see ``PATCH_PADDINGS``).
    Returns:
        [Q, H, W] float32 logits: each crop's logits upsampled bilinearly to the crop, averaged over overlaps.
    """
    stitcher = Stitcher.windows(image, crop_size, stride)
    ((_, logits),) = run_windows(forward, [(None, stitcher)], patch_size, batch_size, patch_padding)
    return logits


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


def add_counts(counts: torch.Tensor, values: torch.Tensor) -> None:
    """``counts[v] += 1`` for every value of ``values``, in place on the device (``torch.bincount`` would read the
    maximum back to the host on a GPU)."""
    flat = values.flatten().long()
    counts.index_add_(0, flat, torch.ones_like(flat))


def class_probability_rows(
    logits: torch.Tensor, synonym_index: torch.Tensor, size: tuple[int, int], rows: slice
) -> torch.Tensor:
    """Class probabilities of ``rows`` of the image at ``size``: the logits resized bilinearly, softmax over every
    synonym, then the max over each class's synonyms: [C, len(rows), W]."""
    probs = resize_bilinear(logits, size, rows).softmax(dim=0)  # [Q, r, W]
    # nothing to merge when every class has one name
    return probs if synonym_index.shape[0] == probs.shape[0] else probs[synonym_index.to(probs.device)].amax(dim=1)


def chunk_rows(num_classes: int, width: int, max_chunk_elements: int = 1 << 24) -> int:
    """Rows per chunk so that a [num_classes, rows, width] chunk holds at most ``max_chunk_elements`` values."""
    return max(1, max_chunk_elements // max(1, num_classes * width))


def class_probability_chunks(
    logits: torch.Tensor, synonym_index: torch.Tensor, size: tuple[int, int], max_chunk_elements: int = 1 << 24
) -> Iterator[tuple[int, torch.Tensor]]:
    """``(top, probs)`` for consecutive row chunks of the image at ``size`` ([`class_probability_rows`]): probs
    [C, rows, W]."""
    chunk = chunk_rows(logits.shape[0], size[1], max_chunk_elements)
    for top in range(0, size[0], chunk):
        yield top, class_probability_rows(logits, synonym_index, size, slice(top, top + chunk))


def area_counts(
    logits: torch.Tensor, synonym_index: torch.Tensor, size: tuple[int, int], max_chunk_elements: int = 1 << 24
) -> torch.Tensor:
    """[C] argmax pixel counts of each class at ``size`` (the first pass of the area threshold)."""
    counts = torch.zeros(synonym_index.shape[0], dtype=torch.int64, device=logits.device)
    for _, class_probs in class_probability_chunks(logits, synonym_index, size, max_chunk_elements):
        add_counts(counts, class_probs.argmax(dim=0))
    return counts


def label_chunks(
    logits: torch.Tensor,
    synonym_index: torch.Tensor,
    size: tuple[int, int],
    background_threshold: float = 0.0,
    background_index: int | None = None,
    keep: torch.Tensor | None = None,
    max_chunk_elements: int = 1 << 24,
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """``(top, labels, best, class_probs)`` for consecutive row chunks at ``size``: classes not in ``keep``
    (the area threshold's survivors) get zero probability, then the best class of each pixel, or
    ``background_index`` where its probability is below ``background_threshold``."""
    if background_threshold > 0 and background_index is None:
        raise ValueError("background_threshold > 0 needs a background_index")
    for top, class_probs in class_probability_chunks(logits, synonym_index, size, max_chunk_elements):
        if keep is not None:
            class_probs = class_probs * keep[:, None, None]
        best, labels = class_probs.max(dim=0)
        if background_index is not None:
            labels = torch.where(best < background_threshold, torch.full_like(labels, background_index), labels)
        yield top, labels, best, class_probs


def predict_labels(
    logits: torch.Tensor,
    synonym_index: torch.Tensor,
    size: tuple[int, int],
    background_threshold: float = 0.0,
    background_index: int | None = None,
    return_probabilities: bool = False,
    area_threshold: float | None = None,
    max_chunk_elements: int = 1 << 24,
    normalize_probabilities: bool = False,
) -> DensePrediction:
    """Resize logits to ``size``, softmax over all synonyms, max over each class's synonyms, area threshold,
    background threshold.

    Args:
        logits: [Q, h, w] stitched logits, one row per synonym.
        synonym_index: [C, S] rows of ``logits`` belonging to each class (padded by repeating a row).
        size: (H, W) original image size; the resize is done in row chunks of bounded memory.
        background_threshold: pixels whose best class probability is below it get ``background_index``.
        area_threshold: classes whose argmax area is at most this share of the non-background area get zero
            probability (see ``postprocess.area_keep_mask``); a first pass over the chunks counts the areas.
        normalize_probabilities: the returned probabilities divided by their sum over the classes, after the
            labels are chosen (NACLIP, sinahmr/NACLIP@0cac3a6:naclip.py:153).
    """
    height, width = size
    num_classes = synonym_index.shape[0]
    num_labels = num_classes + int(background_index is not None and background_index >= num_classes)
    device = logits.device  # everything stays on the logits' device (the GPU, in a CUDA pipeline)
    keep = None
    if area_threshold is not None:
        counts = area_counts(logits, synonym_index, size, max_chunk_elements)
        keep = area_keep_mask(counts, area_threshold, background_index)
    label_map = torch.empty(height, width, dtype=torch.int32, device=device)
    score_sum = torch.zeros(num_labels, dtype=torch.float64, device=device)
    pixel_count = torch.zeros(num_labels, dtype=torch.int64, device=device)
    probabilities = torch.empty(num_classes, height, width, device=device) if return_probabilities else None
    chunks = label_chunks(logits, synonym_index, size, background_threshold, background_index, keep, max_chunk_elements)
    for top, labels, best, class_probs in chunks:
        rows = slice(top, top + labels.shape[0])
        label_map[rows] = labels.to(torch.int32)
        score_sum.index_add_(0, labels.flatten(), best.flatten().double())
        add_counts(pixel_count, labels)
        if probabilities is not None:
            probabilities[:, rows] = class_probs / class_probs.sum(0) if normalize_probabilities else class_probs
    return DensePrediction(label_map, score_sum, pixel_count, probabilities)
