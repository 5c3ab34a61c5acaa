"""hf-ovseg segment: the files it writes, and a one-line error with no output for each bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from hf_ovseg.cli import main

FAST = ["--short-side", "64", "--crop-size", "32", "--stride", "16"]


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_segment_writes_label_map_overlay_and_json(tiny_folder, fixtures, tmp_path, capsys):
    photos = [fixtures / "voc" / "JPEGImages" / "2007_000033.jpg", fixtures / "arc2017" / "image.jpg"]
    out = tmp_path / "out"
    code, stdout, _ = run(
        capsys, "segment", *photos, "--labels", "aeroplane,sky,grass", "--model", tiny_folder, "--out", out, *FAST
    )
    assert code == 0
    for photo in photos:
        stem, size = photo.stem, Image.open(photo).size
        labels = Image.open(out / f"{stem}_labels.png")
        assert labels.mode == "P" and labels.size == size
        ids = np.asarray(labels)
        assert set(np.unique(ids).tolist()) <= {0, 1, 2}
        overlay = Image.open(out / f"{stem}_overlay.png")
        assert overlay.mode == "RGB" and overlay.width > size[0] and overlay.height >= size[1]
        summary = json.loads((out / f"{stem}.json").read_text())
        assert summary["labels"] == ["aeroplane", "sky", "grass"] and summary["method"] == "seed"
        assert sum(c["pixel_fraction"] for c in summary["classes"].values()) == pytest.approx(1.0)
        for name, stats in summary["classes"].items():
            share = (ids == summary["labels"].index(name)).mean()
            assert stats["pixel_fraction"] == pytest.approx(share) and 0 < stats["mean_score"] <= 1
        assert f"{photo}:" in stdout
    assert not list(out.glob("*.partial"))


def test_labels_file_synonyms_and_tiny_image(tiny_folder, tmp_path, capsys):
    labels = tmp_path / "classes.txt"
    labels.write_text("sky,clouds\n\nroad\n")
    tiny = tmp_path / "tiny.png"
    Image.fromarray(np.full((5, 3), 200, np.uint8)).save(tiny)  # smaller than a patch: padded, then segmented
    code, _, err = run(
        capsys,
        "segment",
        tiny,
        "--labels-file",
        labels,
        "--model",
        tiny_folder,
        "--out",
        tmp_path / "o",
        "--short-side",
        "none",
        "--crop-size",
        "none",
        "--method",
        "clearclip",
    )
    assert code == 0, err
    summary = json.loads((tmp_path / "o" / "tiny.json").read_text())
    assert summary["labels"] == ["sky", "road"] and summary["method"] == "clearclip"
    assert Image.open(tmp_path / "o" / "tiny_labels.png").size == (3, 5)


@pytest.mark.parametrize(
    ("make_args", "message"),
    [
        (lambda d, img: [img, "--labels", " , "], "--labels is empty"),
        (lambda d, img: [img, "--labels", "dog,,cat"], r"--labels has an empty class name \(item 2\)"),
        (lambda d, img: [img, "--labels", "dog| ,cat"], r"--labels item 1 \('dog\|'\) has an empty synonym"),
        (lambda d, img: [img, "--labels", "cat,cat"], "duplicate labels: cat"),
        (lambda d, img: [img], "exactly one of --labels or --labels-file"),
        (lambda d, img: [img, "--labels-file", d / "none.txt"], "labels file not found"),
        (lambda d, img: [img, d / "notes.png", "--labels", "a,b"], "notes.png is not an image file"),
        (lambda d, img: [img, d / "missing.jpg", "--labels", "a,b"], "image file not found"),
        (lambda d, img: [img, "--labels", "a,b", "--dtype", "float8"], "unsupported dtype 'float8'"),
        (lambda d, img: [img, "--labels", "a,b", "--device", "tpu"], "unsupported device 'tpu'"),
        (lambda d, img: [img, "--labels", "a,b", "--device", "cuda:99"], "(no CUDA GPU|does not exist)"),
        (lambda d, img: [img, "--labels", "a,b", "--model", d], "is not a model folder"),
    ],
)
def test_bad_input_one_line_error_no_output(make_args, message, tiny_folder, tmp_path, capsys):
    image = tmp_path / "ok.png"
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(image)
    (tmp_path / "notes.png").write_text("hello")
    argv = ["segment", *make_args(tmp_path, image)]
    if "--model" not in argv:
        argv += ["--model", tiny_folder]
    out = tmp_path / "out"
    code, _, err = run(capsys, *argv, "--out", out, *FAST)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hf-ovseg: error: ")
    assert __import__("re").search(message, lines[0]), lines[0]
    assert not out.exists()


def test_offline_default_model_error_says_how_to_fix(tmp_path):
    image = tmp_path / "ok.png"
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(image)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "empty"), "HF_HOME": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", "hf_ovseg.cli", "segment", str(image), "--labels", "a,b", "--out", str(tmp_path / "o")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    assert "openai/clip-vit-base-patch16" in result.stderr and "offline" in result.stderr
    assert "--model /path/to/" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_unreachable_hub_fails_fast_and_quietly(tmp_path):
    """Without HF_HUB_OFFLINE, on a machine that cannot reach the Hub (here: an endpoint nothing listens on), the
    default model fails at once with the one-line error, not after huggingface_hub's retries (23 stderr lines and
    about 30 s before this check)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    image = tmp_path / "ok.png"
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(image)
    env = {k: v for k, v in os.environ.items() if not k.endswith("_OFFLINE")}
    env.update({"HF_ENDPOINT": f"http://127.0.0.1:{port}", "HF_HUB_CACHE": str(tmp_path / "empty"),
                "HF_HOME": str(tmp_path)})  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-m", "hf_ovseg.cli", "segment", str(image), "--labels", "a,b", "--out", str(tmp_path / "o")],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "cannot be reached from this machine" in result.stderr and "--model /path/to/" in result.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--crop-size", "32", "--stride", "64"], "--stride 64 is larger than --crop-size 32"),
        (["--background-threshold", "2"], r"--background-threshold must lie in \[0, 1\]"),
        (["--area-threshold", "-1"], r"--area-threshold must lie in \[0, 1\]"),
    ],
)
def test_errors_name_the_flags_the_user_typed(flags, message, tiny_folder, tmp_path, capsys):
    """Messages say --crop-size where the user typed it, not the pipeline's crop_size."""
    image = tmp_path / "ok.png"
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(image)
    code, _, err = run(capsys, "segment", image, "--labels", "a,b", "--model", tiny_folder, "--out", tmp_path / "o",
                       *flags)  # fmt: skip
    assert code == 2 and err.count("\n") == 1
    assert __import__("re").search(message, err), err
    assert not (tmp_path / "o").exists()


def test_float16_on_cpu_warns(tiny_folder, tmp_path, capsys, caplog):
    image = tmp_path / "ok.png"
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(image)
    code, _, err = run(capsys, "segment", image, "--labels", "a,b", "--model", tiny_folder, "--out", tmp_path / "o",
                       "--dtype", "float16", "--device", "cpu", *FAST)  # fmt: skip
    assert code == 0
    assert "--dtype float16 on a CPU is slower than float32" in caplog.text
