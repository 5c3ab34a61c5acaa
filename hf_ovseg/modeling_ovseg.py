"""hf_ovseg: training-free open-vocabulary semantic segmentation on a frozen CLIP.

The model is CLIP with its last vision block replaced, read top to bottom:

1. blocks 1..L-1 of the vision tower run unchanged (the hidden state of layer ``similarity_layer`` is kept
   for the self-similarity map of module 2);
2. block L: its attention is the configured ``attention_mode`` (``"gated"`` = module 2), with no residual
   and no MLP unless configured;
3. module 1 (outlier suppression) on block L's output patch tokens, the outliers scored with block L's own
   vanilla attention (the ``sfp`` preset instead repairs SFP's outliers of block L-1 before block L);
4. post-layernorm and visual projection, then module 3 (global debiasing) with the projected CLS token;
5. cosine similarity with the text embeddings times ``dense_logit_scale``: dense logits [B, K, rows, cols].

The math lives in ``modules.py`` as pure tensor functions; this file only wires them into CLIP. It is
self-contained apart from ``configuration_ovseg.py`` and ``modules.py``, which ``save_pretrained`` copies
beside it so that a saved folder loads with ``trust_remote_code=True``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPModel, CLIPTextModel, CLIPVisionConfig, CLIPVisionModel
from transformers.models.clip.modeling_clip import CLIPPreTrainedModel
from transformers.utils import ModelOutput, logging

from .configuration_ovseg import OVSegConfig
from .modules import (
    attention_probs,
    global_debias,
    outlier_scores,
    replace_with_neighbour_mean,
    sfp_outliers,
    similarity_map,
    suppress_outliers,
    vanilla_attention,
)

logger = logging.get_logger(__name__)


@dataclass
class OVSegVisionOutput(ModelOutput):
    """Output of [`OVSegVisionModel`].

    last_hidden_state: [B, 1+N, D] tokens of the patched last block (module 1 applied), before post-layernorm.
    pooler_output: [B, D] post-layernormed CLS token of the patched block.
    grid_size: (rows, cols) patch grid, N = rows * cols.
    outlier_indices: [B, k] patch indices replaced by module 1, or None when it is off.
    """

    last_hidden_state: torch.Tensor | None = None
    pooler_output: torch.Tensor | None = None
    grid_size: tuple[int, int] | None = None
    outlier_indices: torch.Tensor | None = None


@dataclass
class OVSegDenseFeatures(ModelOutput):
    """Dense image features of [`OVSegModel.get_dense_image_features`].

    patch_embeds: [B, N, P] projected and debiased patch features (not normalised).
    cls_embeds: [B, P] projected CLS feature of the same patched block.
    grid_size: (rows, cols). outlier_indices: [B, k] or None.
    """

    patch_embeds: torch.Tensor | None = None
    cls_embeds: torch.Tensor | None = None
    grid_size: tuple[int, int] | None = None
    outlier_indices: torch.Tensor | None = None


@dataclass
class OVSegOutput(ModelOutput):
    """Output of [`OVSegModel.forward`].

    logits: [B, K, rows, cols] ``dense_logit_scale * (cos(patch, text) + cls_logit_lambda * cos(cls, text))``.
    patch_embeds: [B, N, P]. text_embeds: [K, P] normalised. grid_size, outlier_indices as above.
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


def project_heads(attn: nn.Module, states: torch.Tensor, names: tuple[str, ...]) -> list[torch.Tensor]:
    """Per-head projections [B, h, T, d] of ``states`` [B, T, D] by a CLIP attention's ``{name}_proj``."""
    batch, tokens, _ = states.shape
    return [
        getattr(attn, f"{name}_proj")(states).view(batch, tokens, attn.num_heads, attn.head_dim).transpose(1, 2)
        for name in names
    ]


class OVSegVisionModel(CLIPVisionModel):
    """CLIP vision tower with the patched last block. Parameter names are those of [`CLIPVisionModel`].

    ``method_config`` is the [`OVSegConfig`] whose knobs are read at every forward (so they can be
    switched without reloading weights); by default the ``seed`` preset.
    """

    def __init__(self, config: CLIPVisionConfig, method_config: OVSegConfig | None = None) -> None:
        super().__init__(config)
        if method_config is None:
            method_config = OVSegConfig(vision_config=config.to_dict())
        self.method_config = method_config

    def forward(self, pixel_values: torch.Tensor, **kwargs: Any) -> OVSegVisionOutput:
        """pixel_values [B, 3, H, W] with H, W multiples of the patch size (position embeddings interpolated)."""
        cfg = self.method_config
        grid_size = check_pixel_values(pixel_values, self.config.patch_size)

        hidden = self.embeddings(pixel_values, interpolate_pos_encoding=True)
        hidden = self.pre_layrnorm(hidden)

        # Blocks 1..L-1, unchanged. hidden_states[m] is the output of block m (hidden_states[0] = input).
        num_layers = len(self.encoder.layers)
        mid_layer = cfg.resolved_similarity_layer if cfg.similarity_enhancement else None
        sfp_rule = cfg.outlier_suppression and cfg.outlier_rule == "sfp"
        mid = hidden if mid_layer == 0 else None
        for index, layer in enumerate(self.encoder.layers[:-1], start=1):
            if sfp_rule and index == num_layers - 1:
                before_last = hidden  # SFP scores outliers with block L-1's own attention
            hidden = layer(hidden, None)
            if index == mid_layer:
                mid = hidden

        outlier_indices = None
        if sfp_rule:
            hidden, mid, outlier_indices = self.sfp_purify(before_last, hidden, mid, grid_size)
        hidden, seed_outliers = self.last_block(hidden, grid_size, mid)
        if seed_outliers is not None:
            outlier_indices = seed_outliers
        return OVSegVisionOutput(
            last_hidden_state=hidden,
            pooler_output=self.post_layernorm(hidden[:, 0]),
            grid_size=grid_size,
            outlier_indices=outlier_indices,
        )

    def sfp_purify(
        self, before: torch.Tensor, hidden: torch.Tensor, mid: torch.Tensor | None, grid_size: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """SFP's outlier rule: score with block L-1's attention (on its input ``before``), then replace the
        outliers by their neighbours' mean in ``hidden`` (block L-1's output) and in ``mid``. -> [B, k] indices."""
        block = self.encoder.layers[-2]
        q, k = project_heads(block.self_attn, block.layer_norm1(before), ("q", "k"))
        probs = vanilla_attention(q, k, block.self_attn.scale)
        indices, valid = sfp_outliers(probs, self.method_config.outlier_top_k)

        def purify(states: torch.Tensor) -> torch.Tensor:
            patches = replace_with_neighbour_mean(states[:, 1:], indices, valid, grid_size)
            return torch.cat([states[:, :1], patches], dim=1)

        return purify(hidden), (purify(mid) if mid is not None else None), indices

    def last_block(
        self, hidden: torch.Tensor, grid_size: tuple[int, int], mid: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Block L with the configured attention, then module 1.

        Args:
            hidden: [B, 1+N, D] tokens entering block L.
            mid: [B, 1+N, D] hidden state for the similarity map, or None.
        Returns:
            [B, 1+N, D] block output and the [B, k] outlier indices (None when module 1 is off).
        """
        cfg = self.method_config
        block = self.encoder.layers[-1]
        attn = block.self_attn
        batch, tokens, width = hidden.shape

        q, k, v = project_heads(attn, block.layer_norm1(hidden), ("q", "k", "v"))
        similarity = similarity_map(mid[:, 1:], cfg.similarity_temperature) if mid is not None else None
        probs = attention_probs(cfg.attention_mode, q, k, v, attn.scale, grid_size, similarity, cfg.similarity_weight)
        out = attn.out_proj(torch.matmul(probs, v).transpose(1, 2).reshape(batch, tokens, width))
        if cfg.last_block_residual:
            out = hidden + out
        if cfg.last_block_mlp:
            out = out + block.mlp(block.layer_norm2(out))

        if not cfg.outlier_suppression or cfg.outlier_rule != "seed" or cfg.outlier_top_k == 0:
            return out, None
        vanilla = probs if cfg.attention_mode == "vanilla" else vanilla_attention(q, k, attn.scale)
        scores = outlier_scores(vanilla)
        top_k = min(cfg.outlier_top_k, tokens - 1)
        patches = suppress_outliers(out[:, 1:], scores, grid_size, top_k, cfg.outlier_tau)
        return torch.cat([out[:, :1], patches], dim=1), scores.topk(top_k, dim=-1).indices


class OVSegModel(CLIPModel):
    """CLIP with the training-free dense head. Every HF CLIP checkpoint loads into it unchanged.

    Example:
        >>> model = OVSegModel.from_pretrained("openai/clip-vit-base-patch16", method="seed")
        >>> logits = model(pixel_values, text_embeds=text_embeds).logits  # [B, K, rows, cols]
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
        self.post_init()

    # -- method knobs --------------------------------------------------------------------------

    def set_method(self, method: str | None = None, **knobs: Any) -> None:
        """Switch preset and/or knobs in place, without reloading weights (see [`OVSegConfig.set_method`])."""
        self.config.set_method(method, **knobs)

    @contextmanager
    def method_override(self, method: str | None = None, **knobs: Any) -> Iterator[OVSegModel]:
        """Temporarily switch preset and/or knobs: ``with model.method_override(method="clearclip"): ...``."""
        saved = self.config.method_knobs()
        try:
            self.config.set_method(method, **knobs)
            yield self
        finally:
            self.config.set_method(**saved)

    # -- features ------------------------------------------------------------------------------

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Projected text embeddings [K, P] (not normalised) of tokenised prompts [K, L]."""
        return self.get_text_features(input_ids=input_ids, attention_mask=attention_mask).pooler_output

    def get_dense_image_features(self, pixel_values: torch.Tensor) -> OVSegDenseFeatures:
        """Projected, debiased patch features [B, N, P] and the projected CLS [B, P] of the patched block."""
        vision = self.vision_model(pixel_values)
        embeds = self.visual_projection(self.vision_model.post_layernorm(vision.last_hidden_state))
        cls_embeds = embeds[:, 0]
        patch_embeds = global_debias(
            embeds[:, 1:], cls_embeds, self.config.global_debias_factor, self.config.global_debias_mode
        )
        return OVSegDenseFeatures(
            patch_embeds=patch_embeds,
            cls_embeds=cls_embeds,
            grid_size=vision.grid_size,
            outlier_indices=vision.outlier_indices,
        )

    def dense_logits(
        self,
        patch_embeds: torch.Tensor,
        text_embeds: torch.Tensor,
        grid_size: tuple[int, int],
        cls_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``dense_logit_scale * (cos(patch, text) + cls_logit_lambda * cos(cls, text))``:
        [B, N, P] x [K, P] (x [B, P]) -> [B, K, rows, cols]."""
        patch_embeds = F.normalize(patch_embeds, dim=-1)
        text_embeds = F.normalize(text_embeds, dim=-1).to(patch_embeds.dtype)
        logits = torch.einsum("bnp,kp->bkn", patch_embeds, text_embeds)
        if self.config.cls_logit_lambda and cls_embeds is not None:
            cls_logits = F.normalize(cls_embeds, dim=-1) @ text_embeds.T  # [B, K]
            logits = logits + self.config.cls_logit_lambda * cls_logits[..., None]
        logits = logits * self.config.dense_logit_scale
        return logits.reshape(*logits.shape[:2], *grid_size)

    def forward(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        text_embeds: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> OVSegOutput:
        """Dense logits of every class for every patch.

        Args:
            pixel_values: [B, 3, H, W], H and W multiples of the patch size.
            input_ids, attention_mask: [K, L] tokenised class prompts, or
            text_embeds: [K, P] precomputed class embeddings (takes precedence).
        Returns:
            [`OVSegOutput`] with ``logits`` [B, K, H/patch, W/patch].
        """
        if text_embeds is None:
            if input_ids is None:
                raise ValueError("OVSegModel.forward needs the classes: pass input_ids or text_embeds")
            text_embeds = self.encode_text(input_ids, attention_mask)
        if text_embeds.dim() != 2:
            raise ValueError(f"text_embeds must be [num_classes, projection_dim], got {tuple(text_embeds.shape)}")
        dense = self.get_dense_image_features(pixel_values)
        return OVSegOutput(
            logits=self.dense_logits(dense.patch_embeds, text_embeds, dense.grid_size, dense.cls_embeds),
            patch_embeds=dense.patch_embeds,
            text_embeds=F.normalize(text_embeds, dim=-1),
            grid_size=dense.grid_size,
            outlier_indices=dense.outlier_indices,
        )


OVSegConfig.register_for_auto_class()
OVSegModel.register_for_auto_class("AutoModel")

__all__ = ["OVSegDenseFeatures", "OVSegModel", "OVSegOutput", "OVSegVisionModel", "OVSegVisionOutput"]
