"""The anchors' post-processing, as pure tensor functions: the area threshold and PAMR refinement.

- ``area_threshold`` (SCLIP's and SFP's ``area_thd``): a class whose predicted area is at most that share of
  the non-background prediction has its probabilities zeroed, so its pixels go to their next-best class;
  this happens before the background threshold (wangf3014/SCLIP@b56bd30:clip_segmentor.py:162-170,
  Kimsure/SFP@2804f5b:SFP_ICCV/SFP_segmentor.py:170-178).
- PAMR (pixel-adaptive mask refinement, Araslanov & Roth 2020), as NACLIP applies it to the full-resolution
  logits (sinahmr/NACLIP@0cac3a6:naclip.py:126-135, pamr.py): ``steps`` iterations of a weighted average of
  each pixel's 8 neighbours at each dilation, the weights a softmax of the image's local affinities.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: NACLIP's PAMR setting: ``pamr_steps=10, pamr_stride=(8, 16)`` (naclip.py:21; eval.py:56-57 "--pamr on").
PAMR_STEPS = 10
PAMR_DILATIONS = (8, 16)

#: The 8 neighbour offsets of PAMR's kernels, in its order (pamr.py ``LocalAffinity._init_aff``).
_NEIGHBOURS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


def area_keep_mask(
    label_counts: torch.Tensor, area_threshold: float, background_index: int | None = None
) -> torch.Tensor:
    """Which classes survive the area threshold: [C] argmax pixel counts -> [C] bool.

    A class is kept when its count is strictly above ``area_threshold`` times the total count of the
    non-background classes; the background class (SCLIP hard-codes index 0) is always kept and not counted.
    """
    counted = torch.ones_like(label_counts, dtype=torch.bool)
    if background_index is not None and background_index < len(label_counts):
        counted[background_index] = False
    total = label_counts[counted].sum()
    return ~counted | (label_counts > area_threshold * total)


def _shifted(x: torch.Tensor, dilation: int) -> torch.Tensor:
    """The 8 dilated neighbours of every pixel (replicate padding): [N, H, W] -> [N, 8, H, W]."""
    height, width = x.shape[-2:]
    padded = F.pad(x[:, None], [dilation] * 4, mode="replicate")[:, 0]
    return torch.stack(
        [
            padded[:, dilation + dy * dilation : dilation + dy * dilation + height,
                   dilation + dx * dilation : dilation + dx * dilation + width]
            for dy, dx in _NEIGHBOURS
        ],
        dim=1,
    )  # fmt: skip


def pamr_affinity(image: torch.Tensor, dilations: tuple[int, ...] = PAMR_DILATIONS) -> torch.Tensor:
    """PAMR's pixel affinities to their neighbours: [3, H, W] image -> [P, H, W] weights, P = 8 * dilations,
    softmax over P of ``-mean_channels(|x - x_p| / (1e-8 + 0.1 * std))``, std the unbiased standard deviation
    of each pixel's 3x3 neighbourhoods (centre included) over all dilations (pamr.py ``PAMR.forward``)."""
    neighbours = torch.cat([_shifted(image, d) for d in dilations], dim=1)  # [3, P, H, W]
    with_centre = torch.cat([torch.cat([n, image[:, None]], dim=1) for n in neighbours.split(8, dim=1)], dim=1)
    std = with_centre.std(dim=1, keepdim=True)
    affinity = -(image[:, None] - neighbours).abs() / (1e-8 + 0.1 * std)
    return affinity.mean(dim=0).softmax(dim=0)


def pamr(
    image: torch.Tensor,
    logits: torch.Tensor,
    steps: int = PAMR_STEPS,
    dilations: tuple[int, ...] = PAMR_DILATIONS,
    chunk: int = 8,
) -> torch.Tensor:
    """Refine [Q, H, W] logits with the [3, H, W] image they belong to: ``steps`` times, every channel becomes
    the affinity-weighted sum of its dilated neighbours. Channels are independent, so they are refined
    ``chunk`` at a time to bound memory. -> [Q, H, W]."""
    if image.shape[-2:] != logits.shape[-2:]:
        raise ValueError(
            f"PAMR needs the image at the logits' size, got {tuple(image.shape)} and {tuple(logits.shape)}"
        )
    affinity = pamr_affinity(image.float(), dilations)  # [P, H, W]
    refined = []
    for part in logits.float().split(chunk):
        for _ in range(steps):
            part = (torch.cat([_shifted(part, d) for d in dilations], dim=1) * affinity).sum(dim=1)
        refined.append(part)
    return torch.cat(refined).to(logits.dtype)


__all__ = ["PAMR_DILATIONS", "PAMR_STEPS", "area_keep_mask", "pamr", "pamr_affinity"]
