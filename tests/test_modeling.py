"""OVSegModel end to end: an independent re-implementation of the dense path from the raw parameters,
the vanilla preset against plain CLIP, presets and overrides, save/load, half precision and errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import CLIPConfig, CLIPModel

from hf_ovseg import OVSegConfig, OVSegModel
from hf_ovseg.configuration_ovseg import ATTENTION_MODES

import reference as ref
from conftest import tiny_config, tiny_model

# ---- an independent forward written from the CLIP parameter layout ----------------------------


def _layer_norm(x, sd, name, eps=1e-5):
    return F.layer_norm(x, x.shape[-1:], sd[f"{name}.weight"], sd[f"{name}.bias"], eps)


def _linear(x, sd, name):
    return F.linear(x, sd[f"{name}.weight"], sd.get(f"{name}.bias"))


def _heads(x, heads):
    b, t, w = x.shape
    return x.view(b, t, heads, w // heads).transpose(1, 2)


def reference_dense(model: OVSegModel, pixel_values: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
    """Dense logits of the configured method, from ``state_dict`` tensors and the formulas of docs/DESIGN.md."""
    cfg = model.config
    vc = cfg.vision_config
    sd = {k: v.double() for k, v in model.state_dict().items()}
    p = "vision_model."
    x = pixel_values.double()
    rows, cols = x.shape[-2] // vc.patch_size, x.shape[-1] // vc.patch_size
    patches = F.conv2d(x, sd[p + "embeddings.patch_embedding.weight"], stride=vc.patch_size).flatten(2).transpose(1, 2)
    cls = sd[p + "embeddings.class_embedding"].expand(x.shape[0], 1, -1)
    pos = sd[p + "embeddings.position_embedding.weight"]
    side = vc.image_size // vc.patch_size
    if cfg.position_interpolation == "scale_factor" and rows * cols != side * side:
        grid = pos[1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
        scale = ((rows + 0.1) / side, (cols + 0.1) / side)
        grid = F.interpolate(grid.float(), scale_factor=scale, mode="bicubic", align_corners=False).double()
        pos = torch.cat([pos[:1], grid.permute(0, 2, 3, 1).reshape(rows * cols, -1)])
    elif cfg.position_interpolation == "size" and (rows, cols) != (side, side):
        grid = pos[1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid.float(), size=(rows, cols), mode="bicubic", align_corners=False).double()
        pos = torch.cat([pos[:1], grid.permute(0, 2, 3, 1).reshape(rows * cols, -1)])
    h = _layer_norm(torch.cat([cls, patches], 1) + pos, sd, p + "pre_layrnorm")

    heads, layers = vc.num_attention_heads, vc.num_hidden_layers
    scale = (vc.hidden_size // heads) ** -0.5

    def qkv(states, index):
        y = _layer_norm(states, sd, f"{p}encoder.layers.{index}.layer_norm1")
        return [_heads(_linear(y, sd, f"{p}encoder.layers.{index}.self_attn.{n}_proj"), heads) for n in "qkv"]

    hidden_states = [h]
    for i in range(layers - 1):
        name = f"{p}encoder.layers.{i}."
        q, k, v = qkv(h, i)
        a = ((q @ k.transpose(-1, -2)) * scale).softmax(-1) @ v
        h = h + _linear(a.transpose(1, 2).flatten(2), sd, name + "self_attn.out_proj")
        z = _linear(_layer_norm(h, sd, name + "layer_norm2"), sd, name + "mlp.fc1")
        h = h + _linear(z * torch.sigmoid(1.702 * z), sd, name + "mlp.fc2")  # quick_gelu
        hidden_states.append(h)

    mid = hidden_states[cfg.resolved_similarity_layer] if cfg.similarity_enhancement else None

    name = f"{p}encoder.layers.{layers - 1}."
    q, k, v = qkv(h, layers - 1)
    sim = None
    if cfg.similarity_enhancement:
        sim = ref.similarity_map(mid[:, 1:], cfg.similarity_temperature)
    probs = ref.attention_mode(
        cfg.attention_mode, q, k, v, scale, (rows, cols), sim, cfg.similarity_weight, cfg.naclip_gaussian_std
    )
    out = _linear((probs @ v).transpose(1, 2).flatten(2), sd, name + "self_attn.out_proj")
    if cfg.last_block_residual:
        out = h + out
    if cfg.last_block_mlp:
        z = _linear(_layer_norm(out, sd, name + "layer_norm2"), sd, name + "mlp.fc1")
        out = out + _linear(z * torch.sigmoid(1.702 * z), sd, name + "mlp.fc2")
    if cfg.outlier_suppression:
        if cfg.outlier_score_layer == "penultimate":  # block L-1's own attention on its input
            q, k, _ = qkv(hidden_states[layers - 2], layers - 2)
        scores = ref.outlier_scores(((q @ k.transpose(-1, -2)) * scale).softmax(-1))
        out = torch.cat(
            [out[:, :1], ref.suppress_outliers(out[:, 1:], scores, (rows, cols), cfg.outlier_top_k, cfg.outlier_tau,
                                               cfg.decontamination_clamp)], 1
        )  # fmt: skip
    emb = _layer_norm(out, sd, p + "post_layernorm") @ sd["visual_projection.weight"].T
    patch_embeds = ref.global_debias(
        emb[:, 1:], emb[:, 0], cfg.global_debias_factor, cfg.global_debias_mode, cfg.global_debias_normalize_cls
    )
    text = F.normalize(text_embeds.double(), dim=-1)
    logits = F.normalize(patch_embeds, dim=-1) @ text.T
    logits = (logits + cfg.cls_logit_lambda * (F.normalize(emb[:, :1], dim=-1) @ text.T)) * cfg.dense_logit_scale
    return logits.transpose(1, 2).reshape(x.shape[0], -1, rows, cols)


#: Presets whose whole path this formula reference covers (maskclip and sfp: see test_anchor_parity).
FORMULA_PRESETS = ["seed", "vanilla", "sclip", "clearclip", "naclip", "segearth"]


@pytest.mark.parametrize("method", FORMULA_PRESETS)
@pytest.mark.parametrize("size", [(32, 32), (24, 40), (48, 64)])
def test_dense_path_matches_independent_reimplementation(method, size):
    model = tiny_model(method, outlier_top_k=4, global_debias_factor=0.3, outlier_suppression=True,
                       feature_upsampling=False)  # fmt: skip
    torch.manual_seed(1)
    pixels, text = torch.randn(2, 3, *size), torch.randn(5, 16)
    with torch.no_grad():
        got = model(pixels, text_embeds=text).logits
    assert got.shape == (2, 5, size[0] // 8, size[1] // 8)
    torch.testing.assert_close(got.double(), reference_dense(model, pixels, text), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "knobs",
    [
        {"outlier_score_layer": "penultimate"},
        {"global_debias_normalize_cls": True},
        {"global_debias_normalize_cls": True, "global_debias_mode": "uniform"},
        {"outlier_score_layer": "penultimate", "global_debias_normalize_cls": True, "position_interpolation": "size"},
        {"method": "naclip", "naclip_gaussian_std": 1.5},
    ],
)
def test_seed_variants_match_reimplementation(knobs):
    """The ablations of the seed's code base (block L-1 outlier scores, a unit-norm CLS in module 3)."""
    knobs = dict(knobs)
    model = tiny_model(knobs.pop("method", "seed"), outlier_top_k=5, **knobs)
    torch.manual_seed(4)
    pixels, text = torch.randn(1, 3, 40, 48), torch.randn(3, 16)
    with torch.no_grad():
        got = model(pixels, text_embeds=text).logits
        plain = tiny_model("seed", outlier_top_k=5)(pixels, text_embeds=text).logits
    torch.testing.assert_close(got.double(), reference_dense(model, pixels, text), rtol=1e-4, atol=1e-4)
    assert not torch.allclose(got, plain)  # the knob changes the result


# sfp, proxy and trident: see test_anchor_parity.py, test_proxy.py and test_trident.py
@pytest.mark.parametrize("mode", [m for m in ATTENTION_MODES if m not in ("sfp", "proxy", "trident")])
def test_every_attention_mode_matches_reference(mode):
    knobs = {"similarity_enhancement": mode == "gated", "global_debias_mode": "uniform"}
    model = tiny_model("seed", attention_mode=mode, similarity_layer=2, similarity_temperature=0.5, **knobs)
    pixels, text = torch.randn(1, 3, 32, 24), torch.randn(3, 16)
    with torch.no_grad():
        got = model(pixels, text_embeds=text).logits
    torch.testing.assert_close(got.double(), reference_dense(model, pixels, text), rtol=1e-4, atol=1e-4)


def test_vanilla_reproduces_plain_clip_exactly():
    torch.manual_seed(0)
    cfg = tiny_config("vanilla")
    clip = CLIPModel(CLIPConfig(**{k: cfg.to_dict()[k] for k in ("text_config", "vision_config", "projection_dim")}))
    clip.eval()
    model = OVSegModel(tiny_config("vanilla")).eval()
    missing, unexpected = model.load_state_dict(clip.state_dict(), strict=True)
    assert not missing and not unexpected
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        dense = model.get_dense_image_features(pixels)
        image_features = clip.get_image_features(pixel_values=pixels).pooler_output
        tokens = clip.vision_model(pixel_values=pixels).last_hidden_state
        expected_patches = clip.visual_projection(clip.vision_model.post_layernorm(tokens[:, 1:]))
    torch.testing.assert_close(dense.cls_embeds, image_features, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dense.patch_embeds, expected_patches, rtol=1e-5, atol=1e-5)
    assert dense.outlier_indices is None and dense.grid_size == (4, 4)


def test_dense_features_contract():
    model = tiny_model("seed", outlier_top_k=5)
    with torch.no_grad():
        dense = model.get_dense_image_features(torch.randn(3, 3, 16, 40))
    assert dense.patch_embeds.shape == (3, 10, 16)
    assert dense.cls_embeds.shape == (3, 16)
    assert dense.grid_size == (2, 5)
    assert dense.outlier_indices.shape == (3, 5)
    assert int(dense.outlier_indices.max()) < 10


def test_forward_from_input_ids_equals_text_embeds():
    model = tiny_model()
    ids = torch.tensor([[49406, 320, 1125, 49407], [49406, 2368, 49407, 49407]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    pixels = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        a = model(pixels, input_ids=ids, attention_mask=mask).logits
        b = model(pixels, text_embeds=model.encode_text(ids, mask)).logits
    torch.testing.assert_close(a, b)
    assert a.abs().max() <= model.config.dense_logit_scale + 1e-4


# ---- configuration ---------------------------------------------------------------------------


def test_presets_and_explicit_overrides():
    seed = tiny_config()
    assert (seed.attention_mode, seed.outlier_suppression, seed.similarity_enhancement) == ("gated", True, True)
    assert (seed.outlier_top_k, seed.outlier_tau, seed.global_debias_factor) == (30, 0.1, 0.2)
    assert (seed.outlier_score_layer, seed.global_debias_normalize_cls) == ("last", False)
    assert seed.position_interpolation == "scale_factor" and seed.resolved_similarity_layer == (4 - 1) // 2
    vanilla = tiny_config("vanilla")
    assert vanilla.attention_mode == "vanilla" and vanilla.last_block_residual and vanilla.last_block_mlp
    assert not vanilla.outlier_suppression and vanilla.global_debias_factor == 0.0
    assert vanilla.position_interpolation == "size"
    sclip = tiny_config("sclip")  # SCLIP keeps the last block's residual and MLP (clip/model.py:249-251)
    assert sclip.last_block_residual and sclip.last_block_mlp
    maskclip = tiny_config("maskclip")  # the value path keeps residual and FFN (MaskCLIP vit.py:103-104)
    assert maskclip.last_block_residual and maskclip.last_block_mlp and maskclip.encoder_variant == "maskclip"
    for name in ("clearclip", "naclip", "segearth"):
        cfg = tiny_config(name)
        assert cfg.attention_mode == name and not cfg.outlier_suppression and not cfg.last_block_mlp
        assert not cfg.last_block_residual and cfg.position_interpolation == "scale_factor"
    assert tiny_config("naclip").naclip_gaussian_std == 5.0
    segearth = tiny_config("segearth")
    assert segearth.cls_logit_lambda == -0.3 and segearth.feature_upsampling and seed.cls_logit_lambda == 0.0
    with pytest.raises(ValueError, match=r"attention_mode=.sfp. reads blocks 4..10 .* at least 11 layers"):
        tiny_config("sfp")
    assert tiny_config("clearclip", global_debias_factor=0.5).global_debias_factor == 0.5


@pytest.mark.parametrize(
    ("knobs", "message"),
    [
        ({"method": "fancy"}, "unknown method 'fancy'; valid methods: seed, vanilla, maskclip"),
        ({"attention_mode": "flash"}, "unknown attention_mode 'flash'; valid values: gated, vanilla"),
        ({"position_interpolation": "area"}, "unknown position_interpolation 'area'; valid values: scale_factor"),
        ({"outlier_score_layer": "first"}, "unknown outlier_score_layer 'first'; valid values: last, penultimate"),
        ({"encoder_variant": "x"}, "unknown encoder_variant 'x'; valid values: clip, maskclip"),
        ({"naclip_gaussian_std": 0.0}, "naclip_gaussian_std must be > 0"),
        ({"method": "sfp", "last_block_mlp": True}, "attention_mode='sfp' replaces the whole last block"),
        ({"global_debias_mode": "mean"}, "unknown global_debias_mode 'mean'"),
        (
            {"method": "clearclip", "similarity_enhancement": True},
            "similarity_enhancement=True needs attention_mode='gated'",
        ),
        ({"outlier_top_k": -1}, "outlier_top_k must be >= 0"),
        ({"outlier_tau": 2.0}, r"outlier_tau must be in \[0, 1\]"),
        ({"similarity_temperature": 0.0}, "similarity_temperature must be > 0"),
        ({"similarity_layer": 4}, r"similarity_layer .* \[0, 3\]; got 4"),
    ],
)
def test_bad_settings_raise_clear_errors(knobs, message):
    method = knobs.pop("method", "seed")
    with pytest.raises(ValueError, match=message):
        tiny_config(method, **knobs)


def test_per_call_settings_leave_the_model_unchanged():
    model = tiny_model(outlier_top_k=7)
    pixels, text = torch.randn(1, 3, 32, 32), torch.randn(3, 16)
    with torch.no_grad():
        before = model(pixels, text_embeds=text).logits
        settings = model.config.with_method("clearclip")
        assert settings.attention_mode == "clearclip" and not settings.outlier_suppression
        assert model.config.attention_mode == "gated" and model.config.outlier_top_k == 7
        during = model(pixels, text_embeds=text, settings=settings).logits
        after = model(pixels, text_embeds=text).logits
        fresh = tiny_model("clearclip")(pixels, text_embeds=text).logits
    assert torch.equal(before, after)
    torch.testing.assert_close(during, fresh)
    with pytest.raises(ValueError, match="unknown method knob"):
        model.config.with_method(outlier_topk=3)
    with pytest.raises(ValueError, match="outlier_top_k must be >= 0"):
        model.set_method(outlier_top_k=-1)
    assert model.config.outlier_top_k == 7  # a rejected change leaves everything as it was
    model.set_method("sclip")
    assert model.config.method == "sclip" and model.config.last_block_mlp


# ---- save / load -----------------------------------------------------------------------------


def test_save_load_round_trip(tmp_path):
    model = tiny_model("seed", outlier_top_k=6, similarity_weight=0.5)
    model.save_pretrained(tmp_path)
    assert {"config.json", "model.safetensors", "modeling_ovseg.py", "configuration_ovseg.py", "modules.py"} <= {
        p.name for p in tmp_path.iterdir()
    }
    loaded = OVSegModel.from_pretrained(tmp_path).eval()
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert loaded.config.method_knobs() == model.config.method_knobs()
    pixels, text = torch.randn(1, 3, 32, 32), torch.randn(2, 16)
    with torch.no_grad():
        assert torch.equal(model(pixels, text_embeds=text).logits, loaded(pixels, text_embeds=text).logits)
    config = OVSegConfig.from_pretrained(tmp_path)
    assert config.auto_map == {
        "AutoConfig": "configuration_ovseg.OVSegConfig",
        "AutoModel": "modeling_ovseg.OVSegModel",
    }


def test_plain_clip_checkpoint_loads_without_missing_keys(tmp_path):
    torch.manual_seed(0)
    cfg = tiny_config()
    clip = CLIPModel(CLIPConfig(**{k: cfg.to_dict()[k] for k in ("text_config", "vision_config", "projection_dim")}))
    clip.save_pretrained(tmp_path)
    model, info = OVSegModel.from_pretrained(tmp_path, method="sclip", outlier_top_k=3, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert model.config.method == "sclip" and model.config.attention_mode == "sclip" and model.config.outlier_top_k == 3
    for name, tensor in clip.state_dict().items():
        assert torch.equal(tensor, model.state_dict()[name]), name


def test_from_pretrained_method_resets_saved_knobs(tmp_path):
    tiny_model("seed").save_pretrained(tmp_path)
    model = OVSegModel.from_pretrained(tmp_path, method="vanilla")
    assert model.config.method_knobs()["attention_mode"] == "vanilla"
    assert model.config.last_block_mlp and not model.config.outlier_suppression


# ---- dtypes and inputs -----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_close_to_float32(dtype):
    model = tiny_model("seed", outlier_top_k=0)  # outlier ranks can flip under rounding; compared separately
    pixels, text = torch.randn(2, 3, 32, 32), torch.randn(4, 16)
    with torch.no_grad():
        full = model(pixels, text_embeds=text)
        half = model.to(dtype)(pixels.to(dtype), text_embeds=text.to(dtype))
    assert half.logits.dtype == dtype
    cos = F.cosine_similarity(full.patch_embeds, half.patch_embeds.float(), dim=-1)
    assert cos.min() > 0.98
    assert (full.logits - half.logits.float()).abs().mean() < 0.05 * full.logits.abs().mean() + 0.5


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_with_outliers_runs(dtype):
    model = tiny_model("seed", outlier_top_k=3).to(dtype)
    with torch.no_grad():
        out = model(torch.randn(1, 3, 32, 32, dtype=dtype), text_embeds=torch.randn(2, 16, dtype=dtype))
    assert torch.isfinite(out.logits.float()).all()


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ((1, 3, 4, 32), "smaller than one 8x8 patch"),
        ((1, 3, 30, 32), "must be multiples of the patch size 8"),
        ((3, 32, 32), r"must be a \[batch, channels, height, width\] tensor"),
    ],
)
def test_bad_pixel_values(shape, message):
    model = tiny_model()
    with pytest.raises(ValueError, match=message):
        model(torch.randn(*shape), text_embeds=torch.randn(2, 16))


def test_forward_needs_classes():
    with pytest.raises(ValueError, match="pass input_ids or text_embeds"):
        tiny_model()(torch.randn(1, 3, 32, 32))
