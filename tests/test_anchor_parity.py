"""Every baseline preset and every protocol against independent re-implementations of the anchors' official
code (``tests/anchors/``), on the same random weights made peaky so that attention is far from uniform.

1. Dense logits of every preset, at the native 224 crop, a 448 crop and a whole 333x500 image (position
   embeddings interpolated), from the model alone.
2. One full protocol per anchor on a real photo (resize, slide or whole image, logit scale, thresholds, area
   threshold, PAMR, SimFeatUp): the label maps agree on >= 99.9% of the pixels.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from anchors import common, models, segmentors
from anchors import simfeatup as simfeatup_reference

from hf_ovseg import TASK, OVSegModel, ZeroShotImageSegmentationPipeline
from hf_ovseg.evaluation.benchmarks import CLASSES_DIR
from hf_ovseg.evaluation.protocols import resolve_protocol
from hf_ovseg.labels import parse_labels
from hf_ovseg.processing_ovseg import OPENAI_IMAGENET_TEMPLATES

from conftest import HEADS, PATCH, parity_config, peaky, tiny_processor


@pytest.fixture(scope="module")
def parity_model() -> OVSegModel:
    torch.manual_seed(0)
    return peaky(OVSegModel(parity_config(feature_upsampler="jbu_one")))


@pytest.fixture(scope="module")
def reference_weights(parity_model) -> dict:
    return common.openai_state_dict(parity_model)


def test_attention_is_peaky(parity_model):
    """The premise of these tests: the last block's vanilla attention is far from uniform."""
    pixels = torch.randn(1, 3, 224, 224)
    vision = parity_model.vision_model
    with torch.no_grad():
        hidden = vision.layer_norm(
            vision.pre_layrnorm, vision.embed(pixels, (14, 14), parity_model.config), parity_model.config
        )
        probs = vision.block_attention(0, hidden, parity_model.config)
    assert probs.max(-1).values.mean() > 0.3  # uniform attention over 197 tokens would be 0.005


#: 112x448 has the native 196 patches on a 7x28 grid: MaskCLIP keeps the table as it is (vit.py:368), Hugging Face
#: CLIP resizes it (the maskclip preset failed here with the plain "size" rule).
SIZES = {"crop224": (224, 224), "crop448": (448, 448), "whole333x500": (333, 500), "strip112x448": (112, 448)}
PRESETS = ["vanilla", "maskclip", "sclip", "clearclip", "naclip", "segearth", "sfp"]


@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("preset", PRESETS)
def test_preset_dense_logits_match_official_code(parity_model, reference_weights, preset, size):
    height, width = SIZES[size]
    torch.manual_seed(1)
    image = torch.randn(1, 3, height, width)
    text = F.normalize(torch.randn(5, 32), dim=-1)
    settings = parity_model.config.with_method(preset, feature_upsampling=False)
    rows, cols = height // PATCH, width // PATCH
    with torch.no_grad():
        got = parity_model(image[..., : rows * PATCH, : cols * PATCH], text_embeds=text, settings=settings).logits
        if preset == "segearth":  # cls_token_lambda = -0.3 (SegEarth-OV configs/base_config.py:12)
            cls, features = models.segearth(reference_weights, image, PATCH, HEADS)
        else:
            cls, features = None, models.VISUALS[preset](reference_weights, image, PATCH, HEADS)
        expected = (features / features.norm(dim=-1, keepdim=True)) @ text.T
        if cls is not None:
            expected = expected + -0.3 * ((cls / cls.norm(dim=-1, keepdim=True)) @ text.T)[:, None]
        expected = (expected * settings.dense_logit_scale).transpose(1, 2).reshape(1, 5, rows, cols)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=2e-4)


@pytest.mark.parametrize(("one", "grid"), [(True, (14, 14)), (True, (6, 9)), (False, (5, 7)), (False, (14, 10))])
def test_simfeatup_matches_official_upsampler(one, grid):
    """Our JBU (per-offset sums) equals the official unfold formulation, several grids, non-square too."""
    torch.manual_seed(2)
    config = parity_config(feature_upsampler="jbu_one" if one else "jbu_stack")
    upsampler = OVSegModel(config).feature_upsampler.eval()
    with torch.no_grad():
        for param in upsampler.parameters():  # random values everywhere, the scalars included
            param.copy_(torch.randn(param.shape) * (0.5 if param.dim() else 0.3) + (1.0 if param.dim() == 0 else 0))
    upsampler = upsampler.double()  # four sharp softmax steps amplify float32 summation-order noise
    state = dict(upsampler.state_dict())
    source = torch.randn(1, 32, *grid, dtype=torch.float64)
    guidance = torch.randn(1, 3, grid[0] * 16, grid[1] * 16, dtype=torch.float64)
    with torch.no_grad():
        got = upsampler(source, guidance)
        expected = simfeatup_reference.jbu(state, source, guidance, one)
    assert got.shape == (1, 32, grid[0] * 16, grid[1] * 16)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)


# ---- end to end: one protocol per anchor on a real photo -----------------------------------------

#: anchor -> (protocol dataset, class-file separator of its get_cls_idx, reference predict)
END_TO_END = {
    "sclip": ("voc21", ", "),
    "naclip": ("voc21", ", "),
    "clearclip": ("voc21", ","),
    "segearth": ("potsdam", ","),
    "sfp": ("voc21", ", "),
}


def reference_label_map(anchor, protocol, sd, image_path, tokenizer):
    names, query_idx = common.get_cls_idx(CLASSES_DIR / protocol.classes, END_TO_END[anchor][1])
    query = common.query_features(sd, tokenizer, names, list(OPENAI_IMAGENET_TEMPLATES), HEADS)
    img, original = common.preprocess(image_path, (protocol.long_side, protocol.short_side))
    knobs = protocol.knobs
    with torch.no_grad():
        if anchor in ("sclip", "sfp"):
            visual = models.sclip if anchor == "sclip" else models.sfp
            return segmentors.sclip_predict(
                img, original, lambda c: visual(sd, c, PATCH, HEADS), query, query_idx, PATCH,
                knobs["dense_logit_scale"], protocol.background_threshold, protocol.area_threshold,
                protocol.crop_size or 0, protocol.stride,
            )  # fmt: skip
        if anchor == "naclip":
            return segmentors.naclip_predict(
                img, original, lambda c: models.naclip(sd, c, PATCH, HEADS, knobs["naclip_gaussian_std"]), query,
                query_idx, PATCH, knobs["dense_logit_scale"], protocol.background_threshold, protocol.crop_size or 0,
                protocol.stride or 0,
            )  # fmt: skip
        upsampler = None
        visual = models.clearclip
        if anchor == "segearth":
            visual = models.segearth
            state = {
                k[len("feature_upsampler.") :]: v for k, v in sd["_hf"].items() if k.startswith("feature_upsampler.")
            }
            upsampler = lambda grid, crop: simfeatup_reference.jbu(state, grid, crop, one=True)  # noqa: E731
        return segmentors.clearclip_predict(
            img, original, lambda c: visual(sd, c, PATCH, HEADS), query, query_idx, PATCH, knobs["dense_logit_scale"],
            protocol.background_threshold, protocol.crop_size, protocol.stride, knobs.get("cls_logit_lambda", 0.0),
            protocol.background_index, upsampler,
        )  # fmt: skip


@pytest.mark.parametrize("anchor", list(END_TO_END))
def test_protocol_end_to_end_matches_official_code(parity_model, reference_weights, fixtures, anchor):
    protocol = resolve_protocol(anchor, END_TO_END[anchor][0])
    photo = fixtures / "voc" / "JPEGImages" / "2007_000033.jpg"
    processor = tiny_processor(templates=list(OPENAI_IMAGENET_TEMPLATES))
    pipe = ZeroShotImageSegmentationPipeline(model=parity_model, processor=processor, task=TASK)
    labels = parse_labels(protocol.prompts, strict=False)
    arguments = protocol.pipeline_arguments()
    if protocol.background_threshold:
        arguments["background_label"] = labels.labels[protocol.background_index]
    out = pipe(str(photo), candidate_labels=labels, return_probabilities=True, **arguments)
    sd = {**reference_weights, "_hf": {k: v.float() for k, v in parity_model.state_dict().items()}}
    expected, expected_probs = reference_label_map(anchor, protocol, sd, photo, processor.tokenizer)
    assert out["label_map"].shape == expected.shape == (366, 500)
    agreement = (out["label_map"] == expected.numpy()).mean()
    assert agreement >= 0.999, f"{anchor}: {agreement:.5f} of the pixels agree"
    # float32 summation order differs; SimFeatUp's four sharp softmax steps amplify it to ~1e-3 in rare pixels
    np.testing.assert_allclose(
        out["probabilities"], expected_probs.numpy(), atol=2e-3 if anchor == "segearth" else 2e-4
    )
    assert expected_probs.flatten(1).std(dim=1).max() > 1e-3  # probabilities that vary over the photo
