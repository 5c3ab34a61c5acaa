"""Every awkward input fails fast with a clear one-line error (before the model loads when the model is not
needed), or is handled: windows that cover every pixel, extreme aspect ratios in bounded memory, large
vocabularies, broken model folders and images, look-alike labels, long labels, non-ASCII legends,
EXIF-rotated PIL images."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image, ImageFont

from hf_ovseg.api import load_model_and_processor
from hf_ovseg.cli import main
from hf_ovseg.convert import ConversionError, convert
from hf_ovseg.image_processing_ovseg import load_image
from hf_ovseg.labels import parse_labels
from hf_ovseg.visualize import LEGEND_CHARACTERS, LEGEND_ROWS, font_covers, font_for, overlay_image

from conftest import tiny_pipeline, tiny_processor

FAST = ["--short-side", "64", "--crop-size", "32", "--stride", "16"]
MISSING_MODEL = "/nonexistent/model"  # a check that fails with this model ran before the model was loaded


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hf-ovseg: error: "), err
    return lines[0]


@pytest.fixture
def photo(tmp_path):
    path = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(path)
    return path


# ---- 1. windows always cover; no NaN anywhere; valid JSON -----------------------------------------------


def test_stride_larger_than_crop_is_rejected_before_the_model(photo, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["segment", photo, "--labels", "a,b", "--model", MISSING_MODEL, "--out", out]
    code, _, err = run(capsys, *args, "--crop-size", "32", "--stride", "48")
    assert code == 2 and "--stride 48 is larger than --crop-size 32" in one_line_error(err)
    assert not out.exists()
    with pytest.raises(ValueError, match="stride 300 is larger than crop_size 224"):
        tiny_pipeline()(np.zeros((40, 40, 3), np.uint8), candidate_labels=["a"], stride=300)


def test_outputs_are_strict_json_without_nan(tiny_folder, photo, tmp_path, capsys):
    out = tmp_path / "out"
    code, _, _ = run(capsys, "segment", photo, "--labels", "a,b,c", "--model", tiny_folder, "--out", out, *FAST)
    assert code == 0

    def no_constants(name):
        raise AssertionError(f"{name} in JSON output")

    for path in (out / "photo.json", out / "summary.json"):
        data = json.loads(path.read_text(), parse_constant=no_constants)
        assert data
    classes = json.loads((out / "photo.json").read_text())["classes"]
    assert all(np.isfinite(c["mean_score"]) and 0 < c["pixel_fraction"] <= 1 for c in classes.values())


# ---- 2. extreme aspect ratios run in bounded memory --------------------------------------------------

# The child's own peak (VmHWM, kB): ``ru_maxrss`` would also count the pytest process's resident size at the
# fork that started the child (Linux keeps it across exec).
CHILD_MEMORY = textwrap.dedent(
    """
    import sys
    from hf_ovseg.cli import main
    code = main(sys.argv[1:])
    with open("/proc/self/status") as status:
        print(code, next(line.split()[1] for line in status if line.startswith("VmHWM:")))
    """
)


@pytest.mark.parametrize("shape", [(3, 5000), (5000, 3)])
def test_extreme_aspect_ratio_finishes_in_bounded_memory(tiny_folder, tmp_path, shape):
    image = tmp_path / "strip.png"
    Image.fromarray(np.full((*shape, 3), 90, np.uint8)).save(image)
    script = tmp_path / "child.py"
    script.write_text(CHILD_MEMORY)
    args = ["segment", str(image), "--labels", "road,sky", "--model", str(tiny_folder), "--out", str(tmp_path / "o")]
    result = subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, timeout=600, env={**os.environ}
    )
    code, peak_kb = map(int, result.stdout.split()[-2:])
    assert code == 0, result.stderr[-2000:]
    assert peak_kb < 2 * 1024 * 1024, f"peak resident memory {peak_kb / 1024:.0f} MB"
    assert Image.open(tmp_path / "o" / "strip_labels.png").size == shape[::-1]


def test_long_side_is_capped_like_the_anchors():
    image_processor = tiny_processor().image_processor
    pixels = image_processor.resize_image(Image.new("RGB", (5000, 3)), short_side=448)  # uncapped: 746,667 wide
    assert tuple(pixels.shape[-2:]) == (1, 2048)
    pixels = image_processor.resize_image(Image.new("RGB", (500, 375)), short_side=336, long_side=2048)
    assert tuple(pixels.shape[-2:]) == (336, 448)


# ---- 3. large vocabularies ---------------------------------------------------------------------------


def test_more_than_255_labels_write_a_16_bit_label_map(tiny_folder, photo, tmp_path, capsys):
    labels = tmp_path / "lvis.txt"
    labels.write_text("\n".join(f"object {i}" for i in range(300)))
    out = tmp_path / "out"
    code, _, err = run(capsys, "segment", photo, "--labels-file", labels, "--model", tiny_folder, "--out", out, *FAST)
    assert code == 0, err
    summary = json.loads((out / "photo.json").read_text())
    assert summary["label_map_format"] == "uint16" and len(summary["labels"]) == 300
    label_map = np.array(Image.open(out / "photo_labels.png"))
    assert label_map.dtype in (np.uint16, np.int32) and label_map.shape == (40, 56)
    expected = tiny_pipeline()(str(photo), candidate_labels=[f"object {i}" for i in range(300)],
                               return_label_map=True, short_side=64, crop_size=32, stride=16)  # fmt: skip
    assert np.array_equal(label_map, expected["label_map"])
    # the overlay legend lists the largest classes, not all of them
    overlay = Image.open(out / "photo_overlay.png")
    assert overlay.height <= max(40, int(max(12, 40 // 30) * 1.6) * (LEGEND_ROWS + 2))


def test_too_many_labels_fail_before_the_model(photo, tmp_path, capsys):
    labels = tmp_path / "huge.txt"
    labels.write_text("\n".join(f"c{i}" for i in range(70000)))
    code, _, err = run(capsys, "segment", photo, "--labels-file", labels, "--model", MISSING_MODEL, "--out", tmp_path)
    assert code == 2 and "a label map holds at most 65536 labels, got 70000" in one_line_error(err)


# ---- 4. output locations are checked before the model loads --------------------------------------------


@pytest.mark.parametrize("where", ["file", "file-parent", "proc"])
def test_unwritable_out_is_one_line_before_the_model(photo, tmp_path, capsys, where):
    existing = tmp_path / "taken.txt"
    existing.write_text("x")
    out = {"file": existing, "file-parent": existing / "sub", "proc": "/proc/hf_ovseg_out/x"}[where]
    code, _, err = run(capsys, "segment", photo, "--labels", "a,b", "--model", MISSING_MODEL, "--out", out)
    line = one_line_error(err)
    assert code == 2 and "--out" in line and "Traceback" not in err
    assert {"file": "is a file", "file-parent": "is a file", "proc": "cannot be"}[where] in line


# ---- 5, 6. broken model folders -----------------------------------------------------------------------


def broken_copy(tiny_folder, tmp_path, breakage):
    folder = tmp_path / "model"
    shutil.copytree(tiny_folder, folder)
    breakage(folder)
    return folder


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (lambda f: (f / "model.safetensors").unlink(), "has no weights: expected model.safetensors"),
        (lambda f: [(f / n).unlink() for n in ("tokenizer.json", "vocab.json", "merges.txt") if (f / n).exists()],
         "has no tokenizer"),
        (lambda f: (f / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]})),
         "holds a 'bert' model \\(BertModel\\), not CLIP"),
        (lambda f: (f / "model.safetensors").write_bytes((f / "model.safetensors").read_bytes()[:-5000]),
         "model.safetensors is truncated"),
        (lambda f: (f / "model.safetensors").write_bytes(b"\x40" * 64), "model.safetensors is corrupted"),
    ],
)  # fmt: skip
def test_broken_model_folder_says_what_is_wrong(tiny_folder, tmp_path, capsys, photo, breakage, message):
    folder = broken_copy(tiny_folder, tmp_path, breakage)
    with pytest.raises(ValueError, match=message):
        load_model_and_processor(str(folder))
    code, _, err = run(capsys, "segment", photo, "--labels", "a,b", "--model", folder, "--out", tmp_path / "o")
    line = one_line_error(err)
    assert code == 2 and "not in the local Hugging Face cache" not in line
    with pytest.raises(ValueError, match=message):  # hf-ovseg convert of the folder says the same
        convert(str(folder), tmp_path / "converted")


# ---- 7. evaluate arguments ----------------------------------------------------------------------------


@pytest.mark.parametrize(("extra", "message"), [(["--limit", "-2"], "positive number"), (["--limit", "0"], "positive")])
def test_evaluate_rejects_bad_limits(fixtures, tmp_path, capsys, extra, message):
    args = ["evaluate", "--dataset", "voc21", "--data-root", fixtures / "voc", "--model", MISSING_MODEL, *extra]
    code, _, err = run(capsys, *args)
    assert code == 2 and message in one_line_error(err)


def test_evaluate_checks_out_before_the_run(fixtures, tmp_path, capsys):
    args = ["evaluate", "--dataset", "voc21", "--data-root", fixtures / "voc", "--model", MISSING_MODEL]
    code, _, err = run(capsys, *args, "--out", tmp_path / "missing" / "r.json")
    assert code == 2 and "does not exist" in one_line_error(err)


# ---- 8, 9. broken images: clear messages, the other images still done ------------------------------------


def test_truncated_jpeg_is_reported_and_the_others_are_done(tiny_folder, fixtures, tmp_path, capsys):
    good = fixtures / "voc" / "JPEGImages" / "2011_000003.jpg"
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(good.read_bytes()[:4000])
    with pytest.raises(ValueError, match="cut.jpg is truncated or corrupted"):
        load_image(truncated)
    out = tmp_path / "out"
    code, _, err = run(
        capsys, "segment", truncated, good, "--labels", "a,b", "--model", tiny_folder, "--out", out, *FAST
    )
    assert code == 1  # something failed
    assert "cut.jpg is truncated or corrupted" in err
    summary = json.loads((out / "summary.json").read_text())
    assert [i["input"] for i in summary["images"]] == [str(good)]
    assert summary["failures"] == [{"input": str(truncated), "error": summary["failures"][0]["error"]}]
    assert "truncated or corrupted" in summary["failures"][0]["error"]
    assert (out / "2011_000003_labels.png").is_file() and not (out / "cut_labels.png").exists()


def test_early_error_leaves_no_output_folder(photo, tmp_path, capsys):
    out = tmp_path / "never"
    code, _, _ = run(capsys, "segment", photo, "--labels", "a,b", "--model", MISSING_MODEL, "--out", out)
    assert code == 2 and not out.exists()


# ---- 10, 11. labels the text tower cannot tell apart; long labels ---------------------------------------


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (["cat", "Cat"], "'cat' and 'Cat' tokenize identically"),
        (["road", "dog", "DOG "], "'dog' and 'DOG' tokenize identically"),
        (["sky,Sky", "road"], "class 'sky' lists 'sky' and 'Sky'"),
        (["sky,clouds", "weather,clouds"], "'clouds' \\(class 'weather'\\) and 'clouds' \\(class 'sky'\\)"),
    ],
)
def test_lookalike_labels_are_errors(labels, message):
    with pytest.raises(ValueError, match=message):
        parse_labels(labels, tokenizer=tiny_processor().tokenizer)
    with pytest.raises(ValueError, match=message):
        tiny_pipeline()(np.zeros((32, 32, 3), np.uint8), candidate_labels=labels)


def test_cli_synonyms_use_a_pipe(tiny_folder, photo, tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = run(
        capsys, "segment", photo, "--labels", "road,sky|clouds", "--model", tiny_folder, "--out", out, *FAST
    )
    assert code == 0, err
    assert json.loads((out / "photo.json").read_text())["labels"] == ["road", "sky"]
    code, _, err = run(capsys, "segment", photo, "--labels", "Cat,cat", "--model", MISSING_MODEL, "--out", out)
    assert code == 2 and "tokenize identically" in one_line_error(err)


def test_long_label_warns_and_the_legend_stays_narrow(caplog):
    long_name = " ".join(["extraordinarily"] * 60)
    pipe = tiny_pipeline()
    with caplog.at_level(logging.WARNING, logger="hf_ovseg"):
        pipe(np.zeros((32, 32, 3), np.uint8), candidate_labels=[long_name, "road"], short_side=32, crop_size=32)
    assert any("exceed the text tower's 77 tokens" in r.getMessage() for r in caplog.records)
    photo = Image.new("RGB", (300, 200), "gray")
    label_map = np.zeros((200, 300), dtype=np.int64)
    label_map[:, 150:] = 1
    fractions = {long_name: 0.5, "road": 0.5, "sky": 0.0001}
    overlay = overlay_image(photo, label_map, [long_name, "road", "sky"], fractions)
    assert overlay.width <= 300 + LEGEND_CHARACTERS * 12 // 2 + 2 * 19  # 12 px text on a 200 px photo


@pytest.mark.parametrize("size", [(2, 9000), (9000, 2), (40, 40)])
def test_the_legend_is_sized_from_its_text(size):
    """A tall or tiny photo still gets a legend wide enough for its names and percentages (a 2x9000 photo had a
    160 px column at a 32 px font: every name was an ellipsis and the percentages were cut)."""
    width, height = size
    photo = Image.new("RGB", size, "gray")
    label_map = np.zeros((height, width), dtype=np.int64)
    names = ["vegetation", "impervious surface"]
    overlay = overlay_image(photo, label_map, names, {"vegetation": 0.625, "impervious surface": 0.375})
    font_size = max(12, min(32, height // 30))
    line = int(font_size * 1.6)
    for name, share in zip(names, ("62.5%", "37.5%"), strict=True):
        font = font_for(f"{name}  {share}", font_size)
        needed = font.getlength(f"{name}  {share}") + 2 * line
        assert overlay.width - width >= needed, (size, name)  # drawn whole: no ellipsis, no cut percentage


def test_a_label_no_font_draws_warns(monkeypatch, caplog):
    """Without a font for the characters (fontconfig and the known paths find none), a warning names them and the
    packages that draw them, instead of silent boxes."""
    import hf_ovseg.visualize as visualize

    monkeypatch.setattr(visualize, "FONT_PATHS", ())
    monkeypatch.setattr(visualize, "_fontconfig_files", lambda charset: ())
    visualize.font_for.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="hf_ovseg"):
            visualize.font_for("猫 ネコ", 20)
    finally:
        visualize.font_for.cache_clear()
    assert "no installed font draws" in caplog.text and "fonts-noto-cjk" in caplog.text and "猫" in caplog.text


def test_legend_leaves_out_classes_at_zero_percent():
    photo = Image.new("RGB", (200, 100), "gray")
    label_map = np.zeros((100, 200), dtype=np.int64)
    with_tiny = overlay_image(photo, label_map, ["a", "b"], {"a": 0.9999, "b": 0.0001})
    alone = overlay_image(photo, label_map, ["a"], {"a": 1.0})
    assert np.array_equal(np.asarray(with_tiny), np.asarray(alone))


# ---- 12. legend fonts cover accents and CJK -------------------------------------------------------------


@pytest.mark.parametrize("text", ["naïve café", "crème brûlée", "猫 ネコ", "Ελληνικά"])
def test_legend_font_draws_every_character(text):
    font = font_for(text, 20)
    assert font_covers(font, text), getattr(font, "path", font)
    missing = font.getmask("\U0010fffd")
    for char in set(text) - {" "}:
        assert bytes(font.getmask(char)) != bytes(missing) or font.getmask(char).size != missing.size, char


def test_pillow_default_font_would_draw_boxes():
    """The font the legend used before has no glyph for these, which is why it now looks for one."""
    assert not font_covers(ImageFont.load_default(size=20), "ï")
    assert not font_covers(ImageFont.load_default(size=20), "猫")


# ---- 13. templates --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("templates", "message"),
    [(["no placeholder"], "exactly one '\\{\\}'"), ([], "templates is empty"), ("a {}", "must be a list")],
)
def test_bad_templates_are_errors(templates, message):
    with pytest.raises(ValueError, match=message):
        tiny_pipeline()(np.zeros((32, 32, 3), np.uint8), candidate_labels=["a"], templates=templates)
    with pytest.raises(ValueError, match=message):
        tiny_processor(templates=templates)


# ---- 14. EXIF orientation --------------------------------------------------------------------------------


def test_pil_images_are_exif_rotated_like_paths(tmp_path):
    array = np.random.default_rng(3).integers(0, 255, (40, 64, 3), dtype=np.uint8)
    image = Image.fromarray(array)
    exif = image.getexif()
    exif[0x0112] = 6  # displayed rotated by 90 degrees
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif.tobytes(), quality=95)
    pipe = tiny_pipeline()
    kwargs = {"candidate_labels": ["a", "b"], "return_label_map": True, "short_side": 64, "crop_size": 32}
    from_path = pipe(str(path), **kwargs)["label_map"]
    from_pil = pipe(Image.open(path), **kwargs)["label_map"]
    assert from_path.shape == (64, 40)  # as displayed
    assert np.array_equal(from_path, from_pil)


# ---- 15, 16. convert --arch; sizes ----------------------------------------------------------------------


def test_convert_rejects_arch_for_hf_sources(tiny_folder, tmp_path, capsys):
    with pytest.raises(ConversionError, match="--arch applies to OpenAI/OpenCLIP checkpoint files only"):
        convert(str(tiny_folder), tmp_path / "o", arch="ViT-Z-99")
    code, _, err = run(capsys, "convert", tiny_folder, tmp_path / "o", "--arch", "ViT-Z-99")
    assert code == 2 and "--arch applies" in one_line_error(err) and not (tmp_path / "o").exists()


def test_short_side_zero_is_an_error_everywhere_and_none_keeps_the_size(photo, tiny_folder, tmp_path, capsys):
    with pytest.raises(ValueError, match="short_side must be a positive number of pixels or None, got 0"):
        tiny_pipeline()(np.zeros((32, 32, 3), np.uint8), candidate_labels=["a"], short_side=0)
    code, _, err = run(capsys, "segment", photo, "--labels", "a", "--model", MISSING_MODEL, "--short-side", "0")
    assert code == 2 and "expected a positive number of pixels or 'none', got 0" in one_line_error(err)
    out = tmp_path / "o"
    code, _, _ = run(capsys, "segment", photo, "--labels", "a,b", "--model", tiny_folder, "--out", out,
                     "--short-side", "none", "--crop-size", "none")  # fmt: skip
    assert code == 0 and Image.open(out / "photo_labels.png").size == (56, 40)


# ---- 18. the README's documented uses ---------------------------------------------------------------------


def test_load_benchmark_as_documented(fixtures):
    import evaluate

    from hf_ovseg.evaluation import METRIC_PATH, load_benchmark

    miou = evaluate.load(METRIC_PATH)
    bench = load_benchmark("voc21", fixtures / "voc")  # the README's example
    item = bench[0]
    assert set(item) == {"id", "image", "mask"} and len(bench) == 5
    assert bench.dataset.num_rows == 5  # the datasets.Dataset underneath
    scores = miou.compute(predictions=[item["mask"]], references=[item["mask"]], num_labels=21, ignore_index=255)
    assert scores["mean_iou"] == pytest.approx(1.0)


def test_readme_install_and_test_commands_are_the_ones_ci_runs():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    readme, ci = (root / "README.md").read_text(), (root / ".ci" / "run").read_text()
    assert "pip install -e ." in readme and "pip install hf_ovseg " not in readme
    assert "python -m pytest -q" in readme and "python -m pytest -q" in ci

    def apt_packages(text: str) -> set[str]:
        (line,) = [line for line in text.splitlines() if "apt-get install" in line]
        words = line.split("apt-get install", 1)[1].split("#")[0].split(">")[0].split()
        return {word for word in words if not word.startswith("-")}

    # the system packages the tests need (Chromium, fonts for the legend tests) are the ones CI installs
    assert apt_packages(readme) == apt_packages(ci) and "fonts-droid-fallback" in apt_packages(ci)
    assert "git clone" in readme.split("## Install", 1)[1].split("##", 1)[0]
    assert "download.pytorch.org/whl/cpu" in readme
