"""hf_ovseg: training-free open-vocabulary semantic segmentation on a frozen CLIP.

The model is CLIP with its last vision block replaced, read top to bottom:

1. patch and position embeddings (position embeddings interpolated as ``position_interpolation`` says), then
   blocks 1..L-1 of the vision tower, unchanged (the hidden states that later steps read are kept);
2. block L: its attention is the configured ``attention_mode`` (``"gated"`` = module 2), with no residual
   and no MLP unless configured; ``attention_mode="sfp"`` replaces this step by SFP's whole last stage, and
   ``attention_mode="proxy"`` by ProxyCLIP's: CLIP's values aggregated on the proxy model's grid by the proxy's
   feature similarities (``proxy.py`` computes the proxy's features);
3. module 1 (outlier suppression) on block L's output patch tokens (with a proxy: on CLIP's values, before the
   proxy aggregation), the outliers scored with block L's own vanilla attention (or block L-1's,
   ``outlier_score_layer="penultimate"``);
4. post-layernorm and visual projection, then module 3 (global debiasing) with the projected CLS token;
5. optionally SimFeatUp (``feature_upsampling``, when the model carries an upsampler): the patch features are
   upsampled to the crop's resolution, guided by the image;
6. cosine similarity with the text embeddings times ``dense_logit_scale``: dense logits [B, K, rows, cols].

The math lives in ``modules.py`` (and ``upsampler.py``, ``proxy.py``) as pure tensor functions; this file only
wires them into CLIP. It is self-contained apart from those files and ``configuration_ovseg.py``, which
``save_pretrained`` copies beside it so that a saved folder loads with ``trust_remote_code=True``.

Every method knob is read from ``settings``, an [`OVSegConfig`] passed to ``forward`` (a copy made by
``config.with_method(...)``), or from the model's own config when none is given: a call never changes the
model, so one model can serve threads that use different methods at once.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPModel, CLIPTextModel, CLIPVisionConfig, CLIPVisionModel, SamModel
from transformers.models.clip.modeling_clip import CLIPPreTrainedModel
from transformers.utils import ModelOutput, logging

from .configuration_ovseg import (
    SFP_AGGREGATION_LAYER,
    SFP_FUSION_LAYERS,
    SFP_RES_SCALE,
    SFP_SIMILARITY_THRESHOLD,
    OVSegConfig,
)
from .modules import (
    attention_probs,
    global_debias,
    outlier_scores,
    proxy_attention,
    replace_with_neighbour_mean,
    sfp_attention,
    sfp_grid_positions,
    sfp_lof_outliers,
    sfp_norm_outliers,
    sfp_outliers,
    sfp_similarity_probs,
    similarity_aggregate,
    similarity_map,
    suppress_outliers,
    thresholded_similarity,
    unit,
    vanilla_attention,
)
from .proxy import build_proxy_model, default_window_multiple, proxy_features
from .upsampler import build_feature_upsampler, compute_dtype

logger = logging.get_logger(__name__)

#: MaskCLIP's mmseg ViT runs every block with this LayerNorm eps (configs/_base_/models/maskclip_vit16.py:22).
MASKCLIP_LAYER_NORM_EPS = 1e-6


@dataclass
class OVSegVisionOutput(ModelOutput):
    """Output of [`OVSegVisionModel`].

    last_hidden_state: [B, 1+N, D] tokens of the patched last block (module 1 applied), before post-layernorm.
    pooler_output: [B, D] post-layernormed CLS token of the patched block.
    grid_size: (rows, cols) patch grid, N = rows * cols.
    outlier_indices: [B, k] patch indices replaced by module 1 (or SFP's purification), or None when off.
    """

    last_hidden_state: torch.Tensor | None = None
    pooler_output: torch.Tensor | None = None
    grid_size: tuple[int, int] | None = None
    outlier_indices: torch.Tensor | None = None


@dataclass
class OVSegDenseFeatures(ModelOutput):
    """Dense image features of [`OVSegModel.get_dense_image_features`].

    patch_embeds: [B, N, P] projected and debiased patch features (not normalised); with SimFeatUp, one per
        pixel of the crop (N = H * W).
    cls_embeds: [B, P] projected CLS feature of the same patched block.
    grid_size: (rows, cols) of ``patch_embeds`` (the crop's pixel size with SimFeatUp).
    outlier_indices: [B, k] or None.
    """

    patch_embeds: torch.Tensor | None = None
    cls_embeds: torch.Tensor | None = None
    grid_size: tuple[int, int] | None = None
    outlier_indices: torch.Tensor | None = None


@dataclass
class OVSegOutput(ModelOutput):
    """Output of [`OVSegModel.forward`].

    logits: [B, K, rows, cols] ``dense_logit_scale * (cos(patch, text) + cls_logit_lambda * cos(cls, text))``;
        with SimFeatUp [B, K, H, W], computed one crop at a time from the per-pixel features.
    patch_embeds: [B, N, P] of the patch grid (SimFeatUp's per-pixel features are not kept: see
        ``get_dense_image_features``). text_embeds: [K, P] normalised. grid_size: of ``logits``. outlier_indices
        as above.
    """

    logits: torch.Tensor | None = None
    patch_embeds: torch.Tensor | None = None
    text_embeds: torch.Tensor | None = None
    grid_size: tuple[int, int] | None = None
    outlier_indices: torch.Tensor | None = None


def check_pixel_values(pixel_values: torch.Tensor, patch_size: int) -> tuple[int, int]:
    """Validate a [B, 3, H, W] batch whose sides are multiples of ``patch_size``; return the grid (rows, cols)."""
    if not isinstance(pixel_values, torch.Tensor) or pixel_values.dim() != 4:
        shape = tuple(pixel_values.shape) if isinstance(pixel_values, torch.Tensor) else type(pixel_values).__name__
        raise ValueError(f"pixel_values must be a [batch, channels, height, width] tensor, got {shape}")
    height, width = pixel_values.shape[-2:]
    if height < patch_size or width < patch_size:
        raise ValueError(f"image of {height}x{width} pixels is smaller than one {patch_size}x{patch_size} patch")
    if height % patch_size or width % patch_size:
        raise ValueError(
            f"height and width ({height}x{width}) must be multiples of the patch size {patch_size}; "
            "resize or pad the image (the pipeline does this for you)"
        )
    return height // patch_size, width // patch_size


def interpolate_position_embeddings(position: torch.Tensor, grid_size: tuple[int, int], mode: str) -> torch.Tensor:
    """Position embeddings [1+g0², D] of a square g0 x g0 grid, for a ``rows x cols`` grid: -> [1+rows*cols, D].

    ``"scale_factor"``: bicubic with ``scale_factor=((rows+0.1)/g0, (cols+0.1)/g0)``, only when the number of
    patches differs (wangf3014/SCLIP@b56bd30:clip/model.py:239-240, 263-281; the same in NACLIP, ClearCLIP,
    SegEarth-OV and SFP). ``"size"``: bicubic to ``(rows, cols)`` unless the grid is the native square one
    (Hugging Face ``CLIPVisionEmbeddings.interpolate_pos_encoding``). ``"size_if_count_changes"``: the same resize,
    skipped whenever the number of patches is the native one, even on a non-square grid such as 7 x 28 at
    patch 16 (MaskCLIP, chongzhou96/MaskCLIP@245d31f:mmseg/models/backbones/vit.py:368, resized at 405-410).
    Computed in float32, as the anchors do (their position embeddings stay float32 under fp16).
    """
    rows, cols = grid_size
    num_positions = position.shape[0] - 1
    side = math.isqrt(num_positions)
    if rows * cols == num_positions and (mode != "size" or rows == cols):
        return position
    grid = position[1:].float().reshape(1, side, side, -1).permute(0, 3, 1, 2)
    if mode == "scale_factor":
        scale = ((rows + 0.1) / side, (cols + 0.1) / side)
        grid = F.interpolate(
            grid, scale_factor=scale, mode="bicubic", align_corners=False, recompute_scale_factor=False
        )
    else:
        grid = F.interpolate(grid, size=(rows, cols), mode="bicubic", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(rows * cols, -1).to(position.dtype)
    return torch.cat([position[:1], grid])


def project_heads(attn: nn.Module, states: torch.Tensor, names: tuple[str, ...]) -> list[torch.Tensor]:
    """Per-head projections [B, h, T, d] of ``states`` [B, T, D] by a CLIP attention's ``{name}_proj``."""
    batch, tokens, _ = states.shape
    return [
        getattr(attn, f"{name}_proj")(states).view(batch, tokens, attn.num_heads, attn.head_dim).transpose(1, 2)
        for name in names
    ]


def scoring_attention(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """Vanilla attention probabilities [B, h, T, T] in float32 at least, for the outlier tests: their ratios of
    tiny probabilities (``A[0, i] / A[i, i]``) underflow and overflow in float16."""
    work = torch.promote_types(q.dtype, torch.float32)
    return vanilla_attention(q.to(work), k.to(work), scale)


def attend(attn: nn.Module, probs: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``out_proj`` of the heads' ``probs @ values``: [B, h, Tq, T] x [B, h, T, d] -> [B, Tq, D]."""
    batch, _, queries, _ = probs.shape
    return attn.out_proj(torch.matmul(probs.to(values.dtype), values).transpose(1, 2).reshape(batch, queries, -1))


class OVSegVisionModel(CLIPVisionModel):
    """CLIP vision tower with the patched last block. Parameter names are those of [`CLIPVisionModel`].

    ``method_config`` is the [`OVSegConfig`] whose knobs are read when ``forward`` gets no ``settings``; by
    default the ``seed`` preset.
    """

    def __init__(self, config: CLIPVisionConfig, method_config: OVSegConfig | None = None) -> None:
        super().__init__(config)
        if method_config is None:
            method_config = OVSegConfig(vision_config=config.to_dict())
        self.method_config = method_config

    def forward(
        self,
        pixel_values: torch.Tensor,
        settings: OVSegConfig | None = None,
        proxy_map: torch.Tensor | None = None,
        **kwargs: Any,
    ):
        """pixel_values [B, 3, H, W] with H, W multiples of the patch size -> [`OVSegVisionOutput`].
        ``proxy_map`` [B, C, h, w]: the proxy's features, for ``attention_mode="proxy"``."""
        cfg = settings or self.method_config
        if cfg.attention_mode == "trident":
            raise ValueError(
                "attention_mode='trident' runs on whole images (its windows are spliced onto SAM's grid): use the "
                "pipeline, or hf_ovseg.trident.trident_logits"
            )
        grid_size = check_pixel_values(pixel_values, self.config.patch_size)
        num_layers = len(self.encoder.layers)
        hidden, states = self.run_blocks(pixel_values, grid_size, cfg, self.layers_to_keep(cfg, num_layers))

        score_probs = None
        if cfg.outlier_suppression and cfg.outlier_score_layer == "penultimate" and cfg.attention_mode != "sfp":
            score_probs = self.block_attention(num_layers - 2, states[num_layers - 2], cfg)
        if cfg.attention_mode == "sfp":
            tokens, outliers = self.sfp_last_stage(states, grid_size, cfg)
        elif cfg.attention_mode == "proxy":
            if proxy_map is None:
                raise ValueError("attention_mode='proxy' needs the proxy's features (OVSegModel computes them)")
            tokens, outliers = self.proxy_last_block(hidden, grid_size, proxy_map, cfg, score_probs)
            grid_size = tuple(proxy_map.shape[-2:])
        else:
            mid = states[cfg.resolved_similarity_layer] if cfg.similarity_enhancement else None
            tokens, outliers = self.last_block(hidden, grid_size, mid, cfg, score_probs)
        return OVSegVisionOutput(
            last_hidden_state=tokens,
            pooler_output=self.layer_norm(self.post_layernorm, tokens[:, 0], cfg),
            grid_size=grid_size,
            outlier_indices=outliers,
        )

    @staticmethod
    def layers_to_keep(cfg: OVSegConfig, num_layers: int) -> set[int]:
        """Indices of the hidden states (block outputs) that the last stage reads."""
        keep = set()
        if cfg.similarity_enhancement or cfg.attention_mode == "sfp":
            keep.add(cfg.resolved_similarity_layer)
        if cfg.outlier_suppression and (cfg.outlier_score_layer == "penultimate" or cfg.attention_mode == "sfp"):
            keep.add(num_layers - 2)  # the input of block L-1, whose attention scores the outliers
        if cfg.attention_mode == "sfp":
            keep.update({num_layers - 1, SFP_AGGREGATION_LAYER, *SFP_FUSION_LAYERS})
        return keep

    # -- the unchanged tower ---------------------------------------------------------------------

    def run_blocks(
        self, pixel_values: torch.Tensor, grid_size: tuple[int, int], cfg: OVSegConfig, keep: set[int]
    ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """Embeddings and blocks 1..L-1, unchanged: the [B, 1+N, D] tokens entering block L and ``states[m]``, the
        output of block m (``states[0]`` = the embeddings) for each m in ``keep``."""
        hidden = self.layer_norm(self.pre_layrnorm, self.embed(pixel_values, grid_size, cfg), cfg)
        states = {0: hidden} if 0 in keep else {}
        for index, layer in enumerate(self.encoder.layers[:-1], start=1):
            hidden = self.encoder_layer(layer, hidden, cfg)
            if index in keep:
                states[index] = hidden
        return hidden, states

    def hidden_before_last_block(self, pixel_values: torch.Tensor, cfg: OVSegConfig) -> torch.Tensor:
        """[B, 1+N, D] tokens entering block L of [B, 3, H, W] pixels (H, W multiples of the patch size)."""
        grid_size = check_pixel_values(pixel_values, self.config.patch_size)
        return self.run_blocks(pixel_values, grid_size, cfg, set())[0]

    def embed(self, pixel_values: torch.Tensor, grid_size: tuple[int, int], cfg: OVSegConfig) -> torch.Tensor:
        """CLS and patch embeddings plus position embeddings: [B, 3, H, W] -> [B, 1+N, D]."""
        emb = self.embeddings
        patches = emb.patch_embedding(pixel_values.to(emb.patch_embedding.weight.dtype)).flatten(2).transpose(1, 2)
        cls = emb.class_embedding.to(patches.dtype).expand(patches.shape[0], 1, -1)
        position = interpolate_position_embeddings(emb.position_embedding.weight, grid_size, cfg.position_interpolation)
        return torch.cat([cls, patches], dim=1) + position.to(patches.dtype)

    @staticmethod
    def layer_norm(norm: nn.LayerNorm, states: torch.Tensor, cfg: OVSegConfig) -> torch.Tensor:
        """``norm`` with the eps of ``encoder_variant`` (the checkpoint's, or MaskCLIP's 1e-6)."""
        eps = MASKCLIP_LAYER_NORM_EPS if cfg.encoder_variant == "maskclip" else norm.eps
        return F.layer_norm(states, norm.normalized_shape, norm.weight, norm.bias, eps)

    def mlp(self, layer: nn.Module, states: torch.Tensor, cfg: OVSegConfig) -> torch.Tensor:
        """A block's MLP branch ``fc2(act(fc1(ln2(x))))`` (exact GELU for ``encoder_variant="maskclip"``)."""
        activation = F.gelu if cfg.encoder_variant == "maskclip" else layer.mlp.activation_fn
        return layer.mlp.fc2(activation(layer.mlp.fc1(self.layer_norm(layer.layer_norm2, states, cfg))))

    def encoder_layer(self, layer: nn.Module, hidden: torch.Tensor, cfg: OVSegConfig) -> torch.Tensor:
        """One unchanged block; ``encoder_variant="maskclip"`` runs it with MaskCLIP's activation and eps
        (chongzhou96/MaskCLIP@245d31f:configs/_base_/models/maskclip_vit16.py:22-23)."""
        if cfg.encoder_variant == "clip":
            return layer(hidden, None)
        q, k, v = project_heads(layer.self_attn, self.layer_norm(layer.layer_norm1, hidden, cfg), ("q", "k", "v"))
        batch, tokens, width = hidden.shape
        attended = F.scaled_dot_product_attention(q, k, v, scale=layer.self_attn.scale)
        hidden = hidden + layer.self_attn.out_proj(attended.transpose(1, 2).reshape(batch, tokens, width))
        return hidden + self.mlp(layer, hidden, cfg)

    def block_attention(self, index: int, states: torch.Tensor, cfg: OVSegConfig) -> torch.Tensor:
        """Vanilla attention probabilities [B, h, T, T] of block ``index`` (0-based) on its input ``states``, in
        float32 at least (they score outliers, see [`scoring_attention`])."""
        layer = self.encoder.layers[index]
        q, k = project_heads(layer.self_attn, self.layer_norm(layer.layer_norm1, states, cfg), ("q", "k"))
        return scoring_attention(q, k, layer.self_attn.scale)

    # -- the patched last block ------------------------------------------------------------------

    def last_block(
        self,
        hidden: torch.Tensor,
        grid_size: tuple[int, int],
        mid: torch.Tensor | None,
        cfg: OVSegConfig,
        score_probs: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Block L with the configured attention, then module 1.

        Args:
            hidden: [B, 1+N, D] tokens entering block L.
            mid: [B, 1+N, D] hidden state for module 2's similarity map, or None.
            score_probs: [B, h, 1+N, 1+N] attention that scores the outliers; None = block L's vanilla attention.
        Returns:
            [B, 1+N, D] block output and the [B, k] outlier indices (None when module 1 is off).
        """
        block = self.encoder.layers[-1]
        attn = block.self_attn
        q, k, v = project_heads(attn, self.layer_norm(block.layer_norm1, hidden, cfg), ("q", "k", "v"))
        similarity = similarity_map(mid[:, 1:], cfg.similarity_temperature) if mid is not None else None
        probs = attention_probs(
            cfg.attention_mode, q, k, v, attn.scale, grid_size, similarity, cfg.similarity_weight,
            cfg.naclip_gaussian_std,
        )  # fmt: skip
        out = attend(attn, probs, v)
        if cfg.last_block_residual:
            out = hidden + out
        if cfg.last_block_mlp:
            out = out + self.mlp(block, out, cfg)

        if not cfg.outlier_suppression or cfg.outlier_top_k == 0:
            return out, None
        if score_probs is None:
            score_probs = scoring_attention(q, k, attn.scale)
        patches, outliers = self.suppress(out[:, 1:], score_probs, grid_size, cfg)
        return torch.cat([out[:, :1], patches], dim=1), outliers

    @staticmethod
    def suppress(
        patches: torch.Tensor, score_probs: torch.Tensor, grid_size: tuple[int, int], cfg: OVSegConfig
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Module 1 on [B, N, D] patch tokens, the outliers scored by ``score_probs`` [B, h, 1+N, 1+N]; returns the
        tokens and the [B, k] outlier indices."""
        scores = outlier_scores(score_probs)
        top_k = min(cfg.outlier_top_k, patches.shape[1])
        patches = suppress_outliers(patches, scores, grid_size, top_k, cfg.outlier_tau, cfg.decontamination_clamp)
        return patches, scores.topk(top_k, dim=-1).indices

    def proxy_last_block(
        self,
        hidden: torch.Tensor,
        grid_size: tuple[int, int],
        features: torch.Tensor,
        cfg: OVSegConfig,
        score_probs: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Block L as ProxyCLIP's ``custom_attn`` (mc-lan/ProxyCLIP@e7b767f:open_clip/transformer.py:526-531,
        560-587): CLIP's values of ``ln_1(x)``, without CLS, bilinearly resized (``align_corners=False``) from
        CLIP's patch grid to the proxy's grid (h, w) and aggregated there by [`proxy_attention`] of the proxy's
        features; no residual, no MLP, CLIP's queries and keys unused.

        ``out_proj`` is applied to the values first: it commutes with the resize and the attention (both average
        with weights summing to one), so the result is the official one up to rounding, and module 1 (the seed's
        outlier suppression, ``seed_proxy``) can work on CLIP's grid, scored by CLIP's own attention as in the
        seed, before the proxy aggregation. ProxyCLIP has no CLS output; the CLS token returned (used by module 3
        and ``cls_logit_lambda``) is block L's vanilla CLS row ``out_proj(softmax(s q_cls Kᵀ) V)``.

        Args:
            hidden: [B, 1+N, D] tokens entering block L. features: [B, C, h, w] proxy features.
        Returns:
            [B, 1+h*w, D] tokens on the proxy's grid (CLS first) and the [B, k] outlier indices (CLIP's grid) or None.
        """
        block = self.encoder.layers[-1]
        attn = block.self_attn
        q, k, v = project_heads(attn, self.layer_norm(block.layer_norm1, hidden, cfg), ("q", "k", "v"))
        batch, _, tokens, _ = v.shape
        cls = attend(attn, vanilla_attention(q[:, :, :1], k, attn.scale), v)  # [B, 1, D]
        values = attn.out_proj(v.transpose(1, 2).reshape(batch, tokens, -1)[:, 1:])  # [B, N, D]
        outliers = None
        if cfg.outlier_suppression and cfg.outlier_top_k > 0:
            probs = scoring_attention(q, k, attn.scale) if score_probs is None else score_probs
            values, outliers = self.suppress(values, probs, grid_size, cfg)
        rows, cols = grid_size
        # ProxyCLIP reads the row-major (rows, cols) values as a (cols, rows) grid (transformer.py:504, 521, 580)
        grid = values.reshape(batch, *((cols, rows) if cfg.proxy_square_grid else (rows, cols)), -1)
        grid = F.interpolate(grid.permute(0, 3, 1, 2), size=features.shape[-2:], mode="bilinear", align_corners=False)
        probs = proxy_attention(features, cfg.proxy_beta, cfg.proxy_gamma)
        patches = torch.matmul(probs.to(grid.dtype), grid.flatten(2).transpose(1, 2))  # [B, h*w, D]
        return torch.cat([cls, patches], dim=1), outliers

    def trident_last_block(
        self, hidden: torch.Tensor, grid_size: tuple[int, int], features: torch.Tensor, cfg: OVSegConfig
    ) -> torch.Tensor:
        """Block L as Trident's ``custom_attn`` (YuHengsss/Trident@a93b346:open_clip/transformer.py:525-527,
        557-584): CLIP's values of ``ln_1(x)`` without CLS, per head, resized bilinearly (``align_corners=False``)
        from CLIP's grid to the proxy's, aggregated by [`proxy_attention`] with its mean over ALL the windows, then
        ``out_proj``; no CLS, residual or MLP.

        Args:
            hidden: [n, 1+N, D] tokens of an image's n windows entering block L. grid_size: a window's CLIP grid.
            features: [n, C, h, w] the proxy's maps of the windows.
        Returns:
            [n, D, h, w] the windows' maps on the proxy's grid.
        """
        block = self.encoder.layers[-1]
        attn = block.self_attn
        (v,) = project_heads(attn, self.layer_norm(block.layer_norm1, hidden[:, 1:], cfg), ("v",))  # [n, h, N, d]
        count, heads, _, head_dim = v.shape
        rows, cols = features.shape[-2:]
        grid = v.reshape(count * heads, *grid_size, head_dim).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(rows, cols), mode="bilinear", align_corners=False)
        grid = grid.flatten(2).transpose(1, 2).reshape(count, heads, rows * cols, head_dim)
        probs = proxy_attention(features, cfg.proxy_beta, cfg.proxy_gamma, batch_mean=True)
        out = attend(attn, probs[:, None].expand(-1, heads, -1, -1), grid)  # [n, h*w, D]
        return out.transpose(1, 2).reshape(count, -1, rows, cols)

    def sfp_last_stage(
        self, states: dict[int, torch.Tensor], grid_size: tuple[int, int], cfg: OVSegConfig
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """SFP's last stage (Kimsure/SFP@2804f5b:SFP_ICCV/clip/model.py:242-356), on the kept hidden states.

        1. Outliers (``sfp_outlier_detector``, SFP's ``pm``): ``"som"``, block L-1's head-mean attention with its
           CLS->patch row scaled by ``5 * res_cls``, patches that CLS attends more than they attend to themselves,
           top ``outlier_top_k`` (264, 269-287); ``"l2"``, the ``outlier_top_k`` largest token norms of block L-1's
           output (288-298); ``"lof"``, their local outlier factors above the 0.95 quantile (299-307). Each is
           replaced by the mean of its non-outlier neighbours in block L-1's output and in the features of
           the similarity layer (309-311, 319-322).
        2. ``pre``: the cosine map of those (purified) block-``similarity_layer`` features, cosines < 0.4 zeroed
           (323-325); ``post``: the same for block 4, not purified (330-333).
        3. Main path: patches re-weighted by ``pre`` (326), block L's attention
           ``(softmax(KKᵀ)+softmax(QQᵀ)+softmax(S'))/3`` among patches, no residual, no MLP, then
           ``+ res_cls * CLS`` of block L-1 (327-329), re-weighted by ``post`` (334).
        4. Multi-layer branch: the sum of blocks 4..10 (318) through block L's values with ``softmax(S')`` only,
           ``+ res_cls *`` its CLS, re-weighted by ``post`` (336-340), added to the main path (341).

        The CLS token returned is block L-1's (343). Returns the tokens [B, 1+N, D] and the outliers' patch
        indices [B, k] (positions as SFP's code places them, see [`sfp_grid_positions`]; -1 for an empty
        slot) or None.
        """
        num_layers = len(self.encoder.layers)
        block = self.encoder.layers[-1]
        attn = block.self_attn
        entering = states[num_layers - 1]
        cls, patches = entering[:, :1], entering[:, 1:]
        similar = states[cfg.resolved_similarity_layer][:, 1:]
        positions = None
        if cfg.outlier_suppression and cfg.outlier_top_k > 0:
            if cfg.sfp_outlier_detector == "l2":
                indices, valid = sfp_norm_outliers(patches, cfg.outlier_top_k)
            elif cfg.sfp_outlier_detector == "lof":
                indices, valid = sfp_lof_outliers(patches)
            else:
                probs = self.block_attention(num_layers - 2, states[num_layers - 2], cfg)
                indices, valid = sfp_outliers(probs, cfg.outlier_top_k, SFP_RES_SCALE * cfg.sfp_residual_cls)
            positions, valid = sfp_grid_positions(indices, valid, grid_size)
            patches = replace_with_neighbour_mean(patches, positions, valid, grid_size)
            similar = replace_with_neighbour_mean(similar, positions, valid, grid_size)
            positions = positions.masked_fill(~valid, -1)
        pre = thresholded_similarity(similar, SFP_SIMILARITY_THRESHOLD)
        post = thresholded_similarity(states[SFP_AGGREGATION_LAYER][:, 1:], SFP_SIMILARITY_THRESHOLD)

        normed = self.layer_norm(block.layer_norm1, similarity_aggregate(patches, pre), cfg)
        q, k, v = project_heads(attn, normed, ("q", "k", "v"))
        main = attend(attn, sfp_attention(q, k, pre, attn.scale), v) + cfg.sfp_residual_cls * cls
        main = similarity_aggregate(main, post)

        fused = torch.stack([states[m] for m in SFP_FUSION_LAYERS]).sum(dim=0)
        (values,) = project_heads(attn, self.layer_norm(block.layer_norm1, fused[:, 1:], cfg), ("v",))
        branch = attend(attn, sfp_similarity_probs(pre).unsqueeze(1), values) + cfg.sfp_residual_cls * fused[:, :1]
        branch = similarity_aggregate(branch, post)
        return torch.cat([cls, main + branch], dim=1), positions


class OVSegModel(CLIPModel):
    """CLIP with the training-free dense head. Every HF CLIP checkpoint loads into it unchanged; a model made
    with ``config.feature_upsampler`` also holds SimFeatUp's weights (``feature_upsampler.*``), one made with
    ``config.proxy_config`` a proxy vision model (``proxy_model.*``: DINO, DINOv2 or SAM's image encoder), one made
    with ``config.sam_config`` a whole SAM (``sam_model.*``, for Trident).

    Example:
        >>> model = OVSegModel.from_pretrained("openai/clip-vit-base-patch16", method="seed")
        >>> logits = model(pixel_values, text_embeds=text_embeds).logits  # [B, K, rows, cols]
        >>> logits = model(pixel_values, text_embeds=text_embeds, settings=model.config.with_method("sclip")).logits
    """

    config_class = OVSegConfig
    config: OVSegConfig

    def __init__(self, config: OVSegConfig) -> None:
        # Same modules and names as CLIPModel.__init__, with the patched vision tower.
        CLIPPreTrainedModel.__init__(self, config)
        text_config, vision_config = config.text_config, config.vision_config
        self.projection_dim = config.projection_dim
        self.text_embed_dim = text_config.hidden_size
        self.vision_embed_dim = vision_config.hidden_size
        self.text_model = CLIPTextModel._from_config(text_config)
        self.vision_model = OVSegVisionModel._from_config(vision_config, method_config=config)
        self.visual_projection = nn.Linear(self.vision_embed_dim, self.projection_dim, bias=False)
        self.text_projection = nn.Linear(self.text_embed_dim, self.projection_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(config.logit_scale_init_value))
        self.feature_upsampler = (
            build_feature_upsampler(config.feature_upsampler, self.projection_dim) if config.feature_upsampler else None
        )
        self.proxy_model = build_proxy_model(config.proxy_config) if config.proxy_config is not None else None
        self.sam_model = SamModel._from_config(config.sam_config) if config.sam_config is not None else None
        self.post_init()

    def save_pretrained(self, save_directory: str | os.PathLike, *args: Any, **kwargs: Any) -> None:
        """As ``PreTrainedModel.save_pretrained`` (and so ``push_to_hub``), plus the ``zero-shot-image-segmentation``
        pipeline: ``custom_pipelines`` in config.json and the pipeline's code beside the model's. With the
        processor saved in the same folder, the folder or Hub repo works with ``AutoModel``, ``AutoProcessor``
        and ``pipeline(..., trust_remote_code=True)``."""
        from transformers.dynamic_module_utils import custom_object_save

        from .pipeline_ovseg import TASK, ZeroShotImageSegmentationPipeline

        impl = f"pipeline_ovseg.{ZeroShotImageSegmentationPipeline.__name__}"
        self.config.custom_pipelines = {TASK: {"impl": impl, "pt": ["AutoModel"]}}
        super().save_pretrained(save_directory, *args, **kwargs)
        custom_object_save(ZeroShotImageSegmentationPipeline, save_directory)

    # -- method knobs --------------------------------------------------------------------------

    def set_method(self, method: str | None = None, **knobs: Any) -> None:
        """Switch the model's preset and/or knobs in place, without reloading weights (see
        [`OVSegConfig.set_method`]). For one call only, pass ``settings=model.config.with_method(...)``."""
        self.config.set_method(method, **knobs)

    # -- features ------------------------------------------------------------------------------

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Projected text embeddings [K, P] (not normalised) of tokenised prompts [K, L]."""
        return self.get_text_features(input_ids=input_ids, attention_mask=attention_mask).pooler_output

    def get_dense_image_features(
        self, pixel_values: torch.Tensor, settings: OVSegConfig | None = None, upsample: bool = True
    ) -> OVSegDenseFeatures:
        """Projected, debiased patch features [B, N, P] and the projected CLS [B, P] of the patched block;
        with ``feature_upsampling``, an upsampler and ``upsample``, one feature per pixel of the crop; with
        ``attention_mode="proxy"``, one per cell of the proxy's grid.

        With a proxy, ``pixel_values`` sides need only be multiples of the proxy's patch size: the proxy sees the
        whole window and CLIP's patch embedding drops what does not fill a patch (ProxyCLIP pads windows to
        multiples of 56, which CLIP's stride-16 convolution then truncates, proxyclip_segmentor.py:218-224)."""
        cfg = settings or self.config
        self.check_components(cfg)
        proxy_map = None
        if cfg.attention_mode == "proxy":
            proxy_map = proxy_features(self.proxy_model, pixel_values, cfg.proxy_square_grid)
            patch = self.config.vision_config.patch_size
            height, width = pixel_values.shape[-2:]
            pixel_values = pixel_values[..., : height // patch * patch, : width // patch * patch]
        vision = self.vision_model(pixel_values, settings=cfg, proxy_map=proxy_map)
        tokens = self.vision_model.layer_norm(self.vision_model.post_layernorm, vision.last_hidden_state, cfg)
        embeds = self.visual_projection(tokens)
        cls_embeds = embeds[:, 0]
        patch_embeds = global_debias(
            embeds[:, 1:], cls_embeds, cfg.global_debias_factor, cfg.global_debias_mode,
            cfg.global_debias_normalize_cls,
        )  # fmt: skip
        grid_size = vision.grid_size
        if upsample and cfg.feature_upsampling:
            patch_embeds, grid_size = self.upsample_features(patch_embeds, grid_size, pixel_values)
        return OVSegDenseFeatures(
            patch_embeds=patch_embeds,
            cls_embeds=cls_embeds,
            grid_size=grid_size,
            outlier_indices=vision.outlier_indices,
        )

    def check_components(self, settings: OVSegConfig) -> None:
        """Raise ``ValueError`` (one line, naming the fix) when ``settings`` need a component this model lacks:
        SimFeatUp's weights for ``feature_upsampling``, a proxy (of the preset's kind) for ``attention_mode="proxy"``,
        a DINO proxy and SAM for ``attention_mode="trident"``.
        Nothing falls back silently, so a result is always what its method says."""
        if settings.feature_upsampling and self.feature_upsampler is None:
            raise ValueError(
                f"method {settings.method!r} runs SimFeatUp (feature_upsampling=True) but this model carries no "
                "feature upsampler: embed one with `hf-ovseg convert CLIP OUT --feature-upsampler CKPT`, or run "
                "without it (feature_upsampling=False; CLI: --no-feature-upsampler)"
            )
        if settings.attention_mode not in ("proxy", "trident"):
            return
        if settings.attention_mode == "trident" and self.sam_model is None:
            raise ValueError(
                f"method {settings.method!r} needs SAM (a SamModel) but this model has none: embed one with "
                "`hf-ovseg convert CLIP OUT --proxy facebook/dino-vitb16 --sam facebook/sam-vit-base` (or "
                "load_pipeline(clip, proxy='facebook/dino-vitb16', sam='facebook/sam-vit-base'))"
            )
        wanted = settings.proxy_kind
        example = {"dino": "facebook/dino-vitb8", "dinov2": "facebook/dinov2-with-registers-base",
                   "sam": "facebook/sam-vit-base"}.get(wanted, "facebook/dino-vitb8")  # fmt: skip
        if settings.attention_mode == "trident":
            example = "facebook/dino-vitb16"  # Trident's DINO (trident.py:48)
        fix = f"`hf-ovseg convert CLIP OUT --proxy {example}` (or load_pipeline(clip, proxy={example!r}))"
        if self.proxy_model is None:
            raise ValueError(
                f"method {settings.method!r} needs a proxy vision model ({wanted or 'DINO, DINOv2 or SAM'}) but this "
                f"model has none: embed one with {fix}"
            )
        if wanted is not None and wanted != self.config.proxy_model_kind:
            raise ValueError(
                f"method {settings.method!r} needs a {wanted} proxy but this model carries a "
                f"{self.config.proxy_model_kind} one: embed the right one with {fix}"
            )

    def components(self, settings: OVSegConfig | None = None) -> dict[str, Any]:
        """What besides CLIP a call with ``settings`` runs: ``{"feature_upsampler": "jbu_one" | None, "proxy":
        {"kind", "model_type", "source"} | None, "sam": {"model_type", "source", "refinement"} | None}`` (for
        results that say what ran)."""
        cfg = settings or self.config
        self.check_components(cfg)
        proxy = sam = None
        if cfg.attention_mode in ("proxy", "trident"):
            proxy = {"kind": self.config.proxy_model_kind, "model_type": self.config.proxy_config.model_type,
                     "source": self.config.proxy_config._name_or_path or None}  # fmt: skip
        if cfg.attention_mode == "trident":
            sam_config = self.config.sam_config
            sam = {"model_type": sam_config.model_type, "source": sam_config._name_or_path or None,
                   "refinement": bool(cfg.sam_refinement)}  # fmt: skip
        upsampler = self.config.feature_upsampler if cfg.feature_upsampling else None
        return {"feature_upsampler": upsampler, "proxy": proxy, "sam": sam}

    def window_multiple(self, settings: OVSegConfig | None = None) -> int:
        """The multiple a window's sides are padded to before this model runs it (``window_multiple``, else CLIP's
        patch size or its least common multiple with the proxy's)."""
        cfg = settings or self.config
        if cfg.window_multiple is not None:
            return cfg.window_multiple
        proxy_config = self.config.proxy_config if cfg.attention_mode == "proxy" else None  # trident: whole images
        return default_window_multiple(self.config.vision_config.patch_size, proxy_config)

    def upsample_features(
        self, patch_embeds: torch.Tensor, grid_size: tuple[int, int], pixel_values: torch.Tensor
    ) -> tuple[torch.Tensor, tuple[int, int]]:
        """SimFeatUp, as SegEarth-OV applies it (likyoo/SegEarth-OV@3e22a96:segearth_segmentor.py:180-186): the
        [P, rows, cols] feature grid of each crop is upsampled with the normalised crop as guidance, one crop at
        a time. -> [B, H*W, P] features and the new grid (H, W) = 16 x (rows, cols), the crop's size for
        patch 16."""
        self.check_upsampler_grid(grid_size)
        batch, _, dim = patch_embeds.shape
        grid = patch_embeds.transpose(1, 2).reshape(batch, dim, *grid_size)
        guidance = pixel_values.to(grid.dtype)
        height, width = (side * self.feature_upsampler.scale_factor for side in grid_size)
        upsampled = grid.new_empty(batch, dim, height, width)
        for index in range(batch):
            upsampled[index] = self.feature_upsampler(grid[index : index + 1], guidance[index : index + 1])[0]
        return upsampled.flatten(2).transpose(1, 2), (height, width)

    def dense_logits(
        self,
        patch_embeds: torch.Tensor,
        text_embeds: torch.Tensor,
        grid_size: tuple[int, int],
        cls_embeds: torch.Tensor | None = None,
        settings: OVSegConfig | None = None,
    ) -> torch.Tensor:
        """``dense_logit_scale * (cos(patch, text) + cls_logit_lambda * cos(cls, text))``:
        [B, N, P] x [K, P] (x [B, P]) -> [B, K, rows, cols]."""
        cfg = settings or self.config
        use_cls = bool(cfg.cls_logit_lambda) and cls_embeds is not None
        if use_cls:  # one GEMM for CLS and patches: a crop's logits never depend on the batch it is in
            patch_embeds = torch.cat([cls_embeds[:, None], patch_embeds], dim=1)
        patch_embeds = unit(patch_embeds)
        text_embeds = unit(text_embeds).to(patch_embeds.dtype)
        logits = torch.matmul(patch_embeds, text_embeds.T).transpose(1, 2)  # [B, K, (1+)N]
        if use_cls:
            logits = logits[..., 1:] + cfg.cls_logit_lambda * logits[..., :1]
        logits = logits * cfg.dense_logit_scale
        return logits.reshape(*logits.shape[:2], *grid_size)

    def check_upsampler_grid(self, grid_size: tuple[int, int]) -> None:
        """SimFeatUp's first step reflection-pads a 2x-grid guidance by its radius: smaller grids cannot run."""
        side = self.feature_upsampler.min_grid()
        if min(grid_size) < side:
            radius = self.feature_upsampler.steps()[0].radius
            raise ValueError(
                f"SimFeatUp ({self.config.feature_upsampler}) needs a patch grid of at least {side}x{side} per crop "
                f"(its first step pads by {radius}), got {grid_size[0]}x{grid_size[1]}: use larger crops"
            )

    def upsampled_logits(
        self,
        dense: OVSegDenseFeatures,
        index: int,
        pixel_values: torch.Tensor,
        text_embeds: torch.Tensor,
        settings: OVSegConfig,
    ) -> torch.Tensor:
        """Crop ``index``'s logits [1, K, H, W] from its SimFeatUp features, at the crop's full resolution.

        SimFeatUp is linear in the features, each channel alike (upsampler.py), so it runs in the span of the
        crop's mixed patch features and the fixup's bias, r <= N + 1 dimensions instead of P (197 instead of 512 for
        a 224 crop of ViT-B/16): with Q an orthonormal basis of that span, the upsampled features are ``Q a``, their
        norms ``||a||`` and their products with a text embedding ``a · Qᵀt``. The logits equal those of the P-channel
        features (``upsample_features``) up to rounding, at 2.6 times less work."""
        self.check_upsampler_grid(dense.grid_size)
        upsampler, cfg = self.feature_upsampler, settings
        rows, cols = dense.grid_size
        work = compute_dtype(upsampler.fixup_proj[1].weight.dtype)  # float32 at least, as upsampler.py computes
        features = dense.patch_embeds[index].T.reshape(1, -1, rows, cols).to(work)
        mixed = upsampler.mix(features).flatten(2)[0]  # [P, N]
        bias = upsampler.fixup_bias()  # [P]
        basis = torch.linalg.qr(torch.cat([mixed, bias[:, None]], dim=1)).Q  # [P, r]
        coords = (basis.T @ mixed).reshape(1, -1, rows, cols)
        kernels = upsampler.kernels(pixel_values[index : index + 1].to(work), (rows, cols))
        upsampled = upsampler.filter(coords, kernels) + (basis.T @ bias)[:, None, None]
        text = unit(text_embeds.to(work))
        logits = unit(upsampled.flatten(2)[0].T) @ (text @ basis).T  # [H*W, K]
        if cfg.cls_logit_lambda:
            logits = logits + cfg.cls_logit_lambda * (unit(dense.cls_embeds[index].to(work)) @ text.T)
        height, width = upsampled.shape[-2:]
        return (logits * cfg.dense_logit_scale).T.reshape(1, -1, height, width).to(dense.patch_embeds.dtype)

    def forward(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        text_embeds: torch.Tensor | None = None,
        settings: OVSegConfig | None = None,
        pad_to: int | None = None,
        **kwargs: Any,
    ) -> OVSegOutput:
        """Dense logits of every class for every patch.

        Args:
            pixel_values: [B, 3, H, W], H and W multiples of the patch size (with a proxy, of the proxy's).
            input_ids, attention_mask: [K, L] tokenised class prompts, or
            text_embeds: [K, P] precomputed class embeddings (takes precedence).
            settings: the method knobs of this call (``model.config.with_method(...)``); default the model's.
            pad_to: run the towers on a batch padded with zero crops to this size (the outputs keep the real
                crops only): every forward then has the same shapes, so a crop's logits never depend on how many
                crops share its batch (the CPU's and GPU's matrix kernels round differently for other shapes).
        Returns:
            [`OVSegOutput`] with ``logits`` [B, K, H/patch, W/patch] ([B, K, H, W] with SimFeatUp; on the proxy's
            grid with ``attention_mode="proxy"``).
        """
        if text_embeds is None:
            if input_ids is None:
                raise ValueError("OVSegModel.forward needs the classes: pass input_ids or text_embeds")
            text_embeds = self.encode_text(input_ids, attention_mask)
        if text_embeds.dim() != 2:
            raise ValueError(f"text_embeds must be [num_classes, projection_dim], got {tuple(text_embeds.shape)}")
        cfg = settings or self.config
        count = pixel_values.shape[0]
        if pad_to is not None and count < pad_to:
            padding = pixel_values.new_zeros(pad_to - count, *pixel_values.shape[1:])
            dense = self.get_dense_image_features(torch.cat([pixel_values, padding]), cfg, upsample=False)
            dense = OVSegDenseFeatures(
                patch_embeds=dense.patch_embeds[:count], cls_embeds=dense.cls_embeds[:count],
                grid_size=dense.grid_size,
                outlier_indices=None if dense.outlier_indices is None else dense.outlier_indices[:count],
            )  # fmt: skip
        else:
            dense = self.get_dense_image_features(pixel_values, cfg, upsample=False)
        if cfg.feature_upsampling:  # one crop at a time: a batch never holds its [B, H*W, P] per-pixel features
            logits = torch.cat([self.upsampled_logits(dense, index, pixel_values, text_embeds, cfg) for index in
                                range(pixel_values.shape[0])])  # fmt: skip
        else:
            logits = self.dense_logits(dense.patch_embeds, text_embeds, dense.grid_size, dense.cls_embeds, cfg)
        return OVSegOutput(
            logits=logits,
            patch_embeds=dense.patch_embeds,
            text_embeds=F.normalize(text_embeds, dim=-1),
            grid_size=tuple(logits.shape[-2:]),
            outlier_indices=dense.outlier_indices,
        )


OVSegConfig.register_for_auto_class()
OVSegModel.register_for_auto_class("AutoModel")

__all__ = ["OVSegDenseFeatures", "OVSegModel", "OVSegOutput", "OVSegVisionModel", "OVSegVisionOutput"]
