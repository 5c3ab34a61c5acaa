"""Benchmark harness: loaders on fixtures in each exact layout (VOC and ADE20K on the real shared data), the
evaluate metric against an independent computation, and the runner end to end (one process, shards,
accelerate launch)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import evaluate
import numpy as np
import pytest
import torch
from PIL import Image

from hf_ovseg.cli import main
from hf_ovseg.evaluation import DATASETS, METRIC_PATH, evaluate_methods, load_benchmark, update_model_card
from hf_ovseg.evaluation.benchmarks import SPLITS_DIR, read_mask
from hf_ovseg.evaluation.metric import confusion_matrix

from conftest import tiny_pipeline

FAST = {"short_side": 64, "crop_size": 32, "stride": 16, "batch_size": 8, "background_threshold": 0.0}

# Raw mask values written into each fixture, and the class ids the loader must turn them into.
RAW = np.array([[0, 1, 2, 255], [3, 4, 0, 1]], dtype=np.uint8)
REDUCED = np.array([[255, 0, 1, 255], [2, 3, 255, 0]], dtype=np.uint8)
CITY_RAW = np.array([[7, 8, 26, 0], [33, 1, 11, 255]], dtype=np.uint8)
CITY_TRAIN = np.array([[0, 1, 13, 255], [18, 255, 2, 255]], dtype=np.uint8)


def write_fixture(name: str, root, ids=("a_1", "b_2")):
    """Two samples of ``name`` in its exact on-disk layout; returns the expected class-id mask."""
    spec = DATASETS[name]
    raw, expected = (CITY_RAW, CITY_TRAIN) if spec.mask_mapping == "cityscapes" else (RAW, RAW)
    if spec.mask_mapping == "reduce_zero_label":
        expected = REDUCED
    if spec.packaged_split:  # the split list ships with the package: every id it names
        ids = tuple((SPLITS_DIR / spec.split_file).read_text().split())
    for sample in ids:
        stem = f"frankfurt/{sample}" if name == "cityscapes" else sample  # found recursively
        image = root / spec.images / f"{stem}{spec.image_suffix}"
        mask = root / spec.masks / f"{stem}{spec.mask_suffix}"
        image.parent.mkdir(parents=True, exist_ok=True)
        mask.parent.mkdir(parents=True, exist_ok=True)
        fmt = (
            "TIFF" if spec.image_suffix == ".tif" else ("JPEG" if spec.image_suffix.lower().endswith("jpg") else "PNG")
        )
        Image.fromarray(np.full((2, 4, 3), 120, np.uint8)).save(image, format=fmt)
        Image.fromarray(raw).save(mask, format="TIFF" if spec.mask_suffix == ".tif" else "PNG")
    if spec.split_file and not spec.packaged_split:
        (root / spec.split_file).parent.mkdir(parents=True, exist_ok=True)
        (root / spec.split_file).write_text("\n".join(ids) + "\n")
    return expected, ids


@pytest.mark.parametrize("name", list(DATASETS))
def test_loader_on_its_layout(name, tmp_path):
    expected, ids = write_fixture(name, tmp_path)
    bench = load_benchmark(name, tmp_path)
    assert len(bench) == len(ids) and bench.spec.name == name
    item = bench[1]  # the wrapper indexes like its datasets.Dataset
    assert item["id"] == (f"frankfurt/{ids[1]}" if name == "cityscapes" else ids[1])
    assert item["image"].mode == "RGB" and item["image"].size == (4, 2)
    assert item["mask"].dtype == np.uint8 and np.array_equal(item["mask"], expected)
    assert len(bench.spec.prompts) == bench.spec.num_classes == len(bench.spec.class_names)
    assert len(load_benchmark(name, tmp_path, limit=1)) == 1


@pytest.mark.parametrize("name", list(DATASETS))
def test_missing_layout_names_expected_folders(name, tmp_path):
    spec = DATASETS[name]
    with pytest.raises(ValueError, match=rf"{name}: folder .* not found; expected the layout .*{spec.images}"):
        load_benchmark(name, tmp_path)


def test_malformed_layouts(tmp_path):
    write_fixture("voc21", tmp_path)
    (tmp_path / "SegmentationClass" / "b_2.png").unlink()
    with pytest.raises(ValueError, match="missing files: .*b_2.png"):
        load_benchmark("voc21", tmp_path)
    (tmp_path / "ImageSets" / "Segmentation" / "val.txt").unlink()
    with pytest.raises(ValueError, match="split file .*val.txt not found"):
        load_benchmark("voc21", tmp_path)
    with pytest.raises(ValueError, match="unknown dataset 'voc'"):
        load_benchmark("voc", tmp_path)
    rgb = tmp_path / "rgb.png"
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(rgb)
    with pytest.raises(ValueError, match="expected a single-channel label-id image"):
        read_mask(rgb, DATASETS["voc21"])


def test_voc_on_real_fixtures(fixtures):
    bench = load_benchmark("voc21", fixtures / "voc")
    assert len(bench) == 5 and bench.spec.class_names[0] == "background"
    for item in bench.dataset:
        official = np.array(Image.open(fixtures / "voc" / "SegmentationClass" / f"{item['id']}.png"))
        assert np.array_equal(item["mask"], official)  # palette indices, not colours
        assert item["image"].size == (official.shape[1], official.shape[0])
    labels = set(np.unique(bench.dataset[0]["mask"]).tolist())
    assert labels <= set(range(21)) | {255} and len(labels) > 1
    voc20 = load_benchmark("voc20", fixtures / "voc")
    first = voc20.dataset[0]["mask"]
    assert np.array_equal(first == 255, (bench.dataset[0]["mask"] == 0) | (bench.dataset[0]["mask"] == 255))


def test_ade20k_on_real_fixtures(fixtures):
    bench = load_benchmark("ade20k", fixtures / "ade20k")
    assert len(bench) == 3
    raw = np.array(Image.open(fixtures / "ade20k" / "annotations" / "validation" / "ADE_val_00000001.png"))
    mask = bench.dataset[0]["mask"]
    assert np.array_equal(mask == 255, raw == 0) and np.array_equal(mask[raw > 0], raw[raw > 0] - 1)


def test_class_files_match_label_ids():
    for name, spec in DATASETS.items():
        assert len(spec.prompts) == spec.num_classes, name
    assert DATASETS["voc21"].prompts[0].count(",") == 25  # 26 stuff words stand in for background
    assert DATASETS["voc21"].prompts[15].startswith("person")
    assert DATASETS["ade20k"].class_names[:3] == ["wall", "building", "sky"]
    assert DATASETS["cityscapes"].class_names[-1] == "bicycle"


# ---- metric ---------------------------------------------------------------------------------------


def reference_scores(preds, refs, num_labels, ignore=255):
    """Per-class IoU / accuracy with boolean masks, summed over the set (independent of the module)."""
    inter, union, area = np.zeros(num_labels), np.zeros(num_labels), np.zeros(num_labels)
    correct = total = 0
    for p, r in zip(preds, refs, strict=True):
        valid = r != ignore
        for c in range(num_labels):
            inter[c] += np.sum((p == c) & (r == c) & valid)
            union[c] += np.sum(((p == c) | (r == c)) & valid)
            area[c] += np.sum((r == c) & valid)
        correct += np.sum((p == r) & valid)
        total += valid.sum()
    with np.errstate(invalid="ignore", divide="ignore"):
        iou, acc = inter / union, inter / area
    return iou, np.nanmean(iou), np.nanmean(acc), correct / total


@pytest.fixture(scope="module")
def miou():
    return evaluate.load(METRIC_PATH)


@pytest.fixture
def voc_masks(fixtures):
    folder = fixtures / "voc" / "SegmentationClass"
    return [np.array(Image.open(p)) for p in sorted(folder.glob("*.png"))]


def test_identity_gives_100(miou, voc_masks):
    result = miou.compute(predictions=voc_masks, references=voc_masks, num_labels=21, ignore_index=255)
    assert result["mean_iou"] == 1.0 and result["overall_accuracy"] == 1.0 and result["mean_accuracy"] == 1.0
    present = set(np.unique(np.concatenate([m.ravel() for m in voc_masks]))) - {255}
    iou = result["per_category_iou"]
    assert {c for c in range(21) if not np.isnan(iou[c])} == present  # absent classes are NaN, not 0


def test_shifted_and_relabelled_masks_match_independent_computation(miou, voc_masks):
    shifted = [np.roll(m, 7, axis=1) for m in voc_masks]
    relabelled = [np.where(m == 15, 9, m) for m in voc_masks]  # person -> chair
    for preds in (shifted, relabelled):
        result = miou.compute(predictions=preds, references=voc_masks, num_labels=21, ignore_index=255)
        iou, mean_iou, mean_acc, overall = reference_scores(preds, voc_masks, 21)
        np.testing.assert_allclose(result["per_category_iou"], iou, equal_nan=True)
        assert result["mean_iou"] == pytest.approx(mean_iou)
        assert result["mean_accuracy"] == pytest.approx(mean_acc)
        assert result["overall_accuracy"] == pytest.approx(overall)
    person = miou.compute(predictions=relabelled, references=voc_masks, num_labels=21)["per_category_iou"][15]
    assert person == 0.0


def test_hand_computed_case_and_reduce_labels(miou):
    ref = np.array([[0, 0, 1, 1], [2, 2, 255, 1]])
    pred = np.array([[0, 1, 1, 1], [2, 0, 0, 5]])  # 5 is out of range: wrong for class 1
    result = miou.compute(predictions=[pred], references=[ref], num_labels=3)
    # class 0: TP 1, FP 1 (pixel of class 2), FN 1 -> 1/3; class 1: TP 2, FP 1, FN 1 -> 2/4; class 2: 1/2
    np.testing.assert_allclose(result["per_category_iou"], [1 / 3, 2 / 4, 1 / 2])
    assert result["overall_accuracy"] == pytest.approx(4 / 7)
    reduced = miou.compute(predictions=[pred], references=[ref + 1], num_labels=3, reduce_labels=True)
    np.testing.assert_allclose(reduced["per_category_iou"], [1 / 3, 2 / 4, 1 / 2])
    m = confusion_matrix(pred, ref, 3)
    assert m.shape == (4, 4) and m[1, 3] == 1 and m.sum() == 7 and m[3].sum() == 0


def test_metric_is_mmseg_iou_metric_with_out_of_range_references():
    """Against a re-implementation of mmseg's intersect_and_union / total_area_to_metrics: references outside the
    classes (JPEG noise in a 0/1 mask: 2, 3, 128) are no class's label, but their predictions count towards the
    predicted class's area (union); 255 alone is dropped. Dropping such pixels entirely (the old rule) changes
    every number below: class 0's IoU would be 3/5 instead of 3/9."""
    from anchors.mmseg import iou_metric

    from hf_ovseg.evaluation.metric import confusion_matrix_torch, metrics_from_confusion

    rng = np.random.default_rng(0)
    refs = [rng.choice([0, 1, 2, 3, 128, 255], size=(17, 23), p=[0.4, 0.3, 0.1, 0.05, 0.05, 0.1]) for _ in range(3)]
    preds = [rng.choice([0, 1, 5], size=(17, 23), p=[0.5, 0.45, 0.05]) for _ in range(3)]
    matrix = sum(confusion_matrix(p, r, 2) for p, r in zip(preds, refs, strict=True))
    ours = metrics_from_confusion(matrix)
    expected = iou_metric(preds, refs, num_classes=2)
    np.testing.assert_allclose(ours["per_category_iou"], expected["IoU"], rtol=1e-12)
    np.testing.assert_allclose(ours["per_category_accuracy"], expected["Acc"], rtol=1e-12)
    assert ours["overall_accuracy"] == pytest.approx(expected["aAcc"], rel=1e-12)
    on_device = sum(confusion_matrix_torch(torch.from_numpy(p), torch.from_numpy(r), 2) for p, r in
                    zip(preds, refs, strict=True))  # fmt: skip
    assert np.array_equal(on_device.numpy(), matrix)
    # a hand count: reference [0, 2, 2, 255], prediction [0, 0, 1, 0] -> class 0: intersect 1, label 1, predicted 2
    small = metrics_from_confusion(confusion_matrix(np.array([0, 0, 1, 0]), np.array([0, 2, 2, 255]), 2))
    assert small["per_category_iou"][0] == pytest.approx(1 / 2) and small["per_category_iou"][1] == 0.0
    assert small["overall_accuracy"] == 1.0  # aAcc counts in-range references only


# ---- runner ---------------------------------------------------------------------------------------


def voc_eval_args(model, fixtures, *extra: str) -> list[str]:
    """``hf-ovseg evaluate`` on the shared VOC pairs with a small, fast window."""
    fast = ["--short-side", "64", "--crop-size", "32", "--stride", "16"]
    return [
        "evaluate",
        "--dataset",
        "voc21",
        "--data-root",
        str(fixtures / "voc"),
        "--model",
        str(model),
        *fast,
        *extra,
    ]


def test_runner_end_to_end_on_real_voc(tiny_folder, fixtures, tmp_path, capsys):
    out = tmp_path / "results.json"
    card = tmp_path / "README.md"
    card.write_text("# card\n<!-- hf-ovseg:eval:start -->\nnothing yet\n<!-- hf-ovseg:eval:end -->\ntail\n")
    code = main(
        voc_eval_args(tiny_folder, fixtures, "--methods", "seed,clearclip", "--limit", "3", "--out", str(out))
        + ["--background-threshold", "0.2", "--update-model-card", str(card)]
    )
    assert code == 0
    results = json.loads(out.read_text())
    assert [r["method"] for r in results] == ["seed", "clearclip"]
    for r in results:
        assert r["dataset"] == "voc21" and r["images"] == 3 and r["model"] == str(tiny_folder)
        assert r["protocol"]["background_threshold"] == 0.2 and r["protocol"]["background_label"] == "sky"
        assert r["knobs"]["method"] == r["method"] and len(r["per_class_iou"]) == 21
        assert 0 <= r["miou"] <= 100 and r["seconds"] > 0
        assert sum(map(sum, r["confusion_matrix"])) == sum(
            int((np.array(Image.open(fixtures / "voc" / "SegmentationClass" / f"{i}.png")) != 255).sum())
            for i in ["2007_000033", "2011_000003", "2011_000006"]
        )
    table = capsys.readouterr().out
    assert "| voc21 | seed |" in table and "| voc21 | clearclip |" in table
    text = card.read_text()
    assert "| voc21 | seed |" in text and "nothing yet" not in text and text.endswith("tail\n")


def test_runner_matches_manual_pipeline_and_metric(fixtures):
    pipe = tiny_pipeline()
    bench = load_benchmark("voc21", fixtures / "voc", limit=2)
    (result,) = evaluate_methods(pipe, bench, ["seed"], FAST, "tiny", progress=False)
    matrix = np.zeros((22, 22), dtype=np.int64)
    for item in bench.dataset:
        out = pipe(
            item["image"],
            candidate_labels=bench.spec.prompts,
            return_label_map=True,
            short_side=64,
            crop_size=32,
            stride=16,
        )
        matrix += confusion_matrix(out["label_map"], item["mask"], 21)
    assert np.array_equal(np.array(result.confusion_matrix), matrix)


def test_benchmark_without_datasets_installed(fixtures, monkeypatch):
    """A machine without ``datasets`` (the bare GPU one) gets the same items from a plain lazy sequence, and
    the runner gives the same confusion matrix on it."""
    pipe = tiny_pipeline()
    with_datasets = load_benchmark("voc21", fixtures / "voc", limit=2)
    monkeypatch.setitem(sys.modules, "datasets", None)  # ``import datasets`` now raises ImportError
    plain = load_benchmark("voc21", fixtures / "voc", limit=2)
    assert type(plain.dataset).__name__ == "FileSamples" and len(plain) == 2
    for a, b in zip(with_datasets, plain, strict=True):
        assert a["id"] == b["id"] and np.array_equal(a["mask"], b["mask"])
        assert np.array_equal(np.asarray(a["image"]), np.asarray(b["image"]))
    results = [evaluate_methods(pipe, b, ["seed"], FAST, "tiny", progress=False)[0] for b in (with_datasets, plain)]
    assert results[0].confusion_matrix == results[1].confusion_matrix


def test_shards_sum_to_single_process(fixtures):
    pipe = tiny_pipeline()
    bench = load_benchmark("voc21", fixtures / "voc")
    single = evaluate_methods(pipe, bench, ["seed"], FAST, "tiny", progress=False)[0]
    parts = [
        evaluate_methods(pipe, bench, ["seed"], FAST, "tiny", process_index=i, num_processes=2, progress=False)[0]
        for i in range(2)
    ]
    assert np.array_equal(np.add(*[np.array(p.confusion_matrix) for p in parts]), np.array(single.confusion_matrix))


@pytest.mark.skipif(shutil.which("accelerate") is None, reason="accelerate CLI not on PATH")
def test_accelerate_launch_two_processes(tiny_folder, fixtures, tmp_path):
    common = voc_eval_args(tiny_folder, fixtures, "--limit", "4")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the launched processes run one thread each; same arithmetic, same rounding
    try:
        assert main([*common, "--out", str(tmp_path / "one.json")]) == 0
    finally:
        torch.set_num_threads(threads)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    launch = [
        shutil.which("accelerate"),
        "launch",
        "--cpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "-m",
        "hf_ovseg.cli",
    ]
    result = subprocess.run(
        [*launch, *common, "--out", str(tmp_path / "two.json")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    one, two = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert one["confusion_matrix"] == two["confusion_matrix"] and one["miou"] == two["miou"]


def test_runner_errors(tiny_folder, fixtures, tmp_path, capsys):
    args = ["evaluate", "--data-root", str(fixtures / "voc"), "--model", str(tiny_folder)]
    assert main([*args, "--dataset", "voc20", "--background-threshold", "0.3", "--limit", "1"]) == 2
    assert "voc20 has no background class" in capsys.readouterr().err
    assert main([*args, "--dataset", "voc21", "--methods", "seed,best"]) == 2
    assert "unknown method(s) best" in capsys.readouterr().err
    assert main(["evaluate", "--dataset", "cityscapes", "--data-root", str(tmp_path), "--model", str(tiny_folder)]) == 2
    assert "expected the layout" in capsys.readouterr().err
    card = tmp_path / "card.md"
    card.write_text("# no markers\n")
    with pytest.raises(ValueError, match="no evaluation block"):
        update_model_card(card, [])
