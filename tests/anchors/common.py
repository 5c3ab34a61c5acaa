"""What every anchor's code shares, re-implemented from the official sources for the parity tests.

The reference runs on an OpenAI-layout state dict (``visual.conv1.weight``, ``...attn.in_proj_weight``, LND
tensors, ``nn.MultiheadAttention`` semantics) made from an OVSegModel's Hugging Face tensors, so that none of
hf_ovseg's forward code is involved. Sources: OpenAI CLIP's ``clip/model.py`` as vendored by
wangf3014/SCLIP@b56bd30 (``clip/model.py``), mmcv's ``imrescale`` / ``rescale_size`` (keep-ratio resize,
``int(x * scale + 0.5)``, ``cv2.resize(..., INTER_LINEAR)``), mmseg's ``SegDataPreProcessor`` (BGR->RGB swap,
``(x - mean) / std`` in 0-255 units with the anchors' rounded CLIP constants).
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch
import torch.nn.functional as F

ANCHOR_MEAN = [122.771, 116.746, 104.094]  # e.g. SCLIP clip_segmentor.py:23-26
ANCHOR_STD = [68.501, 66.632, 70.323]


# ---- weights ----------------------------------------------------------------------------------


def openai_state_dict(model) -> dict[str, torch.Tensor]:
    """An OVSegModel's tensors renamed to OpenAI CLIP's layout (q/k/v fused into ``in_proj``)."""
    hf = {k: v.detach().clone().float() for k, v in model.state_dict().items()}
    sd = {
        "visual.class_embedding": hf["vision_model.embeddings.class_embedding"],
        "visual.conv1.weight": hf["vision_model.embeddings.patch_embedding.weight"],
        "visual.positional_embedding": hf["vision_model.embeddings.position_embedding.weight"],
        "visual.ln_pre.weight": hf["vision_model.pre_layrnorm.weight"],
        "visual.ln_pre.bias": hf["vision_model.pre_layrnorm.bias"],
        "visual.ln_post.weight": hf["vision_model.post_layernorm.weight"],
        "visual.ln_post.bias": hf["vision_model.post_layernorm.bias"],
        "visual.proj": hf["visual_projection.weight"].T.contiguous(),
        "token_embedding.weight": hf["text_model.embeddings.token_embedding.weight"],
        "positional_embedding": hf["text_model.embeddings.position_embedding.weight"],
        "ln_final.weight": hf["text_model.final_layer_norm.weight"],
        "ln_final.bias": hf["text_model.final_layer_norm.bias"],
        "text_projection": hf["text_projection.weight"].T.contiguous(),
    }
    for tower, target in (("vision_model", "visual.transformer"), ("text_model", "transformer")):
        index = 0
        while f"{tower}.encoder.layers.{index}.layer_norm1.weight" in hf:
            s, t = f"{tower}.encoder.layers.{index}.", f"{target}.resblocks.{index}."
            for kind in ("weight", "bias"):
                sd[t + f"attn.in_proj_{kind}"] = torch.cat([hf[s + f"self_attn.{n}_proj.{kind}"] for n in "qkv"])
                sd[t + f"attn.out_proj.{kind}"] = hf[s + f"self_attn.out_proj.{kind}"]
                sd[t + f"ln_1.{kind}"] = hf[s + f"layer_norm1.{kind}"]
                sd[t + f"ln_2.{kind}"] = hf[s + f"layer_norm2.{kind}"]
                sd[t + f"mlp.c_fc.{kind}"] = hf[s + f"mlp.fc1.{kind}"]
                sd[t + f"mlp.c_proj.{kind}"] = hf[s + f"mlp.fc2.{kind}"]
            index += 1
    return sd


def num_blocks(sd: dict, prefix: str = "visual.transformer") -> int:
    start = prefix + ".resblocks."
    return len({k[len(start) :].split(".")[0] for k in sd if k.startswith(start)})


# ---- OpenAI CLIP blocks (LND) ------------------------------------------------------------------


def layer_norm(sd: dict, name: str, x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    return F.layer_norm(x.float(), x.shape[-1:], sd[f"{name}.weight"], sd[f"{name}.bias"], eps).type(x.dtype)


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


def mlp(sd: dict, block: str, x: torch.Tensor, act=quick_gelu) -> torch.Tensor:
    hidden = act(F.linear(x, sd[f"{block}.mlp.c_fc.weight"], sd[f"{block}.mlp.c_fc.bias"]))
    return F.linear(hidden, sd[f"{block}.mlp.c_proj.weight"], sd[f"{block}.mlp.c_proj.bias"])


def mha(sd: dict, block: str, x: torch.Tensor, heads: int, mask=None, need_weights=False):
    """``nn.MultiheadAttention(x, x, x)`` of a resblock, through torch's functional implementation."""
    width = x.shape[-1]
    return F.multi_head_attention_forward(
        x, x, x, width, heads, sd[f"{block}.attn.in_proj_weight"], sd[f"{block}.attn.in_proj_bias"], None, None,
        False, 0.0, sd[f"{block}.attn.out_proj.weight"], sd[f"{block}.attn.out_proj.bias"], training=False,
        need_weights=need_weights, attn_mask=mask, average_attn_weights=False,
    )  # fmt: skip


def resblock(sd: dict, index: int, x: torch.Tensor, heads: int, prefix="visual.transformer", mask=None):
    """CLIP's ``ResidualAttentionBlock.forward``: ``x + attn(ln_1(x))``, then ``x + mlp(ln_2(x))``."""
    block = f"{prefix}.resblocks.{index}"
    x = x + mha(sd, block, layer_norm(sd, f"{block}.ln_1", x), heads, mask)[0]
    return x + mlp(sd, block, layer_norm(sd, f"{block}.ln_2", x))


def custom_qkv(sd: dict, block: str, x: torch.Tensor, heads: int):
    """The anchors' ``custom_attn`` projections (SCLIP clip/model.py:290-293): [bsz * heads, T, head_dim]."""
    _, bsz, width = x.shape
    q, k, v = F.linear(x, sd[f"{block}.attn.in_proj_weight"], sd[f"{block}.attn.in_proj_bias"]).chunk(3, dim=-1)
    return [t.contiguous().view(-1, bsz * heads, width // heads).transpose(0, 1) for t in (q, k, v)]


def custom_out(sd: dict, block: str, weights: torch.Tensor, v: torch.Tensor, bsz: int) -> torch.Tensor:
    """``out_proj(bmm(weights, v))`` back to LND (SCLIP clip/model.py:306-308)."""
    out = torch.bmm(weights, v).transpose(0, 1).contiguous().view(-1, bsz, v.shape[-1] * weights.shape[0] // bsz)
    return F.linear(out, sd[f"{block}.attn.out_proj.weight"], sd[f"{block}.attn.out_proj.bias"])


def interpolate_pos_encoding(sd: dict, x: torch.Tensor, w: int, h: int, patch: int) -> torch.Tensor:
    """SCLIP clip/model.py:263-281 (the same in NACLIP, ClearCLIP, SegEarth-OV and SFP)."""
    pos = sd["visual.positional_embedding"]
    npatch, n = x.shape[1] - 1, pos.shape[0] - 1
    if npatch == n and w == h:
        return pos
    dim = x.shape[-1]
    w0, h0 = w // patch + 0.1, h // patch + 0.1
    grid = F.interpolate(
        pos[1:].reshape(1, int(math.sqrt(n)), int(math.sqrt(n)), dim).permute(0, 3, 1, 2),
        scale_factor=(w0 / math.sqrt(n), h0 / math.sqrt(n)), mode="bicubic",
    )  # fmt: skip
    assert int(w0) == grid.shape[-2] and int(h0) == grid.shape[-1]
    return torch.cat((pos[[0]].unsqueeze(0), grid.permute(0, 2, 3, 1).view(1, -1, dim)), dim=1)


def interpolate_pos_size(sd: dict, rows: int, cols: int) -> torch.Tensor:
    """Hugging Face ``CLIPVisionEmbeddings.interpolate_pos_encoding``: bicubic to ``size=(rows, cols)``
    unless the grid is the native square one."""
    pos = sd["visual.positional_embedding"]
    side = int(math.sqrt(pos.shape[0] - 1))
    if rows == cols == side:
        return pos
    grid = pos[1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(rows, cols), mode="bicubic", align_corners=False)
    return torch.cat([pos[:1], grid.permute(0, 2, 3, 1).reshape(rows * cols, -1)])


def embed(sd: dict, img: torch.Tensor, patch: int, resize: str = "scale_factor") -> torch.Tensor:
    """SCLIP clip/model.py:231-246: patches, CLS, position embeddings, ln_pre -> LND [T, B, D].
    ``resize="size"``: plain CLIP's (Hugging Face) position-embedding resize instead."""
    _, _, w, h = img.shape
    x = F.conv2d(img, sd["visual.conv1.weight"], stride=patch)
    rows, cols = x.shape[-2:]
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    cls = sd["visual.class_embedding"] + torch.zeros(x.shape[0], 1, x.shape[-1])
    x = torch.cat([cls, x], dim=1)
    pos = sd["visual.positional_embedding"]
    if resize == "size":
        x = x + interpolate_pos_size(sd, rows, cols)
    else:
        x = x + (interpolate_pos_encoding(sd, x, w, h, patch) if x.shape[1] != pos.shape[0] else pos)
    return layer_norm(sd, "visual.ln_pre", x).permute(1, 0, 2)


# ---- text ---------------------------------------------------------------------------------------


def encode_text(sd: dict, tokens: torch.Tensor, heads: int) -> torch.Tensor:
    """CLIP's ``encode_text`` (SCLIP clip/model.py:457-466): causal transformer, EOT token, projection."""
    x = sd["token_embedding.weight"][tokens] + sd["positional_embedding"]
    x = x.permute(1, 0, 2)
    length = tokens.shape[1]
    mask = torch.full((length, length), float("-inf")).triu_(1)
    for index in range(num_blocks(sd, "transformer")):
        x = resblock(sd, index, x, heads, prefix="transformer", mask=mask)
    x = layer_norm(sd, "ln_final", x.permute(1, 0, 2))
    return x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)] @ sd["text_projection"]


def tokenize(tokenizer, texts: list[str], context_length: int = 77) -> torch.Tensor:
    """``clip.tokenize``: SOT, BPE ids, EOT, zero padding to 77 (SCLIP clip/clip.py:198-234)."""
    result = torch.zeros(len(texts), context_length, dtype=torch.long)
    for i, text in enumerate(texts):
        ids = tokenizer(text)["input_ids"]  # SOT ... EOT, OpenAI's ids (checked in test_convert)
        result[i, : len(ids)] = torch.tensor(ids)
    return result


def get_cls_idx(path, separator: str) -> tuple[list[str], list[int]]:
    """The anchors' ``get_cls_idx`` (SCLIP clip_segmentor.py:201-212 splits on ', ', ClearCLIP on ',')."""
    with open(path) as handle:
        name_sets = handle.readlines()
    names, indices = [], []
    for idx, line in enumerate(name_sets):
        parts = line.split(separator)
        names += parts
        indices += [idx] * len(parts)
    return [n.replace("\n", "") for n in names], indices


def query_features(sd: dict, tokenizer, names: list[str], templates: list[str], heads: int) -> torch.Tensor:
    """SCLIP clip_segmentor.py:35-44: per name, mean of normalised template embeddings, normalised."""
    features = []
    for name in names:
        feature = encode_text(sd, tokenize(tokenizer, [t.format(name) for t in templates]), heads)
        feature = feature / feature.norm(dim=-1, keepdim=True)
        feature = feature.mean(dim=0)
        features.append((feature / feature.norm()).unsqueeze(0))
    return torch.cat(features)


# ---- mmcv / mmseg ------------------------------------------------------------------------------


def imrescale(img: np.ndarray, scale: tuple[int, int]) -> np.ndarray:
    """mmcv ``imrescale(img, scale)`` (keep ratio): ``rescale_size`` then ``cv2.resize`` bilinear."""
    h, w = img.shape[:2]
    factor = min(max(scale) / max(h, w), min(scale) / min(h, w))
    new_w, new_h = int(w * float(factor) + 0.5), int(h * float(factor) + 0.5)
    return cv2.resize(img, (new_w, new_h), interpolation=cv2.INTER_LINEAR)


def preprocess(path, scale: tuple[int, int]) -> tuple[torch.Tensor, tuple[int, int]]:
    """``LoadImageFromFile`` (cv2, BGR), ``Resize(scale, keep_ratio=True)``, ``SegDataPreProcessor`` (BGR->RGB,
    ``(x - mean) / std``): -> [1, 3, h, w] float32 and the original (H, W)."""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    original = img.shape[:2]
    img = imrescale(img, scale)
    x = torch.from_numpy(img[:, :, ::-1].copy()).permute(2, 0, 1).float()
    x = (x - torch.tensor(ANCHOR_MEAN).view(3, 1, 1)) / torch.tensor(ANCHOR_STD).view(3, 1, 1)
    return x[None], original


def merge_synonyms(probs: torch.Tensor, query_idx: list[int]) -> torch.Tensor:
    """SCLIP clip_segmentor.py:154-159: max over each class's names ([Q, H, W] -> [C, H, W])."""
    query_idx = torch.tensor(query_idx)
    num_cls, num_queries = int(query_idx.max()) + 1, len(query_idx)
    if num_cls == num_queries:
        return probs
    cls_index = F.one_hot(query_idx).T.view(num_cls, num_queries, 1, 1)
    return (probs.unsqueeze(0) * cls_index).max(1)[0]
