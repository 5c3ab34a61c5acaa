"""Naive, loop-based implementations of the formulas of docs/DESIGN.md section 2, written independently of
``hf_ovseg.modules`` so that tests can compare the vectorised code against them."""

from __future__ import annotations

import math

import torch


def cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a @ b) / (a.norm().clamp_min(1e-12) * b.norm().clamp_min(1e-12))


def softmax_row(values: list[torch.Tensor]) -> list[torch.Tensor]:
    top = max(float(v) for v in values)
    exps = [math.exp(float(v) - top) if float(v) != float("-inf") else 0.0 for v in values]
    total = sum(exps)
    return [torch.tensor(e / total, dtype=torch.float64) for e in exps]


def neighbours(index: int, rows: int, cols: int) -> list[int]:
    r, c = divmod(index, cols)
    out = []
    for dr in (-1, 0, 1):
        for dc in (-1, 0, 1):
            if (dr or dc) and 0 <= r + dr < rows and 0 <= c + dc < cols:
                out.append((r + dr) * cols + (c + dc))
    return out


def outlier_scores(attn_probs: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    batch, heads, tokens, _ = attn_probs.shape
    out = torch.zeros(batch, tokens - 1, dtype=torch.float64)
    for b in range(batch):
        for i in range(1, tokens):
            a0i = sum(float(attn_probs[b, h, 0, i]) for h in range(heads)) / heads
            aii = sum(float(attn_probs[b, h, i, i]) for h in range(heads)) / heads
            out[b, i - 1] = a0i / (aii + eps)
    return out


def suppress_outliers(patches, scores, grid_size, top_k, tau, clamp=False):
    """Module 1 as the seed text writes it ("Bidirectional Decontamination": x_j - tau cos(x_i, x_j) x_i); with
    ``clamp``, the seed's code base's strength clamp(tau * cos, 0, 1)."""
    rows, cols = grid_size
    x = patches.double()
    out = x.clone()
    k = min(top_k, x.shape[1])
    for b in range(x.shape[0]):
        if k == 0:
            continue
        outliers = [int(i) for i in torch.topk(scores[b], k).indices]
        for i in outliers:
            nbrs = neighbours(i, rows, cols)
            if not nbrs:
                continue
            weights = softmax_row([1 - cos(x[b, i], x[b, j]) for j in nbrs])
            out[b, i] = sum(w * x[b, j] for w, j in zip(weights, nbrs, strict=True))
        for i in outliers:
            for j in neighbours(i, rows, cols):
                if j not in outliers:
                    strength = tau * float(cos(x[b, i], x[b, j]))
                    out[b, j] -= (min(max(strength, 0.0), 1.0) if clamp else strength) * x[b, i]
    return out


def similarity_map(mid, temperature):
    batch, n, _ = mid.shape
    out = torch.zeros(batch, n, n, dtype=torch.float64)
    for b in range(batch):
        for i in range(n):
            for j in range(n):
                out[b, i, j] = cos(mid[b, i].double(), mid[b, j].double()) / temperature
    return out


def attention(logit_fn, q, k, v, extra=None):
    """softmax over j of logit_fn(b, h, i, j) (+ extra[b, i, j] on the patch-patch block)."""
    batch, heads, tokens, _ = q.shape
    out = torch.zeros(batch, heads, tokens, tokens, dtype=torch.float64)
    for b in range(batch):
        for h in range(heads):
            for i in range(tokens):
                row = []
                for j in range(tokens):
                    value = logit_fn(b, h, i, j)
                    if extra is not None and i > 0 and j > 0:
                        value = value + extra[b, i - 1, j - 1]
                    row.append(value)
                out[b, h, i] = torch.stack(softmax_row(row))
    return out


def dot(x, b, h, i, y, j, scale):
    return float(x[b, h, i].double() @ y[b, h, j].double()) * scale


def gated(q, k, scale, similarity=None, weight=1.0):
    def logit(b, h, i, j):
        gate = 1 / (1 + math.exp(-dot(q, b, h, i, q, j, scale)))
        return gate * dot(k, b, h, i, k, j, scale)

    extra = None if similarity is None else weight * similarity.double()
    return attention(logit, q, k, None, extra)


def plain(x, y, scale, extra=None):
    return attention(lambda b, h, i, j: dot(x, b, h, i, y, j, scale), x, y, None, extra)


def gaussian(grid_size, std=1.0):
    rows, cols = grid_size
    n = rows * cols
    out = torch.zeros(1, n, n, dtype=torch.float64)
    for i in range(n):
        for j in range(n):
            (ri, ci), (rj, cj) = divmod(i, cols), divmod(j, cols)
            out[0, i, j] = math.exp(-((ri - rj) ** 2 + (ci - cj) ** 2) / (2 * std**2))
    return out


def attention_mode(mode, q, k, v, scale, grid_size, similarity=None, weight=1.0, std=5.0):
    batch, heads, tokens, _ = q.shape
    if mode == "gated":
        return gated(q, k, scale, similarity, weight)
    if mode == "vanilla":
        return plain(q, k, scale)
    if mode == "maskclip":
        return torch.eye(tokens, dtype=torch.float64).expand(batch, heads, tokens, tokens)
    if mode == "sclip":
        return plain(q, q, scale) + plain(k, k, scale)
    if mode == "clearclip":
        return plain(q, q, scale)
    if mode == "naclip":
        return plain(k, k, scale, gaussian(grid_size, std).expand(batch, -1, -1))
    if mode == "segearth":
        return plain(q, q, scale) + plain(k, k, scale) + plain(v, v, scale)
    raise AssertionError(mode)


def global_debias(patches, cls, factor, mode="similarity", normalize_cls=False):
    out = patches.double().clone()
    for b in range(patches.shape[0]):
        c = cls[b].double()
        direction = c / c.norm() if normalize_cls else c
        for i in range(patches.shape[1]):
            x = patches[b, i].double()
            weight = float(cos(x, c)) if mode == "similarity" else 1.0
            out[b, i] = x - factor * weight * direction
    return out


def sfp_outliers(attn_probs, top_k, cls_scale=1.0):
    """Candidates with cls_scale * A[0, i] > A[i, i] (head mean), ordered by A[0, i]; the first top_k of each."""
    out = []
    attn = attn_probs.double().mean(dim=1)
    for b in range(attn.shape[0]):
        candidates = [
            (float(attn[b, 0, i]), i - 1) for i in range(1, attn.shape[1]) if cls_scale * attn[b, 0, i] > attn[b, i, i]
        ]
        out.append([i for _, i in sorted(candidates, reverse=True)[:top_k]])
    return out


def neighbour_mean(patches, outliers, grid_size):
    """Each outlier <- mean of its in-grid 8-neighbours that are not outliers (zero if none)."""
    rows, cols = grid_size
    x = patches.double()
    out = x.clone()
    for b, chosen in enumerate(outliers):
        for i in chosen:
            nbrs = [j for j in neighbours(i, rows, cols) if j not in chosen]
            out[b, i] = sum(x[b, j] for j in nbrs) / len(nbrs) if nbrs else torch.zeros_like(x[b, i])
    return out


def sfp_attention(q, k, similarity, scale):
    """(softmax(KK) + softmax(QQ) + softmax(3 (S - mean S), negatives masked)) / 3 among patches."""
    batch, heads, tokens, _ = q.shape
    out = torch.zeros(batch, heads, tokens, tokens, dtype=torch.float64)
    for b in range(batch):
        sim = (similarity[b].double() - similarity[b].double().mean()) * 3.0
        for h in range(heads):
            for i in range(tokens):
                kk = softmax_row([dot(k, b, h, i, k, j, scale) for j in range(tokens)])
                qq = softmax_row([dot(q, b, h, i, q, j, scale) for j in range(tokens)])
                ss = softmax_row([float(v) if v >= 0 else float("-inf") for v in sim[i]])
                for j in range(tokens):
                    out[b, h, i, j] = (kk[j] + qq[j] + ss[j]) / 3
    return out
