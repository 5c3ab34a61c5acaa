"""The three training-free modules and the last-block attention modes, as pure tensor functions.

Everything here is batch-first, vectorised (no Python loops over tokens, outliers or crops) and works
in any floating dtype. Softmaxes are taken in float32 and cast back, as CLIP's own attention does.

Shapes used throughout:
    B: batch, h: heads, N: patches (row-major on a ``grid_size = (rows, cols)`` grid), T = 1 + N tokens
    (CLS at index 0), d: head width, D: token width, P: projection width.

The formulas are those of ``DESIGN.md`` section 2; each function names the module it implements.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

ATTENTION_MODES = ("gated", "vanilla", "maskclip", "sclip", "clearclip", "naclip", "segearth", "sfp")
SIMILARITY_MODES = ("gated", "sfp")  # the attention modes that take a self-similarity map
GLOBAL_DEBIAS_MODES = ("similarity", "uniform")


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
        [B, N] scores (head-mean attention first, then the ratio).
    """
    attn = attn_probs.mean(dim=1)
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
) -> torch.Tensor:
    """Module 1: replace the top-k outliers by their neighbours and decontaminate those neighbours.

    Every quantity is computed from the unmodified ``patches``, so the result does not depend on the
    order of the outliers. For outlier ``i`` with valid in-grid 8-neighbours ``N(i)``:
    ``x_i <- sum_j softmax_j(1 - cos(x_i, x_j)) x_j``; every non-outlier neighbour ``j`` receives
    ``x_j <- x_j - sum_i tau * max(cos(x_i, x_j), 0) * x_i`` over the outliers it neighbours.

    Args:
        patches: [B, N, D] patch tokens, row-major on ``grid_size``.
        scores: [B, N] outlier scores (higher = more outlying).
        grid_size: (rows, cols) with rows * cols == N.
        top_k: number of outliers; clamped to N, 0 disables the module.
        tau: decontamination strength.
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
    cos = (F.normalize(x_out, dim=-1)[:, :, None] * F.normalize(x_nbr, dim=-1)).sum(-1)  # [B, k, 8]

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
    strength = tau * cos.clamp(min=0) * target  # [B, k, 8]
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
    normed = F.normalize(mid_patches, dim=-1)
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
    """MaskCLIP: identity attention, every token keeps its own value: [B, h, T, d] -> [B, h, T, T]."""
    batch, heads, tokens, _ = q.shape
    eye = torch.eye(tokens, dtype=q.dtype, device=q.device)
    return eye.expand(batch, heads, tokens, tokens)


def sclip_attention(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """SCLIP: ``softmax(s QQᵀ) + softmax(s KKᵀ)``."""
    return _softmax(_gram(q, q, scale)) + _softmax(_gram(k, k, scale))


def clearclip_attention(q: torch.Tensor, scale: float) -> torch.Tensor:
    """ClearCLIP: ``softmax(s QQᵀ)``."""
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
    """NACLIP: ``softmax(s KKᵀ + G)`` with the Gaussian prior ``G`` on the patch-patch block."""
    prior = _pad_cls(gaussian_prior(tuple(grid_size), std, k.device, k.dtype))
    return _softmax(_gram(k, k, scale) + prior)


def segearth_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """SegEarth-OV: ``softmax(s QQᵀ) + softmax(s KKᵀ) + softmax(s VVᵀ)``."""
    return _softmax(_gram(q, q, scale)) + _softmax(_gram(k, k, scale)) + _softmax(_gram(v, v, scale))


def sfp_attention(
    q: torch.Tensor, k: torch.Tensor, similarity: torch.Tensor, scale: float, threshold: float = 0.4
) -> torch.Tensor:
    """SFP's last-block attention among patches: ``(softmax(s KKᵀ) + softmax(s QQᵀ) + softmax(S')) / 3``.

    ``S'`` is the cosine map with values below ``threshold`` set to 0, centred on its mean (per image),
    scaled by 3, and negative entries masked out (-inf), as in the authors' code. Patches do not attend
    to CLS; the CLS row is the identity (CLS keeps its own value).

    Args:
        q, k: [B, h, 1+N, d]. similarity: [B, N, N] cosine map of mid-layer patch tokens.
    Returns:
        [B, h, 1+N, 1+N].
    """
    qp, kp = q[:, :, 1:], k[:, :, 1:]
    sim = torch.where(similarity < threshold, torch.zeros_like(similarity), similarity)
    sim = (sim - sim.mean(dim=(-2, -1), keepdim=True)) * 3.0
    sim = sim.masked_fill(sim < 0, float("-inf"))
    patch = (_softmax(_gram(kp, kp, scale)) + _softmax(_gram(qp, qp, scale)) + _softmax(sim).unsqueeze(1)) / 3
    probs = _pad_cls(patch.to(q.dtype))
    probs[:, :, 0, 0] = 1.0
    return probs


def sfp_outliers(attn_probs: torch.Tensor, top_k: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """SFP's outlier rule: patch ``i`` is a candidate when CLS attends to it more than it attends to itself
    (``A[0, i] > A[i, i]``, head-mean attention); the ``top_k`` candidates with the largest ``A[0, i]`` are kept.

    Args:
        attn_probs: [B, h, 1+N, 1+N].
    Returns:
        indices [B, k] and valid [B, k] (False where an image has fewer than k candidates).
    """
    attn = attn_probs.mean(dim=1)
    cls_to_patch = attn[:, 0, 1:]
    self_attn = attn.diagonal(dim1=-2, dim2=-1)[:, 1:]
    candidates = cls_to_patch.masked_fill(cls_to_patch <= self_attn, float("-inf"))
    values, indices = candidates.topk(min(top_k, candidates.shape[-1]), dim=-1)
    return indices, torch.isfinite(values)


def replace_with_neighbour_mean(
    patches: torch.Tensor, indices: torch.Tensor, valid: torch.Tensor, grid_size: tuple[int, int]
) -> torch.Tensor:
    """SFP's outlier repair: each outlier becomes the mean of its in-grid 8-neighbours that are not
    outliers themselves (zero when it has none, as in the authors' code).

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
) -> torch.Tensor:
    """Dispatch to the attention of ``mode`` (one of ``ATTENTION_MODES``): -> [B, h, 1+N, 1+N]."""
    if similarity is not None and mode not in SIMILARITY_MODES:
        modes = " or ".join(SIMILARITY_MODES)
        raise ValueError(f"a similarity map is only used by attention_mode {modes}, not {mode!r}")
    if mode == "sfp":
        if similarity is None:
            raise ValueError("attention_mode='sfp' needs the similarity map (similarity_enhancement=True)")
        return sfp_attention(q, k, similarity, scale)
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
        return naclip_attention(k, scale, grid_size)
    if mode == "segearth":
        return segearth_attention(q, k, v, scale)
    raise ValueError(f"unknown attention mode {mode!r}; valid modes: {', '.join(ATTENTION_MODES)}")


# ----------------------------------------------------------------------------------------------
# Module 3: global debiasing
# ----------------------------------------------------------------------------------------------


def global_debias(patches: torch.Tensor, cls: torch.Tensor, factor: float, mode: str = "similarity") -> torch.Tensor:
    """Module 3: remove the global (CLS) component from projected patch features.

    ``similarity``: ``x_i - factor * cos(x_i, x_cls) * x_cls``; ``uniform``: ``x_i - factor * x_cls``.

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
    if mode == "uniform":
        return patches - factor * cls
    cos = (F.normalize(patches, dim=-1) * F.normalize(cls, dim=-1)).sum(-1, keepdim=True)
    return patches - factor * cos * cls


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
    "sclip_attention",
    "segearth_attention",
    "sfp_attention",
    "sfp_outliers",
    "replace_with_neighbour_mean",
    "similarity_map",
    "suppress_outliers",
    "vanilla_attention",
]
