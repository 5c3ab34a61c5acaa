"""GeoTIFF rasters of any size, read and written by windows (optional extra ``geo``: ``rasterio``).

A ``.tif``/``.tiff`` input keeps its georeferencing: the label map is a GeoTIFF with the input's CRS,
transform and size, the class colours embedded as its colour map, and nodata where the input is nodata.

- Bands: ``bands=(3, 2, 1)`` picks the RGB bands (1-based); by default the bands tagged red, green and blue,
  else the first three (a single band is used as grey).
- 8-bit data is used as it is. 16-bit and float data are stretched to 8 bits per band between its 2nd and 98th
  percentiles (``STRETCH_PERCENTILES``, computed over the valid pixels of a decimated read, at most
  ``STRETCH_SAMPLE`` pixels a side), before CLIP's normalisation.
- At native resolution (``short_side=None``) the raster is processed in tiles of ``tile_size`` pixels, rounded
  down to a multiple of the stride so that tile edges fall on window starts; each tile runs every sliding window
  that touches it (so tiles overlap by a window and there are no seams) and keeps its own pixels: the result
  equals the whole-image result, in memory bounded by the tile size. Only the windows that cross a tile edge run
  twice (none when the stride equals the crop, except where mmseg shifts the last window back to the border).
- Resized (``short_side`` set): a raster of at most ``FULL_READ_PIXELS`` pixels is read whole and resized as any
  image; a larger one is read at the target size by GDAL (bilinear). Its logits are resized back to the
  native size and written by row chunks.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .image_processing_ovseg import rescale_size, resize_array
from .inference import Stitcher, area_counts, axis_windows, label_chunks
from .postprocess import area_keep_mask
from .visualize import class_colors

logger = logging.getLogger(__name__)

RASTER_SUFFIXES = (".tif", ".tiff")
STRETCH_PERCENTILES = (2.0, 98.0)
STRETCH_SAMPLE = 1024
FULL_READ_PIXELS = 1 << 26  # 8192 x 8192
DEFAULT_TILE_SIZE = 1024
GDAL_CACHE_MB = 256  # GDAL's block cache would otherwise grow to 5% of the machine's memory


def rasterio_module() -> Any:
    try:
        import rasterio
    except ImportError:
        raise ValueError("GeoTIFF support needs rasterio: pip install 'hf_ovseg[geo]'") from None
    return rasterio


def has_rasterio() -> bool:
    try:
        rasterio_module()
    except ValueError:
        return False
    return True


def is_raster(path: str | Path) -> bool:
    """A ``.tif``/``.tiff`` file, processed as a georeferenced raster when rasterio is installed."""
    return Path(str(path)).suffix.lower() in RASTER_SUFFIXES


@dataclass(frozen=True)
class Raster:
    """What is read from a raster: its size, the RGB bands and their 8-bit stretch, and its georeferencing."""

    path: str
    height: int
    width: int
    bands: tuple[int, int, int]
    stretch: tuple[tuple[float, float], ...] | None
    crs: Any
    transform: Any

    @property
    def pixel_area(self) -> float:
        return abs(self.transform.a * self.transform.e - self.transform.b * self.transform.d)

    @property
    def area_unit(self) -> str:
        """The unit of ``pixel_area``: square metres for a projected CRS in metres."""
        if self.crs is None:
            return "pixel"
        units = (self.crs.linear_units or "unknown").lower()
        return "m^2" if units in ("metre", "meter", "m") else f"{units}^2"


def pick_bands(dataset: Any, bands: tuple[int, ...] | None) -> tuple[int, int, int]:
    """The three 1-based band indices to read as R, G, B (see the module docstring)."""
    count = dataset.count
    if bands is not None:
        if len(bands) != 3 or any(not 1 <= b <= count for b in bands):
            wanted = ",".join(map(str, bands))
            raise ValueError(f"--bands {wanted} does not fit: this raster has {count} bands (1..{count})")
        return tuple(bands)
    from rasterio.enums import ColorInterp

    tagged = {c: i + 1 for i, c in enumerate(dataset.colorinterp)}
    if all(c in tagged for c in (ColorInterp.red, ColorInterp.green, ColorInterp.blue)):
        return tagged[ColorInterp.red], tagged[ColorInterp.green], tagged[ColorInterp.blue]
    if count >= 3:
        return 1, 2, 3
    if count == 1:
        return 1, 1, 1
    raise ValueError(f"this raster has {count} bands: say which to use as red, green, blue with --bands")


def open_raster(dataset: Any, bands: tuple[int, ...] | None = None) -> Raster:
    """Describe an open rasterio dataset: bands, 8-bit stretch (None for 8-bit data), georeferencing."""
    picked = pick_bands(dataset, bands)
    stretch = None
    if any(dataset.dtypes[b - 1] != "uint8" for b in picked):
        scale = min(1.0, STRETCH_SAMPLE / max(dataset.height, dataset.width))
        shape = (3, max(1, round(dataset.height * scale)), max(1, round(dataset.width * scale)))
        sample = dataset.read(picked, out_shape=shape, masked=True)
        stretch = []
        for band in sample:
            values = band.compressed().astype(np.float64)
            values = values[np.isfinite(values)]
            low, high = np.percentile(values, STRETCH_PERCENTILES) if values.size else (0.0, 1.0)
            stretch.append((float(low), float(high)))
        stretch = tuple(stretch)
    return Raster(str(dataset.name), dataset.height, dataset.width, picked, stretch, dataset.crs, dataset.transform)


def read_rgb(dataset: Any, raster: Raster, window: Any = None, out_shape: tuple[int, int] | None = None):
    """RGB uint8 [h, w, 3] and the valid-pixel mask [h, w] of a window (or the whole raster, optionally read
    at ``out_shape`` by GDAL's bilinear resampling)."""
    from rasterio.enums import Resampling

    shape = None if out_shape is None else (3, *out_shape)
    data = dataset.read(raster.bands, window=window, out_shape=shape, resampling=Resampling.bilinear)
    valid = dataset.dataset_mask(window=window, out_shape=out_shape, resampling=Resampling.nearest) > 0
    if raster.stretch is None:
        rgb = data.astype(np.uint8)
    else:
        rgb = np.empty(data.shape, dtype=np.uint8)
        for index, (band, (low, high)) in enumerate(zip(data, raster.stretch, strict=True)):
            band = np.nan_to_num(band.astype(np.float64), nan=low)
            scaled = (band - low) / (high - low) if high > low else np.zeros_like(band)
            rgb[index] = np.clip(np.round(scaled * 255.0), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(rgb.transpose(1, 2, 0)), valid


def label_raster_profile(raster: Raster, num_labels: int) -> dict[str, Any]:
    """GeoTIFF profile of the label map: same CRS, transform and size; uint8 (nodata 255) up to 255 labels,
    uint16 (nodata 65535) beyond."""
    dtype, nodata = ("uint8", 255) if num_labels <= 255 else ("uint16", 65535)
    if num_labels > 65535:
        raise ValueError(f"a GeoTIFF label map holds at most 65535 labels, got {num_labels}")
    return {
        "driver": "GTiff", "height": raster.height, "width": raster.width, "count": 1, "dtype": dtype,
        "crs": raster.crs, "transform": raster.transform, "nodata": nodata, "tiled": True, "blockxsize": 256,
        "blockysize": 256, "compress": "deflate", "BIGTIFF": "IF_SAFER",
    }  # fmt: skip


@dataclass
class RasterResult:
    """Per-label pixel counts (valid pixels only), the label names and the raster they came from."""

    raster: Raster
    names: list[str]
    counts: np.ndarray
    label_format: str

    def summary(self) -> dict[str, Any]:
        total = int(self.counts.sum())
        classes = {
            name: {
                "pixel_fraction": int(count) / total if total else 0.0,
                "pixels": int(count),
                "area": int(count) * self.raster.pixel_area,
            }
            for name, count in zip(self.names, self.counts, strict=True)
            if count
        }
        return {
            "width": self.raster.width, "height": self.raster.height, "crs": str(self.raster.crs),
            "area_unit": self.raster.area_unit, "pixel_area": self.raster.pixel_area, "bands": list(self.raster.bands),
            "stretch": self.raster.stretch, "label_map_format": self.label_format, "classes": classes,
        }  # fmt: skip


def _write_chunk(dst: Any, labels: torch.Tensor, valid: np.ndarray, top: int, left: int, counts: np.ndarray) -> None:
    from rasterio.windows import Window

    values = labels.cpu().numpy()
    counts += np.bincount(values[valid].ravel(), minlength=len(counts))[: len(counts)]
    out = np.where(valid, values, dst.nodata).astype(dst.dtypes[0])
    dst.write(out[None], window=Window(left, top, out.shape[1], out.shape[0]))


def segment_raster(
    pipe: Any,
    call: Any,
    source: str | Path,
    target: str | Path,
    short_side: int | None,
    long_side: int | None,
    bands: tuple[int, ...] | None = None,
    tile_size: int = DEFAULT_TILE_SIZE,
) -> RasterResult:
    """Segment the raster ``source`` with ``pipe`` and the resolved ``call`` settings into the GeoTIFF ``target``
    (see the module docstring). Returns the class pixel counts and the raster's description."""
    rasterio = rasterio_module()
    if call.refine is not None:
        raise ValueError(f"refine={call.refine!r} is not supported for GeoTIFF rasters (it needs the whole image)")
    if call.whole_image is not None:
        raise ValueError("the trident method is not supported for GeoTIFF rasters (SAM encodes the whole image)")
    names = call.names
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB), rasterio.open(source) as dataset:
        raster = open_raster(dataset, bands)
        profile = label_raster_profile(raster, len(names))
        counts = np.zeros(len(names), dtype=np.int64)
        colors = class_colors(len(names))
        with rasterio.open(target, "w", **profile) as dst:
            if len(names) <= 255 or profile["dtype"] == "uint16":
                dst.write_colormap(1, {i: (*map(int, colors[i]), 255) for i in range(len(names))})
            if short_side is None:
                _native(pipe, call, dataset, raster, dst, counts, tile_size)
            else:
                _resized(pipe, call, dataset, raster, dst, counts, short_side, long_side)
    return RasterResult(raster, names, counts, "uint8" if profile["dtype"] == "uint8" else "uint16")


def _resized(pipe, call, dataset, raster, dst, counts, short_side, long_side) -> None:
    from rasterio.windows import Window

    size = rescale_size(raster.height, raster.width, short_side, long_side)
    if raster.height * raster.width <= FULL_READ_PIXELS:
        rgb, _ = read_rgb(dataset, raster)
        rgb = resize_array(rgb, size)
    else:
        rgb, _ = read_rgb(dataset, raster, out_shape=size)
    device = next(pipe.model.parameters()).device
    pixels = torch.from_numpy(np.array(rgb)).permute(2, 0, 1)[None].to(device)
    image = pipe.processor.image_processor.normalize_pixels(pixels)
    stitcher = Stitcher.windows(image, call.crop_size, call.stride)
    ((_, logits),) = call.run([(None, stitcher)])
    native = (raster.height, raster.width)
    keep = None
    if call.area_threshold is not None:
        keep = area_keep_mask(area_counts(logits, call.labels.synonym_index, native), call.area_threshold,
                              call.background_index)  # fmt: skip
    chunks = label_chunks(
        logits, call.labels.synonym_index, native, call.background_threshold, call.background_index, keep,
        max_chunk_elements=1 << 22,
    )  # fmt: skip
    for top, labels, _, _ in chunks:
        window = Window(0, top, raster.width, labels.shape[0])
        valid = dataset.dataset_mask(window=window) > 0
        _write_chunk(dst, labels, valid, top, 0, counts)


def _native(pipe, call, dataset, raster, dst, counts, tile_size) -> None:
    """Tiles of ``tile_size`` rounded down to a multiple of the stride; each runs every global window that
    touches it and keeps its own pixels."""
    from rasterio.windows import Window

    if call.crop_size is None:
        raise ValueError(
            f"a {raster.width}x{raster.height} raster at native resolution needs sliding windows: give --crop-size"
        )
    rows = axis_windows(raster.height, call.crop_size, call.stride)
    cols = axis_windows(raster.width, call.crop_size, call.stride)
    step = max(tile_size - tile_size % call.stride, call.stride)  # tile edges on window starts
    tiles = [
        (top, min(top + step, raster.height), left, min(left + step, raster.width))
        for top in range(0, raster.height, step)
        for left in range(0, raster.width, step)
    ]
    device = next(pipe.model.parameters()).device
    syn = call.labels.synonym_index

    def tile_logits(tile):
        top, bottom, left, right = tile
        hit_rows = [w for w in rows if w[0] < bottom and w[1] > top]
        hit_cols = [w for w in cols if w[0] < right and w[1] > left]
        y0, y1 = min(w[0] for w in hit_rows), max(w[1] for w in hit_rows)
        x0, x1 = min(w[0] for w in hit_cols), max(w[1] for w in hit_cols)
        rgb, valid = read_rgb(dataset, raster, window=Window(x0, y0, x1 - x0, y1 - y0))
        image = pipe.processor.image_processor.normalize_pixels(torch.from_numpy(rgb).permute(2, 0, 1)[None].to(device))
        boxes = [(t - y0, b - y0, l - x0, r - x0) for t, b in hit_rows for l, r in hit_cols]  # global order
        ((_, logits),) = call.run([(None, Stitcher(image, boxes))])
        core = (slice(top - y0, bottom - y0), slice(left - x0, right - x0))
        return logits[:, core[0], core[1]], valid[core]

    keep = None
    if call.area_threshold is not None:  # a first pass over the tiles counts each class's area
        area = torch.zeros(syn.shape[0], dtype=torch.int64)
        for tile in tiles:
            logits, _ = tile_logits(tile)
            area += area_counts(logits, syn, tuple(logits.shape[-2:])).cpu()
        keep = area_keep_mask(area, call.area_threshold, call.background_index).to(device)
    for tile in tiles:
        logits, valid = tile_logits(tile)
        size = tuple(logits.shape[-2:])
        for top, labels, _, _ in label_chunks(
            logits, syn, size, call.background_threshold, call.background_index, keep
        ):
            rows_in = slice(top, top + labels.shape[0])
            _write_chunk(dst, labels, valid[rows_in], tile[0] + top, tile[2], counts)


def preview(target: str | Path, source: str | Path, raster: Raster, max_side: int = 2048):
    """A downscaled RGB (PIL) of ``source`` and the matching nearest-neighbour label map of ``target`` (at most
    ``max_side`` pixels a side), for the overlay."""
    from PIL import Image
    from rasterio.enums import Resampling

    rasterio = rasterio_module()
    scale = min(1.0, max_side / max(raster.height, raster.width))
    shape = (max(1, math.floor(raster.height * scale)), max(1, math.floor(raster.width * scale)))
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB):
        with rasterio.open(source) as dataset:
            rgb, _ = read_rgb(dataset, raster, out_shape=shape)
        with rasterio.open(target) as labels:
            label_map = labels.read(1, out_shape=shape, resampling=Resampling.nearest)
    return Image.fromarray(rgb), label_map.astype(np.int64)


__all__ = [
    "DEFAULT_TILE_SIZE",
    "RASTER_SUFFIXES",
    "STRETCH_PERCENTILES",
    "Raster",
    "RasterResult",
    "has_rasterio",
    "is_raster",
    "open_raster",
    "pick_bands",
    "preview",
    "read_rgb",
    "segment_raster",
]
