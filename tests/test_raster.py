"""GeoTIFF inputs (the ``geo`` extra): georeferenced label maps with the input's CRS, transform, size, colour
map and nodata; band choice and 16-bit stretch; class areas in square metres; tiled processing at native
resolution equal to the whole image; resized processing equal to the pipeline."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
from rasterio.crs import CRS
from rasterio.enums import ColorInterp
from rasterio.transform import from_origin

from hf_ovseg.cli import main
from hf_ovseg.raster import STRETCH_PERCENTILES, open_raster, pick_bands, read_rgb, segment_raster

from conftest import tiny_pipeline

FAST = ["--crop-size", "32", "--stride", "16"]
TRANSFORM = from_origin(500000.0, 4600000.0, 0.5, 0.5)  # 0.5 m pixels, UTM zone 33N
CRS_UTM = CRS.from_epsg(32633)


def write_scene(path, height=90, width=130, dtype="uint16", nodata=0):
    """A 4-band scene (blue, green, red, near infrared), smooth with a bright square, a nodata corner."""
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:height, 0:width]
    scale = 4000 if dtype == "uint16" else 200
    bands = []
    for band in range(4):
        base = (np.sin(xx / (9 + band)) + np.cos(yy / (7 + band)) + 2) * scale / 4
        base[20:50, 30:80] += scale / 2
        bands.append(base + rng.normal(0, scale / 50, base.shape))
    data = np.clip(np.stack(bands), 1, None).astype(dtype)
    data[:, :15, :25] = nodata  # the nodata corner
    profile = {"driver": "GTiff", "height": height, "width": width, "count": 4, "dtype": dtype, "crs": CRS_UTM,
               "transform": TRANSFORM, "nodata": nodata}  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        dst.colorinterp = [ColorInterp.blue, ColorInterp.green, ColorInterp.red, ColorInterp.undefined]
    return data


def test_bands_and_16_bit_stretch(tmp_path):
    data = write_scene(tmp_path / "scene.tif")
    with rasterio.open(tmp_path / "scene.tif") as dataset:
        assert pick_bands(dataset, None) == (3, 2, 1)  # the bands tagged red, green, blue
        assert pick_bands(dataset, (4, 3, 2)) == (4, 3, 2)
        with pytest.raises(ValueError, match=r"--bands 5,1,2 does not fit: this raster has 4 bands \(1..4\)"):
            pick_bands(dataset, (5, 1, 2))
        raster = open_raster(dataset)
        rgb, valid = read_rgb(dataset, raster)
    assert rgb.dtype == np.uint8 and rgb.shape == (90, 130, 3)
    assert not valid[:15, :25].any() and valid[15:, 25:].all()
    red = data[2][data[2] > 0].astype(np.float64)  # small raster: the decimated read is the whole band
    low, high = np.percentile(red, STRETCH_PERCENTILES)
    assert raster.stretch[0] == pytest.approx((low, high))
    expected = np.clip(np.round((data[2].astype(np.float64) - low) / (high - low) * 255), 0, 255)
    assert np.array_equal(rgb[..., 0][valid], expected[valid].astype(np.uint8))


def test_geotiff_output_keeps_georeferencing(tiny_folder, tmp_path, capsys):
    write_scene(tmp_path / "scene.tif")
    out = tmp_path / "out"
    code = main(["segment", str(tmp_path / "scene.tif"), "--labels", "water,forest,building", "--model",
                 str(tiny_folder), "--out", str(out), "--short-side", "none", *FAST])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    with rasterio.open(out / "scene_labels.tif") as labels:
        assert labels.crs == CRS_UTM and labels.transform == TRANSFORM
        assert (labels.height, labels.width, labels.count, labels.dtypes[0]) == (90, 130, 1, "uint8")
        assert labels.nodata == 255
        colormap = labels.colormap(1)
        label_map = labels.read(1)
    assert (label_map[:15, :25] == 255).all() and (label_map[15:, 25:] < 3).all()
    assert colormap[0][:3] != colormap[1][:3]
    summary = json.loads((out / "scene.json").read_text())
    assert summary["area_unit"] == "m^2" and summary["pixel_area"] == pytest.approx(0.25)
    valid = label_map != 255
    for index, name in enumerate(["water", "forest", "building"]):
        pixels = int((label_map == index).sum())
        if pixels:
            assert summary["classes"][name]["pixels"] == pixels
            assert summary["classes"][name]["area"] == pytest.approx(pixels * 0.25)
            assert summary["classes"][name]["pixel_fraction"] == pytest.approx(pixels / valid.sum())
    assert (out / "scene_overlay.png").is_file()


def test_tiled_native_resolution_equals_the_whole_image(tmp_path):
    write_scene(tmp_path / "scene.tif", dtype="uint8", nodata=0)
    pipe = tiny_pipeline("seed", outlier_top_k=3)
    labels = ["water", "forest", "road", "building"]
    resize, call = pipe.prepare(labels, short_side=None, crop_size=32, stride=16, batch_size=5,
                                background_threshold=0.3, area_threshold=0.05)  # fmt: skip
    maps = []
    for tile in (24, 50, 10_000):  # several tiles (and tiles smaller than a window), then one tile
        target = tmp_path / f"labels_{tile}.tif"
        segment_raster(pipe, call, tmp_path / "scene.tif", target, None, None, tile_size=tile)
        with rasterio.open(target) as written:
            maps.append(written.read(1))
    assert np.array_equal(maps[0], maps[2]) and np.array_equal(maps[1], maps[2])
    with rasterio.open(tmp_path / "scene.tif") as dataset:
        rgb, valid = read_rgb(dataset, open_raster(dataset))
    whole = pipe(rgb, candidate_labels=labels, return_label_map=True, short_side=None, crop_size=32, stride=16,
                 background_threshold=0.3, area_threshold=0.05)["label_map"]  # fmt: skip
    assert np.array_equal(maps[2][valid], whole[valid])
    assert len(np.unique(whole)) > 1


def test_tile_edges_fall_on_window_starts(tmp_path, monkeypatch):
    """With stride == crop, tiles of 50 px become tiles of 32 px, so no window runs twice (50 px tiles ran 24
    windows for 12)."""
    import hf_ovseg.pipeline_ovseg as pipeline_module

    write_scene(tmp_path / "scene.tif", height=96, width=128, dtype="uint8", nodata=0)
    pipe = tiny_pipeline("seed", outlier_top_k=3)
    labels = ["water", "forest", "road"]
    resize, call = pipe.prepare(labels, short_side=None, crop_size=32, stride=32)
    windows, run_windows = [], pipeline_module.run_windows

    def counting_run_windows(forward, stitchers, *args):
        windows.extend(box for _, stitcher in stitchers for box in stitcher.boxes)
        return run_windows(forward, stitchers, *args)

    monkeypatch.setattr(pipeline_module, "run_windows", counting_run_windows)
    segment_raster(pipe, call, tmp_path / "scene.tif", tmp_path / "tiled.tif", None, None, tile_size=50)
    assert len(windows) == 3 * 4
    with rasterio.open(tmp_path / "tiled.tif") as written:
        tiled = written.read(1)
    with rasterio.open(tmp_path / "scene.tif") as dataset:
        rgb, valid = read_rgb(dataset, open_raster(dataset))
    whole = pipe(rgb, candidate_labels=labels, return_label_map=True, short_side=None, crop_size=32, stride=32)
    assert np.array_equal(tiled[valid], whole["label_map"][valid])


def test_resized_processing_equals_the_pipeline(tmp_path):
    write_scene(tmp_path / "scene.tif", dtype="uint8", nodata=0)
    pipe = tiny_pipeline("segearth", feature_upsampling=False)
    labels = ["water", "forest", "road"]
    resize, call = pipe.prepare(labels, short_side=48, crop_size=32, stride=16)
    segment_raster(pipe, call, tmp_path / "scene.tif", tmp_path / "out.tif", 48, 2048)
    with rasterio.open(tmp_path / "out.tif") as written:
        got = written.read(1)
    with rasterio.open(tmp_path / "scene.tif") as dataset:
        rgb, valid = read_rgb(dataset, open_raster(dataset))
    expected = pipe(rgb, candidate_labels=labels, return_label_map=True, short_side=48, crop_size=32, stride=16)
    assert got.shape == (90, 130)
    assert np.array_equal(got[valid], expected["label_map"][valid])


def test_raster_errors(tiny_folder, tmp_path, capsys):
    write_scene(tmp_path / "scene.tif")
    args = ["segment", str(tmp_path / "scene.tif"), "--labels", "a,b", "--model", str(tiny_folder), "--out",
            str(tmp_path / "o"), *FAST]  # fmt: skip
    assert main([*args, "--bands", "3,2"]) == 2
    assert "--bands takes three band numbers" in capsys.readouterr().err
    # a named raster's bands are checked before the model loads: one line naming the file once, nothing written
    assert main([*args, "--bands", "9,2,1"]) == 2
    error = capsys.readouterr().err
    assert error.strip() == f"hf-ovseg: error: {tmp_path / 'scene.tif'}: --bands 9,2,1 does not fit: this raster has " \
                            "4 bands (1..4)" and not (tmp_path / "o").exists()  # fmt: skip
    # found through a folder, the raster is checked when its turn comes: one entry in the summary, path once
    assert main([*args[:1], str(tmp_path), *args[2:], "--bands", "9,2,1"]) == 1
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["failures"][0]["error"] == "--bands 9,2,1 does not fit: this raster has 4 bands (1..4)"
    assert main([*args, "--refine", "pamr"]) == 1
    assert "not supported for GeoTIFF" in capsys.readouterr().err
