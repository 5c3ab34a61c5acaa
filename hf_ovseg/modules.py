"""The three training-free modules and the last-block attention modes, as pure tensor functions.

Everything here is batch-first, vectorised (no Python loops over tokens, outliers or crops) and works
in any floating dtype. Softmaxes are taken in float32 and cast back, as CLIP's own attention does.

Shapes used throughout:
    B: batch, h: heads, N: patches (row-major on a ``grid_size = (rows, cols)`` grid), T = 1 + N tokens
    (CLS at index 0), d: head width, D: token width, P: projection width.

The formulas are the seed text's, as ``docs/DESIGN.md`` section 2 fixes what it leaves open; each function names
the module it implements.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

ATTENTION_MODES = (
    "gated", "vanilla", "maskclip", "sclip", "clearclip", "naclip", "segearth", "sfp", "proxy", "trident",
)  # fmt: skip
SIMILARITY_MODES = ("gated",)  # the attention modes that take module 2's self-similarity map
GLOBAL_DEBIAS_MODES = ("similarity", "uniform")


def unit(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """``x / ||x||`` along ``dim``, computed in float32 at least and returned in ``x``'s dtype (in float16,
    F.normalize's eps underflows and a zero vector, e.g. an outlier without valid neighbours, would become NaN
    instead of 0)."""
    return F.normalize(x.to(torch.promote_types(x.dtype, torch.float32)), dim=dim).to(x.dtype)


def _softmax(logits: torch.Tensor) -> torch.Tensor:
    """Row softmax computed in float32 and returned in the input dtype."""
    return logits.softmax(dim=-1, dtype=torch.float32).to(logits.dtype)


def _gram(x: torch.Tensor, y: torch.Tensor, scale: float) -> torch.Tensor:
    """``scale * x @ yᵀ`` over the last two dims: [..., T, d] x [..., T, d] -> [..., T, T]."""
    return torch.matmul(x * scale, y.transpose(-1, -2))


def _pad_cls(patch_patch: torch.Tensor) -> torch.Tensor:
    """[..., N, N] -> [..., 1+N, 1+N] with zeros on the CLS row and column."""
    return F.pad(patch_patch, (1, 0, 1, 0))


# ----------------------------------------------------------------------------------------------
# Module 1: outlier suppression
# ----------------------------------------------------------------------------------------------


def outlier_scores(attn_probs: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Outlier score ``r_i = A[0, i] / (A[i, i] + eps)`` of every patch.

    Args:
        attn_probs: [B, h, 1+N, 1+N] softmax attention, CLS at index 0.
    Returns:
        [B, N] scores (head-mean attention first, then the ratio), in float32 at least (a ratio to ``A[i, i] +
        1e-6`` overflows float16).
    """
    attn = attn_probs.to(torch.promote_types(attn_probs.dtype, torch.float32)).mean(dim=1)
    cls_to_patch = attn[:, 0, 1:]
    self_attn = attn.diagonal(dim1=-2, dim2=-1)[:, 1:]
    return cls_to_patch / (self_attn + eps)


@functools.lru_cache(maxsize=32)
def grid_neighbours(
    grid_size: tuple[int, int], device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The 8-neighbourhood of every patch of a row-major grid.

    Returns:
        index [N, 8] (long; 0 where invalid) and valid [N, 8] (bool; False outside the grid).
        Cached per (grid, device): every crop of a sliding window shares one grid.
    """
    rows, cols = grid_size
    offsets = torch.tensor([(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)], device=device)
    r = torch.arange(rows, device=device).repeat_interleave(cols)[:, None] + offsets[:, 0]
    c = torch.arange(cols, device=device).repeat(rows)[:, None] + offsets[:, 1]
    valid = (r >= 0) & (r < rows) & (c >= 0) & (c < cols)
    index = torch.where(valid, r * cols + c, torch.zeros_like(r))
    return index, valid


def suppress_outliers(
    patches: torch.Tensor,
    scores: torch.Tensor,
    grid_size: tuple[int, int],
    top_k: int,
    tau: float,
    clamp: bool = False,
) -> torch.Tensor:
    """Module 1: replace the top-k outliers by their neighbours and decontaminate those neighbours.

    Every quantity is computed from the unmodified ``patches``, so the result does not depend on the
    order of the outliers. For outlier ``i`` with valid in-grid 8-neighbours ``N(i)``:
    ``x_i <- sum_j softmax_j(1 - cos(x_i, x_j)) x_j``; every non-outlier neighbour ``j`` receives
    ``x_j <- x_j - sum_i tau * cos(x_i, x_j) * x_i`` over the outliers it neighbours (the seed text, section
    "Bidirectional Decontamination"). ``clamp``: ``tau * max(cos, 0)`` instead, i.e. no decontamination away from
    an anti-aligned outlier (the seed's code base: ``clamp(similarity * contamination_temp, 0, 1)``,
    UserNameUnavailableIsUnavailable/CLIP-Decontamination@3e1b774:outlier_suppression.py:195-196).

    Args:
        patches: [B, N, D] patch tokens, row-major on ``grid_size``.
        scores: [B, N] outlier scores (higher = more outlying).
        grid_size: (rows, cols) with rows * cols == N.
        top_k: number of outliers; clamped to N, 0 disables the module.
        tau: decontamination strength.
        clamp: clamp the decontamination strength at 0 (see above).
    Returns:
        [B, N, D] tensor of the same dtype.
    """
    batch, num_patches, dim = patches.shape
    if grid_size[0] * grid_size[1] != num_patches:
        raise ValueError(f"grid_size {tuple(grid_size)} does not hold {num_patches} patches")
    k = min(int(top_k), num_patches)
    if k <= 0:
        return patches

    outliers = scores.topk(k, dim=-1).indices  # [B, k]
    index, valid = grid_neighbours(tuple(grid_size), patches.device)
    nbr = index[outliers]  # [B, k, 8]
    nbr_valid = valid[outliers]  # [B, k, 8]

    x_out = patches.gather(1, outliers[..., None].expand(-1, -1, dim))  # [B, k, D]
    x_nbr = patches.gather(1, nbr.reshape(batch, -1, 1).expand(-1, -1, dim)).view(batch, k, 8, dim)
    cos = (unit(x_out)[:, :, None] * unit(x_nbr)).sum(-1)  # [B, k, 8]

    # Replacement: softmax over valid neighbours of (1 - cos); an outlier with no neighbour is kept.
    weights = _softmax((1.0 - cos).masked_fill(~nbr_valid, float("-inf")))
    weights = torch.nan_to_num(weights, nan=0.0)
    replacement = torch.einsum("bkn,bknd->bkd", weights, x_nbr)
    has_nbr = nbr_valid.any(-1, keepdim=True)
    replacement = torch.where(has_nbr, replacement, x_out)

    # Decontamination of non-outlier neighbours, summed over every outlier they touch.
    is_outlier = torch.zeros(batch, num_patches, dtype=torch.bool, device=patches.device)
    is_outlier.scatter_(1, outliers, True)
    target = nbr_valid & ~is_outlier.gather(1, nbr.view(batch, -1)).view(batch, k, 8)
    strength = tau * (cos.clamp(min=0) if clamp else cos) * target  # [B, k, 8]
    contamination = strength[..., None] * x_out[:, :, None]  # [B, k, 8, D]
    delta = torch.zeros_like(patches).scatter_add_(
        1, nbr.reshape(batch, -1, 1).expand(-1, -1, dim), contamination.reshape(batch, -1, dim)
    )
    out = patches - delta
    return out.scatter(1, outliers[..., None].expand(-1, -1, dim), replacement)


# ----------------------------------------------------------------------------------------------
# Module 2: gated self-similarity attention
# ----------------------------------------------------------------------------------------------


def similarity_map(mid_patches: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``S_ij = cos(x_i, x_j) / temperature`` over mid-layer patch tokens: [B, N, D] -> [B, N, N]."""
    normed = unit(mid_patches)
    return torch.matmul(normed, normed.transpose(-1, -2)) / temperature


def gated_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    scale: float,
    similarity: torch.Tensor | None = None,
    similarity_weight: float = 1.0,
) -> torch.Tensor:
    """Module 2: ``softmax(sigmoid(s QQᵀ) ⊙ (s KKᵀ) + λ_s S)``.

    Args:
        q, k: [B, h, 1+N, d] per-head queries and keys of the last block.
        scale: s = d^-1/2.
        similarity: optional [B, N, N] map, added to the patch-patch block only.
    Returns:
        [B, h, 1+N, 1+N] attention probabilities.
    """
    logits = torch.sigmoid(_gram(q, q, scale)) * _gram(k, k, scale)
    if similarity is not None:
        logits = logits + similarity_weight * _pad_cls(similarity).unsqueeze(1).to(logits.dtype)
    return _softmax(logits)


# ----------------------------------------------------------------------------------------------
# Baseline attention modes of the same slot
# ----------------------------------------------------------------------------------------------


def vanilla_attention(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """CLIP's own ``softmax(s QKᵀ)``: [B, h, T, d] -> [B, h, T, T]."""
    return _softmax(_gram(q, k, scale))


def maskclip_attention(q: torch.Tensor) -> torch.Tensor:
    """MaskCLIP's value path: identity attention, every token keeps its own value: [B, h, T, d] -> [B, h, T, T].
    (chongzhou96/MaskCLIP@245d31f:mmseg/models/backbones/vit.py:94-104, where the value path also keeps the
    residual and the FFN; the ``maskclip`` preset turns those on.)"""
    batch, heads, tokens, _ = q.shape
    eye = torch.eye(tokens, dtype=q.dtype, device=q.device)
    return eye.expand(batch, heads, tokens, tokens)


def sclip_attention(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """SCLIP's correlative self-attention ``softmax(s QQᵀ) + softmax(s KKᵀ)``
    (wangf3014/SCLIP@b56bd30:clip/model.py:295-298)."""
    return _softmax(_gram(q, q, scale)) + _softmax(_gram(k, k, scale))


def clearclip_attention(q: torch.Tensor, scale: float) -> torch.Tensor:
    """ClearCLIP: ``softmax(s QQᵀ)`` (mc-lan/ClearCLIP@ad68a40:open_clip/transformer.py:614-616)."""
    return _softmax(_gram(q, q, scale))


@functools.lru_cache(maxsize=32)
def gaussian_prior(
    grid_size: tuple[int, int],
    std: float = 1.0,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """NACLIP's neighbourhood prior ``exp(-||p_i - p_j||² / (2 std²))`` between patch positions: [N, N].
    Cached per (grid, std, device, dtype); treat the result as read-only."""
    rows, cols = grid_size
    r = torch.arange(rows, device=device, dtype=torch.float32).repeat_interleave(cols)
    c = torch.arange(cols, device=device, dtype=torch.float32).repeat(rows)
    dist2 = (r[:, None] - r[None]) ** 2 + (c[:, None] - c[None]) ** 2
    return torch.exp(-dist2 / (2 * std**2)).to(dtype)


def naclip_attention(k: torch.Tensor, scale: float, grid_size: tuple[int, int], std: float = 1.0) -> torch.Tensor:
    """NACLIP: ``softmax(s KKᵀ + G)`` with the Gaussian prior ``G`` (std ``std`` patches) on the patch-patch
    block (sinahmr/NACLIP@0cac3a6:clip/model.py:153-176 builds ``G``, 189-207 adds it; CLS row and column
    get 0)."""
    prior = _pad_cls(gaussian_prior(tuple(grid_size), std, k.device, k.dtype))
    return _softmax(_gram(k, k, scale) + prior)


def segearth_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """SegEarth-OV: ``softmax(s QQᵀ) + softmax(s KKᵀ) + softmax(s VVᵀ)``
    (likyoo/SegEarth-OV@3e22a96:open_clip/transformer.py:641-645)."""
    return _softmax(_gram(q, q, scale)) + _softmax(_gram(k, k, scale)) + _softmax(_gram(v, v, scale))


def proxy_attention(
    features: torch.Tensor, beta: float = 1.2, gamma: float = 3.0, batch_mean: bool = False
) -> torch.Tensor:
    """ProxyCLIP's attention from a proxy's feature map (mc-lan/ProxyCLIP@e7b767f:open_clip/transformer.py:569-578):
    ``softmax(gamma * (S - beta * mean(S)))`` with ``S`` the cosine similarities of the proxy's tokens and every
    entry below 0 masked (``-inf``); the same for every head, no ``1/sqrt(d)``.

    The mean is taken over each image's whole map (diagonal included); the official code takes it over the
    whole batch tensor, which is the same for its batches of one window and keeps a window's result independent
    of the batch it is in. ``batch_mean``: the mean over the whole batch, as Trident takes it over all the windows
    of an image (YuHengsss/Trident@a93b346:open_clip/transformer.py:571). A row whose entries are all negative (a
    nearly uniform window) is NaN, as there.

    Args:
        features: [B, C, h, w] proxy features.
    Returns:
        [B, h*w, h*w] attention probabilities (row-major tokens).
    """
    tokens = unit(features.flatten(2), dim=1)  # [B, C, hw]
    similarity = torch.matmul(tokens.transpose(1, 2), tokens)
    mean = similarity.mean() if batch_mean else similarity.mean(dim=(1, 2), keepdim=True)
    logits = (similarity - mean * beta) * gamma
    return _softmax(logits.masked_fill(logits < 0, float("-inf")))


def thresholded_similarity(patches: torch.Tensor, threshold: float) -> torch.Tensor:
    """SFP's similarity map: patch cosines, with values below ``threshold`` set to 0: [B, N, D] -> [B, N, N]
    (Kimsure/SFP@2804f5b:SFP_ICCV/clip/model.py:319-325 and 330-333)."""
    normed = unit(patches)
    cosine = torch.matmul(normed, normed.transpose(-1, -2))
    return cosine.masked_fill(cosine < threshold, 0.0)


def similarity_aggregate(features: torch.Tensor, similarity: torch.Tensor) -> torch.Tensor:
    """SFP's adaptive aggregation: features re-weighted by the row-normalised similarity map,
    ``(S / (rowsum(S) + 1e-6)) @ X``: [B, N, D] x [B, N, N] -> [B, N, D] (SFP_ICCV/clip/model.py:443-446)."""
    weights = similarity / (similarity.sum(dim=-1, keepdim=True) + 1e-6)
    return torch.matmul(weights, features)


def sfp_similarity_probs(similarity: torch.Tensor) -> torch.Tensor:
    """SFP's attention from a similarity map: ``softmax(S')`` with ``S' = 3 (S - mean(S))`` and its negative
    entries masked out (-inf); the mean is taken over the whole map of each image: [B, N, N] -> [B, N, N]
    (SFP_ICCV/clip/model.py:369-370 and 387-390)."""
    centred = (similarity - similarity.mean(dim=(-2, -1), keepdim=True)) * 3.0
    return _softmax(centred.masked_fill(centred < 0, float("-inf")))


def sfp_attention(q: torch.Tensor, k: torch.Tensor, similarity: torch.Tensor, scale: float) -> torch.Tensor:
    """SFP's last-block attention among patch tokens (no CLS):
    ``(softmax(s KKᵀ) + softmax(s QQᵀ) + softmax(S')) / 3``, ``S'`` as in [`sfp_similarity_probs`]
    (SFP_ICCV/clip/model.py:358-378).

    Args:
        q, k: [B, h, N, d] patch queries and keys. similarity: [B, N, N] thresholded cosine map.
    Returns:
        [B, h, N, N].
    """
    probs = _softmax(_gram(k, k, scale)) + _softmax(_gram(q, q, scale))
    return (probs + sfp_similarity_probs(similarity).unsqueeze(1).to(probs.dtype)) / 3


def sfp_outliers(
    attn_probs: torch.Tensor, top_k: int = 10, cls_scale: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """SFP's outlier rule: with the CLS→patch attention scaled by ``cls_scale``, patch ``i`` is a candidate
    when ``cls_scale * A[0, i] > A[i, i]`` (head-mean attention); the ``top_k`` candidates with the largest
    scaled ``A[0, i]`` are kept (SFP_ICCV/clip/model.py:264 scales, 271-280 selects).

    Args:
        attn_probs: [B, h, 1+N, 1+N].
    Returns:
        indices [B, k] and valid [B, k] (False where an image has fewer than k candidates).
    """
    attn = attn_probs.mean(dim=1)
    cls_to_patch = attn[:, 0, 1:] * cls_scale
    self_attn = attn.diagonal(dim1=-2, dim2=-1)[:, 1:]
    candidates = cls_to_patch.masked_fill(cls_to_patch <= self_attn, float("-inf"))
    values, indices = candidates.topk(min(top_k, candidates.shape[-1]), dim=-1)
    return indices, torch.isfinite(values)


def sfp_norm_outliers(patches: torch.Tensor, top_k: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """SFP's ``pm='L2'`` rule: the ``top_k`` patch tokens of largest L2 norm (SFP_ICCV/clip/model.py:288-298).
    [B, N, D] -> indices [B, k] and valid [B, k] (all True)."""
    indices = patches.norm(dim=-1).topk(min(top_k, patches.shape[1]), dim=-1).indices
    return indices, torch.ones_like(indices, dtype=torch.bool)


def sfp_lof_outliers(
    patches: torch.Tensor, n_neighbors: int = 30, contamination: float = 0.05
) -> tuple[torch.Tensor, torch.Tensor]:
    """SFP's ``pm='LOF'`` rule (``lof_pytorch``, SFP_ICCV/clip/model.py:299-307, 450-469): local outlier factors
    from squared distances and the ``n_neighbors`` nearest tokens, where a reach distance is ``max(d(p, o),
    k_dist(p))`` with the point's OWN k-distance (so ``lrd(p) = n / k_dist(p)``), ``lof(p) = mean_o lrd(o) /
    lrd(p)``; the outliers score strictly above the ``1 - contamination`` quantile of their image (10 of 196 for a
    14x14 grid). ``n_neighbors`` is clamped to N - 1 (SFP's ``topk`` fails below 31 patches).

    Args:
        patches: [B, N, D].
    Returns:
        indices [B, k] (each image's outliers first, in index order) and valid [B, k].
    """
    batch, count, _ = patches.shape
    neighbours = min(n_neighbors, count - 1)
    distance = torch.cdist(patches.float(), patches.float()) ** 2
    knn_distance, knn_index = distance.topk(neighbours + 1, dim=-1, largest=False)
    knn_distance, knn_index = knn_distance[..., 1:], knn_index[..., 1:]
    reach = torch.maximum(knn_distance, knn_distance[..., -1:].expand_as(knn_distance))
    density = neighbours / torch.nan_to_num(reach.mean(dim=-1), nan=1e-6)  # [B, N]
    factor = density.gather(1, knn_index.flatten(1)).view(batch, count, neighbours).mean(dim=-1) / density
    outlier = factor > torch.quantile(factor, 1 - contamination, dim=-1, keepdim=True)
    order = torch.argsort((~outlier).to(torch.uint8), dim=-1, stable=True)[:, : max(int(outlier.sum(-1).max()), 1)]
    return order, outlier.gather(1, order)


def sfp_grid_positions(
    indices: torch.Tensor, valid: torch.Tensor, grid_size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Where SFP's code puts each outlier: it splits a flat patch index ``i`` into ``(i // rows, i % rows)``
    (the number of rows where the number of columns is meant), which is the true position only on a
    square grid. Returns the flat indices of those positions (0 where invalid) and ``valid`` cleared where the
    position falls outside the grid (SFP's code raises an IndexError there; the outlier is skipped).
    SFP_ICCV/clip/model.py:281-287 and 426-428."""
    rows, cols = grid_size
    row, col = indices // rows, indices % rows
    valid = valid & (row < rows) & (col < cols)
    return torch.where(valid, row * cols + col, torch.zeros_like(indices)), valid


def replace_with_neighbour_mean(
    patches: torch.Tensor, indices: torch.Tensor, valid: torch.Tensor, grid_size: tuple[int, int]
) -> torch.Tensor:
    """SFP's outlier repair: each outlier becomes the mean of its in-grid 8-neighbours that are not
    outliers themselves (zero when it has none), SFP_ICCV/clip/model.py:416-441.

    Args:
        patches: [B, N, D]. indices, valid: [B, k] from [`sfp_outliers`].
    Returns:
        [B, N, D].
    """
    batch, num_patches, dim = patches.shape
    if indices.shape[1] == 0:
        return patches
    is_outlier = torch.zeros(batch, num_patches + 1, dtype=torch.bool, device=patches.device)
    is_outlier.scatter_(1, torch.where(valid, indices, num_patches), True)  # invalid slots go to a spare column
    is_outlier = is_outlier[:, :num_patches]
    index, in_grid = grid_neighbours(tuple(grid_size), patches.device)
    nbr, nbr_in_grid = index[indices], in_grid[indices]  # [B, k, 8]
    use = nbr_in_grid & ~is_outlier.gather(1, nbr.view(batch, -1)).view_as(nbr)
    x_nbr = patches.gather(1, nbr.reshape(batch, -1, 1).expand(-1, -1, dim)).view(batch, -1, 8, dim)
    mean = (x_nbr * use[..., None]).sum(2) / use.sum(-1, keepdim=True).clamp(min=1)
    # Invalid slots write into a spare row that is dropped, so they can never overwrite a real outlier.
    target = torch.where(valid, indices, num_patches)[..., None].expand(-1, -1, dim)
    padded = torch.cat([patches, patches.new_zeros(batch, 1, dim)], dim=1)
    return padded.scatter(1, target, mean.to(patches.dtype))[:, :num_patches]


def attention_probs(
    mode: str,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
    grid_size: tuple[int, int],
    similarity: torch.Tensor | None = None,
    similarity_weight: float = 1.0,
    gaussian_std: float = 5.0,
) -> torch.Tensor:
    """Dispatch to the last-block attention of ``mode``: -> [B, h, 1+N, 1+N].

    ``mode`` is one of ``ATTENTION_MODES`` except ``"sfp"``, whose last stage works on patch tokens only
    (see [`sfp_attention`]), and ``"proxy"``, whose attention comes from the proxy's features (see
    [`proxy_attention`]). ``similarity`` is module 2's map (``"gated"`` only); ``gaussian_std`` is
    NACLIP's neighbourhood width.
    """
    if similarity is not None and mode not in SIMILARITY_MODES:
        raise ValueError(f"a similarity map is only used by attention_mode 'gated', not {mode!r}")
    if mode == "gated":
        return gated_attention(q, k, scale, similarity, similarity_weight)
    if mode == "vanilla":
        return vanilla_attention(q, k, scale)
    if mode == "maskclip":
        return maskclip_attention(q)
    if mode == "sclip":
        return sclip_attention(q, k, scale)
    if mode == "clearclip":
        return clearclip_attention(q, scale)
    if mode == "naclip":
        return naclip_attention(k, scale, grid_size, gaussian_std)
    if mode == "segearth":
        return segearth_attention(q, k, v, scale)
    raise ValueError(f"unknown attention mode {mode!r}; valid modes: {', '.join(ATTENTION_MODES)}")


# ----------------------------------------------------------------------------------------------
# Module 3: global debiasing
# ----------------------------------------------------------------------------------------------


def global_debias(
    patches: torch.Tensor,
    cls: torch.Tensor,
    factor: float,
    mode: str = "similarity",
    normalize_cls: bool = False,
) -> torch.Tensor:
    """Module 3: remove the global (CLS) component from projected patch features.

    ``similarity``: ``x_i - factor * cos(x_i, x_cls) * c``; ``uniform``: ``x_i - factor * c``, where ``c`` is
    ``x_cls`` (the seed text) or, with ``normalize_cls``, the unit vector ``x_cls / ||x_cls||``.

    Args:
        patches: [B, N, P] projected patch features.
        cls: [B, P] projected CLS feature of the same block.
    Returns:
        [B, N, P].
    """
    if mode not in GLOBAL_DEBIAS_MODES:
        raise ValueError(f"unknown global_debias_mode {mode!r}; valid modes: {', '.join(GLOBAL_DEBIAS_MODES)}")
    if factor == 0:
        return patches
    cls = cls[:, None, :]
    direction = unit(cls) if normalize_cls else cls
    if mode == "uniform":
        return patches - factor * direction
    cos = (unit(patches) * unit(cls)).sum(-1, keepdim=True)
    return patches - factor * cos * direction


__all__ = [
    "ATTENTION_MODES",
    "GLOBAL_DEBIAS_MODES",
    "SIMILARITY_MODES",
    "attention_probs",
    "clearclip_attention",
    "gated_attention",
    "gaussian_prior",
    "global_debias",
    "grid_neighbours",
    "maskclip_attention",
    "naclip_attention",
    "outlier_scores",
    "proxy_attention",
    "replace_with_neighbour_mean",
    "sclip_attention",
    "segearth_attention",
    "sfp_attention",
    "sfp_grid_positions",
    "sfp_lof_outliers",
    "sfp_norm_outliers",
    "sfp_outliers",
    "sfp_similarity_probs",
    "similarity_aggregate",
    "similarity_map",
    "suppress_outliers",
    "thresholded_similarity",
    "unit",
    "vanilla_attention",
]
