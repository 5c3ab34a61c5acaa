"""ProxyCLIP's proxy vision models (DINO v1, DINOv2 with and without registers, SAM's image encoder),
re-implemented from their official files for the parity tests.

Each ``*_state_dict`` renames a Hugging Face module's tensors to the official layout (q/k/v fused into ``qkv``,
the official module names), so that none of transformers' or hf_ovseg's forward code is involved; each
``*_features`` is the official forward up to the tensor mc-lan/ProxyCLIP@e7b767f hands to CLIP as ``ex_feats``
(proxyclip_segmentor.py:118-159). Sources, cited per function:

- facebookresearch/dino@7c446df ``vision_transformer.py`` (ProxyCLIP loads ``dino_vitb8`` from torch hub,
  proxyclip_segmentor.py:53; hubconf.py:67-79);
- facebookresearch/dinov2@b8931f7 ``dinov2/models/vision_transformer.py``, ``dinov2/layers/*.py`` and
  ``dinov2/hub/backbones.py`` (ProxyCLIP loads ``dinov2_vitb14_reg``, proxyclip_segmentor.py:57);
- facebookresearch/segment-anything@dca509f ``segment_anything/modeling/image_encoder.py``, ``common.py`` and
  ``build_sam.py`` (ProxyCLIP builds ``vit_b``, proxyclip_segmentor.py:46).

Everything runs in the dtype of the state dict (float32 here); ProxyCLIP itself runs the proxies in float16
(proxyclip_segmentor.py:74, 116).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

IMAGENET_MEAN = [0.485, 0.456, 0.406]  # ProxyCLIP proxyclip_segmentor.py:80
IMAGENET_STD = [0.229, 0.224, 0.225]
OPENAI_MEAN = [0.48145466, 0.4578275, 0.40821073]  # proxyclip_segmentor.py:79
OPENAI_STD = [0.26862954, 0.26130258, 0.27577711]


# ---- ProxyCLIP's input to the proxies ----------------------------------------------------------


def proxy_input(img: torch.Tensor) -> torch.Tensor:
    """proxyclip_segmentor.py:79-80, 113: the CLIP-normalised window (mmseg ``SegDataPreProcessor`` output,
    0-255 constants) ``UnNormalize``d with OpenAI's 0-1 constants (myutils.py:11-15: ``t * s + m`` per
    channel), then ``transforms.Normalize`` with ImageNet's. [B, 3, H, W] -> [B, 3, H, W]."""
    mean = torch.tensor(OPENAI_MEAN, dtype=img.dtype).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_STD, dtype=img.dtype).view(1, 3, 1, 1)
    x = img * std + mean
    return (x - torch.tensor(IMAGENET_MEAN, dtype=img.dtype).view(1, 3, 1, 1)) / torch.tensor(
        IMAGENET_STD, dtype=img.dtype
    ).view(1, 3, 1, 1)


def sam_input(x: torch.Tensor, size: int = 1024) -> torch.Tensor:
    """proxyclip_segmentor.py:120: the proxy input resized (not padded: ``Sam.preprocess``, sam.py:164-174, is
    not used) to 1024 x 1024, bilinear, ``align_corners=False``, no antialias."""
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


# ---- weights ----------------------------------------------------------------------------------


def _tensors(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().float() for k, v in model.state_dict().items()}


def _strip(hf: dict, anchor: str) -> dict:
    """Drop whatever prefix (``vit.``, ``dinov2.``, ``vision_encoder.``, ...) precedes ``anchor``."""
    hits = [k for k in hf if k.endswith(anchor)]
    if not hits:
        raise KeyError(anchor)
    prefix = hits[0][: -len(anchor)]
    return {k[len(prefix) :]: v for k, v in hf.items() if k.startswith(prefix)}


def _first(hf: dict, *names: str) -> torch.Tensor:
    for name in names:
        if name in hf:
            return hf[name]
    raise KeyError(names)


def _qkv(hf: dict, attn: str, kind: str) -> torch.Tensor:
    """q, k, v rows stacked in that order: the official ``qkv`` Linear (the conversion scripts split it as
    ``[:D]``, ``[D:2D]``, ``[2D:]``)."""
    parts = []
    for new, old in (("q_proj", "attention.query"), ("k_proj", "attention.key"), ("v_proj", "attention.value")):
        parts.append(_first(hf, f"{attn}.{new}.{kind}", f"{attn}.{old}.{kind}"))
    return torch.cat(parts)


def _blocks(hf: dict, root: str) -> int:
    return len({k[len(root) :].split(".")[0] for k in hf if k.startswith(root)})


def _vit_embeddings_and_norm(hf: dict) -> dict[str, torch.Tensor]:
    """The keys DINO's and DINOv2's ``VisionTransformer`` share outside the blocks: tokens, patch embedding, norm."""
    return {
        "cls_token": hf["embeddings.cls_token"],
        "pos_embed": hf["embeddings.position_embeddings"],
        "patch_embed.proj.weight": hf["embeddings.patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": hf["embeddings.patch_embeddings.projection.bias"],
        "norm.weight": hf["layernorm.weight"],
        "norm.bias": hf["layernorm.bias"],
    }


def dino_state_dict(hf_model) -> dict[str, torch.Tensor]:
    """A transformers ``ViTModel`` (facebook/dino-vit*) renamed to DINO's ``VisionTransformer`` keys
    (vision_transformer.py:134-163). Accepts the 5.x layout (``layers.i.attention.q_proj``) and the older one
    (``encoder.layer.i.attention.attention.query``, ``intermediate.dense``, ``output.dense``)."""
    hf = _strip(_tensors(hf_model), "embeddings.cls_token")
    sd = _vit_embeddings_and_norm(hf)
    root = "layers." if any(k.startswith("layers.") for k in hf) else "encoder.layer."
    for i in range(_blocks(hf, root)):
        s, t = f"{root}{i}", f"blocks.{i}"
        for kind in ("weight", "bias"):
            sd[f"{t}.norm1.{kind}"] = hf[f"{s}.layernorm_before.{kind}"]
            sd[f"{t}.norm2.{kind}"] = hf[f"{s}.layernorm_after.{kind}"]
            sd[f"{t}.attn.qkv.{kind}"] = _qkv(hf, f"{s}.attention", kind)
            sd[f"{t}.attn.proj.{kind}"] = _first(
                hf, f"{s}.attention.o_proj.{kind}", f"{s}.attention.output.dense.{kind}"
            )
            sd[f"{t}.mlp.fc1.{kind}"] = _first(hf, f"{s}.mlp.fc1.{kind}", f"{s}.intermediate.dense.{kind}")
            sd[f"{t}.mlp.fc2.{kind}"] = _first(hf, f"{s}.mlp.fc2.{kind}", f"{s}.output.dense.{kind}")
    return sd


def dinov2_state_dict(hf_model) -> dict[str, torch.Tensor]:
    """A transformers ``Dinov2Model`` / ``Dinov2WithRegistersModel`` renamed to ``DinoVisionTransformer`` keys
    (dinov2 vision_transformer.py:107-169, block.py:63-85, layer_scale.py:27). Accepts transformers 5.24's
    layout (``attention.q_proj``/``o_proj``, SwiGLU ``gate_proj``/``up_proj``/``down_proj``) and 5.17's
    (``attention.attention.query``, ``attention.output.dense``, ``mlp.weights_in``/``weights_out``)."""
    hf = _strip(_tensors(hf_model), "embeddings.cls_token")
    sd = _vit_embeddings_and_norm(hf)
    if "embeddings.mask_token" in hf:
        sd["mask_token"] = hf["embeddings.mask_token"]
    if "embeddings.register_tokens" in hf:
        sd["register_tokens"] = hf["embeddings.register_tokens"]
    for i in range(_blocks(hf, "encoder.layer.")):
        s, t = f"encoder.layer.{i}", f"blocks.{i}"
        sd[f"{t}.ls1.gamma"] = hf[f"{s}.layer_scale1.lambda1"]
        sd[f"{t}.ls2.gamma"] = hf[f"{s}.layer_scale2.lambda1"]
        for kind in ("weight", "bias"):
            sd[f"{t}.norm1.{kind}"] = hf[f"{s}.norm1.{kind}"]
            sd[f"{t}.norm2.{kind}"] = hf[f"{s}.norm2.{kind}"]
            sd[f"{t}.attn.qkv.{kind}"] = _qkv(hf, f"{s}.attention", kind)
            sd[f"{t}.attn.proj.{kind}"] = _first(
                hf, f"{s}.attention.o_proj.{kind}", f"{s}.attention.output.dense.{kind}"
            )
            if f"{s}.mlp.fc1.{kind}" in hf:
                sd[f"{t}.mlp.fc1.{kind}"] = hf[f"{s}.mlp.fc1.{kind}"]
                sd[f"{t}.mlp.fc2.{kind}"] = hf[f"{s}.mlp.fc2.{kind}"]
            else:  # SwiGLU (ViT-g): w12 = [gate (silu); up] rows, w3 = down (swiglu_ffn.py:27-34)
                if f"{s}.mlp.weights_in.{kind}" in hf:
                    sd[f"{t}.mlp.w12.{kind}"] = hf[f"{s}.mlp.weights_in.{kind}"]
                else:
                    sd[f"{t}.mlp.w12.{kind}"] = torch.cat(
                        [hf[f"{s}.mlp.gate_proj.{kind}"], hf[f"{s}.mlp.up_proj.{kind}"]]
                    )
                sd[f"{t}.mlp.w3.{kind}"] = _first(hf, f"{s}.mlp.down_proj.{kind}", f"{s}.mlp.weights_out.{kind}")
    return sd


def sam_state_dict(hf_model) -> dict[str, torch.Tensor]:
    """A transformers ``SamModel`` / ``SamVisionModel`` / ``SamVisionEncoder``'s vision encoder renamed to
    ``ImageEncoderViT``'s own keys (image_encoder.py:58-104; the inverse of convert_sam_to_hf.py's
    ``image_encoder -> vision_encoder``, ``blocks -> layers``, ``.norm -> .layer_norm``, ``neck.0..3 ->
    neck.conv1/layer_norm1/conv2/layer_norm2``, ``patch_embed.proj -> patch_embed.projection``; qkv stays
    fused, no transposes)."""
    hf = _tensors(hf_model)
    hf = _strip(hf, "patch_embed.projection.weight")
    sd = {
        "patch_embed.proj.weight": hf["patch_embed.projection.weight"],
        "patch_embed.proj.bias": hf["patch_embed.projection.bias"],
        "neck.0.weight": hf["neck.conv1.weight"],
        "neck.1.weight": hf["neck.layer_norm1.weight"],
        "neck.1.bias": hf["neck.layer_norm1.bias"],
        "neck.2.weight": hf["neck.conv2.weight"],
        "neck.3.weight": hf["neck.layer_norm2.weight"],
        "neck.3.bias": hf["neck.layer_norm2.bias"],
    }
    if "pos_embed" in hf:
        sd["pos_embed"] = hf["pos_embed"]
    for i in range(_blocks(hf, "layers.")):
        s, t = f"layers.{i}", f"blocks.{i}"
        for kind in ("weight", "bias"):
            sd[f"{t}.norm1.{kind}"] = hf[f"{s}.layer_norm1.{kind}"]
            sd[f"{t}.norm2.{kind}"] = hf[f"{s}.layer_norm2.{kind}"]
            sd[f"{t}.attn.qkv.{kind}"] = hf[f"{s}.attn.qkv.{kind}"]
            sd[f"{t}.attn.proj.{kind}"] = hf[f"{s}.attn.proj.{kind}"]
            sd[f"{t}.mlp.lin1.{kind}"] = hf[f"{s}.mlp.lin1.{kind}"]
            sd[f"{t}.mlp.lin2.{kind}"] = hf[f"{s}.mlp.lin2.{kind}"]
        for axis in ("h", "w"):
            if f"{s}.attn.rel_pos_{axis}" in hf:
                sd[f"{t}.attn.rel_pos_{axis}"] = hf[f"{s}.attn.rel_pos_{axis}"]
    return sd


# ---- shared pieces ------------------------------------------------------------------------------


def _ln(sd: dict, name: str, x: torch.Tensor, eps: float) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], sd[f"{name}.weight"], sd[f"{name}.bias"], eps)


def _linear(sd: dict, name: str, x: torch.Tensor) -> torch.Tensor:
    return F.linear(x, sd[f"{name}.weight"], sd.get(f"{name}.bias"))


def _patches(sd: dict, img: torch.Tensor, patch: int) -> torch.Tensor:
    """``PatchEmbed``: conv with stride = kernel = patch, ``flatten(2).transpose(1, 2)`` -> [B, h*w, D]
    (dino vision_transformer.py:128-131; dinov2 patch_embed.py:68-81, whose ``norm`` is Identity)."""
    x = F.conv2d(img, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=patch)
    return x.flatten(2).transpose(1, 2)


def _timm_attention(sd: dict, block: str, x: torch.Tensor, heads: int) -> torch.Tensor:
    """dino vision_transformer.py:80-92 (``(q @ k^T) * head_dim^-0.5``, softmax, ``@ v``, proj); dinov2's
    ``Attention.forward`` (attention.py:69-79, ``F.scaled_dot_product_attention`` with its default scale, or
    xformers' ``memory_efficient_attention`` in ``MemEffAttention``, attention.py:82-99) is the same product."""
    b, n, c = x.shape
    qkv = _linear(sd, f"{block}.attn.qkv", x).reshape(b, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    attn = ((q @ k.transpose(-2, -1)) * (c // heads) ** -0.5).softmax(dim=-1)
    return _linear(sd, f"{block}.attn.proj", (attn @ v).transpose(1, 2).reshape(b, n, c))


def _bicubic_pos(
    pos: torch.Tensor, rows: int, cols: int, offset: float, antialias: bool, in_float32: bool
) -> torch.Tensor:
    """The DINO / DINOv2 grid resize of [1, 1 + M*M, D] position embeddings to rows x cols. ``offset > 0``:
    ``scale_factor=((rows + offset) / M, (cols + offset) / M)`` (dino vision_transformer.py:186-191, dinov2
    vision_transformer.py:195-200), which torch uses as the sampling scale too (not rows / M); ``offset == 0``:
    ``size=(rows, cols)`` (dinov2 vision_transformer.py:201-203)."""
    dtype = pos.dtype
    if in_float32:
        pos = pos.float()  # dinov2 vision_transformer.py:186
    n = pos.shape[1] - 1
    side = int(math.sqrt(n))
    assert side * side == n
    dim = pos.shape[-1]
    grid = pos[:, 1:].reshape(1, side, side, dim).permute(0, 3, 1, 2)
    if offset:
        kwargs = {"scale_factor": (float(rows + offset) / side, float(cols + offset) / side)}
    else:
        kwargs = {"size": (rows, cols)}
    grid = F.interpolate(grid, mode="bicubic", antialias=antialias, **kwargs)
    assert tuple(grid.shape[-2:]) == (rows, cols)
    grid = grid.permute(0, 2, 3, 1).reshape(1, -1, dim)
    return torch.cat((pos[:, :1], grid), dim=1).to(dtype)


# ---- DINO v1 ------------------------------------------------------------------------------------


def dino_interpolate_pos_encoding(sd: dict, x: torch.Tensor, w: int, h: int, patch: int) -> torch.Tensor:
    """dino vision_transformer.py:174-194 (``w`` is the image height, ``h`` its width: ``B, nc, w, h =
    x.shape``, line 197): unchanged for the native square grid, else bicubic with ``scale_factor = (w0 + 0.1) /
    sqrt(N)`` in the embeddings' own dtype (float16 in ProxyCLIP)."""
    pos = sd["pos_embed"]
    if x.shape[1] - 1 == pos.shape[1] - 1 and w == h:
        return pos
    return _bicubic_pos(pos, w // patch, h // patch, offset=0.1, antialias=False, in_float32=False)


def dino_block(sd: dict, i: int, x: torch.Tensor, heads: int, eps: float = 1e-6) -> torch.Tensor:
    """dino vision_transformer.py:107-113: ``x + attn(norm1 x)``, ``x + mlp(norm2 x)``; ``Mlp`` is fc1, exact
    (erf) ``nn.GELU``, fc2 (lines 49-65); LayerNorm eps 1e-6 (``vit_base``, lines 250-254)."""
    block = f"blocks.{i}"
    x = x + _timm_attention(sd, block, _ln(sd, f"{block}.norm1", x, eps), heads)
    hidden = F.gelu(_linear(sd, f"{block}.mlp.fc1", _ln(sd, f"{block}.norm2", x, eps)))
    return x + _linear(sd, f"{block}.mlp.fc2", hidden)


def dino_intermediate_layers(
    sd: dict, img: torch.Tensor, patch: int, heads: int, n: int = 1, eps: float = 1e-6
) -> list[torch.Tensor]:
    """dino ``VisionTransformer.get_intermediate_layers(x, n)`` (vision_transformer.py:225-233): ``prepare_tokens``
    (lines 196-207: patches, CLS first, + interpolated position embeddings), every block, and ``self.norm`` of
    the last ``n`` blocks' outputs, CLS included: [B, 1 + h*w, D] each."""
    _, _, w, h = img.shape
    x = _patches(sd, img, patch)
    x = torch.cat((sd["cls_token"].expand(x.shape[0], -1, -1), x), dim=1)
    x = x + dino_interpolate_pos_encoding(sd, x, w, h, patch)
    depth = _blocks(sd, "blocks.")
    output = []
    for i in range(depth):
        x = dino_block(sd, i, x, heads, eps)
        if depth - i <= n:
            output.append(_ln(sd, "norm", x, eps))
    return output


def dino_features(sd: dict, img: torch.Tensor, patch: int, heads: int, eps: float = 1e-6) -> torch.Tensor:
    """What ProxyCLIP takes from DINO (proxyclip_segmentor.py:132, 154): ``get_intermediate_layers(x)[0]``
    (n=1: the final-normed last block), CLS dropped, ``reshape(B, I, J, -1).permute(0, 3, 1, 2)`` -> [B, D, I,
    J]. ProxyCLIP sets ``I = J = H // patch`` (line 149, the height twice): the same as (H // p, W // p) for the
    square windows it feeds; this uses (H // p, W // p). (The qkv hook, lines 125-146, only feeds commented-out
    alternatives.)"""
    feat = dino_intermediate_layers(sd, img, patch, heads, n=1, eps=eps)[0]
    rows, cols = img.shape[-2] // patch, img.shape[-1] // patch
    return feat[:, 1:, :].reshape(feat.shape[0], rows, cols, -1).permute(0, 3, 1, 2)


# ---- DINOv2 -------------------------------------------------------------------------------------


def dinov2_hub_interpolation(num_register_tokens: int) -> tuple[float, bool]:
    """(interpolate_offset, interpolate_antialias) of the torch-hub backbones: 0.1 / False for ``dinov2_vit*14``
    (backbones.py:18-29 defaults, 71-75), 0.0 / True for ``dinov2_vit*14_reg`` (backbones.py:113-125)."""
    return (0.0, True) if num_register_tokens else (0.1, False)


def dinov2_interpolate_pos_encoding(
    sd: dict, x: torch.Tensor, w: int, h: int, patch: int, offset: float = 0.1, antialias: bool = False
) -> torch.Tensor:
    """dinov2 vision_transformer.py:180-212: unchanged for the native square grid, else bicubic in float32
    (line 186) with the offset's ``scale_factor`` or, offset 0, ``size=(w0, h0)``; cast back to x's dtype."""
    pos = sd["pos_embed"]
    if x.shape[1] - 1 == pos.shape[1] - 1 and w == h:
        return pos
    return _bicubic_pos(pos, w // patch, h // patch, offset, antialias, in_float32=True).to(x.dtype)


def dinov2_block(sd: dict, i: int, x: torch.Tensor, heads: int, eps: float = 1e-6) -> torch.Tensor:
    """dinov2 block.py:89-113 at inference: ``x + ls1(attn(norm1 x))``, ``x + ls2(mlp(norm2 x))``; LayerScale
    is ``x * gamma`` (layer_scale.py:33-34; present since the hub's init_values=1.0, backbones.py:23);
    ``Mlp`` fc1, exact GELU, fc2 (mlp.py:34-40) or SwiGLU ``w3(silu(x1) * x2)`` with ``x1, x2 = w12(x).chunk(2)``
    (swiglu_ffn.py:30-34); LayerNorm eps 1e-6 (vision_transformer.py:96)."""
    block = f"blocks.{i}"
    x = x + sd[f"{block}.ls1.gamma"] * _timm_attention(sd, block, _ln(sd, f"{block}.norm1", x, eps), heads)
    y = _ln(sd, f"{block}.norm2", x, eps)
    if f"{block}.mlp.fc1.weight" in sd:
        y = _linear(sd, f"{block}.mlp.fc2", F.gelu(_linear(sd, f"{block}.mlp.fc1", y)))
    else:
        x1, x2 = _linear(sd, f"{block}.mlp.w12", y).chunk(2, dim=-1)
        y = _linear(sd, f"{block}.mlp.w3", F.silu(x1) * x2)
    return x + sd[f"{block}.ls2.gamma"] * y


def dinov2_prepare_tokens(sd: dict, img: torch.Tensor, patch: int, offset: float, antialias: bool) -> torch.Tensor:
    """dinov2 ``prepare_tokens_with_masks`` without masks (vision_transformer.py:214-233): patches, CLS first,
    + interpolated position embeddings (CLS and patches only), then the registers between CLS and patches."""
    _, _, w, h = img.shape
    x = _patches(sd, img, patch)
    x = torch.cat((sd["cls_token"].expand(x.shape[0], -1, -1), x), dim=1)
    x = x + dinov2_interpolate_pos_encoding(sd, x, w, h, patch, offset, antialias)
    if "register_tokens" in sd:
        x = torch.cat((x[:, :1], sd["register_tokens"].expand(x.shape[0], -1, -1), x[:, 1:]), dim=1)
    return x


def dinov2_intermediate_layers(
    sd: dict,
    img: torch.Tensor,
    patch: int,
    heads: int,
    n: int = 1,
    reshape: bool = False,
    norm: bool = True,
    num_register_tokens: int | None = None,
    offset: float | None = None,
    antialias: bool | None = None,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, ...]:
    """dinov2 ``get_intermediate_layers(x, n, reshape, return_class_token=False, norm)``
    (vision_transformer.py:299-323): the hub models are not chunked (block_chunks=0, backbones.py:25), so
    ``_get_intermediate_layers_not_chunked`` (lines 273-283) keeps the outputs of the last ``n`` blocks;
    ``norm`` applies ``self.norm`` to each; CLS and the registers are dropped (``out[:, 1 +
    num_register_tokens:]``); ``reshape`` gives ``(B, w // p, h // p, -1).permute(0, 3, 1, 2)`` (w = height).
    ``offset``/``antialias`` default to the hub's for the register count (``dinov2_hub_interpolation``)."""
    if num_register_tokens is None:
        num_register_tokens = sd["register_tokens"].shape[1] if "register_tokens" in sd else 0
    hub_offset, hub_antialias = dinov2_hub_interpolation(num_register_tokens)
    offset = hub_offset if offset is None else offset
    antialias = hub_antialias if antialias is None else antialias
    x = dinov2_prepare_tokens(sd, img, patch, offset, antialias)
    depth = _blocks(sd, "blocks.")
    outputs = []
    for i in range(depth):
        x = dinov2_block(sd, i, x, heads, eps)
        if i >= depth - n:
            outputs.append(x)
    if norm:
        outputs = [_ln(sd, "norm", out, eps) for out in outputs]
    outputs = [out[:, 1 + num_register_tokens :] for out in outputs]
    if reshape:
        b, _, w, h = img.shape
        outputs = [out.reshape(b, w // patch, h // patch, -1).permute(0, 3, 1, 2).contiguous() for out in outputs]
    return tuple(outputs)


def dinov2_features(
    sd: dict,
    img: torch.Tensor,
    patch: int,
    heads: int,
    num_register_tokens: int | None = None,
    offset: float | None = None,
    antialias: bool | None = None,
    eps: float = 1e-6,
) -> torch.Tensor:
    """What ProxyCLIP takes from DINOv2: ``get_intermediate_layers(imgs_norm, reshape=True)[0]``
    (proxyclip_segmentor.py:159; n=1, norm=True): the last block through the final LayerNorm (eps 1e-6), CLS and
    registers dropped, [B, D, H/p, W/p]."""
    return dinov2_intermediate_layers(
        sd, img, patch, heads, 1, True, True, num_register_tokens, offset, antialias, eps
    )[0]


# ---- SAM image encoder ------------------------------------------------------------------------


def sam_get_rel_pos(q_size: int, k_size: int, rel_pos: torch.Tensor) -> torch.Tensor:
    """image_encoder.py:292-322: linear resize of the table to ``2 * max(q, k) - 1`` rows only when its length
    differs, then the rows at ``q_i - k_j + (k - 1)`` (scaled when q != k)."""
    max_rel_dist = int(2 * max(q_size, k_size) - 1)
    if rel_pos.shape[0] != max_rel_dist:
        resized = F.interpolate(
            rel_pos.reshape(1, rel_pos.shape[0], -1).permute(0, 2, 1), size=max_rel_dist, mode="linear"
        )
        resized = resized.reshape(-1, max_rel_dist).permute(1, 0)
    else:
        resized = rel_pos
    q_coords = torch.arange(q_size)[:, None] * max(k_size / q_size, 1.0)
    k_coords = torch.arange(k_size)[None, :] * max(q_size / k_size, 1.0)
    relative = (q_coords - k_coords) + (k_size - 1) * max(q_size / k_size, 1.0)
    return resized[relative.long()]


def sam_attention(sd: dict, block: str, x: torch.Tensor, heads: int):
    """image_encoder.py:224-240 with ``add_decomposed_rel_pos`` (lines 325-361): [B, H, W, C] -> [B, H, W, C];
    ``(q * scale) @ k^T`` plus ``q . Rh`` along rows and ``q . Rw`` along columns, softmax, ``@ v``, proj.

    Also returns what Trident's modified ``Attention.forward(x, return_attn=True)`` returns besides
    (YuHengsss/Trident@a93b346:segment_anything/modeling/image_encoder.py:226-244): the softmax probabilities
    [B * heads, H*W, H*W] (rel-pos included, every token of the (padded) grid as a key) and the values
    ``v.view(B, heads, H, W, head_dim)`` (line 242); upstream's output is the same."""
    b, hh, ww, _ = x.shape
    qkv = _linear(sd, f"{block}.attn.qkv", x).reshape(b, hh * ww, 3, heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.reshape(3, b * heads, hh * ww, -1).unbind(0)
    attn = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
    if f"{block}.attn.rel_pos_h" in sd:
        rh = sam_get_rel_pos(hh, hh, sd[f"{block}.attn.rel_pos_h"])
        rw = sam_get_rel_pos(ww, ww, sd[f"{block}.attn.rel_pos_w"])
        r_q = q.reshape(b * heads, hh, ww, -1)
        rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, rh)
        rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, rw)
        attn = (attn.view(-1, hh, ww, hh, ww) + rel_h[:, :, :, :, None] + rel_w[:, :, :, None, :]).view(
            -1, hh * ww, hh * ww
        )
    attn = attn.softmax(dim=-1)
    out = (attn @ v).view(b, heads, hh, ww, -1).permute(0, 2, 3, 1, 4).reshape(b, hh, ww, -1)
    return _linear(sd, f"{block}.attn.proj", out), attn, v.view(b, heads, hh, ww, -1)


def sam_window_partition(x: torch.Tensor, window: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """image_encoder.py:243-264: zero-pad H and W (after ``norm1``) up to multiples of the window, then
    [B * nW, window, window, C]; the padded tokens are not masked and take part in the windows' attention."""
    b, h, w, c = x.shape
    pad_h, pad_w = (window - h % window) % window, (window - w % window) % window
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    hp, wp = h + pad_h, w + pad_w
    x = x.view(b, hp // window, window, wp // window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, window, window, c), (hp, wp)


def sam_window_unpartition(windows: torch.Tensor, window: int, pad_hw, hw) -> torch.Tensor:
    """image_encoder.py:267-289: back to [B, Hp, Wp, C] and cropped to [B, H, W, C]."""
    hp, wp = pad_hw
    h, w = hw
    b = windows.shape[0] // (hp * wp // window // window)
    x = windows.view(b, hp // window, wp // window, window, window, -1)
    x = x.permute(0, 1, 3, 2, 4, 5).contiguous().view(b, hp, wp, -1)
    return x[:, :h, :w, :].contiguous()


def sam_block(sd: dict, i: int, x: torch.Tensor, heads: int, window: int, eps: float = 1e-6):
    """image_encoder.py:166-182: ``norm1``, windowed (window > 0) or global attention, residual, then
    ``x + mlp(norm2 x)`` (``MLPBlock``: lin1, exact GELU, lin2; common.py:13-26); eps 1e-6 (build_sam.py:72).
    Returns the block's output and its attention's probabilities and values (of the windows, for a windowed
    block), as Trident's ``Block.forward(x, return_attn=True)`` does (image_encoder.py:165-184)."""
    block = f"blocks.{i}"
    shortcut = x
    x = _ln(sd, f"{block}.norm1", x, eps)
    if window > 0:
        hw = x.shape[1], x.shape[2]
        x, pad_hw = sam_window_partition(x, window)
    x, attn, v = sam_attention(sd, block, x, heads)
    if window > 0:
        x = sam_window_unpartition(x, window, pad_hw, hw)
    x = shortcut + x
    hidden = F.gelu(_linear(sd, f"{block}.mlp.lin1", _ln(sd, f"{block}.norm2", x, eps)))
    return x + _linear(sd, f"{block}.mlp.lin2", hidden), attn, v


def sam_layer_norm_2d(sd: dict, name: str, x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``LayerNorm2d`` (common.py:31-43): over channels of [B, C, H, W], biased variance, eps 1e-6."""
    u = x.mean(1, keepdim=True)
    s = (x - u).pow(2).mean(1, keepdim=True)
    x = (x - u) / torch.sqrt(s + eps)
    return sd[f"{name}.weight"][:, None, None] * x + sd[f"{name}.bias"][:, None, None]


def sam_features(
    sd: dict,
    img: torch.Tensor,
    heads: int = 12,
    window: int = 14,
    global_attn_indexes=(2, 5, 8, 11),
    patch: int | None = None,
    eps: float = 1e-6,
) -> torch.Tensor:
    """``ImageEncoderViT.forward`` (image_encoder.py:106-116), what ProxyCLIP takes (proxyclip_segmentor.py:122):
    patch embedding to [B, H/p, W/p, C] (lines 391-395), + the absolute ``pos_embed`` as it is (no resize: the
    input must be the 1024 x 1024 it was trained at), the blocks (window 0 at ``global_attn_indexes``, line 83),
    then the neck: 1x1 conv, LayerNorm2d, 3x3 conv (padding 1), LayerNorm2d (lines 88-104) -> [B, 256, 64, 64]
    for ViT-B at 1024 (defaults: build_sam.py:37-44, 62-80)."""
    if patch is None:
        patch = sd["patch_embed.proj.weight"].shape[-1]
    x = F.conv2d(img, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=patch).permute(0, 2, 3, 1)
    if "pos_embed" in sd:
        x = x + sd["pos_embed"]
    for i in range(_blocks(sd, "blocks.")):
        x = sam_block(sd, i, x, heads, 0 if i in global_attn_indexes else window, eps)[0]
    x = F.conv2d(x.permute(0, 3, 1, 2), sd["neck.0.weight"])
    x = sam_layer_norm_2d(sd, "neck.1", x, eps)
    x = F.conv2d(x, sd["neck.2.weight"], padding=1)
    return sam_layer_norm_2d(sd, "neck.3", x, eps)
