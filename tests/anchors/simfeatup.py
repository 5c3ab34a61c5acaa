"""SimFeatUp's JBU upsamplers re-implemented from likyoo/SegEarth-OV@3e22a96:simfeatup_dev/upsamplers.py
with its own formulation: ``nn.Unfold`` patches and ``adaptive_conv_py_simple``'s einsum (14-25), applied
to bands of rows so that a 224x224 output fits in a test's memory. Weights come from a state dict with the
official key names (``up.range_proj.0.weight``, ...)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _unfold_rows(padded: torch.Tensor, diameter: int, rows: slice, width: int) -> torch.Tensor:
    """``Unfold(diameter)`` of the output rows ``rows``: [B, C, d², r, W]."""
    band = padded[:, :, rows.start : rows.stop + diameter - 1]
    b, c = band.shape[:2]
    return torch.nn.Unfold(diameter)(band).view(b, c, diameter * diameter, rows.stop - rows.start, width)


def jbu_learned_range(sd: dict, prefix: str, source: torch.Tensor, guidance: torch.Tensor, radius: int, band=32):
    """``JBULearnedRange.forward`` (upsamplers.py:253-275) in eval mode (dropout off)."""
    diameter = 2 * radius + 1
    gb, gc, gh, gw = guidance.shape

    def conv(x, name):
        return F.conv2d(x, sd[f"{prefix}.{name}.weight"], sd[f"{prefix}.{name}.bias"])

    # get_range_kernel (230-238)
    proj_x = conv(F.gelu(conv(guidance, "range_proj.0")), "range_proj.3")
    padded = F.pad(proj_x, pad=[radius] * 4, mode="reflect")
    logits = []
    for top in range(0, gh, band):
        rows = slice(top, min(top + band, gh))
        queries = _unfold_rows(padded, diameter, rows, gw).permute(0, 1, 3, 4, 2)
        logits.append(torch.einsum("bchwp,bchw->bphw", queries, proj_x[:, :, rows]))
    temp = sd[f"{prefix}.range_temp"].exp().clamp_min(1e-4).clamp_max(1e4)
    range_kernel = F.softmax(temp * torch.cat(logits, dim=2), dim=1)
    # get_spatial_kernel (240-251)
    dist = torch.linspace(-1, 1, diameter)
    x, y = torch.meshgrid(dist, dist, indexing="ij")
    patch = torch.cat([x.unsqueeze(0), y.unsqueeze(0)], dim=0)
    spatial = torch.exp(-patch.square().sum(0) / (2 * sd[f"{prefix}.sigma_spatial"] ** 2)).reshape(1, -1, 1, 1)
    combined = range_kernel * spatial
    combined /= combined.sum(1, keepdim=True).clamp(1e-7)
    fixup = conv(F.gelu(conv(torch.cat([combined, guidance], dim=1), "fixup_proj.0")), "fixup_proj.3")
    combined = (combined + 0.1 * fixup).permute(0, 2, 3, 1).reshape(gb, gh, gw, diameter, diameter)
    hr = torch.nn.Upsample((gh, gw), mode="bicubic", align_corners=False)(source)
    hr_padded = F.pad(hr, pad=[radius] * 4, mode="reflect")
    # adaptive_conv_py_simple (14-25)
    filters = combined.reshape(gb, gh, gw, diameter * diameter)
    out = []
    for top in range(0, gh, band):
        rows = slice(top, min(top + band, gh))
        patches = _unfold_rows(hr_padded, diameter, rows, gw)
        out.append(torch.einsum("bhwf,bcfhw->bchw", filters[:, rows], patches))
    return torch.cat(out, dim=2)


def jbu(sd: dict, source: torch.Tensor, guidance: torch.Tensor, one: bool) -> torch.Tensor:
    """``JBUOne.forward`` (upsamplers.py:320-325) or ``JBUStack.forward`` (296-301)."""
    for index in range(1, 5):
        _, _, h, w = source.shape
        small = F.adaptive_avg_pool2d(guidance, (h * 2, w * 2))
        prefix, radius = ("up", 5) if one else (f"up{index}", 3)
        source = jbu_learned_range(sd, prefix, source, small, radius)
    fixed = F.conv2d(source, sd["fixup_proj.1.weight"], sd["fixup_proj.1.bias"])
    return fixed * 0.1 + source
