"""SimFeatUp: SegEarth-OV's learned joint-bilateral feature upsampler (JBU), as plain ``nn.Module`` s.

Source: likyoo/SegEarth-OV@3e22a96:simfeatup_dev/upsamplers.py (``JBULearnedRange`` 202-275, ``JBUStack``
278-301, ``JBUOne`` 304-325). The modules and parameter names are the official ones, so a SegEarth-OV
checkpoint (a Lightning ``state_dict`` whose keys start with ``upsampler.``) loads with no missing or
unexpected keys once that prefix is stripped (segearth_segmentor.py:158-160 strips it the same way).

The official code runs the adaptive convolution with FeatUp's CUDA kernel (``AdaptiveConv``) and builds the
range kernel with ``nn.Unfold``, which holds a [C, k², H, W] tensor (12 GB for a 224x224 crop of 512
channels). Here both are the same sums, accumulated one kernel offset at a time, so memory stays at a few
[C, H, W] tensors and the result equals the official formula (tested against an unfold re-implementation).

Every step's filters depend on the guidance image only, and every step (bicubic upsampling, reflection padding,
per-pixel filtering) treats each channel alike: the four steps are one linear map ``L`` applied to each channel.
So SimFeatUp's final 1x1 ``fixup_proj`` (``W``, ``b``) commutes with them: ``(I + 0.1 W) L(x) + 0.1 b =
L((I + 0.1 W) x) + 0.1 b``. It runs on the input grid (14x14 for a 224 crop) instead of the output one (224x224),
256 times fewer pixels: that convolution was most of the upsampler's cost. ``kernels`` and ``filter`` expose the
two halves, so a caller can also run ``L`` on fewer channels (``OVSegModel.upsampled_logits`` runs it in the span
of the crop's features).

Whatever the model's dtype, SimFeatUp computes in float32 at least (its weights cast on the fly): four sharp
softmax and filtering steps overflow float16 and lose bfloat16's few mantissa bits. The modules are for inference
(``Dropout2d`` is skipped).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: The upsamplers SegEarth-OV ships (upsamplers.py ``get_upsampler``) that this file implements.
FEATURE_UPSAMPLERS = ("jbu_one", "jbu_stack")

#: Elements per chunk of rows in ``adaptive_conv`` (4 MB in float32: the output chunk stays in cache while every
#: tap is added to it) and in the range kernel's dot products (512 KB temporaries, cheap to allocate): both are
#: several times faster on CPU than passes over the whole image, with the same sums.
CHUNK_ELEMENTS = 2**20
RANGE_CHUNK_ELEMENTS = 2**17


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype SimFeatUp computes in for ``dtype`` parameters: float32, or float64 for float64."""
    return torch.promote_types(dtype, torch.float32)


def run_layers(layers: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """A ``Conv2d``/``GELU``/``Dropout2d`` stack at inference in ``x``'s dtype (the weights cast to it)."""
    for layer in layers:
        if isinstance(layer, nn.Conv2d):
            x = F.conv2d(x, layer.weight.to(x.dtype), layer.bias.to(x.dtype))
        elif isinstance(layer, nn.GELU):
            x = F.gelu(x)
    return x


def row_chunks(height: int, row_elements: int, budget: int) -> list[tuple[int, int]]:
    """(top, bottom) of consecutive row ranges of about ``budget`` elements, at least one row each."""
    rows = max(1, budget // row_elements)
    return [(top, min(top + rows, height)) for top in range(0, height, rows)]


def adaptive_conv(source: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
    """Per-pixel filtering: ``out[b, c, y, x] = sum_{i, j} source[b, c, y + i, x + j] * filters[b, i*k + j, y, x]``,
    one tap at a time in row-major order, over chunks of output rows.

    Args:
        source: [B, C, H + k - 1, W + k - 1] (already padded).
        filters: [B, k², H, W].
    Returns:
        [B, C, H, W].
    """
    batch, taps, height, width = filters.shape
    size = round(taps**0.5)
    out = source.new_zeros(batch, source.shape[1], height, width)
    for top, bottom in row_chunks(height, batch * source.shape[1] * width, CHUNK_ELEMENTS):
        chunk = out[:, :, top:bottom]
        for tap in range(taps):
            i, j = divmod(tap, size)
            chunk.addcmul_(source[:, :, top + i : bottom + i, j : j + width], filters[:, tap : tap + 1, top:bottom])
    return out


class JBULearnedRange(nn.Module):
    """One JBU step (upsamplers.py:202-275): features upsampled bicubically to the guidance size, then
    filtered per pixel by a spatial Gaussian times a learned range kernel of the guidance, plus a learned fixup."""

    def __init__(self, guidance_dim: int, feat_dim: int, key_dim: int, scale: int = 2, radius: int = 3) -> None:
        super().__init__()
        self.scale = scale
        self.radius = radius
        self.diameter = radius * 2 + 1
        self.guidance_dim = guidance_dim
        self.key_dim = key_dim
        self.feat_dim = feat_dim
        taps = self.diameter**2
        self.range_temp = nn.Parameter(torch.tensor(0.0))
        self.range_proj = nn.Sequential(
            nn.Conv2d(guidance_dim, key_dim, 1, 1), nn.GELU(), nn.Dropout2d(0.1), nn.Conv2d(key_dim, key_dim, 1, 1)
        )
        self.fixup_proj = nn.Sequential(
            nn.Conv2d(guidance_dim + taps, taps, 1, 1), nn.GELU(), nn.Dropout2d(0.1), nn.Conv2d(taps, taps, 1, 1)
        )
        self.sigma_spatial = nn.Parameter(torch.tensor(1.0))

    def range_kernel(self, guidance: torch.Tensor) -> torch.Tensor:
        """softmax over the k² taps of ``temp * <proj(g)[y+i, x+j], proj(g)[y, x]>`` (reflect-padded):
        [B, 3, H, W] -> [B, k², H, W] (upsamplers.py:230-238)."""
        projected = run_layers(self.range_proj, guidance)
        height, width = projected.shape[-2:]
        # channels last and by chunks of rows: contiguous dot products, small temporaries (4x faster on CPU)
        padded = F.pad(projected, [self.radius] * 4, mode="reflect").permute(0, 2, 3, 1).contiguous()
        projected = projected.permute(0, 2, 3, 1).contiguous()
        chunks = []
        for top, bottom in row_chunks(height, projected[:, 0].numel(), RANGE_CHUNK_ELEMENTS):
            centre = projected[:, top:bottom]
            taps = [
                (padded[:, top + i : bottom + i, j : j + width] * centre).sum(-1)
                for i in range(self.diameter)
                for j in range(self.diameter)
            ]
            chunks.append(torch.stack(taps, dim=1))
        logits = torch.cat(chunks, dim=2)
        temperature = self.range_temp.to(logits.dtype).exp().clamp_min(1e-4).clamp_max(1e4)
        return F.softmax(temperature * logits, dim=1)

    def spatial_kernel(self, device: torch.device) -> torch.Tensor:
        """[1, k², 1, 1] Gaussian of the tap offsets on a [-1, 1] grid (upsamplers.py:240-251; the offsets in
        float32, as there), in the compute dtype."""
        offsets = torch.linspace(-1, 1, self.diameter, device=device)
        rows, cols = torch.meshgrid(offsets, offsets, indexing="ij")
        distance = rows.square() + cols.square()
        sigma = self.sigma_spatial.to(compute_dtype(self.sigma_spatial.dtype))
        return torch.exp(-distance / (2 * sigma**2)).reshape(1, self.diameter**2, 1, 1)

    def kernel(self, guidance: torch.Tensor) -> torch.Tensor:
        """The per-pixel filters [B, k², H, W] of guidance [B, 3, H, W] (upsamplers.py:253-268): range x spatial
        kernel, normalised, plus 0.1 x the learned fixup."""
        guidance = guidance.to(compute_dtype(self.range_temp.dtype))
        kernel = self.range_kernel(guidance) * self.spatial_kernel(guidance.device)
        kernel = kernel / kernel.sum(1, keepdim=True).clamp(1e-7)
        return kernel + 0.1 * run_layers(self.fixup_proj, torch.cat([kernel, guidance], dim=1))

    def filter(self, source: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
        """source [B, C, h, w] upsampled bicubically to the kernel's size, reflection-padded and filtered per pixel
        (upsamplers.py:270-275): linear in ``source``, each channel alike. -> [B, C, H, W] in the kernel's dtype."""
        upsampled = F.interpolate(source.to(kernel.dtype), size=kernel.shape[-2:], mode="bicubic", align_corners=False)
        padded = F.pad(upsampled, [self.radius] * 4, mode="reflect")
        return adaptive_conv(padded, kernel.to(padded.dtype))

    def forward(self, source: torch.Tensor, guidance: torch.Tensor) -> torch.Tensor:
        """source [B, C, h, w], guidance [B, 3, H, W] -> [B, C, H, W] (upsamplers.py:253-275)."""
        return self.filter(source, self.kernel(guidance))


class JBUUpsampler(nn.Module):
    """SimFeatUp: ``steps`` x2 JBU steps guided by the image average-pooled to each step's size, then a 1x1
    fixup. ``JBUOne`` (upsamplers.py:304-325) applies one shared step of radius 5 four times; ``JBUStack``
    (278-301) applies four steps ``up1..up4`` of radius 3."""

    #: Output size / input size: four x2 steps.
    scale_factor = 16

    def __init__(self, feat_dim: int, shared: bool) -> None:
        super().__init__()
        self.shared = shared
        if shared:
            self.up = JBULearnedRange(3, feat_dim, 32, radius=5)
        else:
            for index in range(1, 5):
                self.add_module(f"up{index}", JBULearnedRange(3, feat_dim, 32, radius=3))
        self.fixup_proj = nn.Sequential(nn.Dropout2d(0.2), nn.Conv2d(feat_dim, feat_dim, kernel_size=1))

    def steps(self) -> list[JBULearnedRange]:
        return [self.up] * 4 if self.shared else [getattr(self, f"up{index}") for index in range(1, 5)]

    def min_grid(self) -> int:
        """The smallest input grid side this upsampler runs: its first step reflection-pads the 2x grid by its
        radius, which must be smaller than that grid's side."""
        return self.steps()[0].radius // 2 + 1

    def kernels(self, guidance: torch.Tensor, grid_size: tuple[int, int]) -> list[torch.Tensor]:
        """Each step's per-pixel filters for a ``grid_size`` input: step s filters at ``2^s x grid_size`` with the
        guidance [B, 3, H, W] average-pooled to that size (upsamplers.py:290-301, 315-325)."""
        (height, width), kernels = grid_size, []
        for step in self.steps():
            height, width = height * 2, width * 2
            kernels.append(step.kernel(F.adaptive_avg_pool2d(guidance, (height, width))))
        return kernels

    def filter(self, source: torch.Tensor, kernels: list[torch.Tensor]) -> torch.Tensor:
        """The four steps' linear map ``L`` on source [B, C, h, w] -> [B, C, 16h, 16w]."""
        for step, kernel in zip(self.steps(), kernels, strict=True):
            source = step.filter(source, kernel)
        return source

    def mix(self, source: torch.Tensor) -> torch.Tensor:
        """``(I + 0.1 W) x``: the final fixup's 1x1 convolution without its bias, applied before ``L`` (see the
        module docstring); ``forward = filter(mix(x)) + 0.1 b``."""
        return F.conv2d(source, self.fixup_proj[1].weight.to(source.dtype)) * 0.1 + source

    def fixup_bias(self) -> torch.Tensor:
        """``0.1 b`` [C] in the compute dtype: the final fixup's bias term, added after ``L``."""
        bias = self.fixup_proj[1].bias
        return 0.1 * bias.to(compute_dtype(bias.dtype))

    def forward(self, source: torch.Tensor, guidance: torch.Tensor) -> torch.Tensor:
        """source [B, C, h, w] features, guidance [B, 3, H, W] normalised image -> [B, C, 16h, 16w] in the source's
        dtype, computed in float32 at least (upsamplers.py:290-301, 315-325: four x2 steps, then
        ``fixup_proj(x) * 0.1 + x``)."""
        work = compute_dtype(self.fixup_proj[1].weight.dtype)
        kernels = self.kernels(guidance.to(work), tuple(source.shape[-2:]))
        out = self.filter(self.mix(source.to(work)), kernels) + self.fixup_bias()[:, None, None]
        return out.to(source.dtype)


def build_feature_upsampler(name: str, feat_dim: int) -> JBUUpsampler:
    """``"jbu_one"`` or ``"jbu_stack"`` for ``feat_dim``-channel features (upsamplers.py:353-369)."""
    if name not in FEATURE_UPSAMPLERS:
        raise ValueError(f"unknown feature upsampler {name!r}; valid: {', '.join(FEATURE_UPSAMPLERS)}")
    return JBUUpsampler(feat_dim, shared=name == "jbu_one")


__all__ = [
    "FEATURE_UPSAMPLERS",
    "JBULearnedRange",
    "JBUUpsampler",
    "adaptive_conv",
    "build_feature_upsampler",
    "compute_dtype",
]
