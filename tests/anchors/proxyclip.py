"""ProxyCLIP (Lan et al., ECCV 2024) re-implemented from mc-lan/ProxyCLIP@e7b767f for the parity tests:
the CLIP side (``open_clip/transformer.py``: every block but the last unchanged, the last replaced by the proxy
attention on the VFM's feature map), the segmentor (``proxyclip_segmentor.py``: windows padded to multiples of
56, the VFM input, logits on the VFM's grid, slide averaging and post-processing) and the class-file reader.

The proxy (VFM) itself is not re-implemented here: ``proxyclip_predict`` takes a ``proxy_feature`` callable.
The adapters at the end (``dino_proxy``, ``dinov2_proxy``, ``sam_proxy``, ``mae_proxy``) turn a VFM's own
forward into that callable exactly as ``proxyclip_segmentor.py:118-166`` does.

Precision: the official code runs everything in float16 on a GPU (CLIP: ``create_model(...,
precision='fp16')``, proxyclip_segmentor.py:40, i.e. OpenAI's manual mixed precision with LayerNorms
computed in float32; VFM: ``.half()``, 74, its input ``.half()``, 116); these functions run in the dtype of
their inputs (float32 in the tests). Citations are ``file:line`` in mc-lan/ProxyCLIP@e7b767f.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from .common import custom_out, embed, layer_norm, merge_synonyms, num_blocks, resblock
from .common import get_cls_idx as _get_cls_idx
from .segmentors import _slide_average

VIS = "visual.transformer.resblocks"

# proxyclip_segmentor.py:79-80: ``UnNormalize`` with CLIP's mean/std, then torchvision ``Normalize`` (ImageNet).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

PAD_MULTIPLE = 56  # proxyclip_segmentor.py:220 (``compute_padsize(H, W, 56)``)
SAM_SIZE = 1024  # proxyclip_segmentor.py:120


def get_cls_idx(path) -> tuple[list[str], list[int]]:
    """proxyclip_segmentor.py:329-340: ``readlines``, each line split on ``'; '`` (semicolon AND space: a comma
    does not separate synonyms, so ``"building, edifice"`` of cls_ade20k847.txt is one name), every name's
    ``'\\n'`` removed (nothing else stripped: cls_context60.txt's last name is ``'wood '``)."""
    return _get_cls_idx(path, "; ")


# ---- the VFM's input -----------------------------------------------------------------------------


def proxy_input(crop: torch.Tensor) -> torch.Tensor:
    """proxyclip_segmentor.py:113-114 (myutils.py:11-15, ``UnNormalize``): the CLIP-normalised (padded) window
    back to [0, 1] RGB (``x * std + mean`` per channel, in place on a clone) and re-normalised with ImageNet's
    mean/std (``(x - mean) / std``, torchvision ``Normalize``). Computed in the window's dtype (float32 in the
    official code too); the official code casts the result to float16 next (116)."""
    out = []
    for image in crop:
        image = image.clone()
        for t, m, s in zip(image, CLIP_MEAN, CLIP_STD, strict=True):
            t.mul_(s).add_(m)
        mean = torch.as_tensor(IMAGENET_MEAN, dtype=image.dtype).view(-1, 1, 1)
        std = torch.as_tensor(IMAGENET_STD, dtype=image.dtype).view(-1, 1, 1)
        out.append(image.sub(mean).div(std))
    return torch.stack(out, dim=0)


# ---- CLIP with the proxy attention ---------------------------------------------------------------


def proxy_attention(
    proxy_feats: torch.Tensor, heads: int, beta: float = 1.2, gamma: float = 3.0, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """open_clip/transformer.py:569-578: the proxy attention [B * heads, h*w, h*w] from the VFM's map
    [B, C, h, w]: channel-wise L2-normalised tokens (``F.normalize(flatten(2, 3), dim=1)``), their cosine
    similarities, ``(S - mean(S) * beta) * gamma`` with the mean over the whole tensor (diagonal and batch
    included), entries ``< 0`` set to ``-inf``, one softmax per row, the same for every head. No ``1/sqrt(d)``
    and no CLIP query or key. A row whose entries are all negative (every similarity below
    ``beta * mean(S)``, e.g. a nearly uniform window where ``mean(S) > 1/beta``) is all ``-inf`` and its
    softmax is NaN, as in the official code. ``dtype``: CLIP's (the ``.to(q.dtype)`` of 576, before the softmax)."""
    b = proxy_feats.shape[0]
    tokens = F.normalize(proxy_feats.flatten(2, 3), dim=1)
    similarity = torch.einsum("b c m, b c n -> b m n", tokens, tokens)
    similarity = (similarity - torch.mean(similarity) * beta) * gamma
    similarity[similarity < 0.0] = float("-inf")
    mask = similarity.to(dtype or similarity.dtype).unsqueeze(1).repeat(1, heads, 1, 1)
    mask = mask.reshape(b * heads, mask.shape[2], mask.shape[3])
    return F.softmax(mask, dim=-1)


def proxyclip_features(
    sd: dict, img: torch.Tensor, patch: int, heads: int, proxy_feats: torch.Tensor, beta: float = 1.2,
    gamma: float = 3.0,
) -> torch.Tensor:  # fmt: skip
    """open_clip/transformer.py:503-538 (``VisionTransformer.forward`` with ``ex_feats``) and 560-587
    (``custom_attn``) on one (already padded) CLIP-normalised window ``img`` [B, 3, H, W] and the VFM's map
    ``proxy_feats`` [B, C, h, w] (what ``forward_feature`` passes as ``external_feats``).

    Embedding as ``common.embed`` (503-521; position embeddings resized at non-native grids by 540-558:
    bicubic, ``scale_factor=((H//p + 0.1)/sqrt(N), (W//p + 0.1)/sqrt(N))``), every block but the last
    unchanged (524-525), then for the last block only (526-528) ``out_proj(A @ v)``: ``A`` the proxy attention,
    ``v`` CLIP's value projection of ``ln_1(x)`` without the CLS token, per head, bilinearly resized
    (``align_corners=False``) from CLIP's patch grid to the VFM's grid (h, w). No residual, no MLP, no CLS
    token. Then ``ln_post`` and ``@ proj`` (535-536).

    Quirk kept (504, 521, 580): the forward unpacks ``B, nc, w, h = x.shape`` (w = height, h = width), so the
    value grid is reshaped as (W//p, H//p) although its tokens are row-major (H//p, W//p): on a non-square
    window the values are scrambled before the resize (square windows, the only ones the configs produce,
    are unaffected).

    Returns [B, h*w, P]: projected, not normalised, features on the VFM's grid (row-major)."""
    x = embed(sd, img, patch)  # 505-519 (+ 540-558 through common.interpolate_pos_encoding)
    last = num_blocks(sd) - 1
    for index in range(last):
        x = resblock(sd, index, x, heads)
    block = f"{VIS}.{last}"
    y = layer_norm(sd, f"{block}.ln_1", x)  # 528: custom_attn(blk.attn, blk.ln_1(x), ...)

    _, bsz, embed_dim = y.shape  # 562-564
    head_dim = embed_dim // heads
    _, _, v = F.linear(y, sd[f"{block}.attn.in_proj_weight"], sd[f"{block}.attn.in_proj_bias"]).chunk(3, dim=-1)
    v = v.contiguous().view(-1, bsz * heads, head_dim).transpose(0, 1)  # 566-567

    _, _, h_proxy, w_proxy = proxy_feats.shape  # 569
    weights = proxy_attention(proxy_feats, heads, beta, gamma, v.dtype)  # 570-578

    token_size = img.shape[-1] // patch, img.shape[-2] // patch  # 504 + 521: (width // p, height // p)
    v = v[:, 1:, :].reshape(bsz * heads, token_size[0], token_size[1], head_dim).permute(0, 3, 1, 2)  # 580
    v = F.interpolate(v, size=(h_proxy, w_proxy), mode="bilinear", align_corners=False)  # 581
    v = v.permute(0, 2, 3, 1).reshape(bsz * heads, h_proxy * w_proxy, head_dim)  # 582

    out = custom_out(sd, block, weights, v, bsz)  # 584-586: bmm, [h*w, B, D], out_proj
    return layer_norm(sd, "visual.ln_post", out.permute(1, 0, 2)) @ sd["visual.proj"]  # 533-536


# ---- the segmentor -------------------------------------------------------------------------------


def compute_padsize(height: int, width: int, multiple: int = PAD_MULTIPLE) -> tuple[int, int, int, int]:
    """proxyclip_segmentor.py:294-306: (left, right, top, bottom) up to the next multiple, the odd pixel on
    the right / bottom."""
    l = r = t = b = 0
    if width % multiple:
        lr = multiple - width % multiple
        l, r = lr // 2, lr - lr // 2
    if height % multiple:
        tb = multiple - height % multiple
        t, b = tb // 2, tb - tb // 2
    return l, r, t, b


def proxyclip_predict(
    img: torch.Tensor, ori_shape, clip_feature: Callable, proxy_feature: Callable, query: torch.Tensor,
    query_idx: list[int], logit_scale: float = 40, prob_thd: float = 0.0, slide_crop: int = 336,
    slide_stride: int = 112,
):  # fmt: skip
    """proxyclip_segmentor.py:106-292 (``forward_feature``, ``forward_slide``, ``predict``,
    ``postprocess_result``) on a CLIP-normalised image [1, 3, h, w] (``common.preprocess``) and the original
    size ``ori_shape`` (H, W). Defaults are the segmentor's (30-31).

    ``proxy_feature(x)`` receives ``proxy_input(window)``: the zero-padded CLIP-normalised window (zero = CLIP's
    mean colour) un-normalised to [0, 1] and re-normalised with ImageNet's mean/std, [1, 3, Hp, Wp] at the
    padded window size, *before* any VFM-specific resize (SAM's 1024x1024, MAE's ``slide_crop``; the adapters
    below do those). It returns the VFM's map [1, C, h, w] (``ex_feats``). The official code passes float16.

    ``clip_feature(window, proxy_feats)`` returns the projected features [1, h*w, P] of the padded window on
    the VFM's grid (e.g. ``lambda w, f: proxyclip_features(sd, w, patch, heads, f, beta, gamma)``).
    ``query``: [Q, P] normalised text features (``common.query_features`` reproduces 87-96 with the 80
    ``openai_imagenet_template`` prompts, prompts/imagenet_template.py:169-250).

    ``forward_feature`` (106-186): the logits are reshaped with ``reshape(-1, Q, I, J)``, I = J = the VFM
    grid's height (every branch computes both from the input height, 121, 149, 158, 164). On a non-square VFM
    grid (DINOv2 on a non-square padded window) that raises, or, when the token count is a multiple of I*I,
    silently makes extra batch entries; the slide sum then raises on the broadcast, as in the official code
    (whole-image: the official ``postprocess_result`` raises IndexError with data samples, returns the first
    entry without; this function keeps the first entry). Then bilinear (``align_corners=False``) to the
    padded window (whole image: straight to ``ori_shape``).

    ``forward_slide`` (188-244): mmseg windows, each zero-padded to multiples of 56 (218-223), its logits cut
    back (229-231), summed and divided by the counts, then bilinear to ``ori_shape``. Whole image when
    ``slide_crop <= 0`` (260-263): no padding. ``postprocess_result`` (267-292): ``* logit_scale``, softmax over
    every name, max over each class's names, argmax, ``prob_thd`` -> class 0.

    Returns (label map [H, W], class probabilities [C, H, W])."""

    def forward_feature(window, logit_size=None):
        proxy_feats = proxy_feature(proxy_input(window))  # 113-116, 118-166
        rows = cols = proxy_feats.shape[-2]  # I, J: 121, 149, 158, 164
        features = clip_feature(window, proxy_feats)  # 172-175
        features = features / features.norm(dim=-1, keepdim=True)  # 177
        logits = features @ query.T  # 178
        logits = logits.permute(0, 2, 1).reshape(-1, logits.shape[-1], rows, cols)  # 179
        size = window.shape[-2:] if logit_size is None else logit_size
        return F.interpolate(logits, size=size, mode="bilinear")  # 181-184

    def padded_forward(window):
        height, width = window.shape[2:]  # 219
        pad = compute_padsize(height, width)  # 220
        if any(pad):
            window = F.pad(window, pad)  # 222-223: zeros in CLIP-normalised space
        logit = forward_feature(window)  # 224
        if any(pad):
            l, t = pad[0], pad[2]
            logit = logit[:, :, t : t + height, l : l + width]  # 229-231
        return logit

    if slide_crop > 0:
        seg_logits = _slide_average(img, padded_forward, query.shape[0], slide_crop, slide_stride)  # 200-240
        seg_logits = F.interpolate(seg_logits, size=ori_shape, mode="bilinear")  # 241-242
    else:
        seg_logits = forward_feature(img, ori_shape)  # 263
    seg_logits = (seg_logits[0] * logit_scale).softmax(0)  # 270-271
    seg_logits = merge_synonyms(seg_logits, query_idx)  # 273-278
    seg_pred = seg_logits.argmax(0, keepdim=True)  # 280
    seg_pred[seg_logits.max(0, keepdim=True)[0] < prob_thd] = 0  # 281
    return seg_pred[0], seg_logits


# ---- VFM adapters: a VFM's own forward -> ``proxy_feature`` --------------------------------------


def dino_proxy(get_intermediate_layers: Callable, patch: int = 8) -> Callable:
    """proxyclip_segmentor.py:124-154 (``vfm_model='dino'``, torch.hub ``facebookresearch/dino:main``
    ``dino_vitb8``, 53): ``get_intermediate_layers(x)[0]`` (n=1: the last block's tokens through the final
    LayerNorm, facebookresearch/dino vision_transformer.py:225-233), CLS dropped, reshaped row-major to
    (I, J) = (H // patch, H // patch) — the window height for both sides — with the channels ``-1``, and moved
    to [B, C, I, J]. On a non-square window the ``-1`` absorbs the difference: the tokens are regrouped
    row-major into an I x I grid with proportionally more channels (silently, when divisible; otherwise it
    raises). (The q/k/v hook of 126-146 does not reach the output; it is re-registered at every call.)"""

    def run(x):
        feat = get_intermediate_layers(x)[0]
        side = x[0].shape[-2] // patch
        return feat[:, 1:, :].reshape(feat.shape[0], side, side, -1).permute(0, 3, 1, 2)

    return run


def dinov2_proxy(get_intermediate_layers: Callable) -> Callable:
    """proxyclip_segmentor.py:156-159 (``vfm_model='dinov2'``, torch.hub ``facebookresearch/dinov2``
    ``dinov2_vitb14_reg``, 57): ``get_intermediate_layers(x, reshape=True)[0]`` (n=1, norm=True: the last
    block through the final LayerNorm, CLS and the 4 registers dropped, [B, C, H // 14, W // 14])."""

    def run(x):
        return get_intermediate_layers(x, reshape=True)[0]

    return run


def sam_proxy(image_encoder: Callable, size: int = SAM_SIZE) -> Callable:
    """proxyclip_segmentor.py:118-122 (``vfm_model='sam'``, ``sam_model_registry['vit_b']``, 46): the
    ImageNet-normalised window stretched to 1024x1024 (bilinear, ``align_corners=False``, no aspect-preserving
    resize, no padding) and SAM's ``image_encoder`` output (the neck, [B, 256, 64, 64])."""

    def run(x):
        return image_encoder(F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False))

    return run


def mae_proxy(forward_features: Callable, slide_crop: int = 336, patch: int = 16) -> Callable:
    """proxyclip_segmentor.py:161-166 (``vfm_model='mae'``, ``vit_base_patch16(img_size=slide_crop)``, 60-70):
    the window stretched to ``slide_crop`` x ``slide_crop`` (bilinear, ``align_corners=False``),
    ``forward_features`` (mae/models_vit.py:34-56 with ``global_pool=False``: ``norm`` of the patch tokens),
    ``'b (h w) c -> b c h w'`` with h = w = slide_crop // 16."""

    def run(x):
        x = F.interpolate(x, size=(slide_crop, slide_crop), mode="bilinear", align_corners=False)
        side = x.shape[-2] // patch
        tokens = forward_features(x)
        return tokens.permute(0, 2, 1).reshape(tokens.shape[0], -1, side, side)

    return run
