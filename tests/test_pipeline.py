"""The zero-shot-image-segmentation pipeline on real photos, its options, and its remote-code load."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import pipeline

from hf_ovseg import TASK, ZeroShotImageSegmentationPipeline
from hf_ovseg.inference import predict_labels, slide_logits
from hf_ovseg.labels import parse_labels

from conftest import run_clean_process, tiny_model, tiny_pipeline

FAST = {"short_side": 64, "crop_size": 32, "stride": 16}
LABELS = ["aeroplane", "sky,clouds", "grass", "person"]


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline()


def test_outputs_on_real_photos(pipe, fixtures):
    photos = sorted((fixtures / "voc" / "JPEGImages").glob("*.jpg"))
    results = pipe([str(p) for p in photos], candidate_labels=LABELS, **FAST)
    assert isinstance(results, list) and len(results) == len(photos)
    for path, segments in zip(photos, results, strict=True):
        size = Image.open(path).size
        assert segments and {s["label"] for s in segments} <= {"aeroplane", "sky", "grass", "person"}
        union = np.zeros(size[::-1], dtype=int)
        for segment in segments:
            mask = segment["mask"]
            assert mask.mode == "L" and mask.size == size
            values = np.unique(np.asarray(mask))
            assert set(values.tolist()) <= {0, 255}
            assert 0 < segment["score"] <= 1
            union += np.asarray(mask) // 255
        assert (union == 1).all()  # the masks partition the image


def test_label_map_probabilities_and_pixel_scores(pipe, fixtures):
    image = Image.open(fixtures / "arc2017" / "image.jpg")
    labels = ["fiskars_scissors", "mouse_traps", "tennis_ball_container"]
    out = pipe(image, candidate_labels=labels, return_probabilities=True, **FAST)
    label_map, probs = out["label_map"], out["probabilities"]
    assert out["labels"] == labels and label_map.shape == (480, 640) and probs.shape == (3, 480, 640)
    assert np.array_equal(label_map, probs.argmax(0))
    np.testing.assert_allclose(probs.sum(0), 1, atol=1e-5)
    for segment in out["segments"]:
        index = labels.index(segment["label"])
        assert segment["score"] == pytest.approx(probs[index][label_map == index].mean(), rel=1e-4)


def test_pipeline_matches_manual_protocol(pipe, fixtures):
    """Resize, slide, stitch, resize back, softmax and argmax done by hand give the same label map."""
    photo = Image.open(fixtures / "voc" / "JPEGImages" / "2011_000025.jpg").convert("RGB")
    labels = parse_labels(LABELS)
    model, processor = pipe.model, pipe.processor
    with torch.no_grad():
        text = processor.text_embeddings(model, labels)
        pixels = processor.image_processor(photo, short_side=64)["pixel_values"]
        logits = slide_logits(lambda x: model(x, text_embeds=text).logits, pixels, 8, 32, 16)
    expected = predict_labels(logits, labels.synonym_index, (photo.height, photo.width)).label_map.numpy()
    got = pipe(photo, candidate_labels=LABELS, return_label_map=True, **FAST)["label_map"]
    assert np.array_equal(got, expected)


def test_synonyms_merge_by_max(pipe):
    image = np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)
    merged = pipe(image, candidate_labels=["sky,clouds", "grass"], return_probabilities=True, **FAST)
    split = pipe(image, candidate_labels=["sky", "clouds", "grass"], return_probabilities=True, **FAST)
    np.testing.assert_allclose(merged["probabilities"][0], split["probabilities"][:2].max(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(merged["probabilities"][1], split["probabilities"][2], rtol=1e-5, atol=1e-6)


def test_background_threshold_and_label(pipe):
    image = np.random.default_rng(1).integers(0, 255, (48, 48, 3), dtype=np.uint8)
    base = pipe(image, candidate_labels=["cat", "dog", "car"], return_probabilities=True, **FAST)
    best = base["probabilities"].max(0)
    threshold = float(np.median(best))
    out = pipe(
        image, candidate_labels=["cat", "dog", "car"], background_threshold=threshold, return_label_map=True, **FAST
    )
    assert out["labels"] == ["cat", "dog", "car", "background"]
    assert np.array_equal(out["label_map"] == 3, best < threshold)
    assert np.array_equal(out["label_map"][best >= threshold], base["label_map"][best >= threshold])
    own = pipe(
        image,
        candidate_labels=["cat", "dog", "car"],
        background_threshold=threshold,
        background_label="dog",
        return_label_map=True,
        **FAST,
    )
    assert own["labels"] == ["cat", "dog", "car"]
    assert (own["label_map"][best < threshold] == 1).all()


def test_text_cache_hit_between_calls():
    pipe = tiny_pipeline()
    image = np.zeros((32, 32, 3), np.uint8)
    pipe(image, candidate_labels=["a", "b"], **FAST)
    pipe(image, candidate_labels=["a", "b"], **FAST)
    assert (pipe.processor.text_cache.misses, pipe.processor.text_cache.hits) == (1, 1)


def test_per_call_method_override_without_reload(fixtures):
    pipe = tiny_pipeline("seed", outlier_top_k=4)
    photo = str(fixtures / "voc" / "JPEGImages" / "2011_000003.jpg")
    overridden = pipe(photo, candidate_labels=LABELS, method="clearclip", return_probabilities=True, **FAST)
    assert pipe.model.config.method == "seed" and pipe.model.config.outlier_top_k == 4
    fresh = tiny_pipeline("clearclip")(photo, candidate_labels=LABELS, return_probabilities=True, **FAST)
    np.testing.assert_allclose(overridden["probabilities"], fresh["probabilities"], rtol=1e-4, atol=1e-5)
    knob = pipe(photo, candidate_labels=LABELS, outlier_top_k=0, return_probabilities=True, **FAST)
    no_outliers = tiny_pipeline("seed", outlier_top_k=0)(
        photo, candidate_labels=LABELS, return_probabilities=True, **FAST
    )
    np.testing.assert_allclose(knob["probabilities"], no_outliers["probabilities"], rtol=1e-4, atol=1e-5)


def test_whole_image_and_tiny_image(pipe):
    out = pipe(
        np.zeros((5, 3, 3), np.uint8),
        candidate_labels=["a", "b"],
        short_side=None,
        crop_size=None,
        return_label_map=True,
    )
    assert out["label_map"].shape == (5, 3)
    out = pipe(np.zeros((5, 3, 3), np.uint8), candidate_labels=["a", "b"], short_side=None, return_label_map=True)
    assert out["label_map"].shape == (5, 3)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"candidate_labels": []}, "candidate_labels is empty"),
        ({"candidate_labels": ["x", "x"]}, "duplicate labels: x"),
        ({}, "candidate_labels is required"),
        ({"candidate_labels": ["x"], "method": "nope"}, "unknown method 'nope'"),
        ({"candidate_labels": ["x"], "attention_mode": "nope"}, "unknown attention_mode 'nope'"),
        ({"candidate_labels": ["x"], "colour": 3}, "unknown argument"),
        ({"candidate_labels": ["x"], "short_side": 0}, "short_side must be a positive"),
    ],
)
def test_bad_arguments(pipe, kwargs, message):
    with pytest.raises(ValueError, match=message):
        pipe(np.zeros((16, 16, 3), np.uint8), **kwargs)


def test_pipeline_factory_in_process(tiny_folder):
    pipe = pipeline(TASK, model=str(tiny_folder), trust_remote_code=True)
    out = pipe(np.zeros((20, 30, 3), np.uint8), candidate_labels=["a", "b"], **FAST)
    assert out and out[0]["mask"].size == (30, 20)


REMOTE = textwrap.dedent(
    """
    import sys
    import numpy as np
    from transformers import pipeline
    pipe = pipeline("zero-shot-image-segmentation", model=sys.argv[1], trust_remote_code=True)
    assert type(pipe).__module__.startswith("transformers_modules"), type(pipe).__module__
    out = pipe(sys.argv[2], candidate_labels=["aeroplane", "sky,clouds", "grass"], short_side=64, crop_size=32,
               stride=16, return_label_map=True)
    np.save(sys.argv[3], out["label_map"])
    """
)


def test_remote_code_pipeline_in_clean_process(tiny_folder, tmp_path, fixtures):
    photo = fixtures / "voc" / "JPEGImages" / "2007_000033.jpg"
    run_clean_process(REMOTE, [str(tiny_folder), str(photo), str(tmp_path / "map.npy")], tmp_path)
    local = ZeroShotImageSegmentationPipeline(model=tiny_model(), processor=tiny_pipeline().processor, task=TASK)
    expected = local(str(photo), candidate_labels=["aeroplane", "sky,clouds", "grass"], return_label_map=True, **FAST)
    assert np.array_equal(np.load(tmp_path / "map.npy"), expected["label_map"])
