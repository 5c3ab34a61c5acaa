"""SAM as Trident uses it, on a transformers ``SamModel``: the image set as ``SamPredictor.set_image`` sets it, the
last encoder block's attention and values, and masks predicted from prompts.

Trident (YuHengsss/Trident@a93b346) runs the ``segment_anything`` package with one change: every encoder block
returns its softmax attention and values, and the encoder keeps the last block's
(segment_anything/modeling/image_encoder.py:105-115, 165-184, 226-244). Here the transformers modules compute the
same numbers from the last block's normalised input, caught by a hook:

- ``SamPredictor.set_image`` (segment_anything/predictor.py:34-90): ResizeLongestSide to the encoder's size with
  PIL's bilinear filter (utils/transforms.py:26-31, 93-102), ``(x - mean) / std`` in 0-255 units
  (modeling/sam.py:27-28, 164-174), zero padding at the bottom and right, the encoder;
- ``get_sam_feat`` (trident.py:112-128): the valid token grid ``input_size // 16`` and the last block's attention
  restricted to it (its softmax still ran over the padded keys, as there);
- ``get_sam_sim`` (open_clip/transformer.py:643-659): [`guidance_weights`];
- ``SamPredictor.predict_torch`` + ``Sam.postprocess_masks`` (predictor.py:168-243, sam.py:133-162):
  [`predict_masks`], with Trident's unbatched mask prompt (see [`mask_embedding`]).

Precision: Trident runs the encoder in float16 (``.half()``, trident.py:87) and the prompt encoder and mask decoder
in float32 on their float16-rounded weights (``.half()`` then ``.float()``, 87-89). Here the encoder runs in the
model's dtype and the prompt encoder and mask decoder always in float32, on float32 copies of the model's weights
(the same numbers when the model is in float16).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import chain

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from .modules import unit

#: segment_anything/modeling/sam.py:27-28 (build_sam.py:99-100): SAM's pixel mean and std in 0-255 units.
SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)
SAM_PIXEL_STD = (58.395, 57.12, 57.375)
#: sam.py:19: a mask logit above this is inside the mask.
SAM_MASK_THRESHOLD = 0.0
#: open_clip/transformer.py:656-657: Trident's SAM cosine thresholds are capped at 0.9; with
#: ``refine_neg_cos=False`` a negative one becomes 0.6.
SAM_THRESHOLD_CAP = 0.9
SAM_NEGATIVE_THRESHOLD = 0.6


def preprocess_shape(height: int, width: int, long_side: int) -> tuple[int, int]:
    """ResizeLongestSide's size (transforms.py:93-102): the longer side to ``long_side``, each side
    ``int(side * scale + 0.5)``."""
    scale = long_side * 1.0 / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def scale_points(points: torch.Tensor, original_size: tuple[int, int], long_side: int) -> torch.Tensor:
    """``apply_coords_torch`` (transforms.py:67-81): [..., 2] (x, y) points of an ``original_size`` image to the
    ResizeLongestSide frame, float32."""
    new_h, new_w = preprocess_shape(*original_size, long_side)
    points = points.to(torch.float32).clone()
    points[..., 0] = points[..., 0] * (new_w / original_size[1])
    points[..., 1] = points[..., 1] * (new_h / original_size[0])
    return points


@dataclass
class SamImage:
    """An image set in SAM (``SamPredictor`` after ``set_image``).

    embeddings: [1, C, g, g] the encoder's output (the neck's) on the padded input.
    last_input: [1, g, g, D] the last encoder block's normalised input (its ``layer_norm1`` output).
    input_size: (h, w) of the resized image before padding. original_size: (H, W) of the image given.
    """

    embeddings: torch.Tensor
    last_input: torch.Tensor
    input_size: tuple[int, int]
    original_size: tuple[int, int]

    def valid_grid(self, patch: int) -> tuple[int, int]:
        """The token grid the image covers, ``input_size // patch`` (trident.py:114-116)."""
        return self.input_size[0] // patch, self.input_size[1] // patch


def set_image(sam: nn.Module, image: np.ndarray) -> SamImage:
    """``SamPredictor.set_image`` of an [H, W, 3] uint8 RGB image on a transformers ``SamModel``, keeping the last
    block's normalised input for [`guidance_weights`]."""
    vision = sam.config.vision_config
    size = vision.image_size
    new_h, new_w = preprocess_shape(image.shape[0], image.shape[1], size)
    resized = np.array(Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR))
    if min(new_h, new_w) == 0:
        raise ValueError(f"a {image.shape[0]}x{image.shape[1]} image is too narrow for SAM's {size}x{size} input")
    param = next(sam.parameters())
    # in the model's dtype, as the official constants are buffers that .half() converts too (sam.py:27-28, 167)
    pixels = torch.from_numpy(resized).to(param.device).permute(2, 0, 1)[None].to(param.dtype)
    mean = torch.tensor(SAM_PIXEL_MEAN, device=param.device, dtype=param.dtype).view(1, 3, 1, 1)
    std = torch.tensor(SAM_PIXEL_STD, device=param.device, dtype=param.dtype).view(1, 3, 1, 1)
    pixels = F.pad((pixels - mean) / std, (0, size - new_w, 0, size - new_h))
    caught: list[torch.Tensor] = []
    hook = sam.vision_encoder.layers[-1].layer_norm1.register_forward_hook(lambda _m, _i, out: caught.append(out))
    try:
        embeddings = sam.vision_encoder(pixel_values=pixels).last_hidden_state
    finally:
        hook.remove()
    return SamImage(embeddings, caught[0], (new_h, new_w), (image.shape[0], image.shape[1]))


def guidance_weights(
    sam: nn.Module, image: SamImage, cosine_factor: float, refine_negative: bool = True
) -> torch.Tensor:
    """Trident's aggregation weights on SAM's valid grid (``get_sam_sim``, open_clip/transformer.py:643-659).

    With P_h the last block's softmax attention of head h (relative positions included, over every key of the
    padded grid) and C_h the cosines of its value vectors, both restricted to the valid grid: the threshold
    ``τ_i = min(cosine_factor · mean_h mean_j C_h[i, j], 0.9)`` (a negative τ becomes 0.6 unless
    ``refine_negative``), ``M = mean_h P_h ⊙ [C_h > τ]`` and ``W = M / rowsum(M)``. One head at a time, so the
    memory is that of one [N, N] map. Returns [N, N], N = Hs * Ws (row-major).

    The chain runs in float32 whatever the model's dtype; the official code runs it in float16 with the
    half-precision SAM, so there a cosine on the threshold may fall the other way."""
    layer = sam.vision_encoder.layers[-1]
    if layer.window_size:
        raise ValueError("Trident reads SAM's last block as a global-attention block; this SAM's is windowed")
    attn = layer.attn
    states = image.last_input[0]
    side = states.shape[0]
    rows, cols = image.valid_grid(sam.config.vision_config.patch_size)
    heads = attn.num_attention_heads
    qkv = attn.qkv(states).reshape(side, side, 3, heads, -1).permute(2, 3, 0, 1, 4)  # [3, heads, g, g, d]
    query = qkv[0, :, :rows, :cols].reshape(heads, rows * cols, -1)
    key = qkv[1].reshape(heads, side * side, -1)
    values = unit(qkv[2, :, :rows, :cols].reshape(heads, rows * cols, -1).float())
    # mean_j C[i, j] = v_i · mean_j v_j: the thresholds without the [N, N] maps
    threshold = cosine_factor * (values @ values.mean(dim=1, keepdim=True).transpose(1, 2)).mean(dim=0)  # [N, 1]
    if not refine_negative:
        threshold = torch.where(threshold < 0, SAM_NEGATIVE_THRESHOLD, threshold)
    threshold = threshold.clamp(max=SAM_THRESHOLD_CAP)
    rel_h = attn.get_rel_pos(side, side, attn.rel_pos_h)[:rows] if attn.use_rel_pos else None  # [rows, g, d]
    rel_w = attn.get_rel_pos(side, side, attn.rel_pos_w)[:cols] if attn.use_rel_pos else None  # [cols, g, d]
    total = values.new_zeros(rows * cols, rows * cols)
    valid = (torch.arange(rows, device=key.device)[:, None] * side + torch.arange(cols, device=key.device)).flatten()
    for head in range(heads):
        logits = (query[head] * attn.scale) @ key[head].T  # [N, g*g]
        if rel_h is not None:
            grid_query = query[head].reshape(rows, cols, -1)
            bias_h = torch.einsum("rcd,rkd->rck", grid_query, rel_h)
            bias_w = torch.einsum("rcd,ckd->rck", grid_query, rel_w)
            logits = logits + (bias_h[..., :, None] + bias_w[..., None, :]).reshape(rows * cols, side * side)
        probs = logits.float().softmax(dim=-1)[:, valid]
        cosines = values[head] @ values[head].T
        total += torch.where(cosines > threshold, probs, 0.0)
    total = total / heads
    return total / total.sum(dim=-1, keepdim=True)


def float32_weights(module: nn.Module) -> dict[str, torch.Tensor]:
    """``module``'s parameters and buffers in float32 (for ``torch.func.functional_call``)."""
    return {name: t.float() for name, t in chain(module.named_parameters(), module.named_buffers())}


def layer_norm_2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    """segment_anything's ``LayerNorm2d`` (modeling/common.py:31-43): mean and variance over dim 1, then the
    per-channel affine map on dim -3. On a batched [B, C, H, W] tensor that is a channel LayerNorm; on an
    unbatched [C, H, W] one (Trident's mask prompt) it normalises over the height instead."""
    mean = x.mean(1, keepdim=True)
    var = (x - mean).pow(2).mean(1, keepdim=True)
    x = (x - mean) / torch.sqrt(var + eps)
    return weight[:, None, None] * x + bias[:, None, None]


def mask_embedding(sam: nn.Module, mask: torch.Tensor) -> torch.Tensor:
    """The prompt encoder's mask downscaling (prompt_encoder.py:51-59) of a mask prompt as given, in float32: Trident
    passes an UNBATCHED [1, 4g, 4g] mask (seg_utils/utils.py:146, 154), which the convolutions read as (C=1, H, W)
    and whose LayerNorm2d then normalises over the height ([`layer_norm_2d`]); the [C, g, g] result is added to
    every prompt's image embedding. transformers' ``SamMaskEmbedding`` needs a batch, so its layers run here."""
    embed = sam.prompt_encoder.mask_embed
    w = float32_weights(embed)
    x = F.conv2d(mask.float(), w["conv1.weight"], w["conv1.bias"], stride=2)
    x = embed.activation(layer_norm_2d(x, w["layer_norm1.weight"], w["layer_norm1.bias"], embed.layer_norm1.eps))
    x = F.conv2d(x, w["conv2.weight"], w["conv2.bias"], stride=2)
    x = embed.activation(layer_norm_2d(x, w["layer_norm2.weight"], w["layer_norm2.bias"], embed.layer_norm2.eps))
    return F.conv2d(x, w["conv3.weight"], w["conv3.bias"])


def dense_positional_embedding(sam: nn.Module) -> torch.Tensor:
    """``PromptEncoder.get_dense_pe`` (prompt_encoder.py:62-71, 185-196) in float32: the positional encoding of
    every cell centre of SAM's g x g grid, [1, C, g, g]."""
    size = sam.config.prompt_encoder_config.image_embedding_size
    pe = sam.shared_image_embedding
    centres = (torch.arange(size, device=pe.positional_embedding.device, dtype=torch.float32) + 0.5) / size
    grid = torch.stack(torch.meshgrid(centres, centres, indexing="xy"), dim=-1)  # [g, g, (x, y)]
    encoded = torch.func.functional_call(pe, float32_weights(pe), (grid,))
    return encoded.permute(2, 0, 1)[None]


def predict_masks(
    sam: nn.Module, image: SamImage, points: torch.Tensor, boxes: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``SamPredictor.predict_torch(points, labels=1, boxes, mask, multimask_output=False)`` (predictor.py:168-243)
    for n prompts in the ResizeLongestSide frame, before ``postprocess_masks`` ([`upscale_masks`]).

    Args:
        points: [n, 2] one positive (x, y) point per prompt. boxes: [n, 4] xyxy boxes. mask: [1, 4g, 4g] the
            unbatched mask prompt shared by all prompts.
    Returns:
        low-resolution mask logits [n, 1, 4g, 4g] and IoU predictions [n, 1].
    """
    encoder, decoder = sam.prompt_encoder, sam.mask_decoder
    points = points[None, :, None].float()  # [1, n, 1, 2]: transformers' (image, prompt, point) layout
    labels = torch.ones(points.shape[:3], dtype=torch.long, device=points.device)
    prompts = {"input_points": points, "input_labels": labels, "input_boxes": boxes[None].float(), "input_masks": None}
    sparse, _ = torch.func.functional_call(encoder, float32_weights(encoder), (), prompts)
    low_res, iou = torch.func.functional_call(decoder, float32_weights(decoder), (), {
        "image_embeddings": image.embeddings.float(),
        "image_positional_embeddings": dense_positional_embedding(sam),
        "sparse_prompt_embeddings": sparse,
        "dense_prompt_embeddings": mask_embedding(sam, mask),
        "multimask_output": False,
    })  # fmt: skip
    return low_res[0], iou[0]


def upscale_masks(sam: nn.Module, image: SamImage, low_res: torch.Tensor) -> torch.Tensor:
    """``Sam.postprocess_masks`` (sam.py:133-162): [n, 1, 4g, 4g] logits resized (bilinear) to SAM's input size,
    cropped to the image's resized size and resized to ``image.original_size``: [n, 1, H, W]."""
    size = sam.config.vision_config.image_size
    logits = F.interpolate(low_res, (size, size), mode="bilinear", align_corners=False)
    logits = logits[..., : image.input_size[0], : image.input_size[1]]
    return F.interpolate(logits, image.original_size, mode="bilinear", align_corners=False)


__all__ = [
    "SAM_MASK_THRESHOLD",
    "SAM_PIXEL_MEAN",
    "SAM_PIXEL_STD",
    "SamImage",
    "guidance_weights",
    "layer_norm_2d",
    "mask_embedding",
    "predict_masks",
    "preprocess_shape",
    "scale_points",
    "set_image",
    "upscale_masks",
]
