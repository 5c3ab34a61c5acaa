"""Proxy vision models: a second frozen vision foundation model whose features guide CLIP's last block (ProxyCLIP).

A proxy is a transformers model, kept under ``OVSegModel.proxy_model`` and described by ``config.proxy_config``:

=========  ====================================================  ==============================================
kind       transformers model (``model_type``)                    ProxyCLIP's (mc-lan/ProxyCLIP@e7b767f)
=========  ====================================================  ==============================================
``dino``   ``ViTModel`` (``vit``; facebook/dino-vitb8 ...)         torch.hub ``dino_vitb8``
                                                                   (proxyclip_segmentor.py:53)
``dinov2`` ``Dinov2WithRegistersModel`` (``dinov2_with_registers``) torch.hub ``dinov2_vitb14_reg`` (57); also
           or ``Dinov2Model`` (``dinov2``)                          ``dinov2_vitb14`` (not used by ProxyCLIP)
``sam``    ``SamVisionModel`` (``sam_vision_model``; a SamModel's  ``sam_model_registry['vit_b']`` (46)
           vision tower)
=========  ====================================================  ==============================================

[`proxy_features`] gives what ProxyCLIP's ``forward_feature`` passes to CLIP as ``external_feats``
(proxyclip_segmentor.py:106-166), computed by the transformers module on the same weights:

- the input is the CLIP-normalised window un-normalised with CLIP's mean/std and re-normalised with ImageNet's
  (113-114; myutils.py:11-15), in float32, then cast to the proxy's dtype (116: ProxyCLIP runs it in fp16);
- DINO: the last block's tokens through the final LayerNorm (``get_intermediate_layers(x)[0]``, 132), CLS
  dropped, as a [B, C, H/8, W/8] map (154); position embeddings resized as DINO's own code does (bicubic,
  ``scale_factor=(n + 0.1) / N`` in the weights' dtype, facebookresearch/dino@7c446df:vision_transformer.py:
  174-194), not with transformers' ``size=``: the two differ at every non-native grid (0.75 on features of
  magnitude 5 at 336x336, measured on random weights);
- DINOv2: ``get_intermediate_layers(x, reshape=True)[0]`` (159): the final LayerNorm's patch tokens, CLS and
  registers dropped. The registers model resizes its table with ``size=`` and antialiasing in float32
  (facebookresearch/dinov2@b8931f7:dinov2/hub/backbones.py:113-125, vision_transformer.py:180-212), which is
  what transformers does; the model without registers uses offset 0.1 and ``scale_factor`` without
  antialiasing (backbones.py:18-29), bound here as for DINO;
- SAM: the window stretched to 1024x1024 (bilinear, ``align_corners=False``; not SAM's own resize-and-pad) and
  the image encoder's neck output [B, 256, 64, 64] (118-122).

ProxyCLIP's code assumes square windows: every branch takes the proxy grid's two sides from the window height
(121, 149, 158, 164), DINO's tokens are reshaped to ``(H/8, H/8, -1)`` (154) and CLIP's values are read as a
(W/16, H/16) grid (open_clip/transformer.py:504, 521, 580). ``square_grid=True`` reproduces this (the
``proxyclip`` presets); on a square window, the only kind its protocols make, it equals the true grid. Where
the official code raises on a non-square window (DINOv2's logits reshape, 179) the true grid is used.
"""

from __future__ import annotations

import math
import types
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

PROXY_KINDS = ("dino", "dinov2", "sam")

#: transformers ``model_type`` -> proxy kind.
MODEL_TYPE_KINDS = {"vit": "dino", "dinov2": "dinov2", "dinov2_with_registers": "dinov2", "sam_vision_model": "sam"}

#: DINO's LayerNorm eps (facebookresearch/dino@7c446df:vision_transformer.py:250-254); transformers' ViTConfig
#: defaults to 1e-12, which the Hub's DINO configs may carry.
DINO_LAYER_NORM_EPS = 1e-6


def proxy_kind_of(config: Any) -> str:
    """The proxy kind of a transformers config (see ``MODEL_TYPE_KINDS``); ``ValueError`` for anything else."""
    model_type = getattr(config, "model_type", None)
    if model_type not in MODEL_TYPE_KINDS:
        raise ValueError(
            f"a {model_type!r} model cannot be a proxy: use DINO (a ViT checkpoint such as facebook/dino-vitb8), "
            "DINOv2 (facebook/dinov2-with-registers-base, facebook/dinov2-base) or SAM (facebook/sam-vit-base)"
        )
    return MODEL_TYPE_KINDS[model_type]


def proxy_patch_size(config: Any) -> int:
    """The pixel multiple a proxy's input needs: its patch size (1 for SAM, whose input is stretched)."""
    if proxy_kind_of(config) == "sam":
        return 1
    patch = config.patch_size
    return patch if isinstance(patch, int) else patch[0]


def default_window_multiple(clip_patch: int, proxy_config: Any | None) -> int:
    """The multiple windows are padded to when ``window_multiple`` is None: CLIP's patch size, or its least common
    multiple with the proxy's (DINOv2 /14 beside CLIP /16: 112)."""
    return clip_patch if proxy_config is None else math.lcm(clip_patch, proxy_patch_size(proxy_config))


def official_position_interpolation(offset: float, in_float32: bool):
    """A replacement for a ViT/DINOv2 embeddings module's ``interpolate_pos_encoding(embeddings, height, width)``
    that resizes the position table as DINO's and DINOv2's own code do: bicubic with ``scale_factor=((rows +
    offset) / N, (cols + offset) / N)`` (torch then samples at ``N / (rows + offset)``, not ``N / rows`` as
    ``size=`` does), no antialiasing, in float32 or the table's dtype; the native square grid is returned as is
    (dino vision_transformer.py:174-194; dinov2 vision_transformer.py:180-212 with ``interpolate_offset=0.1``)."""

    def interpolate_pos_encoding(self, embeddings: torch.Tensor, height: int, width: int) -> torch.Tensor:
        table = self.position_embeddings
        count = table.shape[1] - 1
        patch = self.patch_embeddings.patch_size
        patch_h, patch_w = (patch, patch) if isinstance(patch, int) else patch
        rows, cols = height // patch_h, width // patch_w
        if embeddings.shape[1] - 1 == count and rows == cols:
            return table
        side, dim = math.isqrt(count), table.shape[-1]
        grid = (table.float() if in_float32 else table)[:, 1:].reshape(1, side, side, dim).permute(0, 3, 1, 2)
        scale = ((rows + offset) / side, (cols + offset) / side)
        grid = F.interpolate(grid, scale_factor=scale, mode="bicubic", align_corners=False)
        grid = grid.permute(0, 2, 3, 1).reshape(1, rows * cols, dim).to(table.dtype)
        return torch.cat([table[:, :1], grid], dim=1)

    return interpolate_pos_encoding


def build_proxy_model(config: Any) -> nn.Module:
    """The transformers model of a proxy config, with DINO's / DINOv2's official position-embedding resize bound
    to its embeddings (random weights: ``from_pretrained`` or [`load_proxy`] fills them)."""
    from transformers import Dinov2Model, Dinov2WithRegistersModel, SamVisionModel, ViTModel

    kind = proxy_kind_of(config)
    if kind == "sam":
        return SamVisionModel._from_config(config)
    if config.model_type == "dinov2_with_registers":
        return Dinov2WithRegistersModel._from_config(config)  # transformers' resize is the registers model's own
    if kind == "dino":
        model = ViTModel._from_config(config, add_pooling_layer=False)
        interpolation = official_position_interpolation(offset=0.1, in_float32=False)
    else:
        model = Dinov2Model._from_config(config)
        interpolation = official_position_interpolation(offset=0.1, in_float32=True)
    model.embeddings.interpolate_pos_encoding = types.MethodType(interpolation, model.embeddings)
    return model


def proxy_pixels(pixel_values: torch.Tensor) -> torch.Tensor:
    """CLIP-normalised [B, 3, H, W] -> ImageNet-normalised, in float32: un-normalised with CLIP's constants and
    re-normalised with ImageNet's (proxyclip_segmentor.py:79-80, 113-114; transformers' copies of both)."""
    mean, std = (torch.tensor(v, device=pixel_values.device).view(1, 3, 1, 1) for v in
                 (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD))  # fmt: skip
    net_mean, net_std = (torch.tensor(v, device=pixel_values.device).view(1, 3, 1, 1) for v in
                         (IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD))  # fmt: skip
    return (pixel_values.float() * std + mean - net_mean) / net_std


def proxy_features(model: nn.Module, pixel_values: torch.Tensor, square_grid: bool = False) -> torch.Tensor:
    """The proxy's feature map [B, C, h, w] of CLIP-normalised windows [B, 3, H, W] (see the module docstring).

    ``square_grid``: DINO's tokens are reshaped with the window height for both sides, as ProxyCLIP's code does
    (proxyclip_segmentor.py:149, 154: on a non-square window the tokens are regrouped into an ``H/8 x H/8`` grid
    with proportionally more channels; where that reshape raises there, the true grid is used)."""
    kind = proxy_kind_of(model.config)
    param = next(model.parameters())
    pixels = proxy_pixels(pixel_values).to(param.dtype)
    if kind == "sam":
        size = (model.config.image_size, model.config.image_size)
        pixels = F.interpolate(pixels, size=size, mode="bilinear", align_corners=False)
        return model(pixel_values=pixels).last_hidden_state
    batch, _, height, width = pixels.shape
    patch = proxy_patch_size(model.config)
    rows, cols = height // patch, width // patch
    if kind == "dino":
        tokens = model(pixel_values=pixels, interpolate_pos_encoding=True).last_hidden_state[:, 1:]
        if square_grid and tokens[0].numel() % (rows * rows) == 0:  # else the official reshape raises
            cols = rows
    else:
        registers = getattr(model.config, "num_register_tokens", 0) if model.config.model_type != "dinov2" else 0
        tokens = model(pixel_values=pixels).last_hidden_state[:, 1 + registers :]
    return tokens.reshape(batch, rows, cols, -1).permute(0, 3, 1, 2)


def load_proxy(source: str, **options: Any) -> tuple[Any, nn.Module]:
    """``(config, model)`` of a proxy from a transformers folder or Hub repo id (a DINO ``ViTModel``, a DINOv2 model
    or a ``SamModel``, whose vision tower is kept), on the CPU in float32. DINO's LayerNorm eps is set to its
    official 1e-6. ``options``: ``from_pretrained`` options (``local_files_only``). Raises ``ValueError`` naming
    the problem."""
    from transformers import AutoConfig, AutoModel

    try:
        config = AutoConfig.from_pretrained(source, **options)
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read the proxy {source!r}: {str(error).splitlines()[0][:300]}") from None
    loaded = AutoModel.from_pretrained(source, dtype=torch.float32, **options)
    if config.model_type == "sam":
        config, weights = config.vision_config, {
            k: v for k, v in loaded.state_dict().items() if k.startswith("vision_encoder.")
        }
    else:
        weights = {k: v for k, v in loaded.state_dict().items() if not k.startswith("pooler.")}
    proxy_kind_of(config)
    if config.model_type == "vit":
        config.layer_norm_eps = DINO_LAYER_NORM_EPS
    model = build_proxy_model(config)
    model.load_state_dict(weights, strict=True)
    return config, model.eval()


__all__ = [
    "DINO_LAYER_NORM_EPS",
    "MODEL_TYPE_KINDS",
    "PROXY_KINDS",
    "build_proxy_model",
    "default_window_multiple",
    "load_proxy",
    "official_position_interpolation",
    "proxy_features",
    "proxy_kind_of",
    "proxy_patch_size",
    "proxy_pixels",
]
