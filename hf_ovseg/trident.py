"""Trident (Shi et al., 2025): CLIP's last block guided by DINO per window, the windows spliced into one image and
aggregated by SAM's attention, as YuHengsss/Trident@a93b346 computes it (``get_trident_seg``, trident.py:130-188;
``VisionTransformer.forward``, open_clip/transformer.py:502-659).

For one image (all its windows at once, as the official code batches them):

1. CLIP's input: the mmseg-resized, CLIP-normalised image with both sides rounded up to multiples of CLIP's patch
   and at least the crop size ([`trident_resize`], seg_utils/utils.py:9-25), cut into mmseg's slide windows
   (336 / 224, trident.py:190-225).
2. Per window, CLIP's blocks 1..L-1, then block L as ProxyCLIP's attention over the DINO map (its mean taken over
   ALL windows together, transformer.py:571), on CLIP's values; no CLS, residual or MLP
   (``OVSegVisionModel.trident_last_block``).
3. The windows spliced onto the image's CLIP grid, overlaps averaged ([`splice_windows`], 586-618), resized to
   SAM's valid token grid and aggregated there by SAM's last-block attention ([`aggregate`],
   ``sam.guidance_weights``, 634-640). SAM sees the ORIGINAL image, its sides resized (OpenCV bilinear) up to
   multiples of CLIP's patch (trident.py:135-140); with ``sam_split_halves`` (Cityscapes) its left and right
   halves are encoded separately and the canvas halves aggregated by each (141-152, 621-633).
4. ``ln_post``, the projection, cosine with the class embeddings: logits on SAM's grid (184-188), resized to the
   original size by the pipeline, then (``sam_refinement``) refined by ``sam_refinement.refine_with_sam``.

Official quirks kept: the global mean over windows (a window's result depends on the others of its image); a
window's 56-padding is never used since every window is a full crop (the image is at least one crop after step 1).

Differences, none reached by the official protocols:

- the official code raises when an image whose sides are already patch multiples is smaller than the crop
  (``preprocess_image`` returns it unchanged, then the splice fails); here such an image is resized (stretched
  bilinearly) up to the crop by step 1's rule, so it runs;
- any SAM works with the refinement; the official code cannot refine with SAM-H (``self.sam`` is never set for
  ``vit_h``, trident.py:85-88);
- synonyms are merged by max for every class; the official merge (trident.py:266-270) takes only the first line's
  names as synonyms (the background's), which is the same for its class files, whose other lines have one name.

Memory: all windows of an image run as one batch (the global mean needs them together) and the refinement holds
the class probabilities at the original size, so very large photos need a ``long_side`` cap.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from .image_processing_ovseg import resize_array
from .inference import round_up, window_boxes
from .modules import unit
from .proxy import proxy_features
from .sam import SamImage, guidance_weights, set_image

if TYPE_CHECKING:
    from .configuration_ovseg import OVSegConfig
    from .modeling_ovseg import OVSegModel


@dataclass
class TridentLogits:
    """One image's Trident logits [K, Hs, Ws] on SAM's valid grid, and the image set in SAM for the refinement."""

    logits: torch.Tensor
    sam_image: SamImage


def trident_resize(image: torch.Tensor, stride: int, crop: int) -> torch.Tensor:
    """``preprocess_image`` (seg_utils/utils.py:9-25) of a [1, 3, H, W] image: the longer side L rounded up to a
    multiple of ``stride``, each side scaled by it (``int(side * L' / L)``), rounded up to a multiple of ``stride``
    and raised to at least ``crop``, bilinear (``align_corners=False``). An image whose sides are already
    multiples is returned unchanged when it is at least ``crop`` on both sides (see the module docstring)."""
    height, width = image.shape[-2:]
    if height % stride == 0 and width % stride == 0 and min(height, width) >= crop:
        return image
    longer = max(height, width)
    target = round_up(longer, stride)
    new_h = max(round_up(int(height * target / longer), stride), crop)
    new_w = max(round_up(int(width * target / longer), stride), crop)
    return F.interpolate(image, (new_h, new_w), mode="bilinear", align_corners=False)


def splice_windows(
    maps: torch.Tensor, boxes: list[tuple[int, int, int, int]], grid: tuple[int, int], cells: tuple[int, int]
) -> torch.Tensor:
    """The windows' feature maps on one canvas, overlaps averaged (transformer.py:597-618).

    Args:
        maps: [n, D, h, w] per-window maps on the proxy's grid. boxes: the windows' (top, bottom, left, right) in
            CLIP cells. grid: (Hc, Wc) the image's CLIP grid. cells: (rows, cols) a window's CLIP grid.
    Returns:
        [1, D, Hc r, Wc r] with r the proxy grid's cells per CLIP cell: ``w // cols`` when it divides, else
        ``round(h / rows)`` with the maps resized (bilinear) to ``cells * r`` (e.g. CLIP /14 with DINO /16).
    """
    rows, cols = cells
    if maps.shape[-1] % cols:
        ratio = round(maps.shape[-2] / rows)
        if ratio == 0:
            raise ValueError(
                f"Trident needs the proxy's grid ({maps.shape[-2]}x{maps.shape[-1]} per window) at least as fine as "
                f"CLIP's ({rows}x{cols}): use a proxy whose patch is at most CLIP's"
            )
        maps = F.interpolate(maps, (rows * ratio, cols * ratio), mode="bilinear", align_corners=False)
    else:
        ratio = maps.shape[-1] // cols
    canvas = maps.new_zeros(1, maps.shape[1], grid[0] * ratio, grid[1] * ratio)
    count = maps.new_zeros(1, 1, grid[0] * ratio, grid[1] * ratio)
    for window, (top, bottom, left, right) in zip(maps, boxes, strict=True):
        area = (slice(None), slice(None), slice(top * ratio, bottom * ratio), slice(left * ratio, right * ratio))
        canvas[area] += window
        count[area] += 1
    return canvas / count


def aggregate(canvas: torch.Tensor, weights: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """``W @ canvas`` on SAM's grid (transformer.py:634-640): the canvas [1, D, h, w] resized bilinearly to ``grid``
    (Hs, Ws) and mixed by the [N, N] weights (the same for every head). Returns [Hs, Ws, D]."""
    part = F.interpolate(canvas, grid, mode="bilinear", align_corners=False)[0].flatten(1)  # [D, N]
    return (weights.to(part.dtype) @ part.T).reshape(*grid, -1)


def sam_input(photo: np.ndarray, stride: int) -> np.ndarray:
    """The image SAM encodes (trident.py:135-140): the original [H, W, 3] uint8 RGB image resized (OpenCV-exact
    bilinear) so that both sides are rounded up to multiples of ``stride``."""
    return resize_array(photo, (round_up(photo.shape[0], stride), round_up(photo.shape[1], stride)))


def trident_logits(
    model: OVSegModel, image: torch.Tensor, photo: np.ndarray, text_embeds: torch.Tensor, cfg: OVSegConfig,
    crop: int, stride: int,
) -> TridentLogits:  # fmt: skip
    """Trident's logits of one image (see the module docstring).

    Args:
        model: an ``OVSegModel`` with a DINO proxy and SAM. image: [1, 3, h, w] the resized, CLIP-normalised
            image. photo: [H, W, 3] uint8 the original image. text_embeds: [K, P] class embeddings.
        cfg: the call's ``OVSegConfig``. crop, stride: the slide windows (336, 224).
    Returns:
        [`TridentLogits`]: ``dense_logit_scale`` times the cosines, [K, Hs, Ws].
    """
    sam, patch = model.sam_model, model.config.vision_config.patch_size
    sam_patch = sam.config.vision_config.patch_size
    picture = sam_input(photo, patch)
    if cfg.sam_split_halves:
        middle = picture.shape[1] // 2
        parts = [set_image(sam, picture[:, :middle]), set_image(sam, picture[:, middle:])]
        sam_image = set_image(sam, picture) if cfg.sam_refinement else parts[0]
    else:
        sam_image = set_image(sam, picture)
        parts = [sam_image]
    weights = [guidance_weights(sam, part, cfg.sam_cosine_factor, cfg.sam_refine_negative_cosine) for part in parts]

    image = trident_resize(image, patch, crop)
    grid = (image.shape[-2] // patch, image.shape[-1] // patch)
    boxes = window_boxes(image.shape[-2], image.shape[-1], crop, stride)
    windows = torch.cat([image[..., top:bottom, left:right] for top, bottom, left, right in boxes])
    features = proxy_features(model.proxy_model, windows)
    hidden = model.vision_model.hidden_before_last_block(windows, cfg)
    maps = model.vision_model.trident_last_block(hidden, (crop // patch, crop // patch), features, cfg)
    cells = [(t // patch, b // patch, l // patch, r // patch) for t, b, l, r in boxes]
    canvas = splice_windows(maps, cells, grid, (crop // patch, crop // patch))
    middle = canvas.shape[-1] // 2  # Cityscapes: the canvas split at width // 2 (transformer.py:621-633)
    pieces = [canvas[..., :middle], canvas[..., middle:]] if len(parts) > 1 else [canvas]
    tokens = torch.cat([aggregate(piece, part_weights, part.valid_grid(sam_patch))
                        for piece, part_weights, part in zip(pieces, weights, parts, strict=True)], dim=1)  # fmt: skip
    # tokens: [Hs, Ws, D]
    vision = model.vision_model
    tokens = vision.layer_norm(vision.post_layernorm, tokens, cfg)
    embeds = unit(model.visual_projection(tokens))
    logits = embeds @ unit(text_embeds).to(embeds.dtype).T  # [Hs, Ws, K]
    # float32 before the scale and the resize to the original size (the official code interpolates in float16, then
    # scales and takes the softmax in float32, trident.py:187-188, 263-264)
    return TridentLogits(logits.float().permute(2, 0, 1) * cfg.dense_logit_scale, sam_image)


__all__ = ["TridentLogits", "aggregate", "sam_input", "splice_windows", "trident_logits", "trident_resize"]
