"""Each anchor's vision-tower change, re-implemented from its official CLIP file (cited per function) on an
OpenAI-layout state dict. Every function returns what the anchor's segmentor multiplies with the text:
projected (not normalised) features [B, N, P] of the patch tokens (SegEarth-OV also returns its CLS)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .common import custom_out, custom_qkv, embed, layer_norm, mha, mlp, num_blocks, resblock

VIS = "visual.transformer.resblocks"


def _scale(x: torch.Tensor, heads: int) -> float:
    return (x.shape[-1] // heads) ** -0.5


def _tower(sd: dict, img: torch.Tensor, patch: int, heads: int, upto: int, resize="scale_factor") -> torch.Tensor:
    x = embed(sd, img, patch, resize)
    for index in range(upto):
        x = resblock(sd, index, x, heads)
    return x


def _last_block_input(sd: dict, img: torch.Tensor, patch: int, heads: int):
    """Every block but the last unchanged, then the last block's ``ln_1`` and its q, k, v (split per head), as
    SCLIP, NACLIP, ClearCLIP and SegEarth-OV compute them. Returns (x, block prefix, ln_1(x), q, k, v)."""
    last = num_blocks(sd) - 1
    x = _tower(sd, img, patch, heads, last)
    block = f"{VIS}.{last}"
    y = layer_norm(sd, f"{block}.ln_1", x)
    return (x, block, y, *custom_qkv(sd, block, y, heads))


def _project(sd: dict, x_lnd: torch.Tensor) -> torch.Tensor:
    return layer_norm(sd, "visual.ln_post", x_lnd.permute(1, 0, 2)) @ sd["visual.proj"]


def vanilla(sd: dict, img: torch.Tensor, patch: int, heads: int) -> torch.Tensor:
    """Plain CLIP: every block unchanged, ``ln_post(x) @ proj`` of the patch tokens (position embeddings
    resized as Hugging Face's CLIP does)."""
    return _project(sd, _tower(sd, img, patch, heads, num_blocks(sd), resize="size"))[:, 1:]


def sclip(sd: dict, img: torch.Tensor, patch: int, heads: int) -> torch.Tensor:
    """wangf3014/SCLIP@b56bd30:clip/model.py:247-255 (last block ``x + csa(ln_1 x)``, ``x + mlp(ln_2 x)``),
    283-313 (``csa``: softmax(q q^T s) + softmax(k k^T s)); clip_segmentor.py:63-65 drops CLS."""
    x, block, y, q, k, v = _last_block_input(sd, img, patch, heads)
    scale = _scale(y, heads)
    weights = F.softmax(torch.bmm(q, q.transpose(1, 2)) * scale, -1) + F.softmax(
        torch.bmm(k, k.transpose(1, 2)) * scale, -1
    )
    x = x + custom_out(sd, block, weights, v, y.shape[1])
    x = x + mlp(sd, block, layer_norm(sd, f"{block}.ln_2", x))
    return _project(sd, x)[:, 1:]


def naclip_addition(rows: int, cols: int, std: float) -> torch.Tensor:
    """sinahmr/NACLIP@0cac3a6:clip/model.py:153-176: the Gaussian window convolved with one-hot maps."""
    ks = []
    for dim in (rows * 2 - 1, cols * 2 - 1):
        constant = 1 / (std * math.sqrt(2))
        start = -(dim - 1) / 2.0
        ks.append(torch.linspace(start * constant, (start + (dim - 1)) * constant, steps=dim, dtype=torch.float))
    window = torch.exp(-(torch.stack(torch.meshgrid(*ks, indexing="ij")) ** 2).sum(0))
    m = torch.einsum("ij,kl->ijkl", torch.eye(rows), torch.eye(cols)).permute((0, 3, 1, 2)).contiguous()
    out = F.conv2d(m.view(-1, rows, cols).unsqueeze(1), window.unsqueeze(0).unsqueeze(1), padding="same").squeeze(1)
    out = out.view(rows * cols, rows * cols)
    out = torch.vstack([torch.zeros((1, rows * cols)), out])
    return torch.hstack([torch.zeros((rows * cols + 1, 1)), out])


def naclip(sd: dict, img: torch.Tensor, patch: int, heads: int, std: float = 5.0) -> torch.Tensor:
    """NACLIP clip/model.py:94-132 with ``arch='reduced'`` (118-119: the attention output only) and
    ``attn_strategy='naclip'`` (189-207: softmax(k k^T s + Gaussian)); naclip.py:58-60 drops CLS."""
    rows, cols = img.shape[-2] // patch, img.shape[-1] // patch
    _, block, y, q, k, v = _last_block_input(sd, img, patch, heads)
    weights = torch.bmm(k, k.transpose(1, 2)) * _scale(y, heads) + naclip_addition(rows, cols, std).unsqueeze(0)
    x = custom_out(sd, block, F.softmax(weights, dim=-1), v, y.shape[1])
    return _project(sd, x)[:, 1:]


def _open_clip_last(sd: dict, img: torch.Tensor, patch: int, heads: int, model_type: str):
    """ClearCLIP / SegEarth-OV open_clip/transformer.py ``VisionTransformer.forward`` with
    ``ignore_residual=True``: ``output = custom_attn(ln_1(x))`` of the last block, ``ln_post``, ``proj``;
    pooled = token 0, tokens = the rest (``_global_pool``). Returns (pooled [B, P], tokens [B, N, P])."""
    _, block, y, q, k, v = _last_block_input(sd, img, patch, heads)
    scale = _scale(y, heads)

    def soft(a, b):
        return F.softmax(torch.bmm(a, b.transpose(1, 2)) * scale, dim=-1)

    if model_type == "ClearCLIP":  # ClearCLIP transformer.py:614-616
        weights = soft(q, q)
    elif model_type == "SegEarth":  # SegEarth-OV transformer.py:641-645
        weights = soft(q, q) + soft(k, k) + soft(v, v)
    else:
        raise AssertionError(model_type)
    out = _project(sd, custom_out(sd, block, weights, v, y.shape[1]))
    return out[:, 0], out[:, 1:]


def clearclip(sd: dict, img: torch.Tensor, patch: int, heads: int) -> torch.Tensor:
    """mc-lan/ClearCLIP@ad68a40:open_clip/transformer.py:500-567 (model_type='ClearCLIP')."""
    return _open_clip_last(sd, img, patch, heads, "ClearCLIP")[1]


def segearth(sd: dict, img: torch.Tensor, patch: int, heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """likyoo/SegEarth-OV@3e22a96:open_clip/transformer.py:502-569 (model_type='SegEarth', output_cls_token)."""
    return _open_clip_last(sd, img, patch, heads, "SegEarth")


def maskclip(sd: dict, img: torch.Tensor, patch: int, heads: int) -> torch.Tensor:
    """chongzhou96/MaskCLIP@245d31f: mmseg ViT (backbones/vit.py) with LN eps 1e-6 and GELU
    (configs/_base_/models/maskclip_vit16.py:22-23), position embeddings resized with ``size=`` (vit.py:405-410),
    the last layer's value path ``v = out_proj(v) + x; v = v + ffn(norm2(v))`` (94-104), ``v = norm1(v)`` (437),
    then the head's 1x1 ``proj`` (maskclip_head.py:80)."""
    eps = 1e-6
    pos = sd["visual.positional_embedding"]
    x = F.conv2d(img, sd["visual.conv1.weight"], stride=patch)
    rows, cols = x.shape[-2:]
    x = torch.cat([sd["visual.class_embedding"].expand(x.shape[0], 1, -1), x.flatten(2).transpose(1, 2)], dim=1)
    if x.shape[1] != pos.shape[0]:
        side = int(math.sqrt(pos.shape[0] - 1))
        grid = pos[1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(rows, cols), align_corners=False, mode="bicubic")
        pos = torch.cat([pos[:1], grid.flatten(2).transpose(1, 2)[0]])
    x = layer_norm(sd, "visual.ln_pre", x + pos, eps)  # pre_norm: norm0
    last = num_blocks(sd) - 1
    for index in range(last + 1):  # batch-first mmcv MultiheadAttention == nn.MultiheadAttention on LND
        block = f"{VIS}.{index}"
        if index == last:
            y = layer_norm(sd, f"{block}.ln_1", x, eps)
            qkv = F.linear(y, sd[f"{block}.attn.in_proj_weight"], sd[f"{block}.attn.in_proj_bias"])
            n, length, c3 = qkv.shape
            qkv = qkv.view(n, length, 3, c3 // 3).permute(2, 0, 1, 3).reshape(3 * n, length, c3 // 3)
            qkv = F.linear(qkv, sd[f"{block}.attn.out_proj.weight"], sd[f"{block}.attn.out_proj.bias"])
            v = qkv.tensor_split(3, dim=0)[2] + x
            v = v + mlp(sd, block, layer_norm(sd, f"{block}.ln_2", v, eps), act=F.gelu)
            v = layer_norm(sd, "visual.ln_post", v, eps)
            return v[:, 1:] @ sd["visual.proj"]
        attended = mha(sd, block, layer_norm(sd, f"{block}.ln_1", x, eps).transpose(0, 1), heads)[0].transpose(0, 1)
        x = x + attended
        x = x + mlp(sd, block, layer_norm(sd, f"{block}.ln_2", x, eps), act=F.gelu)
    raise AssertionError("unreachable")


def _mean_interpolation(fmap: torch.Tensor, keep_pixels: list) -> torch.Tensor:
    """Kimsure/SFP@2804f5b:SFP_ICCV/clip/model.py:416-441."""
    if len(keep_pixels) == 0:
        return fmap
    b, c, h, w = fmap.shape
    kernel = torch.ones((c, 1, 3, 3), dtype=fmap.dtype)
    kernel[:, :, 1, 1] = 0
    xy = torch.tensor(keep_pixels, dtype=torch.long)
    mask = torch.ones((1, 1, h, w), dtype=fmap.dtype)
    mask[:, :, xy[:, 0], xy[:, 1]] = 0
    neigh_sum = F.conv2d(F.pad(fmap * mask, (1, 1, 1, 1)), kernel, groups=c)
    count = F.conv2d(F.pad(mask, (1, 1, 1, 1)), kernel[:, :1], groups=1)
    count[count == 0] = 1
    update = torch.zeros((1, 1, h, w), dtype=fmap.dtype)
    update[:, :, xy[:, 0], xy[:, 1]] = 1
    return fmap * (1 - update) + neigh_sum / count * update


def _aggregate(feat: torch.Tensor, sim: torch.Tensor) -> torch.Tensor:
    """SFP model.py:443-446 (feat LND)."""
    return torch.matmul(sim / (sim.sum(dim=-1, keepdim=True) + 1e-6), feat.permute(1, 0, 2)).permute(1, 0, 2)


def lof_pytorch(x: torch.Tensor, n_neighbors: int = 30, contamination: float = 0.05) -> torch.Tensor:
    """SFP_ICCV/clip/model.py:450-469 (``lof_pytorch``, "source code from SC-CLIP"): squared distances, the 30
    nearest neighbours (self dropped), reach distance ``max(d(p, o), k_dist(p))`` with the point's OWN k-distance,
    ``lrd = k / mean reach``, ``lof = mean lrd(neighbours) / lrd(p)``; outliers score strictly above the 0.95
    quantile. x: [N, D] -> outlier indices (in index order)."""
    dist = torch.cdist(x, x, p=2) ** 2
    knn_dist, knn_idx = torch.topk(dist, k=n_neighbors + 1, largest=False)
    knn_dist, knn_idx = knn_dist[:, 1:], knn_idx[:, 1:]
    k_dist = knn_dist[:, -1].unsqueeze(1).expand_as(knn_dist)
    reach = torch.max(knn_dist, k_dist)
    lrd = n_neighbors / torch.nan_to_num(reach.mean(dim=1), nan=1e-6)
    lof = (lrd[knn_idx].sum(dim=1) / n_neighbors) / lrd
    threshold = torch.quantile(lof.float(), 1 - contamination)
    return torch.nonzero(lof > threshold, as_tuple=False).squeeze(1)


def sfp(sd: dict, img: torch.Tensor, patch: int, heads: int, res_cls: float = 0.3, pm: str = "SOM") -> torch.Tensor:
    """SFP_ICCV/clip/model.py:242-356 with purify=True (configs/base_config.py:7-9), batch 1, and the outlier
    detector ``pm``: 'SOM' (the published one, 271-287), 'L2' (the 10 largest token norms of block 11's output,
    288-298) or 'LOF' (``lof_pytorch`` on those tokens, 299-307).

    Where SFP's index split ``(loc // feat_w, loc % feat_w)`` points outside the grid (only on non-square
    grids) the official code raises an IndexError; this reference skips that outlier, as the preset does.
    """
    res_scale = 5.0
    b, _, w, h = img.shape
    assert b == 1, "SFP's code runs one image at a time"
    x = embed(sd, img, patch)
    feat_w, feat_h = w // patch, h // patch
    width = x.shape[-1]
    layers = num_blocks(sd)
    hidden_states = []
    outlier_index = []
    for idx in range(1, layers):
        block = f"{VIS}.{idx - 1}"
        attn_res, attn_map = mha(sd, block, layer_norm(sd, f"{block}.ln_1", x), heads, need_weights=True)
        x = x + attn_res
        x = x + mlp(sd, block, layer_norm(sd, f"{block}.ln_2", x))
        attn_map = attn_map.clone()
        attn_map[:, :, 0, 1:] *= res_cls * res_scale
        hidden_states.append(x)
        if idx == layers - 1:
            if pm == "SOM":
                attn = attn_map.squeeze(0).mean(dim=0)
                cls_to_patch, patch_self = attn[0, 1:], torch.diag(attn[1:, 1:])
                salient = cls_to_patch > patch_self
                values, locs = cls_to_patch[salient], torch.nonzero(salient, as_tuple=False).squeeze(1)
                _, order = torch.sort(values, descending=True)
                selected = locs[order[:10]]
            elif pm == "L2":
                _, order = torch.sort(torch.norm(x[1:].squeeze(1), p=2, dim=-1), descending=True)
                selected = order[:10]
            else:
                selected = lof_pytorch(x[1:].squeeze(1))
            outlier_index = [(int(loc) // feat_w, int(loc) % feat_w) for loc in selected]
            outlier_index = [(r, c) for r, c in outlier_index if r < feat_w and c < feat_h]
            spatial = x[1:].permute(1, 2, 0).reshape(b, width, feat_w, feat_h)
            patch_token = _mean_interpolation(spatial, outlier_index).reshape(b, width, -1).permute(2, 0, 1)
            hidden_states.append(x)
    patch_state = torch.sum(torch.stack(hidden_states[3:10]), dim=0)
    ref = hidden_states[8][1:].clone().permute(1, 2, 0).reshape(b, width, feat_w, feat_h)
    ref = _mean_interpolation(ref, outlier_index).reshape(b, width, -1).permute(2, 0, 1)
    ref = ref / ref.norm(dim=2, keepdim=True)
    pre_sim = torch.matmul(ref.permute(1, 0, 2), ref.permute(1, 2, 0))
    pre_sim[pre_sim < 0.4] = 0.0
    patch_token = _aggregate(patch_token, pre_sim)
    block = f"{VIS}.{layers - 1}"
    cls_token = x[:1]

    def sim_logits(sim):
        sim = (sim - torch.mean(sim)) * 3.0
        sim[sim < 0.0] = float("-inf")
        return sim.repeat(heads, 1, 1)

    y = layer_norm(sd, f"{block}.ln_1", patch_token)
    q, k, v = custom_qkv(sd, block, y, heads)
    scale = _scale(y, heads)
    weights = (
        F.softmax(torch.bmm(k, k.transpose(1, 2)) * scale, -1)
        + F.softmax(torch.bmm(q, q.transpose(1, 2)) * scale, -1)
        + F.softmax(sim_logits(pre_sim), -1)
    ) / 3
    patch_token = custom_out(sd, block, weights, v, y.shape[1]) + res_cls * cls_token
    aux = hidden_states[3][1:].clone()
    aux = aux / aux.norm(dim=2, keepdim=True)
    post_sim = torch.matmul(aux.permute(1, 0, 2), aux.permute(1, 2, 0))
    post_sim[post_sim < 0.4] = 0.0
    patch_token = _aggregate(patch_token, post_sim)
    y = layer_norm(sd, f"{block}.ln_1", patch_state[1:])
    _, _, v = custom_qkv(sd, block, y, heads)
    branch = custom_out(sd, block, F.softmax(sim_logits(pre_sim), -1), v, y.shape[1]) + res_cls * patch_state[:1]
    patch_token = patch_token + _aggregate(branch, post_sim)
    return layer_norm(sd, "visual.ln_post", patch_token.permute(1, 0, 2)) @ sd["visual.proj"]


VISUALS = {
    "vanilla": vanilla,
    "sclip": sclip,
    "naclip": naclip,
    "clearclip": clearclip,
    "segearth": lambda *a: segearth(*a)[1],
    "maskclip": maskclip,
    "sfp": sfp,
}
