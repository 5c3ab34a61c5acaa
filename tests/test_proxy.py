"""The proxy stage against independent re-implementations of the official code, on random weights made peaky:

1. each proxy's features (transformers' DINO ``ViTModel``, ``Dinov2Model``, ``Dinov2WithRegistersModel``,
   ``SamVisionModel`` run by ``proxy.py``) against DINO's, DINOv2's and SAM's own forward
   (``tests/anchors/proxies.py``), at the native size and the sizes ProxyCLIP's protocols use;
2. ProxyCLIP's dense features (proxy + CLIP) against ``tests/anchors/proxyclip.py``, square and non-square
   windows, windows that are multiples of 56 but not of 16;
3. one ProxyCLIP protocol run per proxy on a real photo: >= 99.9% of the pixels agree;
4. ``seed_proxy`` (ours: modules 1 and 3 with the proxy attention) against a loop reference of its formulas;
5. conversion with ``--proxy``, save_pretrained and the pipeline in a clean process without hf_ovseg.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from anchors import common, proxies, proxyclip
from transformers import ViTModel

from hf_ovseg import TASK, OVSegModel, ZeroShotImageSegmentationPipeline
from hf_ovseg.cli import main
from hf_ovseg.evaluation.benchmarks import CLASSES_DIR
from hf_ovseg.evaluation.protocols import resolve_protocol
from hf_ovseg.processing_ovseg import OPENAI_IMAGENET_TEMPLATES
from hf_ovseg.proxy import proxy_features

import reference as ref
from conftest import (
    HEADS,
    METHODS,
    PATCH,
    PROXY_CONFIGS,
    PROXY_HEADS,
    check_clean_process_segments,
    parity_config,
    peaky,
    tiny_processor,
    tiny_proxy,
)  # fmt: skip


def official_proxy(kind: str, model: torch.nn.Module):
    """ProxyCLIP's ``forward_feature`` VFM branch (proxyclip_segmentor.py:118-166) around the official model code
    re-implemented in tests/anchors/proxies.py, on the same weights: a callable of ``proxy_input(window)``."""
    config = model.config
    if kind == "dino":
        sd = proxies.dino_state_dict(model)
        return proxyclip.dino_proxy(lambda x: proxies.dino_intermediate_layers(sd, x, 8, PROXY_HEADS), 8)
    if kind == "sam":
        sd = proxies.sam_state_dict(model)
        encoder = lambda x: proxies.sam_features(sd, x, PROXY_HEADS, config.window_size, config.global_attn_indexes)  # noqa: E731
        return proxyclip.sam_proxy(encoder, config.image_size)
    sd = proxies.dinov2_state_dict(model)
    registers = 4 if kind == "dinov2_reg" else 0
    return proxyclip.dinov2_proxy(
        lambda x, reshape=False: proxies.dinov2_intermediate_layers(sd, x, 14, PROXY_HEADS, 1, reshape, True, registers)
    )


# ---- 1. the proxies' features -------------------------------------------------------------------

FEATURE_SIZES = {
    "dino": [(224, 224), (336, 336), (448, 448), (224, 336), (168, 280)],
    "dinov2": [(518, 518), (336, 336), (224, 224), (224, 336)],
    "dinov2_reg": [(518, 518), (336, 336), (224, 224), (224, 336)],
    "sam": [(128, 128), (336, 336), (224, 336)],
}


@pytest.mark.parametrize(("kind", "size"), [(k, s) for k, sizes in FEATURE_SIZES.items() for s in sizes])
def test_proxy_features_equal_the_official_code(kind, size):
    """transformers' module, as proxy.py runs it, equals the official forward to 1e-5 (relative to the features'
    scale) at the native size and at ProxyCLIP's windows (336: DINO's grid 28 -> 42, DINOv2's 37 -> 24). With the
    square-grid quirk on (the proxyclip presets) DINO's non-square windows are regrouped as the official code
    does; DINOv2 and SAM are unaffected."""
    model = tiny_proxy(kind)
    torch.manual_seed(1)
    window = torch.randn(1, 3, *size)
    pixels = proxyclip.proxy_input(window)
    with torch.no_grad():
        if kind == "dino":  # the true grid: DINO's own tokens reshaped (H/8, W/8)
            tokens = proxies.dino_intermediate_layers(proxies.dino_state_dict(model), pixels, 8, PROXY_HEADS)[0]
            true_grid = tokens[:, 1:].reshape(1, size[0] // 8, size[1] // 8, -1).permute(0, 3, 1, 2)
        try:
            official = official_proxy(kind, model)(pixels)
        except RuntimeError:  # ProxyCLIP's square reshape of DINO's tokens fails (168x280: 21x35 tokens)
            official = true_grid
        for square_grid in (True, False):
            got = proxy_features(model, window, square_grid=square_grid)
            if not square_grid and kind == "dino":
                official = true_grid
            assert got.shape == official.shape
            scale = official.abs().max()
            torch.testing.assert_close(got / scale, official / scale, rtol=0, atol=1e-5)


def test_plain_transformers_vit_is_not_dino_off_its_native_grid():
    """Why proxy.py rebinds the position resize: transformers' ViT resizes with ``size=``, DINO with
    ``scale_factor=(n + 0.1) / N``; at ProxyCLIP's 336 windows the features differ by far more than rounding."""
    model = tiny_proxy("dino")
    plain = ViTModel._from_config(model.config, add_pooling_layer=False).eval()
    plain.load_state_dict(model.state_dict())
    window = torch.randn(1, 3, 336, 336)
    pixels = proxyclip.proxy_input(window)
    with torch.no_grad():
        ours = proxy_features(model, window)
        theirs = plain(pixel_values=pixels, interpolate_pos_encoding=True).last_hidden_state[:, 1:]
    theirs = theirs.reshape(1, 42, 42, -1).permute(0, 3, 1, 2)
    assert (ours - theirs).abs().max() > 1e-2 * ours.abs().max()


# ---- 2. ProxyCLIP's dense features ---------------------------------------------------------------


@pytest.fixture(scope="module")
def proxy_models() -> dict[str, OVSegModel]:
    """The parity CLIP (ViT-B/16-shaped) with each tiny proxy, peaky weights."""
    models = {}
    for kind in PROXY_CONFIGS:
        torch.manual_seed(0)
        model = peaky(OVSegModel(parity_config(METHODS[kind], proxy_config=PROXY_CONFIGS[kind]().to_dict())))
        model.proxy_model = tiny_proxy(kind)
        models[kind] = model.eval()
    return models


WINDOWS = [(336, 336), (280, 280), (224, 336)]


@pytest.mark.parametrize("size", WINDOWS)
@pytest.mark.parametrize("kind", list(PROXY_CONFIGS))
def test_proxyclip_dense_features_equal_the_official_code(proxy_models, kind, size):
    """Projected features on the proxy's grid (open_clip/transformer.py:503-538, 560-587 with the VFM branch):
    280 is a multiple of 56 but not of 16 (CLIP's conv drops 8 pixels, the proxy sees them all); 224x336 is
    non-square, where ProxyCLIP reads CLIP's values as a (W/16, H/16) grid and DINO's tokens as an (H/8, H/8) one
    (reproduced; its features are compared here, before the logits reshape that raises for DINOv2)."""
    model = proxy_models[kind]
    sd = common.openai_state_dict(model)
    torch.manual_seed(2)
    window = torch.randn(1, 3, *size)
    with torch.no_grad():
        got = model.get_dense_image_features(window).patch_embeds
        ex_feats = official_proxy(kind, model.proxy_model)(proxyclip.proxy_input(window))
        expected = proxyclip.proxyclip_features(sd, window, PATCH, HEADS, ex_feats, 1.2, 3.0)
    assert got.shape == expected.shape
    scale = expected.abs().max()
    torch.testing.assert_close(got / scale, expected / scale, rtol=0, atol=1e-4)


def test_proxy_attention_is_peaky_and_matters(proxy_models):
    """The premise: the proxy attention is far from uniform, and a different proxy changes CLIP's features."""
    model = proxy_models["dino"]
    window = torch.randn(1, 3, 336, 336)
    with torch.no_grad():
        probs = proxyclip.proxy_attention(proxy_features(model.proxy_model, window), 1)
        other = OVSegModel(model.config)
        other.load_state_dict(model.state_dict())
        other.proxy_model = tiny_proxy("dino", seed=7)
        first = model.get_dense_image_features(window).patch_embeds
        second = other.eval().get_dense_image_features(window).patch_embeds
    assert probs.max(-1).values.mean() > 10 / probs.shape[-1]  # uniform would be 1 / 1764
    assert (first - second).abs().max() > 0.1 * first.abs().max()


# ---- 3. end to end: ProxyCLIP's voc21 protocol on a real photo -----------------------------------


@pytest.mark.parametrize("kind", ["dino", "dinov2_reg", "sam"])
def test_proxyclip_protocol_end_to_end_matches_official_code(proxy_models, fixtures, kind):
    protocol = resolve_protocol("proxyclip", "voc21")
    model = proxy_models[kind]
    photo = fixtures / "voc" / "JPEGImages" / "2007_000033.jpg"
    processor = tiny_processor(templates=list(OPENAI_IMAGENET_TEMPLATES))
    pipe = ZeroShotImageSegmentationPipeline(model=model, processor=processor, task=TASK)
    labels = protocol.label_set()
    arguments = {**protocol.pipeline_arguments(), "method": METHODS[kind]}
    arguments["background_label"] = labels.labels[protocol.background_index]
    out = pipe(str(photo), candidate_labels=labels, return_probabilities=True, **arguments)

    sd = common.openai_state_dict(model)
    names, query_idx = proxyclip.get_cls_idx(CLASSES_DIR / protocol.classes)
    query = common.query_features(sd, processor.tokenizer, names, list(OPENAI_IMAGENET_TEMPLATES), HEADS)
    img, original = common.preprocess(photo, (protocol.long_side, protocol.short_side))
    with torch.no_grad():
        expected, expected_probs = proxyclip.proxyclip_predict(
            img, original, lambda w, f: proxyclip.proxyclip_features(sd, w, PATCH, HEADS, f),
            official_proxy(kind, model.proxy_model), query, query_idx, 40, protocol.background_threshold,
            protocol.crop_size, protocol.stride,
        )  # fmt: skip
    assert out["label_map"].shape == expected.shape == (366, 500)
    agreement = (out["label_map"] == expected.numpy()).mean()
    assert agreement >= 0.999, f"{kind}: {agreement:.5f} of the pixels agree"
    # The proxy attention masks every similarity below beta * mean(S) (a hard threshold): float32 rounding of the
    # proxy's features (transformers' kernels vs the official order) flips the few entries that sit on it, which
    # moves some pixels' probabilities by ~1e-3 (measured: 0.04% of the values, at most 2.3e-3 with DINO).
    difference = np.abs(out["probabilities"] - expected_probs.numpy())
    assert (difference > 2e-4).mean() < 1e-3 and difference.max() < 1e-2
    assert expected_probs.flatten(1).std(dim=1).max() > 1e-3  # probabilities that vary over the photo
    thresholded = (expected_probs.max(0).values < protocol.background_threshold).float().mean()
    assert 0 < thresholded < 1, "prob_thd=0.2 sends some pixels, not all, to the background"


# ---- 4. seed_proxy: ours, against a loop reference of its formulas --------------------------------


def seed_proxy_reference(model: OVSegModel, window: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """Module 1 (tests/reference.py's loop) on CLIP's value tokens ``out_proj(v)`` of block L, scored by block L's
    vanilla attention; the proxy attention ``softmax(3 (S - 1.2 mean S))`` (negatives masked) over the values
    bilinearly resized to the proxy's grid; the CLS token from CLIP's vanilla CLS row; ln_post, projection and
    module 3 (the loop reference). -> [1, h*w, P] projected, debiased features."""
    cfg = model.config.with_method("seed_proxy")
    sd = common.openai_state_dict(model)
    x = common.embed(sd, window, PATCH)
    last = common.num_blocks(sd) - 1
    for index in range(last):
        x = common.resblock(sd, index, x, HEADS)
    block = f"visual.transformer.resblocks.{last}"
    y = common.layer_norm(sd, f"{block}.ln_1", x)
    q, k, v = common.custom_qkv(sd, block, y, HEADS)  # [heads, T, d]
    scale = q.shape[-1] ** -0.5
    probs = (q @ k.transpose(1, 2) * scale).softmax(-1)  # [heads, T, T]
    cls = common.custom_out(sd, block, probs[:, :1], v, 1)[0]  # [1, D]
    values = common.custom_out(sd, block, torch.eye(v.shape[1])[None].repeat(HEADS, 1, 1), v, 1)[:, 0]  # out_proj(v)
    rows, cols = window.shape[-2] // PATCH, window.shape[-1] // PATCH
    scores = ref.outlier_scores(probs[None])
    patches = ref.suppress_outliers(values[None, 1:], scores, (rows, cols), cfg.outlier_top_k, cfg.outlier_tau)[0]
    grid = patches.float().T.reshape(1, -1, rows, cols)
    grid = F.interpolate(grid, size=features.shape[-2:], mode="bilinear", align_corners=False)[0].flatten(1).T
    tokens = F.normalize(features[0].flatten(1), dim=0)
    similarity = tokens.T @ tokens
    logits = (similarity - similarity.mean() * 1.2) * 3.0
    attention = logits.masked_fill(logits < 0, float("-inf")).softmax(-1)
    out = torch.cat([cls, attention @ grid])
    embeds = common.layer_norm(sd, "visual.ln_post", out) @ sd["visual.proj"]
    return ref.global_debias(embeds[None, 1:], embeds[None, 0], cfg.global_debias_factor).float()


def test_seed_proxy_matches_its_formulas(proxy_models):
    model = proxy_models["dino"]
    torch.manual_seed(3)
    window = torch.randn(1, 3, 224, 224)
    settings = model.config.with_method("seed_proxy")
    with torch.no_grad():
        got = model.get_dense_image_features(window, settings)
        features = proxy_features(model.proxy_model, window)
        expected = seed_proxy_reference(model, window, features)
        plain = model.get_dense_image_features(window, model.config.with_method("proxyclip")).patch_embeds
    assert got.outlier_indices.shape == (1, 30) and got.grid_size == (28, 28)
    scale = expected.abs().max()
    torch.testing.assert_close(got.patch_embeds / scale, expected / scale, rtol=0, atol=1e-4)
    assert (got.patch_embeds - plain).abs().max() > 0.01 * scale  # modules 1 and 3 change the result


# ---- 5. components: errors, conversion, saving, remote code --------------------------------------


def test_proxy_presets_need_their_proxy(proxy_models):
    from conftest import tiny_model

    pixels, text = torch.randn(1, 3, 56, 56), torch.randn(2, 16)
    with pytest.raises(ValueError, match=r"needs a proxy vision model .* has none: embed one with `hf-ovseg convert "
                                         r"CLIP OUT --proxy facebook/dino-vitb8`"):  # fmt: skip
        tiny_model("proxyclip")(pixels, text_embeds=text)
    dino = proxy_models["dino"]
    with pytest.raises(ValueError, match="needs a sam proxy but this model carries a dino one"):
        dino.get_dense_image_features(torch.randn(1, 3, 224, 224), dino.config.with_method("proxyclip_sam"))
    with pytest.raises(ValueError, match="a 'clip_vision_model' model cannot be a proxy"):
        parity_config(proxy_config={"model_type": "clip_vision_model"})
    with pytest.raises(ValueError, match="attention_mode='proxy' replaces the whole last block"):
        dino.config.with_method("proxyclip", last_block_residual=True)


def save_proxy(kind: str, folder) -> None:
    """A proxy checkpoint as the Hub has it: a transformers model folder (SAM: a whole SamModel)."""
    from transformers import SamConfig, SamModel

    model = tiny_proxy(kind)
    if kind == "sam":
        full = SamModel(SamConfig(vision_config=model.config.to_dict()))
        full.vision_encoder.load_state_dict(model.vision_encoder.state_dict())
        full.save_pretrained(folder)
    else:
        model.save_pretrained(folder)


@pytest.mark.parametrize("kind", ["dino", "sam"])
def test_convert_embeds_a_proxy_and_the_folder_serves_it(tiny_folder, tmp_path, fixtures, capsys, kind):
    """hf-ovseg convert --proxy: the proxy's weights land under proxy_model.*, its config under proxy_config, the
    card names both sources; the folder serves the proxy preset in process and in a clean process without
    hf_ovseg (remote code), with the same label map."""
    save_proxy(kind, tmp_path / "vfm")
    out = tmp_path / "with-proxy"
    assert main(["convert", str(tiny_folder), str(out), "--proxy", str(tmp_path / "vfm")]) == 0
    printed = capsys.readouterr().out
    assert "embedded the proxy" in printed and ("vit" if kind == "dino" else "sam_vision_model") in printed
    config = json.loads((out / "config.json").read_text())
    assert config["proxy_config"]["model_type"] == ("vit" if kind == "dino" else "sam_vision_model")
    card = (out / "README.md").read_text()
    assert f"`{tmp_path / 'vfm'}`" in card and "proxy vision model" in card
    model = OVSegModel.from_pretrained(out).eval()
    expected = tiny_proxy(kind).state_dict()
    for key, value in model.proxy_model.state_dict().items():
        assert torch.equal(value, expected[key]), key
    method = METHODS[kind]
    photo = fixtures / "voc" / "JPEGImages" / "2011_000006.jpg"
    pipe = ZeroShotImageSegmentationPipeline(model=model, processor=tiny_processor(), task=TASK)
    call = {"candidate_labels": ["person", "chair", "sky"], "method": method, "short_side": 112, "crop_size": 112,
            "stride": 56, "return_probabilities": True}  # fmt: skip
    expected = pipe(str(photo), **call)
    check_clean_process_segments(out, photo, call, expected, tmp_path, "proxy_model")


def test_load_pipeline_attaches_a_proxy(tiny_folder, tmp_path):
    from hf_ovseg import load_pipeline

    save_proxy("dinov2_reg", tmp_path / "vfm")
    pipe = load_pipeline(str(tiny_folder), method="proxyclip_dinov2", proxy=str(tmp_path / "vfm"))
    assert pipe.model.config.proxy_model_kind == "dinov2"
    assert pipe.model.components()["proxy"]["model_type"] == "dinov2_with_registers"
    segments = pipe(np.zeros((60, 80, 3), np.uint8), candidate_labels=["a", "b"], short_side=112, crop_size=112)
    assert segments
    with pytest.raises(ValueError, match="cannot use .* as a proxy"):
        load_pipeline(str(tiny_folder), proxy=str(tmp_path / "missing"))


def test_ablation_command_runs_seed_proxyclip_and_seed_proxy(tiny_folder, tmp_path, fixtures):
    """The README's ablation: ``--protocol proxyclip --methods seed,proxyclip,seed_proxy`` on a folder with a DINO
    proxy gives one result per method, each recording the components that ran (the proxy only where used), and
    the two proxy methods differ from each other and from the seed."""
    save_proxy("dino", tmp_path / "vfm")
    folder = tmp_path / "with-proxy"
    assert main(["convert", str(tiny_folder), str(folder), "--proxy", str(tmp_path / "vfm")]) == 0
    out = tmp_path / "results.json"
    args = ["evaluate", "--dataset", "voc21", "--data-root", str(fixtures / "voc"), "--model", str(folder),
            "--protocol", "proxyclip", "--methods", "seed,proxyclip,seed_proxy", "--limit", "1",
            "--short-side", "112", "--crop-size", "112", "--stride", "56", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    results = {r["method"]: r for r in json.loads(out.read_text())}
    assert list(results) == ["seed", "proxyclip", "seed_proxy"]
    assert results["seed"]["components"] == {"feature_upsampler": None, "proxy": None, "sam": None}  # what ran
    for method in ("proxyclip", "seed_proxy"):
        assert results[method]["components"]["proxy"]["model_type"] == "vit"
        assert results[method]["knobs"]["attention_mode"] == "proxy"
    assert (
        results["seed_proxy"]["knobs"]["outlier_suppression"]
        and not results["proxyclip"]["knobs"]["outlier_suppression"]
    )
    matrices = [results[m]["confusion_matrix"] for m in results]
    assert matrices[0] != matrices[1] and matrices[1] != matrices[2]
