"""Trident against an independent re-implementation of its official code (tests/anchors/trident.py, checked
bit-exact against YuHengsss/Trident@a93b346 in float32), on tiny random CLIP, DINO (patch 16) and SAM models:

1. SAM as Trident reads it (``sam.py``): the set image, the last block's guidance weights, masks from prompts
   with the unbatched mask prompt;
2. the pieces of the refinement: connected regions, and Trident's resize of CLIP's input;
3. one protocol run per SAM path on a real photo (voc21, voc20, Cityscapes' halves), refinement on, >= 99.9 % of
   the pixels equal, and the refinement shown to change labels;
4. the errors, and ``hf-ovseg convert --proxy --sam`` served by a clean process without hf_ovseg.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from anchors import common, proxies
from anchors import trident as official
from PIL import Image
from transformers import SamModel

from hf_ovseg import TASK, OVSegModel, ZeroShotImageSegmentationPipeline
from hf_ovseg.cli import main
from hf_ovseg.evaluation.benchmarks import CLASSES_DIR
from hf_ovseg.evaluation.protocols import resolve_protocol
from hf_ovseg.sam import guidance_weights, predict_masks, scale_points, set_image, upscale_masks
from hf_ovseg.sam_refinement import connected_regions
from hf_ovseg.trident import sam_input, trident_resize

from conftest import (
    HEADS,
    SAM_HEADS,
    SAM_SIZE,
    SAM_WINDOW,
    TEMPLATES,
    check_clean_process_segments,
    parity_config,
    randomise,
    tiny_processor,
    tiny_trident_dino,
    tiny_trident_model,
    trident_dino_config,
    trident_sam_config,
)  # fmt: skip

SAM_KW = dict(heads=SAM_HEADS, window=SAM_WINDOW, global_attn_indexes=(1,), sam_size=SAM_SIZE, decoder_heads=2)
PHOTO = "voc/JPEGImages/2007_000033.jpg"


@pytest.fixture(scope="module")
def trident_model() -> OVSegModel:
    return tiny_trident_model()


def photo_array(fixtures) -> np.ndarray:
    return np.asarray(Image.open(fixtures / PHOTO).convert("RGB"))


# ---- 1. SAM as Trident reads it ----------------------------------------------------------------


@pytest.mark.parametrize(("cos_fac", "refine_neg_cos"), [(1.2, True), (3.0, False), (0.0, True)])
def test_sam_guidance_weights_equal_the_official_code(trident_model, fixtures, cos_fac, refine_neg_cos):
    """``get_sam_feat`` + ``get_sam_sim`` (trident.py:112-128, open_clip/transformer.py:643-659) on the
    stride-resized photo (366 x 500 -> 368 x 512 -> 184 x 256 in SAM: a valid grid of 11 x 16 of 16 x 16)."""
    sam = trident_model.sam_model
    picture = sam_input(photo_array(fixtures), 16)
    predictor = official.SamPredictor(official.sam_state_dict_full(sam), **SAM_KW)
    with torch.no_grad():
        image = set_image(sam, picture)
        got = guidance_weights(sam, image, cos_fac, refine_neg_cos)
        features, attn, v, rows, cols = official.get_sam_feat(predictor, picture, SAM_HEADS)
        expected = official.get_sam_sim(v, attn, cos_fac, 1, refine_neg_cos)[0, 0]
    assert image.valid_grid(16) == (rows, cols) == (11, 16)
    torch.testing.assert_close(image.embeddings[:, :, :rows, :cols], features, rtol=0, atol=1e-4)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)
    kept = (got > 0).float().mean()
    if cos_fac:  # with cos_fac 0 every positive cosine passes (voc20's setting)
        assert 0.01 < kept < 0.99, f"the cosine test keeps {kept:.3f} of the weights: it must matter"


def test_sam_masks_from_prompts_equal_the_official_code(trident_model, fixtures):
    """``predict_torch`` with a point, a box and Trident's UNBATCHED mask prompt, then ``postprocess_masks``; the
    unbatched mask's LayerNorm2d over the height (segment_anything/modeling/common.py:38-43) is reproduced, and it
    matters: a batched mask gives other logits."""
    sam = trident_model.sam_model
    picture = sam_input(photo_array(fixtures), 16)
    predictor = official.SamPredictor(official.sam_state_dict_full(sam), **SAM_KW)
    generator = torch.Generator().manual_seed(3)
    mask = torch.rand(1, 64, 64, generator=generator) * 0.01  # 4 g = 64 for a 16 x 16 grid
    points = torch.tensor([[40, 30], [100, 150]])
    boxes = torch.tensor([[10, 5, 90, 80], [60, 100, 180, 170]])
    half = (183, 256)  # the refinement's halved frame, which the official code maps prompts from
    with torch.no_grad():
        image = set_image(sam, picture)
        low_res, iou = predict_masks(sam, image, scale_points(points, half, SAM_SIZE),
                                     scale_points(boxes.view(-1, 2, 2), half, SAM_SIZE).view(-1, 4), mask)  # fmt: skip
        logits = upscale_masks(sam, image, low_res)
        predictor.set_image(picture)
        _, expected_iou, expected_low_res = predictor.predict_torch(
            official.sam_apply_coords(points, half, SAM_SIZE)[:, None], torch.ones(2, 1),
            official.sam_apply_boxes(boxes, half, SAM_SIZE), mask, multimask_output=False,
        )  # fmt: skip
        expected = official.postprocess_masks(expected_low_res, predictor.input_size, predictor.original_size,
                                              SAM_SIZE)  # fmt: skip
        _, _, batched = predictor.predict_torch(
            official.sam_apply_coords(points, half, SAM_SIZE)[:, None], torch.ones(2, 1),
            official.sam_apply_boxes(boxes, half, SAM_SIZE), mask[None], multimask_output=False,
        )  # fmt: skip
    assert logits.shape == expected.shape == (2, 1, 368, 512)
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(iou, expected_iou, rtol=1e-4, atol=1e-5)
    assert (batched - expected_low_res).abs().max() > 1e-2


# ---- 2. the pieces ------------------------------------------------------------------------------


def canonical(labels: np.ndarray) -> np.ndarray:
    """Component ids renumbered by the raster order of their first pixel (0 stays 0)."""
    out = np.zeros_like(labels)
    order = {}
    for value in labels.ravel():
        if value and value not in order:
            order[value] = len(order) + 1
    for value, new in order.items():
        out[labels == value] = new
    return out


@pytest.mark.parametrize("seed", range(4))
def test_connected_regions_equal_skimage_labels(seed):
    """8-connected components (``skimage.measure.label(connectivity=2)``, here the anchor's flood fill) on random
    masks, blobs and a one-pixel-wide spiral (the slowest shape for label propagation)."""
    generator = np.random.default_rng(seed)
    if seed == 3:
        mask = np.zeros((41, 41), bool)
        top, left, bottom, right = 0, 0, 40, 40
        while top <= bottom and left <= right:
            mask[top, left : right + 1] = mask[top : bottom + 1, right] = True
            mask[bottom, left : right + 1] = mask[top + 2 : bottom + 1, left] = True
            top, left, bottom, right = top + 2, left + 2, bottom - 2, right - 2
    else:
        mask = generator.random((37, 53)) < (0.3 + 0.2 * seed)
    got = connected_regions(torch.from_numpy(mask)).numpy()
    expected = official.label_connected(mask.astype(np.uint8))
    assert np.array_equal(canonical(got), canonical(expected))
    assert expected.max() >= 1


@pytest.mark.parametrize("size", [(366, 500), (448, 612), (336, 336), (500, 321), (320, 480)])
def test_trident_resize_equals_preprocess_image(size):
    """``preprocess_image`` (seg_utils/utils.py:9-25); 320 x 480 (multiples of 16 below the crop), where the
    official splice raises, is padded by the rounding rule here instead (documented in trident.py)."""
    image = torch.randn(1, 3, *size)
    got = trident_resize(image, 16, 336)
    if size == (320, 480):
        assert got.shape[-2:] == (336, 480)
        return
    expected = official.preprocess_image(image, 16, 336)
    assert torch.equal(got, expected)


# ---- 3. end to end ------------------------------------------------------------------------------


@pytest.mark.parametrize(("dataset", "iou_threshold"), [("voc21", 0.3), ("voc20", 0.2), ("cityscapes", 0.3)])
def test_trident_protocol_end_to_end_matches_official_code(trident_model, fixtures, dataset, iou_threshold):
    """The trident protocol (with SAM refinement) against ``trident_predict``. The random IoU head predicts low
    IoUs, so the protocol's 0.8 keeps no region: a lower threshold makes the refinement keep some regions and fail
    others, and it must then change labels."""
    protocol = resolve_protocol("trident", dataset)
    processor = tiny_processor()
    pipe = ZeroShotImageSegmentationPipeline(model=trident_model, processor=processor, task=TASK)
    labels = protocol.label_set()
    arguments = {**protocol.pipeline_arguments(), "sam_iou_threshold": iou_threshold}
    if protocol.background_threshold:
        arguments["background_label"] = labels.labels[protocol.background_index]
    photo = fixtures / PHOTO
    out = pipe(str(photo), candidate_labels=labels, return_probabilities=True, **arguments)
    coarse = pipe(str(photo), candidate_labels=labels, return_label_map=True, **{**arguments, "sam_refinement": False})

    sd = common.openai_state_dict(trident_model)
    names, query_idx = official.get_cls_idx(CLASSES_DIR / protocol.classes)
    query = common.query_features(sd, processor.tokenizer, names, TEMPLATES, HEADS)
    img, original = common.preprocess(photo, (protocol.long_side, protocol.short_side))
    knobs = protocol.knobs
    with torch.no_grad():
        expected, expected_probs = official.trident_predict(
            photo, img, original, sd, proxies.dino_state_dict(trident_model.proxy_model),
            official.sam_state_dict_full(trident_model.sam_model), query, query_idx, slide_stride=protocol.stride,
            prob_thd=protocol.background_threshold, cos_fac=knobs["sam_cosine_factor"],
            refine_neg_cos=knobs["sam_refine_negative_cosine"], coarse_thresh=knobs["sam_coarse_threshold"],
            is_cityscapes=knobs["sam_split_halves"], sam_iou_thresh=iou_threshold, clip_heads=HEADS, dino_heads=2,
            sam_heads=SAM_HEADS, sam_window=SAM_WINDOW, sam_global_attn_indexes=(1,), sam_size=SAM_SIZE,
            sam_decoder_heads=2,
        )  # fmt: skip
    assert out["label_map"].shape == expected.shape == (366, 500)
    agreement = (out["label_map"] == expected.numpy()).mean()
    assert agreement >= 0.999, f"{dataset}: {agreement:.5f} of the pixels agree"
    difference = np.abs(out["probabilities"] - expected_probs.numpy())
    assert (difference > 1e-3).mean() < 1e-3
    assert (out["label_map"] != coarse["label_map"]).mean() > 1e-3, "the refinement changes labels"
    # without probabilities the labels come from a running maximum over the classes, not from the [C, H, W] maps
    labels_only = pipe(str(photo), candidate_labels=labels, return_label_map=True, **arguments)
    assert np.array_equal(labels_only["label_map"], out["label_map"])
    assert len(np.unique(expected.numpy())) >= 3


# ---- 4. errors, conversion and the Hub folder -----------------------------------------------------


def test_trident_needs_dino_and_sam_and_says_how(trident_model):
    config = parity_config("seed", proxy_config=trident_dino_config().to_dict())
    without_sam = OVSegModel(config).eval()
    pipe = ZeroShotImageSegmentationPipeline(model=without_sam, processor=tiny_processor(), task=TASK)
    with pytest.raises(ValueError, match=r"needs SAM .* --sam facebook/sam-vit-base"):
        pipe(np.zeros((64, 64, 3), np.uint8), candidate_labels=["a", "b"], method="trident")
    coarse = OVSegModel(parity_config("trident", proxy_config=trident_dino_config(32).to_dict(),
                                      sam_config=trident_sam_config().to_dict())).eval()  # fmt: skip
    pipe = ZeroShotImageSegmentationPipeline(model=coarse, processor=tiny_processor(), task=TASK)
    with pytest.raises(ValueError, match="proxy's grid .* at least as fine as CLIP's"):
        pipe(np.zeros((64, 64, 3), np.uint8), candidate_labels=["a", "b"], short_side=336, crop_size=336, stride=224)
    with pytest.raises(ValueError, match="runs on whole images"):
        trident_model(torch.randn(1, 3, 336, 336), text_embeds=torch.randn(2, 32))
    with pytest.raises(ValueError, match="sam_refinement=True needs attention_mode='trident'"):
        trident_model.config.with_method("proxyclip", sam_refinement=True)
    with pytest.raises(ValueError, match="sam_iou_threshold must lie in"):
        trident_model.config.with_method("trident", sam_iou_threshold=1.5)
    with pytest.raises(ValueError, match="no CLS token or patch grid for outlier_suppression"):
        trident_model.config.with_method("trident", outlier_suppression=True)


@pytest.fixture(scope="module")
def trident_folder(tiny_folder, tmp_path_factory):
    """``hf-ovseg convert --proxy DINO --sam SAM`` of the tiny folder: (folder, the SAM folder, printed output)."""
    import contextlib
    import io

    tmp_path = tmp_path_factory.mktemp("trident")
    tiny_trident_dino(patch_size=8).save_pretrained(tmp_path / "dino")  # the folder's CLIP has 8-pixel patches
    randomise(SamModel(trident_sam_config()), 2).save_pretrained(tmp_path / "sam")
    out = tmp_path / "trident"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["convert", str(tiny_folder), str(out), "--proxy", str(tmp_path / "dino"),
                     "--sam", str(tmp_path / "sam")]) == 0  # fmt: skip
    return out, tmp_path / "sam", printed.getvalue()


#: A trident call on the tiny folder: Trident's windows, and an IoU threshold its random SAM passes sometimes.
FOLDER_CALL = {"short_side": 336, "crop_size": 336, "stride": 224, "sam_iou_threshold": 0.3}


def test_convert_embeds_dino_and_sam_and_the_folder_serves_trident(trident_folder, tmp_path, fixtures):
    """``hf-ovseg convert --proxy DINO --sam SAM``: both sets of weights saved, the card names both; a clean process
    without hf_ovseg (remote code) gives the same label map as in process."""
    out, sam_folder, printed = trident_folder
    assert "embedded SAM" in printed
    config = json.loads((out / "config.json").read_text())
    assert config["sam_config"]["model_type"] == "sam" and config["proxy_config"]["model_type"] == "vit"
    assert f"`{sam_folder}`" in (out / "README.md").read_text()
    model = OVSegModel.from_pretrained(out).eval()
    saved = SamModel.from_pretrained(sam_folder).state_dict()
    for key, value in model.sam_model.state_dict().items():
        assert torch.equal(value, saved[key]), key
    pipe = ZeroShotImageSegmentationPipeline(model=model, processor=tiny_processor(), task=TASK)
    call = {"candidate_labels": ["person", "chair", "sky"], "method": "trident", "return_probabilities": True,
            **FOLDER_CALL}  # fmt: skip
    photo = fixtures / "voc" / "JPEGImages" / "2011_000006.jpg"
    expected = pipe(str(photo), **call)
    check_clean_process_segments(out, photo, call, expected, tmp_path, "sam_model")


def test_trident_dense_logits_shape_follow_sam_grid(trident_model, fixtures):
    """The logits come out on SAM's valid grid of the stride-resized original (11 x 16 here), not CLIP's."""
    from hf_ovseg.trident import trident_logits

    processor = tiny_processor()
    image = processor.image_processor.normalize_pixels(processor.image_processor.resize_image(fixtures / PHOTO))
    text = torch.randn(3, 32)
    cfg = trident_model.config.with_method("trident")
    with torch.no_grad():
        result = trident_logits(trident_model, image, photo_array(fixtures), text, cfg, 336, 224)
    assert result.logits.shape == (3, 11, 16)
    assert F.softmax(result.logits, dim=0).std(dim=0).max() > 1e-3


def test_folders_and_evaluate_run_trident_as_the_pipeline_does(trident_folder, tmp_path, fixtures):
    """``hf-ovseg segment DIR`` (photos decoded in DataLoader workers) writes the pipeline's label maps, and
    ``hf-ovseg evaluate --protocol trident`` (masks and photos from workers) records what ran: DINO and SAM with
    its refinement; its confusion matrix is the same with and without workers."""
    folder, _, _ = trident_folder
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("2007_000033.jpg", "2011_000006.jpg"):
        (photos / name).write_bytes((fixtures / "voc" / "JPEGImages" / name).read_bytes())
    flags = ["--crop-size", "336", "--stride", "224", "--short-side", "336"]
    labels = ["person", "chair", "sky", "grass"]
    args = ["segment", str(photos), "--labels", ",".join(labels), "--model", str(folder), "--method", "trident",
            "--num-workers", "1", "--no-text-cache", "--out", str(tmp_path / "out"), *flags]  # fmt: skip
    assert main(args) == 0
    pipe = ZeroShotImageSegmentationPipeline(model=OVSegModel.from_pretrained(folder).eval(),
                                             processor=tiny_processor(), task=TASK)  # fmt: skip
    for name in ("2007_000033", "2011_000006"):
        expected = pipe(str(photos / f"{name}.jpg"), candidate_labels=labels, return_label_map=True, method="trident",
                        short_side=336, crop_size=336, stride=224)["label_map"]  # fmt: skip
        written = np.array(Image.open(tmp_path / "out" / f"{name}_labels.png"))
        assert np.array_equal(written, expected), name

    results = {}
    for workers in ("0", "1"):
        out = tmp_path / f"results-{workers}.json"
        assert main(["evaluate", "--dataset", "voc21", "--data-root", str(fixtures / "voc"), "--model", str(folder),
                     "--protocol", "trident", "--limit", "2", "--num-workers", workers, "--out", str(out)]) == 0
        results[workers] = json.loads(out.read_text())
    result = results["1"]
    assert result["components"]["sam"] == {"model_type": "sam", "source": str(trident_folder[1]), "refinement": True}
    assert result["components"]["proxy"]["model_type"] == "vit" and result["knobs"]["attention_mode"] == "trident"
    assert result["protocol"]["name"] == "trident" and result["knobs"]["sam_coarse_threshold"] == 0.2
    matrix = np.array(result["confusion_matrix"])
    assert matrix.sum() > 2 * 100_000 and result["confusion_matrix"] == results["0"]["confusion_matrix"]


def test_trident_refuses_what_it_cannot_do(trident_model, fixtures):
    pipe = ZeroShotImageSegmentationPipeline(model=trident_model, processor=tiny_processor(), task=TASK)
    photo = str(fixtures / PHOTO)
    call = {"candidate_labels": ["a", "b"], "short_side": 336, "crop_size": 336}
    with pytest.raises(ValueError, match="area_threshold=0.1 is not part of Trident"):
        pipe(photo, area_threshold=0.1, stride=224, **call)
    with pytest.raises(ValueError, match="refine='pamr' is not part of Trident"):
        pipe(photo, refine="pamr", stride=224, **call)
    with pytest.raises(ValueError, match=r"crop_size \(336\) and stride \(100\) must be multiples of 16"):
        pipe(photo, stride=100, **call)
    with pytest.raises(ValueError, match="sliding windows"):
        pipe(photo, candidate_labels=["a", "b"], crop_size=None)


def test_segment_scores_are_coarse_probabilities(trident_model, fixtures):
    """After the refinement a segment's score is, as for every method, the mean over its pixels of their best
    coarse (softmax) class probability, not of the refined maps; the same with and without the maps."""
    pipe = ZeroShotImageSegmentationPipeline(model=trident_model, processor=tiny_processor(), task=TASK)
    call = {"candidate_labels": ["person", "chair", "sky"], "short_side": 336, "crop_size": 336, "stride": 224,
            "sam_iou_threshold": 0.3}  # fmt: skip
    refined = pipe(str(fixtures / PHOTO), return_label_map=True, **call)
    with_maps = pipe(str(fixtures / PHOTO), return_probabilities=True, **call)
    coarse = pipe(str(fixtures / PHOTO), return_probabilities=True, sam_refinement=False, **call)
    assert (refined["label_map"] != coarse["label_map"]).any()
    assert np.array_equal(refined["label_map"], with_maps["label_map"])
    best = coarse["probabilities"].max(axis=0)
    for segment, other in zip(refined["segments"], with_maps["segments"], strict=True):
        index = refined["labels"].index(segment["label"])
        pixels = refined["label_map"] == index
        assert segment["score"] == pytest.approx(best[pixels].mean(), rel=1e-5)
        assert other["score"] == pytest.approx(segment["score"], rel=1e-6)
