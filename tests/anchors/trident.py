"""Trident (Shi et al., 2025) re-implemented from YuHengsss/Trident@a93b346 for the parity tests.

What is re-implemented, functionally on state dicts in the official layouts (nothing of transformers' or
hf_ovseg's forward code is involved):

- the SAM side: ``SamPredictor.set_image`` (``segment_anything/predictor.py``, ``utils/transforms.py``,
  ``modeling/sam.py``), the modified ``ImageEncoderViT`` that keeps the last block's softmax attention and values
  (``segment_anything/modeling/image_encoder.py:105-115,165-184,226-244``), ``get_sam_feat`` (trident.py:112-128);
- SAM's prompt encoder, two-way transformer and mask decoder (``modeling/prompt_encoder.py``,
  ``transformer.py``, ``mask_decoder.py``, ``common.py``; identical to facebookresearch/segment-anything@dca509f)
  and ``SamPredictor.predict_torch`` / ``Sam.postprocess_masks``;
- the CLIP side: the rewritten last block of ``open_clip/transformer.py:502-659`` (``custom_attn``,
  ``guidance_attn``, ``get_sam_sim``), ``preprocess_image`` (``seg_utils/utils.py:9-25``) and
  ``get_windowed_imgs`` (trident.py:190-225), the Cityscapes half-split path (trident.py:141-152,
  transformer.py:621-633);
- the post-processing (trident.py:260-294) and the SAM refinement (``seg_utils/utils.py:27-197``), quirks kept.

The DINO proxy is ``proxies.dino_intermediate_layers`` (facebookresearch/dino@7c446df, which Trident loads from
torch hub, trident.py:48), the CLIP blocks are ``common``'s (OpenAI layout) and the DINO input is
``proxyclip.proxy_input`` (the same ``UnNormalize`` + ``Normalize`` as trident.py:54-55,162).

Connected components: the official code uses ``skimage.measure.label(mask, connectivity=2)``; neither scikit-image
nor scipy is installed in this venv, so ``label_connected`` is a pure-Python 8-connected flood fill whose labels
follow the raster order of each region's first pixel (skimage's order). The final label map and probabilities do
not depend on the region order (the refinement takes a max and a union over a class's regions).

Precision: the official code runs CLIP in float16 with float32 LayerNorms, DINO and the SAM image encoder in
float16 (``.half()``, trident.py:49,87), SAM's prompt encoder and mask decoder in float32 on weights that went
through float16 (``.half()`` then ``.float()``, trident.py:87-89; see ``half_rounded``). Everything here runs in
the dtype of the state dicts (float32 in the tests).

SAM size: the official code hard-codes SAM's 1024 input in two places, the 64 x 64 token grid of ``get_sam_feat``
(trident.py:120) and the 256 x 256 mask prompt of ``sam_refinement`` (seg_utils/utils.py:142-145). Here they
are ``sam_size // sam_patch`` and ``4 * sam_size // sam_patch`` (``PromptEncoder.mask_input_size``,
prompt_encoder.py:50), the same numbers at ``sam_size=1024``, so that tests can use a small SAM.

Citations are ``path:line`` in YuHengsss/Trident@a93b346 unless another repository is named.
"""

from __future__ import annotations

import math
import re
from collections import deque

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .common import custom_out, custom_qkv, embed, layer_norm, num_blocks, resblock
from .proxies import (
    _linear,
    _ln,
    dino_intermediate_layers,
    sam_block,
    sam_layer_norm_2d,
    sam_state_dict,
)
from .proxyclip import compute_padsize, proxy_attention, proxy_input
from .proxyclip import get_cls_idx as _proxyclip_get_cls_idx

VIS = "visual.transformer.resblocks"

SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)  # segment_anything/modeling/sam.py:27 (build_sam.py:99)
SAM_PIXEL_STD = (58.395, 57.12, 57.375)  # sam.py:28 (build_sam.py:100)
SAM_SIZE = 1024  # build_sam.py:63
SAM_PATCH = 16  # build_sam.py:64; trident.py:145,146,154 (``get_sam_feat(tmp_img, 16)``)
MASK_THRESHOLD = 0.0  # sam.py:19
DOWN_RATIO = 2  # seg_utils/utils.py:107

#: Per-variant SAM encoder settings (build_sam.py:14-44; heads also trident.py:97-102).
SAM_VARIANTS = {
    "vit_b": dict(depth=12, width=768, heads=12, global_attn_indexes=(2, 5, 8, 11)),
    "vit_l": dict(depth=24, width=1024, heads=16, global_attn_indexes=(5, 11, 17, 23)),
    "vit_h": dict(depth=32, width=1280, heads=16, global_attn_indexes=(7, 15, 23, 31)),
}

#: configs/cfg_*.py on top of configs/base_config.py and the segmentor's defaults (trident.py:29-33,91-93).
#: ``scale`` is the mmseg ``Resize(scale=..., keep_ratio=True)`` of the test pipeline; ``sam_refinement`` is on
#: in every official run (dist_test.sh:3 ``--sam_refine`` -> eval.py:63).
BASE = dict(
    clip_type="openai", model_type="ViT-B/16", beta=1.2, cos_fac=1.2, refine_neg_cos=True, slide_stride=224,
    slide_crop=336, sam_model_type="vit_b", sam_iou_thresh=0.80, coarse_thresh=0.2, minimal_area=225,
    prob_thd=0.0, logit_scale=40, gamma=3.0, sam_mask_coff=0.005, sam_refinement=True, is_cityscapes=False,
)  # fmt: skip
CONFIGS = {
    "cfg_voc21": dict(dataset="PascalVOCDataset", scale=(2048, 448), classes="cls_voc21.txt", prob_thd=0.2,
                      coarse_thresh=0.2),
    "cfg_context60": dict(dataset="PascalContext60Dataset", scale=(2048, 576), classes="cls_context60.txt",
                          prob_thd=0.15, coarse_thresh=0.15),
    "cfg_coco_object": dict(dataset="COCOObjectDataset", scale=(2048, 448), classes="cls_coco_object.txt",
                            prob_thd=0.25, coarse_thresh=0.25),
    "cfg_voc20": dict(dataset="PascalVOC20Dataset", scale=(2048, 336), classes="cls_voc20.txt", coarse_thresh=0.2,
                      slide_stride=112, cos_fac=0.0),
    "cfg_context59": dict(dataset="PascalContext59Dataset", scale=(2048, 576), classes="cls_context59.txt",
                          coarse_thresh=0.15),
    "cfg_coco_stuff164k": dict(dataset="COCOStuffDataset", scale=(2048, 448), classes="cls_coco_stuff.txt",
                               coarse_thresh=0.05),
    "cfg_city_scapes": dict(dataset="CityscapesDataset", scale=(2048, 688), classes="cls_city_scapes.txt",
                            is_cityscapes=True, cos_fac=3.0, refine_neg_cos=False, coarse_thresh=0.10),
    "cfg_ade20k": dict(dataset="ADE20KDataset", scale=(2048, 576), classes="cls_ade20k.txt", refine_neg_cos=False,
                       coarse_thresh=0.05),
    "cfg_context459": dict(dataset="PascalContext459Dataset", scale=(2048, 448), classes="cls_context459.txt"),
    "cfg_ade847": dict(dataset="ADE20K847Dataset", scale=(2048, 448), classes="cls_ade20k847.txt"),
}  # fmt: skip


def config(name: str) -> dict:
    """``BASE`` updated with one ``CONFIGS`` entry (mmengine's ``_base_`` merge of the ``model`` dicts)."""
    return {**BASE, **CONFIGS[name]}


def get_cls_idx(path) -> tuple[list[str], list[int]]:
    """trident.py:331-342: ``readlines``, each line split on ``'; '``, ``'\\n'`` removed; the same text as
    ProxyCLIP's (``proxyclip.get_cls_idx``)."""
    return _proxyclip_get_cls_idx(path)


# ---- SAM: ResizeLongestSide and set_image ------------------------------------------------------


def get_preprocess_shape(oldh: int, oldw: int, long_side_length: int) -> tuple[int, int]:
    """segment_anything/utils/transforms.py:93-102: ``scale = L / max(h, w)``, each side ``int(side * scale +
    0.5)``."""
    scale = long_side_length * 1.0 / max(oldh, oldw)
    return int(oldh * scale + 0.5), int(oldw * scale + 0.5)


def sam_apply_image(image: np.ndarray, target_length: int = SAM_SIZE) -> np.ndarray:
    """transforms.py:26-31: ``np.array(resize(to_pil_image(image), target_size))``. torchvision's ``resize`` on a
    PIL image is PIL's ``Image.resize((w, h), BILINEAR)`` (PIL's bilinear filter, antialiased when shrinking;
    a same-size resize is a copy in both). ``image``: HxWx3 uint8 RGB."""
    new_h, new_w = get_preprocess_shape(image.shape[0], image.shape[1], target_length)
    return np.array(Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR))


def sam_apply_coords(coords: torch.Tensor, original_size, target_length: int = SAM_SIZE) -> torch.Tensor:
    """transforms.py:67-81 (``apply_coords_torch``): x scaled by ``new_w / old_w``, y by ``new_h / old_h``, with
    (new_h, new_w) = ``get_preprocess_shape(*original_size, target_length)``; float32."""
    old_h, old_w = original_size
    new_h, new_w = get_preprocess_shape(original_size[0], original_size[1], target_length)
    coords = coords.clone().to(torch.float)
    coords[..., 0] = coords[..., 0] * (new_w / old_w)
    coords[..., 1] = coords[..., 1] * (new_h / old_h)
    return coords


def sam_apply_boxes(boxes: torch.Tensor, original_size, target_length: int = SAM_SIZE) -> torch.Tensor:
    """transforms.py:83-91 (``apply_boxes_torch``): the two corners of each xyxy box through ``apply_coords``."""
    return sam_apply_coords(boxes.reshape(-1, 2, 2), original_size, target_length).reshape(-1, 4)


def sam_preprocess(image: np.ndarray, sam_size: int = SAM_SIZE):
    """``SamPredictor.set_image`` up to the encoder (predictor.py:34-60, 79-88; sam.py:164-174): ResizeLongestSide
    (``sam_apply_image``), HWC -> [1, 3, h, w], ``(x - pixel_mean) / pixel_std`` (0-255 units), zero padding at the
    bottom and right to ``sam_size`` x ``sam_size``. ``image``: HxWx3 uint8 RGB (SAM's ``image_format``, sam.py:20).
    Returns (input [1, 3, S, S] float32, input_size (h, w) before padding, original_size = image.shape[:2])."""
    resized = sam_apply_image(image, sam_size)
    x = torch.as_tensor(resized).permute(2, 0, 1).contiguous()[None].float()
    input_size = tuple(x.shape[-2:])
    x = (x - torch.tensor(SAM_PIXEL_MEAN).view(-1, 1, 1)) / torch.tensor(SAM_PIXEL_STD).view(-1, 1, 1)
    x = F.pad(x, (0, sam_size - input_size[1], 0, sam_size - input_size[0]))
    return x, input_size, tuple(image.shape[:2])


# ---- SAM: the modified image encoder -------------------------------------------------------------


def _sub(sd: dict, prefix: str) -> dict:
    return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}


def sam_image_encoder(
    sd: dict, x: torch.Tensor, heads: int = 12, window: int = 14, global_attn_indexes=(2, 5, 8, 11),
    patch: int = SAM_PATCH, eps: float = 1e-6,
):  # fmt: skip
    """Trident's ``ImageEncoderViT.forward`` (image_encoder.py:105-115) on the ``image_encoder.*`` tensors
    (prefix stripped): patch embedding, + ``pos_embed`` (no resize), every block (window 0 at
    ``global_attn_indexes``, build_sam.py:77-78; all run with ``return_attn=True``, which does not change their
    output), the neck (1x1 conv, LayerNorm2d, 3x3 conv, LayerNorm2d). Returns (features [B, C, g, g],
    ``last_attn`` [B * heads, g*g, g*g], ``last_v`` [B, heads, g, g, head_dim]): the LAST block's, as line 112
    stores them (the last block is a global one in every released SAM)."""
    x = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=patch).permute(0, 2, 3, 1)
    if "pos_embed" in sd:
        x = x + sd["pos_embed"]
    depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    for i in range(depth - 1):
        x = sam_block(sd, i, x, heads, 0 if i in global_attn_indexes else window, eps)[0]
    last = depth - 1
    x, attn, v = sam_block(sd, last, x, heads, 0 if last in global_attn_indexes else window, eps)
    x = F.conv2d(x.permute(0, 3, 1, 2), sd["neck.0.weight"])
    x = sam_layer_norm_2d(sd, "neck.1", x, eps)
    x = F.conv2d(x, sd["neck.2.weight"], padding=1)
    return sam_layer_norm_2d(sd, "neck.3", x, eps), attn, v


# ---- SAM: weights ---------------------------------------------------------------------------------

_DECODER_RENAMES = [
    (r"^prompt_encoder\.shared_embedding\.positional_embedding$",
     "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"),
    (r"^prompt_encoder\.mask_embed\.conv1\.", "prompt_encoder.mask_downscaling.0."),
    (r"^prompt_encoder\.mask_embed\.layer_norm1\.", "prompt_encoder.mask_downscaling.1."),
    (r"^prompt_encoder\.mask_embed\.conv2\.", "prompt_encoder.mask_downscaling.3."),
    (r"^prompt_encoder\.mask_embed\.layer_norm2\.", "prompt_encoder.mask_downscaling.4."),
    (r"^prompt_encoder\.mask_embed\.conv3\.", "prompt_encoder.mask_downscaling.6."),
    (r"^prompt_encoder\.point_embed\.", "prompt_encoder.point_embeddings."),
    (r"^mask_decoder\.transformer\.layer_norm_final_attn\.", "mask_decoder.transformer.norm_final_attn."),
    (r"^(mask_decoder\.transformer\.layers\.\d+)\.layer_norm(\d)\.", r"\1.norm\2."),
    (r"^mask_decoder\.upscale_conv1\.", "mask_decoder.output_upscaling.0."),
    (r"^mask_decoder\.upscale_layer_norm\.", "mask_decoder.output_upscaling.1."),
    (r"^mask_decoder\.upscale_conv2\.", "mask_decoder.output_upscaling.3."),
]  # fmt: skip
_MLP = re.compile(
    r"^(mask_decoder\.(?:iou_prediction_head|output_hypernetworks_mlps\.\d+))\.(proj_in|proj_out|layers\.(\d+))\.(.*)$"
)


def sam_state_dict_full(hf_model) -> dict[str, torch.Tensor]:
    """A transformers ``SamModel`` renamed to the official ``Sam`` keys (``image_encoder.*``, ``prompt_encoder.*``,
    ``mask_decoder.*``; no ``pixel_mean``/``pixel_std``, they are non-persistent buffers, sam.py:46-47): the
    inverse of huggingface/transformers ``convert_sam_to_hf.py`` ``KEYS_TO_MODIFY_MAPPING`` and its
    ``output_hypernetworks_mlps`` rule (``layers.0 -> proj_in``, ``layers.1 -> layers.0``, ``layers.2 ->
    proj_out``, here for any depth: ``proj_in -> layers.0``, ``layers.j -> layers.{j+1}``, ``proj_out ->
    layers.{n+1}``); the encoder through ``proxies.sam_state_dict``. Checked by a strict ``load_state_dict`` into
    the official modules (notes/trident_parity). transformers 5.24 names: modeling_sam.py ``SamPromptEncoder``
    (``shared_embedding``, ``mask_embed.conv1..3/layer_norm1..2``, ``point_embed``), ``SamMaskDecoder``
    (``upscale_conv1/2``, ``upscale_layer_norm``, ``SamFeedForward`` ``proj_in/layers/proj_out``),
    ``SamTwoWayAttentionBlock`` (``layer_norm1..4``)."""
    hf = {k: v.detach().clone().float() for k, v in hf_model.state_dict().items()}
    sd = {f"image_encoder.{k}": v for k, v in sam_state_dict(hf_model).items()}
    hidden = {}
    for key in hf:
        match = _MLP.match(key)
        if match and match.group(3) is not None:
            hidden[match.group(1)] = max(hidden.get(match.group(1), 0), int(match.group(3)) + 1)
    for key, value in hf.items():
        if not key.startswith(("prompt_encoder.", "mask_decoder.")):
            continue
        new = key
        match = _MLP.match(key)
        if match:
            head, part, index, rest = match.groups()
            if part == "proj_in":
                layer = 0
            elif part == "proj_out":
                layer = hidden.get(head, 0) + 1
            else:
                layer = int(index) + 1
            new = f"{head}.layers.{layer}.{rest}"
        for pattern, target in _DECODER_RENAMES:
            new = re.sub(pattern, target, new)
        sd[new] = value
    return sd


def half_rounded(sd: dict, prefixes=("prompt_encoder.", "mask_decoder.")) -> dict:
    """The official ``sam.half()`` followed by ``prompt_encoder.float()`` / ``mask_decoder.float()``
    (trident.py:87-89): those float32 modules run on weights rounded to float16 (the positional-encoding
    buffer included). Use to mimic that rounding in a float32 run."""
    return {k: (v.half().float() if k.startswith(prefixes) else v) for k, v in sd.items()}


# ---- SAM: prompt encoder ---------------------------------------------------------------------------


def pe_encoding(sd: dict, coords: torch.Tensor) -> torch.Tensor:
    """``PositionEmbeddingRandom._pe_encoding`` (prompt_encoder.py:185-192): ``2c - 1``, ``@ gaussian``, ``2 pi``,
    ``cat(sin, cos)``."""
    coords = 2 * coords - 1
    coords = coords @ sd["prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"]
    coords = 2 * np.pi * coords
    return torch.cat([torch.sin(coords), torch.cos(coords)], dim=-1)


def dense_pe(sd: dict, size) -> torch.Tensor:
    """``PromptEncoder.get_dense_pe`` (prompt_encoder.py:62-71, 194-205): the pixel-centre grid ``(cumsum - 0.5) /
    size`` (x first) encoded -> [1, C, h, w]."""
    h, w = size
    grid = torch.ones((h, w), dtype=torch.float32)
    y_embed = (grid.cumsum(dim=0) - 0.5) / h
    x_embed = (grid.cumsum(dim=1) - 0.5) / w
    return pe_encoding(sd, torch.stack([x_embed, y_embed], dim=-1)).permute(2, 0, 1).unsqueeze(0)


def pe_with_coords(sd: dict, coords: torch.Tensor, image_size) -> torch.Tensor:
    """``forward_with_coords`` (prompt_encoder.py:207-214): x / W, y / H of the (padded) input size, encoded."""
    coords = coords.clone()
    coords[:, :, 0] = coords[:, :, 0] / image_size[1]
    coords[:, :, 1] = coords[:, :, 1] / image_size[0]
    return pe_encoding(sd, coords.to(torch.float))


def prompt_encoder(sd: dict, points, boxes, masks, embed_size, input_image_size):
    """``PromptEncoder.forward`` (prompt_encoder.py:128-168) with ``_embed_points`` (73-91: +0.5, a padding point
    of label -1 only when there are no boxes, label -1 -> 0 + ``not_a_point_embed``, 0 / 1 -> +
    ``point_embeddings[0/1]``), ``_embed_boxes`` (93-100: +0.5, corners + ``point_embeddings[2/3]``) and
    ``_embed_masks`` (102-105: ``mask_downscaling`` = conv 2x2/2, LayerNorm2d, GELU, conv 2x2/2, LayerNorm2d, GELU,
    conv 1x1, lines 51-59). The mask goes through exactly as given: an unbatched [1, 4g, 4g] mask (Trident's,
    seg_utils/utils.py:146,154) is taken by the convolutions as (C=1, H, W) and its LayerNorm2d (common.py:38-43,
    ``mean(1)``) then normalises over the HEIGHT axis, not the channels; the result is a 3-D [C, g, g] dense
    embedding. Returns (sparse [B, N, C], dense)."""
    dim = sd["prompt_encoder.no_mask_embed.weight"].shape[-1]
    if points is not None:
        bs = points[0].shape[0]
    elif boxes is not None:
        bs = boxes.shape[0]
    elif masks is not None:
        bs = masks.shape[0]
    else:
        bs = 1
    sparse = torch.empty((bs, 0, dim))
    if points is not None:
        coords, labels = points
        coords = coords + 0.5
        if boxes is None:
            coords = torch.cat([coords, torch.zeros((coords.shape[0], 1, 2))], dim=1)
            labels = torch.cat([labels, -torch.ones((labels.shape[0], 1))], dim=1)
        emb = pe_with_coords(sd, coords, input_image_size)
        emb[labels == -1] = 0.0
        emb[labels == -1] += sd["prompt_encoder.not_a_point_embed.weight"]
        emb[labels == 0] += sd["prompt_encoder.point_embeddings.0.weight"]
        emb[labels == 1] += sd["prompt_encoder.point_embeddings.1.weight"]
        sparse = torch.cat([sparse, emb], dim=1)
    if boxes is not None:
        corners = pe_with_coords(sd, (boxes + 0.5).reshape(-1, 2, 2), input_image_size)
        corners[:, 0, :] += sd["prompt_encoder.point_embeddings.2.weight"]
        corners[:, 1, :] += sd["prompt_encoder.point_embeddings.3.weight"]
        sparse = torch.cat([sparse, corners], dim=1)
    if masks is not None:
        p = "prompt_encoder.mask_downscaling"
        x = F.conv2d(masks, sd[f"{p}.0.weight"], sd[f"{p}.0.bias"], stride=2)
        x = F.gelu(sam_layer_norm_2d(sd, f"{p}.1", x))
        x = F.conv2d(x, sd[f"{p}.3.weight"], sd[f"{p}.3.bias"], stride=2)
        x = F.gelu(sam_layer_norm_2d(sd, f"{p}.4", x))
        dense = F.conv2d(x, sd[f"{p}.6.weight"], sd[f"{p}.6.bias"])
    else:
        dense = sd["prompt_encoder.no_mask_embed.weight"].reshape(1, -1, 1, 1).expand(bs, -1, *embed_size)
    return sparse, dense


# ---- SAM: two-way transformer and mask decoder -------------------------------------------------


def _decoder_attention(sd: dict, name: str, q, k, v, heads: int) -> torch.Tensor:
    """``Attention.forward`` (segment_anything/modeling/transformer.py:218-240): q/k/v projections (to the
    down-sampled internal width), heads split, ``softmax(q k^T / sqrt(c))``, ``@ v``, heads merged, out_proj."""
    q, k, v = _linear(sd, f"{name}.q_proj", q), _linear(sd, f"{name}.k_proj", k), _linear(sd, f"{name}.v_proj", v)

    def split(x):
        b, n, c = x.shape
        return x.reshape(b, n, heads, c // heads).transpose(1, 2)

    q, k, v = split(q), split(k), split(v)
    attn = torch.softmax((q @ k.permute(0, 1, 3, 2)) / math.sqrt(q.shape[-1]), dim=-1)
    out = attn @ v
    b, h, n, c = out.shape
    return _linear(sd, f"{name}.out_proj", out.transpose(1, 2).reshape(b, n, h * c))


def two_way_transformer(sd: dict, image_embedding, image_pe, point_embedding, heads: int = 8, eps: float = 1e-5):
    """``TwoWayTransformer.forward`` (transformer.py:62-106) and ``TwoWayAttentionBlock.forward`` (151-182):
    per layer, token self-attention (no PE and no residual in layer 0, ``skip_first_layer_pe``), token->image
    cross-attention, MLP (lin1, ReLU, lin2: TwoWayTransformer's default activation, line 23), image->token
    cross-attention, each followed by ``nn.LayerNorm`` (default eps 1e-5; transformers' ``SamTwoWayAttentionBlock``
    uses ``layer_norm_eps`` = 1e-6 instead); then the final token->image attention and ``norm_final_attn``."""
    p = "mask_decoder.transformer"
    keys = image_embedding.flatten(2).permute(0, 2, 1)
    key_pe = image_pe.flatten(2).permute(0, 2, 1)
    queries = point_embedding
    depth = len({k.split(".")[3] for k in sd if k.startswith(f"{p}.layers.")})
    for i in range(depth):
        blk = f"{p}.layers.{i}"
        if i == 0:
            queries = _decoder_attention(sd, f"{blk}.self_attn", queries, queries, queries, heads)
        else:
            q = queries + point_embedding
            queries = queries + _decoder_attention(sd, f"{blk}.self_attn", q, q, queries, heads)
        queries = _ln(sd, f"{blk}.norm1", queries, eps)
        q, k = queries + point_embedding, keys + key_pe
        queries = _ln(sd, f"{blk}.norm2", queries + _decoder_attention(
            sd, f"{blk}.cross_attn_token_to_image", q, k, keys, heads), eps)  # fmt: skip
        hidden = F.relu(_linear(sd, f"{blk}.mlp.lin1", queries))
        queries = _ln(sd, f"{blk}.norm3", queries + _linear(sd, f"{blk}.mlp.lin2", hidden), eps)
        q, k = queries + point_embedding, keys + key_pe
        keys = _ln(sd, f"{blk}.norm4", keys + _decoder_attention(
            sd, f"{blk}.cross_attn_image_to_token", k, q, queries, heads), eps)  # fmt: skip
    q, k = queries + point_embedding, keys + key_pe
    queries = queries + _decoder_attention(sd, f"{p}.final_attn_token_to_image", q, k, keys, heads)
    return _ln(sd, f"{p}.norm_final_attn", queries, eps), keys


def _mlp_head(sd: dict, name: str, x: torch.Tensor) -> torch.Tensor:
    """mask_decoder.py:154-176 (``MLP``): Linear layers, ReLU between them, no sigmoid."""
    n = len({k.split(".")[-2] for k in sd if k.startswith(f"{name}.layers.")})
    for i in range(n):
        x = _linear(sd, f"{name}.layers.{i}", x)
        if i < n - 1:
            x = F.relu(x)
    return x


def mask_decoder(sd: dict, image_embeddings, image_pe, sparse, dense, multimask_output: bool, heads: int = 8):
    """``MaskDecoder.forward`` / ``predict_masks`` (mask_decoder.py:71-149): tokens = [iou, mask tokens, prompts];
    the image embedding repeated per prompt plus the dense embedding (a 3-D dense embedding broadcasts over the
    prompts, line 127), the two-way transformer, ``output_upscaling`` (ConvTranspose 2x2/2, LayerNorm2d, GELU,
    ConvTranspose 2x2/2, GELU, lines 53-59), one hypernetwork MLP per mask token, the IoU head; mask 0 only when
    ``multimask_output`` is False, masks 1.. otherwise (102-107). Returns (low-res masks [B, M, 4g, 4g], IoU [B, M])."""
    p = "mask_decoder"
    output_tokens = torch.cat([sd[f"{p}.iou_token.weight"], sd[f"{p}.mask_tokens.weight"]], dim=0)
    num_mask_tokens = sd[f"{p}.mask_tokens.weight"].shape[0]
    output_tokens = output_tokens.unsqueeze(0).expand(sparse.size(0), -1, -1)
    tokens = torch.cat((output_tokens, sparse), dim=1)
    src = torch.repeat_interleave(image_embeddings, tokens.shape[0], dim=0) + dense
    pos_src = torch.repeat_interleave(image_pe, tokens.shape[0], dim=0)
    b, c, h, w = src.shape
    hs, src = two_way_transformer(sd, src, pos_src, tokens, heads)
    iou_token_out = hs[:, 0, :]
    mask_tokens_out = hs[:, 1 : 1 + num_mask_tokens, :]
    src = src.transpose(1, 2).reshape(b, c, h, w)
    ups = f"{p}.output_upscaling"
    up = F.conv_transpose2d(src, sd[f"{ups}.0.weight"], sd[f"{ups}.0.bias"], stride=2)
    up = F.gelu(sam_layer_norm_2d(sd, f"{ups}.1", up))
    up = F.gelu(F.conv_transpose2d(up, sd[f"{ups}.3.weight"], sd[f"{ups}.3.bias"], stride=2))
    hyper_in = torch.stack(
        [_mlp_head(sd, f"{p}.output_hypernetworks_mlps.{i}", mask_tokens_out[:, i, :]) for i in range(num_mask_tokens)],
        dim=1,
    )
    b, c, h, w = up.shape
    masks = (hyper_in @ up.reshape(b, c, h * w)).reshape(b, -1, h, w)
    iou_pred = _mlp_head(sd, f"{p}.iou_prediction_head", iou_token_out)
    mask_slice = slice(1, None) if multimask_output else slice(0, 1)
    return masks[:, mask_slice, :, :], iou_pred[:, mask_slice]


def postprocess_masks(masks: torch.Tensor, input_size, original_size, sam_size: int = SAM_SIZE) -> torch.Tensor:
    """``Sam.postprocess_masks`` (sam.py:133-162): bilinear (``align_corners=False``) to ``sam_size`` squared, crop
    the padding to ``input_size``, bilinear to ``original_size``."""
    masks = F.interpolate(masks, (sam_size, sam_size), mode="bilinear", align_corners=False)
    masks = masks[..., : input_size[0], : input_size[1]]
    return F.interpolate(masks, tuple(original_size), mode="bilinear", align_corners=False)


class SamPredictor:
    """``SamPredictor`` (segment_anything/predictor.py) over a full official-layout SAM state dict (see
    ``sam_state_dict_full``), with Trident's encoder: ``set_image`` also keeps ``last_attn`` / ``last_v``
    (what ``predictor.model.image_encoder.last_attn`` / ``last_v`` hold, trident.py:121,125).

    Defaults are ``vit_b``'s (build_sam.py:37-44, 62-98): 12 heads, window 14, global blocks (2, 5, 8, 11),
    1024 input, patch 16, a decoder with 8 heads."""

    def __init__(
        self, sd: dict, heads: int = 12, window: int = 14, global_attn_indexes=(2, 5, 8, 11),
        sam_size: int = SAM_SIZE, patch: int = SAM_PATCH, decoder_heads: int = 8, eps: float = 1e-6,
    ):  # fmt: skip
        self.sd, self.encoder_sd = sd, _sub(sd, "image_encoder.")
        self.heads, self.window, self.global_attn_indexes = heads, window, tuple(global_attn_indexes)
        self.sam_size, self.patch, self.decoder_heads, self.eps = sam_size, patch, decoder_heads, eps
        self.grid = sam_size // patch  # image_embedding_size (build_sam.py:65)
        self.features = self.last_attn = self.last_v = self.input_size = self.original_size = None

    def set_image(self, image: np.ndarray) -> None:
        """predictor.py:34-90: ``sam_preprocess`` then the encoder."""
        x, self.input_size, self.original_size = sam_preprocess(image, self.sam_size)
        self.features, self.last_attn, self.last_v = sam_image_encoder(
            self.encoder_sd, x, self.heads, self.window, self.global_attn_indexes, self.patch, self.eps
        )

    def predict_torch(self, point_coords, point_labels, boxes=None, mask_input=None, multimask_output=True,
                      return_logits=False):  # fmt: skip
        """predictor.py:168-243: prompts (already in the ``sam_size`` frame) through the prompt encoder, the mask
        decoder on ``self.features`` and ``get_dense_pe()``, ``postprocess_masks(low_res, input_size,
        original_size)`` and, unless ``return_logits``, ``> mask_threshold`` (0.0). Returns (masks, iou
        predictions, low-res logits)."""
        points = (point_coords, point_labels) if point_coords is not None else None
        sparse, dense = prompt_encoder(
            self.sd, points, boxes, mask_input, (self.grid, self.grid), (self.sam_size, self.sam_size)
        )
        low_res, iou = mask_decoder(
            self.sd, self.features, dense_pe(self.sd, (self.grid, self.grid)), sparse, dense, multimask_output,
            self.decoder_heads,
        )  # fmt: skip
        masks = postprocess_masks(low_res, self.input_size, self.original_size, self.sam_size)
        if not return_logits:
            masks = masks > MASK_THRESHOLD
        return masks, iou, low_res


def get_sam_feat(predictor: SamPredictor, image: np.ndarray, sam_heads: int, stride: int = SAM_PATCH):
    """trident.py:112-128: ``set_image``; the valid token grid ``(Hs, Ws) = (1.0 * input_h // stride, 1.0 *
    input_w // stride)``; the neck features cropped to it; the last block's attention viewed as [1, heads, g, g,
    g, g] (g = 64 hard-coded there: ``sam_size // patch`` here) and cropped to valid x valid, [1, heads, Hs*Ws,
    Hs*Ws] (the softmax still ran over the padded keys too); its values cropped, [1, heads, Hs, Ws, head_dim].
    Returns (features, attn, v, Hs, Ws)."""
    predictor.set_image(image)
    hs, ws = int(1.0 * predictor.input_size[0] // stride), int(1.0 * predictor.input_size[1] // stride)
    feats = predictor.features[:, :, :hs, :ws]
    g = predictor.grid
    attn = predictor.last_attn.view(1, sam_heads, g, g, g, g)[:, :, :hs, :ws, :hs, :ws]
    attn = attn.flatten(2, 3).flatten(3, 4)
    v = predictor.last_v[:, :, :hs, :ws, :]
    return feats, attn, v, hs, ws


# ---- CLIP side ----------------------------------------------------------------------------------


def preprocess_image(image: torch.Tensor, stride: int = 16, slide_crop: int = 336) -> torch.Tensor:
    """seg_utils/utils.py:9-25: unchanged when H and W are both multiples of ``stride`` (even if a side is
    below ``slide_crop``); otherwise the longer side L goes to ``ceil(L / stride) * stride``, ``new = int(side *
    dst / L)`` per side, each rounded UP to a multiple of ``stride`` and clamped to at least ``slide_crop``,
    bilinear (``align_corners=False``)."""
    longer_side = max(image.shape[2:])
    h, w = image.shape[2:]
    if h % stride == 0 and w % stride == 0:
        return image
    dst_longer = (longer_side // stride + 1) * stride if longer_side % stride else longer_side
    new_h, new_w = int(h * dst_longer / longer_side), int(w * dst_longer / longer_side)
    if new_h % stride:
        new_h = (new_h // stride + 1) * stride
    if new_w % stride:
        new_w = (new_w // stride + 1) * stride
    new_h, new_w = max(new_h, slide_crop), max(new_w, slide_crop)
    return F.interpolate(image, (new_h, new_w), mode="bilinear", align_corners=False)


def get_windowed_imgs(img: torch.Tensor, slide_crop: int = 336, slide_stride: int = 224, patch: int = 16):
    """trident.py:190-225: mmseg's grid (``h_grids = max(H - crop + stride - 1, 0) // stride + 1``; ``y2 = min(y1
    + crop, H)``, ``y1 = max(y2 - crop, 0)``), row-major; corners must be multiples of ``patch`` (assert);
    ``patch_locs`` = ``[y1, x1, y2, x2] // patch``; each crop zero-padded to multiples of 56
    (``compute_padsize``, trident.py:296-308, the same as ProxyCLIP's; a no-op for 336 crops) and all crops
    stacked into one batch. Returns (batch, paddings, patch_locs, (h_grids, w_grids))."""
    _, _, h_img, w_img = img.shape
    h_grids = max(h_img - slide_crop + slide_stride - 1, 0) // slide_stride + 1
    w_grids = max(w_img - slide_crop + slide_stride - 1, 0) // slide_stride + 1
    crops, paddings, patch_locs = [], [], []
    for h_idx in range(h_grids):
        for w_idx in range(w_grids):
            y1, x1 = h_idx * slide_stride, w_idx * slide_stride
            y2, x2 = min(y1 + slide_crop, h_img), min(x1 + slide_crop, w_img)
            y1, x1 = max(y2 - slide_crop, 0), max(x2 - slide_crop, 0)
            crop = img[:, :, y1:y2, x1:x2]
            assert y1 % patch == 0 and x1 % patch == 0 and y2 % patch == 0 and x2 % patch == 0
            patch_locs.append(torch.tensor([y1 // patch, x1 // patch, y2 // patch, x2 // patch]))
            pad = compute_padsize(crop.shape[2], crop.shape[3], 56)
            if any(pad):
                crop = F.pad(crop, pad)
            crops.append(crop)
            paddings.append(pad)
    return torch.cat(crops, dim=0), paddings, patch_locs, (h_grids, w_grids)


def custom_attn(sd: dict, block: str, x: torch.Tensor, ex_feats: torch.Tensor, heads: int, beta: float = 1.2,
                gamma: float = 3.0, token_size=(16, 16)) -> torch.Tensor:  # fmt: skip
    """open_clip/transformer.py:557-584 on ``x`` = ``ln_1`` of the last block's input WITHOUT the CLS token
    (line 525-527), [L, B, D]: CLIP's value projection per head (``common.custom_qkv``); the attention from the
    DINO map of ALL windows at once (``proxyclip.proxy_attention``, the same text as lines 567-576: channel-wise
    normalised tokens, cosine, ``(S - beta * mean(S)) * gamma`` with the mean over the whole [n_windows, N, N]
    tensor, ``< 0 -> -inf``, softmax, the same for every head); the values reshaped to ``token_size`` (which is
    (W // p, H // p), line 519, the window's width first: only square windows come out unscrambled) and resized
    bilinearly to the DINO grid; ``out_proj(A @ v)`` (``common.custom_out``). No residual, no MLP.
    Returns [h_dino * w_dino, B, D]."""
    _, bsz, embed_dim = x.shape
    head_dim = embed_dim // heads
    _, _, v = custom_qkv(sd, block, x, heads)
    _, _, h, w = ex_feats.shape
    weights = proxy_attention(ex_feats, heads, beta, gamma, v.dtype)
    v = v.reshape(bsz * heads, token_size[0], token_size[1], head_dim).permute(0, 3, 1, 2)
    v = F.interpolate(v, size=(h, w), mode="bilinear", align_corners=False)
    v = v.permute(0, 2, 3, 1).reshape(bsz * heads, h * w, head_dim)
    return custom_out(sd, block, weights, v, bsz)


def get_sam_sim(sam_v: torch.Tensor, sam_attn: torch.Tensor, cos_fac: float, heads: int,
                refine_neg_cos: bool = True) -> torch.Tensor:  # fmt: skip
    """open_clip/transformer.py:643-659: per SAM head, the cosine similarities ``C`` of the value vectors
    (``sam_v`` [1, h, Hs, Ws, d]); the per-query threshold ``tau = cos_fac * mean_heads mean_keys C`` [1, 1, N, 1];
    ``tau < 0 -> 0.6`` unless ``refine_neg_cos``; ``tau > 0.9 -> 0.9``; SAM's attention probabilities kept where
    ``C > tau`` (else 0), averaged over SAM's heads, rows renormalised to sum 1, repeated for CLIP's ``heads``.
    Returns [1, heads, N, N]."""
    v = F.normalize(sam_v.flatten(2, 3), dim=-1)
    sim = torch.einsum("b h m c, b h n c -> b h m n", v, v)
    thresh = cos_fac * sim.mean(dim=1, keepdim=True).mean(dim=-1, keepdim=True)
    if not refine_neg_cos:
        thresh = torch.where(thresh < 0.0, 0.6, thresh)
    thresh = torch.where(thresh > 0.9, 0.9, thresh)
    refined = torch.where(sim > thresh, sam_attn, torch.zeros_like(sam_attn)).mean(dim=1)
    weights = refined / refined.sum(dim=-1, keepdim=True)
    return weights.unsqueeze(0).repeat(1, heads, 1, 1)


def guidance_attn(
    x: torch.Tensor, heads: int, token_size, win_sizes, dst_coords, dst_vh: int, dst_vw: int, sam_attn, sam_v,
    cos_fac: float, vfm_token_size, refine_neg_cos: bool = True,
) -> torch.Tensor:  # fmt: skip
    """open_clip/transformer.py:586-640 on ``custom_attn``'s output [L, n_windows, D] (used directly: no
    residual, no MLP, ``out_proj`` not applied again):

    - each window back to [D, h_dino, w_dino]; if ``w_dino % token_size[1]`` (token_size = (W//p, H//p) of the
      window) is non-zero, ``ratio = round(h_dino / token_size[0])`` and a bilinear resize to
      ``token_size * ratio`` (e.g. ViT-H/14 with DINO/16: 21 -> 24), else ``ratio = w_dino // token_size[1]``;
    - splice: every window added into a zero canvas [1, D, dst_vh * ratio, dst_vw * ratio] at ``patch_locs *
      ratio`` (row-major window order), a count map accumulated, canvas / counts (overlaps averaged; the
      windows' 56-paddings are ignored, line 610-618);
    - the canvas resized bilinearly to SAM's valid grid (Hs, Ws) and aggregated with ``get_sam_sim``'s weights
      (the same for every head): ``out = W @ canvas`` (634-640);
    - Cityscapes (``sam_v`` / ``sam_attn`` lists, 621-633): the canvas split at ``width // 2``, each half resized
      to its SAM half's grid and aggregated with that half's weights, outputs concatenated along the width.

    Returns [Hs * Ws, 1, D]."""
    _, bsz, embed_dim = x.shape
    head_dim = embed_dim // heads
    win_h, win_w = win_sizes
    dst_coords = torch.stack(list(dst_coords))
    v_img = x.reshape(vfm_token_size[0], vfm_token_size[1], bsz, embed_dim).permute(2, 3, 0, 1).contiguous()
    if v_img.shape[-1] % token_size[1] != 0:
        ratio = int(round(vfm_token_size[0] / token_size[0]))
        v_img = F.interpolate(v_img, size=(token_size[0] * ratio, token_size[1] * ratio), mode="bilinear",
                              align_corners=False)  # fmt: skip
    else:
        ratio = v_img.shape[-1] // token_size[1]
    canvas = x.new_zeros(1, embed_dim, dst_vh * ratio, dst_vw * ratio)
    count = x.new_zeros(1, 1, dst_vh * ratio, dst_vw * ratio)
    for h_idx in range(win_h):
        for w_idx in range(win_w):
            c = dst_coords[h_idx * win_w + w_idx]
            canvas[0, :, c[0] * ratio : c[2] * ratio, c[1] * ratio : c[3] * ratio] += v_img[h_idx * win_w + w_idx]
            count[:, :, c[0] * ratio : c[2] * ratio, c[1] * ratio : c[3] * ratio] += 1
    canvas = canvas / count

    def aggregate(part, v, attn):
        weights = get_sam_sim(v, attn, cos_fac, heads, refine_neg_cos).type_as(x)
        part = F.interpolate(part, size=(v.shape[2], v.shape[3]), mode="bilinear", align_corners=False)
        part = part.reshape(1, heads, head_dim, -1).permute(0, 1, 3, 2)
        return torch.matmul(weights, part).view(1, heads, v.shape[2], v.shape[3], head_dim)

    if isinstance(sam_v, list):
        half = canvas.shape[3] // 2
        out = torch.cat(
            [aggregate(canvas[:, :, :, :half], sam_v[0], sam_attn[0]),
             aggregate(canvas[:, :, :, half:], sam_v[1], sam_attn[1])], dim=-2,
        ).flatten(2, 3)  # fmt: skip
    else:
        out = aggregate(canvas, sam_v, sam_attn).flatten(2, 3)
    return out.permute(2, 0, 1, 3).flatten(2).contiguous()


def trident_clip_features(
    sd: dict, windows: torch.Tensor, patch: int, heads: int, ex_feats: torch.Tensor, *, beta: float = 1.2,
    gamma: float = 3.0, **guidance,
) -> torch.Tensor:  # fmt: skip
    """Trident's ``VisionTransformer.forward`` (open_clip/transformer.py:502-535; ``encode_image``,
    open_clip/model.py:265-267) on all windows at once: ``common.embed`` (patches, CLS, position embeddings
    resized with the DINO-style ``scale_factor`` bicubic at non-native grids, 537-555, ``ln_pre``), every block
    but the last unchanged, CLS dropped, ``custom_attn`` on the last block's ``ln_1``, ``guidance_attn``,
    ``ln_post``, ``@ proj``. ``guidance``: the keyword arguments of ``guidance_attn`` other than ``x``, ``heads``,
    ``token_size``. Returns [1, Hs * Ws, P]: projected, unnormalised features on SAM's valid grid."""
    x = embed(sd, windows, patch)
    last = num_blocks(sd) - 1
    for index in range(last):
        x = resblock(sd, index, x, heads)
    x = x[1:]
    block = f"{VIS}.{last}"
    token_size = (windows.shape[-1] // patch, windows.shape[-2] // patch)  # 504 + 519: (h // p, w // p), w = height
    x = custom_attn(sd, block, layer_norm(sd, f"{block}.ln_1", x), ex_feats, heads, beta, gamma, token_size)
    x = guidance_attn(x, heads, token_size, **guidance)
    return layer_norm(sd, "visual.ln_post", x.permute(1, 0, 2)) @ sd["visual.proj"]


def read_sam_image(image_path, clip_stride: int = 16) -> np.ndarray:
    """trident.py:135-140: the ORIGINAL file re-read with ``cv2.imread``, BGR -> RGB, and ``cv2.resize`` (bilinear)
    so that H and W are rounded UP to multiples of the CLIP patch (``clip_stride = int(model_type[-2:])``,
    trident.py:45)."""
    image = cv2.cvtColor(cv2.imread(str(image_path)), cv2.COLOR_BGR2RGB)
    h, w = image.shape[:2]
    if h % clip_stride:
        h = (h // clip_stride + 1) * clip_stride
    if w % clip_stride:
        w = (w // clip_stride + 1) * clip_stride
    return cv2.resize(image, (w, h))


def trident_logits(
    image_path, img: torch.Tensor, ori_shape, sd: dict, dino_sd: dict, predictor: SamPredictor,
    query: torch.Tensor, *, slide_crop: int = 336, slide_stride: int = 224, beta: float = 1.2, gamma: float = 3.0,
    cos_fac: float = 1.2, refine_neg_cos: bool = True, is_cityscapes: bool = False, sam_refinement: bool = True,
    clip_patch: int = 16, dino_patch: int = 16, clip_heads: int = 12, dino_heads: int = 12, sam_heads: int = 12,
    dino_eps: float = 1e-6,
) -> torch.Tensor:  # fmt: skip
    """``get_trident_seg`` (trident.py:130-188): SAM on the re-read file (``read_sam_image``; Cityscapes: the left
    and right halves ``[:, :w//2]`` / ``[:, w//2:]`` separately, ``Ws = 2 * Ws_left``, then, when refining, the
    whole image set again, 141-152), the CLIP input ``preprocess_image``d and windowed, the DINO map of every
    window (``proxy_input``, ``get_intermediate_layers(x)[0]``, CLS dropped, [n, C, H/p, W/p], 162-177), the CLIP
    features, L2-normalised, ``@ query.T``, [1, Q, Hs, Ws], bilinear (``align_corners=False``) to ``ori_shape``.
    Leaves ``predictor`` holding the image the refinement uses. Returns [1, Q, H, W]."""
    stride = clip_patch
    tmp = read_sam_image(image_path, stride)
    if is_cityscapes:
        half = tmp.shape[1] // 2
        _, attn_1, v_1, hs_1, ws_1 = get_sam_feat(predictor, tmp[:, :half, :], sam_heads)
        _, attn_2, v_2, _, _ = get_sam_feat(predictor, tmp[:, half:, :], sam_heads)
        sam_attn, sam_v, sam_h, sam_w = [attn_1, attn_2], [v_1, v_2], hs_1, ws_1 * 2
        if sam_refinement:
            predictor.set_image(tmp)
    else:
        _, sam_attn, sam_v, sam_h, sam_w = get_sam_feat(predictor, tmp, sam_heads)

    processed = preprocess_image(img, stride, slide_crop)
    feat_h, feat_w = processed.shape[-2] // stride, processed.shape[-1] // stride
    windows, _, patch_locs, win_sizes = get_windowed_imgs(processed, slide_crop, slide_stride, stride)
    dino_in = proxy_input(windows)
    feat = dino_intermediate_layers(dino_sd, dino_in, dino_patch, dino_heads, n=1, eps=dino_eps)[0]
    vfm_h, vfm_w = dino_in.shape[-2] // dino_patch, dino_in.shape[-1] // dino_patch
    vfm_feats = feat[:, 1:, :].reshape(feat.shape[0], vfm_h, vfm_w, -1).permute(0, 3, 1, 2)

    features = trident_clip_features(
        sd, windows, clip_patch, clip_heads, vfm_feats, beta=beta, gamma=gamma, win_sizes=win_sizes,
        dst_coords=patch_locs, dst_vh=feat_h, dst_vw=feat_w, sam_attn=sam_attn, sam_v=sam_v, cos_fac=cos_fac,
        vfm_token_size=(vfm_h, vfm_w), refine_neg_cos=refine_neg_cos,
    )  # fmt: skip
    features = features / features.norm(dim=-1, keepdim=True)
    logits = features @ query.T
    logits = logits.permute(0, 2, 1).reshape(-1, logits.shape[-1], sam_h, sam_w)
    return F.interpolate(logits, size=tuple(ori_shape[:2]), mode="bilinear").float()


# ---- post-processing and SAM refinement ------------------------------------------------------------


def merge_background(probs: torch.Tensor, query_idx) -> torch.Tensor:
    """trident.py:266-270: when there are more names than classes, the background is the max over the first
    ``Q - (C - 1)`` names and the LAST ``C - 1`` names are the other classes, one each (only line 0 of the class
    file may hold synonyms; synonyms on another line would shift the classes silently). [Q, H, W] -> [C, H, W]."""
    num_cls, num_queries = int(max(query_idx)) + 1, len(query_idx)
    if num_cls == num_queries:
        return probs
    fg = probs[-num_cls + 1 :]
    bg = probs[: -num_cls + 1].max(0)[0]
    return torch.cat([bg.unsqueeze(0), fg], dim=0)


def label_connected(mask: np.ndarray) -> np.ndarray:
    """``skimage.measure.label(mask, connectivity=2)`` (seg_utils/utils.py:49) for a 0/1 mask: 8-connected
    components of the non-zero pixels, labelled 1..n in the raster order of each component's first pixel, 0 for
    the background. A breadth-first flood fill (neither scipy nor scikit-image is a dependency here)."""
    mask = np.asarray(mask) != 0
    height, width = mask.shape
    rows = mask.tolist()
    labels = np.zeros((height, width), dtype=np.int64)
    seen = [[False] * width for _ in range(height)]
    current = 0
    for y0, x0 in zip(*np.nonzero(mask), strict=True):
        y0, x0 = int(y0), int(x0)
        if seen[y0][x0]:
            continue
        current += 1
        seen[y0][x0] = True
        queue = deque([(y0, x0)])
        while queue:
            y, x = queue.popleft()
            labels[y, x] = current
            for ny in (y - 1, y, y + 1):
                if 0 <= ny < height:
                    row, seen_row = rows[ny], seen[ny]
                    for nx in (x - 1, x, x + 1):
                        if 0 <= nx < width and row[nx] and not seen_row[nx]:
                            seen_row[nx] = True
                            queue.append((ny, nx))
    return labels


def masks_to_boxes(masks: torch.Tensor) -> torch.Tensor:
    """``torchvision.ops.masks_to_boxes``: per mask, ``[min x, min y, max x, max y]`` of its non-zero pixels
    (inclusive), float32 [n, 4]."""
    boxes = torch.zeros((masks.shape[0], 4), dtype=torch.float)
    for index, mask in enumerate(masks):
        y, x = torch.where(mask != 0)
        boxes[index] = torch.stack([x.min(), y.min(), x.max(), y.max()]).float()
    return boxes


def split_connected_regions(segmentation: np.ndarray, seg_logits: torch.Tensor, split_last: bool = False,
                            minimal_area: int = 0, coarse_thresh: float = 0.0):  # fmt: skip
    """seg_utils/utils.py:27-69: for each class channel of the one-hot ``segmentation`` [C, H, W] (the last one
    skipped unless ``split_last``) whose probability map's max is >= ``coarse_thresh``: 8-connected regions
    (``label_connected``); regions with fewer than ``minimal_area`` pixels dropped; per region its mask (uint8),
    its mean probability, a point ``(x, y)`` at the first argmax of ``probability * mask`` (flattened, row-major)
    and its box (``masks_to_boxes``). Classes without regions keep ``[]`` entries. Returns (regions, boxes,
    scores, points) dicts keyed by class."""
    num, _, width = segmentation.shape
    regions, boxes, scores, points = {}, {}, {}, {}
    for c in range(num):
        if not split_last and c == num - 1:
            continue
        regions[c], points[c], scores[c], boxes[c] = [], [], [], []
        class_mask, class_logit = segmentation[c], seg_logits[c]
        if class_logit.max() < coarse_thresh:
            continue
        labeled = label_connected(class_mask)
        for region_label in range(1, int(labeled.max()) + 1):
            region_mask = (labeled == region_label).astype(np.uint8)
            if region_mask.sum() < minimal_area:
                continue
            scores[c].append(class_logit[torch.from_numpy(region_mask.astype(bool))].mean())
            max_pos = torch.argmax(class_logit * torch.tensor(region_mask))
            points[c].append(torch.tensor([max_pos % width, max_pos // width]))
            regions[c].append(region_mask)
        if len(regions[c]):
            regions[c] = torch.from_numpy(np.stack(regions[c]))
            boxes[c] = masks_to_boxes(regions[c])
    return regions, boxes, scores, points


def map_refinement_coarse(refined_masks, refined_logits, coarse_boxes, seg_logits, img_shape):
    """seg_utils/utils.py:71-83: per class with kept regions (in class order, as the masks were concatenated),
    ``L_c = union of its masks * max over its regions of (sigmoid(SAM logit) * p_c)``; ``pred = argmax_c L_c``
    (0 where every L_c is 0). Returns (pred [1, H, W], L [C, H, W])."""
    whole = torch.zeros([len(coarse_boxes), img_shape[0], img_shape[1]])
    cumsum = 0
    for i in range(len(coarse_boxes)):
        if isinstance(coarse_boxes[i], list):  # ``coarse_boxes[i] == []`` is only True for the empty list
            continue
        n = coarse_boxes[i].shape[0]
        mask = refined_masks[cumsum : cumsum + n, 0].sum(dim=0).bool()
        logit = (refined_logits[cumsum : cumsum + n, 0] * seg_logits[i]).max(dim=0)
        whole[i] = logit.values * mask
        cumsum += n
    return whole.argmax(0, keepdim=True), whole


def map_failed_regions(refined_masks, refined_logits, failed_regions, seg_logits, segmentation):
    """seg_utils/utils.py:85-90 (quirk kept): inside the union of the failed regions, ``L = max(L, p)``; the label
    update compares ``max_c p`` with the max of the ALREADY-UPDATED ``L`` (>= it), so it never fires: only the
    returned probabilities change."""
    failed_area = failed_regions.sum(dim=0, keepdim=True) != 0
    failed_logit = failed_area * seg_logits
    refined_logits = torch.where(failed_logit > refined_logits, failed_logit, refined_logits)
    refined_masks = torch.where(
        failed_logit.max(dim=0, keepdim=True)[0] > refined_logits.max(dim=0, keepdim=True)[0], segmentation,
        refined_masks,
    )  # fmt: skip
    return refined_masks, refined_logits


def sam_refinement(img, segmentations, seg_logits, num_classes: int, predictor: SamPredictor,
                   coarse_thresh: float = 0.0, minimal_area: int = 0, sam_mask_coff: float = 0.005,
                   sam_iou_thresh: float = 0.9):  # fmt: skip
    """seg_utils/utils.py:92-197 on the coarse ``segmentations`` [1, H, W] (long) and probabilities
    ``seg_logits`` [C, H, W], with ``predictor`` holding the (stride-resized) image:

    1. both halved (``H // 2, W // 2``: labels nearest, probabilities bilinear); where the halved max probability
       is < ``coarse_thresh`` (> 0) the label becomes C; one-hot with C + 1 channels, the last not split;
    2. ``split_connected_regions``;
    3. per class with regions: the mask prompt = the halved probability map resized (bilinear) so that its longer
       side is ``4 g`` (256 at 1024, using the FILE's aspect, ``get_preprocess_shape(*img.shape[:2], 256)``),
       zero-padded to ``4g x 4g``, ``p > coarse_thresh ? sam_mask_coff * p : 0``, passed UNBATCHED [1, 4g, 4g]
       (see ``prompt_encoder``); boxes / points (cast to integers, ``type_as(segmentations)``) mapped from the
       halved frame ``[dh, dw]`` to SAM's with ``apply_boxes_torch`` / ``apply_coords_torch``; one point (label 1)
       and one box per region, ``multimask_output=False``, on ``predictor.features``; regions with IoU
       prediction <= ``sam_iou_thresh`` are "failed";
    4. no kept region anywhere: the coarse result unchanged (``refined_logits`` is then ``seg_logits``);
    5. the kept low-res logits ``postprocess_masks``ed to the predictor's original size (the stride-resized
       image), resized (bilinear) to the file's size when that differs and re-thresholded at 0;
       ``map_refinement_coarse`` with ``sigmoid``; pixels where every class's refined value is 0 keep the coarse
       label; ``map_failed_regions`` (probabilities only).

    ``img``: path (re-read with cv2, RGB) or HxWx3 array. Returns (labels [1, H, W], IoU scores or None,
    probabilities [C, H, W], kept boxes in the full frame)."""
    dh, dw = seg_logits.shape[-2] // DOWN_RATIO, seg_logits.shape[-1] // DOWN_RATIO
    seg_down = F.interpolate(segmentations.unsqueeze(0).float(), [dh, dw], mode="nearest").squeeze(0).long()
    logits_down = F.interpolate(seg_logits.unsqueeze(0), [dh, dw], mode="bilinear", align_corners=False).squeeze(0)
    if isinstance(img, str) or hasattr(img, "__fspath__"):
        img = cv2.cvtColor(cv2.imread(str(img)), cv2.COLOR_BGR2RGB)
    if coarse_thresh > 0:
        seg_down[logits_down.max(0, keepdim=True)[0] < coarse_thresh] = num_classes
        cls_pred = F.one_hot(seg_down.squeeze(0).long(), num_classes=num_classes + 1).permute(2, 0, 1).float()
        split_last = False
    else:
        cls_pred = F.one_hot(seg_down.squeeze(0).long(), num_classes=num_classes).permute(2, 0, 1).float()
        split_last = True
    regions, boxes, _, points = split_connected_regions(cls_pred.numpy(), logits_down, split_last, minimal_area,
                                                        coarse_thresh)  # fmt: skip
    mask_size = 4 * predictor.grid  # 256 hard-coded in seg_utils/utils.py:142-145
    combined_boxes, cls_masks, cls_scores, cls_logits, failed = [], [], [], [], []
    predictor.features = predictor.features.float()  # 133
    for i in range(num_classes):
        tmp_r, tmp_b, tmp_p = regions.get(i, []), boxes.get(i, []), points.get(i, [])
        if isinstance(tmp_r, list):
            continue
        prompt = logits_down[i].unsqueeze(0)
        new_h, new_w = get_preprocess_shape(img.shape[0], img.shape[1], mask_size)
        prompt = F.interpolate(prompt.unsqueeze(0), [new_h, new_w], mode="bilinear", align_corners=False).squeeze(0)
        prompt = F.pad(prompt, (0, mask_size - new_w, 0, mask_size - new_h), mode="constant", value=0)
        prompt = torch.where(prompt > coarse_thresh, sam_mask_coff * prompt, torch.tensor(0)).float()
        box = sam_apply_boxes(tmp_b.long(), [dh, dw], predictor.sam_size).float()
        point = sam_apply_coords(torch.stack(tmp_p).long(), [dh, dw], predictor.sam_size).unsqueeze(1)
        mask, score, logit = predictor.predict_torch(
            point_coords=point.float(), point_labels=torch.ones([point.shape[0], 1]), boxes=box,
            mask_input=prompt, multimask_output=False,
        )  # fmt: skip
        valid = (score > sam_iou_thresh).squeeze(-1)
        if valid.sum() != tmp_r.shape[0]:
            failed.append(tmp_r[~valid])
        if valid.sum() == 0:
            boxes[i] = []
            continue
        cls_masks.append(mask[valid])
        cls_scores.append(score[valid])
        cls_logits.append(logit[valid])
        boxes[i] = boxes[i][valid]
        combined_boxes.append(tmp_b[valid])
    if len(combined_boxes) == 0:
        return segmentations, None, seg_logits, combined_boxes
    combined_boxes = torch.cat(combined_boxes, dim=0) * DOWN_RATIO
    masks, scores, logits = torch.cat(cls_masks), torch.cat(cls_scores), torch.cat(cls_logits)
    logits = postprocess_masks(logits, predictor.input_size, predictor.original_size, predictor.sam_size)
    if logits.shape[-1] != img.shape[1] or logits.shape[-2] != img.shape[0]:
        logits = F.interpolate(logits, img.shape[:2], mode="bilinear", align_corners=False)
        masks = logits > MASK_THRESHOLD
    refined_masks, refined_logits = map_refinement_coarse(masks, logits.sigmoid(), boxes, seg_logits, img.shape)
    refined_masks = torch.where(refined_logits.sum(dim=0, keepdim=True) == 0, segmentations, refined_masks)
    if failed:
        failed = torch.cat(failed, dim=0)
        failed = F.interpolate(failed.unsqueeze(0).float(), img.shape[:2], mode="nearest").squeeze(0).long()
        refined_masks, refined_logits = map_failed_regions(refined_masks, refined_logits, failed, seg_logits,
                                                           segmentations)  # fmt: skip
    return refined_masks, scores, refined_logits, combined_boxes


def trident_predict(
    image_path, img: torch.Tensor, ori_shape, sd: dict, dino_sd: dict, sam_sd: dict, query: torch.Tensor,
    query_idx, *, slide_crop: int = 336, slide_stride: int = 224, prob_thd: float = 0.0, logit_scale: float = 40,
    beta: float = 1.2, gamma: float = 3.0, sam_refinement: bool = True, sam_iou_thresh: float = 0.8,
    cos_fac: float = 1.2, refine_neg_cos: bool = True, coarse_thresh: float = 0.2, minimal_area: int = 225,
    sam_mask_coff: float = 0.005, is_cityscapes: bool = False, clip_patch: int = 16, dino_patch: int = 16,
    clip_heads: int = 12, dino_heads: int = 12, sam_heads: int = 12, sam_window: int = 14,
    sam_global_attn_indexes=(2, 5, 8, 11), sam_size: int = SAM_SIZE, sam_patch: int = SAM_PATCH,
    sam_decoder_heads: int = 8, dino_eps: float = 1e-6, sam_eps: float = 1e-6,
):  # fmt: skip
    """``Trident.predict`` + ``postprocess_result`` (trident.py:227-294) for one image: ``trident_logits``,
    ``* logit_scale``, softmax over the names, ``merge_background``, argmax, max probability < ``prob_thd`` ->
    class 0, then (``sam_refinement``) ``sam_refinement`` on the re-read file. PAMR is off (``pamr_steps=0``,
    trident.py:31,96) and not reproduced.

    ``img``: the mmseg-preprocessed CLIP-normalised image [1, 3, h, w] (``common.preprocess`` with the config's
    ``scale``); ``image_path``: the original file (SAM and the refinement re-read it); ``ori_shape``: its (H, W);
    ``sd``: OpenAI-layout CLIP (``common.openai_state_dict``); ``dino_sd``: DINO layout
    (``proxies.dino_state_dict``); ``sam_sd``: official SAM layout (``sam_state_dict_full``); ``query``: [Q, P]
    normalised text features (``common.query_features`` with the 80 ``openai_imagenet_template`` prompts,
    trident.py:63-72); ``query_idx``: ``get_cls_idx``'s.

    Defaults (the official run: configs/base_config.py over the segmentor's defaults):
    ``slide_crop=336`` (base_config.py:15), ``slide_stride=224`` (base_config.py:14; segmentor default 112,
    trident.py:30), ``prob_thd=0.0`` (trident.py:30), ``logit_scale=40`` (trident.py:30), ``beta=1.2``
    (base_config.py:11), ``gamma=3.0`` (trident.py:30), ``sam_refinement=True`` (dist_test.sh:3 ``--sam_refine``
    -> eval.py:63; base_config.py:3 says False), ``sam_iou_thresh=0.8`` (base_config.py:17; kwarg default 0.9,
    trident.py:93), ``cos_fac=1.2`` (base_config.py:12; trident.py:91), ``refine_neg_cos=True`` (base_config.py:13;
    trident.py:92), ``coarse_thresh=0.2`` (base_config.py:18; segmentor default 0.10, trident.py:33),
    ``minimal_area=225`` (base_config.py:19; trident.py:33), ``sam_mask_coff=0.005`` (trident.py:33),
    ``is_cityscapes=False`` (``dataset_type`` default 'PascalVOCDataset', trident.py:61), ``clip_patch=16``
    (``int('ViT-B/16'[-2:])``, trident.py:45, base_config.py:8), ``dino_patch=16`` / ``dino_heads=12`` /
    ``dino_eps=1e-6`` (``dino_vitb16``, trident.py:48; dino hubconf.py:52-64, vision_transformer.py ``vit_base``),
    ``clip_heads=12`` (ViT-B/16), ``sam_heads=12`` (trident.py:97-98, ``vit_b``, base_config.py:16),
    ``sam_window=14``, ``sam_global_attn_indexes=(2, 5, 8, 11)``, ``sam_size=1024``, ``sam_patch=16``,
    ``sam_decoder_heads=8`` (build_sam.py:37-44, 62-98).

    Returns (labels [H, W] = the official ``pred_sem_seg`` squeezed, probabilities [C, H, W] = the official
    ``seg_logits``: the refined class maps ``L`` when the refinement kept any region, else the softmax
    probabilities)."""
    predictor = SamPredictor(sam_sd, sam_heads, sam_window, sam_global_attn_indexes, sam_size, sam_patch,
                             sam_decoder_heads, sam_eps)  # fmt: skip
    logits = trident_logits(
        image_path, img, ori_shape, sd, dino_sd, predictor, query, slide_crop=slide_crop, slide_stride=slide_stride,
        beta=beta, gamma=gamma, cos_fac=cos_fac, refine_neg_cos=refine_neg_cos, is_cityscapes=is_cityscapes,
        sam_refinement=sam_refinement, clip_patch=clip_patch, dino_patch=dino_patch, clip_heads=clip_heads,
        dino_heads=dino_heads, sam_heads=sam_heads, dino_eps=dino_eps,
    )  # fmt: skip
    probs = (logits[0] * logit_scale).softmax(0)
    probs = merge_background(probs, query_idx)
    pred = probs.argmax(0, keepdim=True)
    pred[probs.max(0, keepdim=True)[0] < prob_thd] = 0
    if sam_refinement:
        num_cls = int(max(query_idx)) + 1
        pred, _, probs, _ = sam_refinement_fn(image_path, pred, probs, num_cls, predictor, coarse_thresh,
                                              minimal_area, sam_mask_coff, sam_iou_thresh)  # fmt: skip
    return pred[0], probs


sam_refinement_fn = sam_refinement  # ``trident_predict`` has a ``sam_refinement`` flag of the same name
