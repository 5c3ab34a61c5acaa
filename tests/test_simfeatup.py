"""SimFeatUp as an optional stage: a checkpoint in SegEarth-OV's Lightning format goes through
``hf-ovseg convert --feature-upsampler`` into ``model.safetensors``, loads back identically (also as remote
code in a clean process), is used by ``segearth`` and on request by any preset, and refuses pickles.
The upsampler's math against the official formulation is tested in test_anchor_parity."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hf_ovseg import OVSegModel
from hf_ovseg.cli import main
from hf_ovseg.convert import ConversionError, convert, read_upsampler_checkpoint

from conftest import run_clean_process, tiny_model, tiny_pipeline


class Hyperparameters:
    """A non-tensor object of the kind Lightning pickles beside the weights."""

    def __init__(self) -> None:
        self.lr = 1e-3


def official_checkpoint(path, kind: str = "jbu_one", channels: int = 16, pickled_extra: bool = False) -> dict:
    """Random upsampler weights saved as SegEarth-OV's checkpoints are: a Lightning dict whose ``state_dict``
    keys start with ``upsampler.``; returns the tensors (without the prefix)."""
    torch.manual_seed(5)
    upsampler = tiny_model(feature_upsampler=kind).feature_upsampler
    tensors = {k: torch.randn(v.shape) * 0.3 + (v.dim() == 0) for k, v in upsampler.state_dict().items()}
    assert tensors["fixup_proj.1.weight"].shape[0] == channels
    checkpoint = {
        "epoch": 7,
        "global_step": 1000,
        "state_dict": {f"upsampler.{k}": v for k, v in tensors.items()},
        "hyper_parameters": Hyperparameters() if pickled_extra else {"lr": 1e-3},
    }
    torch.save(checkpoint, path)
    return tensors


def test_checkpoint_round_trips_through_convert(tiny_folder, tmp_path, capsys):
    ckpt = tmp_path / "xclip_jbu_one_million_aid.ckpt"
    tensors = official_checkpoint(ckpt)
    out = tmp_path / "with-simfeatup"
    assert main(["convert", str(tiny_folder), str(out), "--feature-upsampler", str(ckpt)]) == 0
    printed = capsys.readouterr().out
    assert "embedded SimFeatUp jbu_one (12 tensors," in printed and ckpt.name in printed
    assert json.loads((out / "config.json").read_text())["feature_upsampler"] == "jbu_one"
    model = OVSegModel.from_pretrained(out).eval()
    for key, value in tensors.items():
        assert torch.equal(model.feature_upsampler.state_dict()[key], value), key
    # the same weights set in memory give the same dense logits, at the crop's pixel resolution
    reference = tiny_model(feature_upsampler="jbu_one")
    reference.load_state_dict(model.state_dict())
    pixels, text = torch.randn(1, 3, 32, 48), torch.randn(3, 16)
    settings = model.config.with_method("segearth")
    with torch.no_grad():
        got = model(pixels, text_embeds=text, settings=settings).logits
        expected = reference(pixels, text_embeds=text, settings=reference.config.with_method("segearth")).logits
        off = model.config.with_method("segearth", feature_upsampling=False)
        without = model(pixels, text_embeds=text, settings=off)
    assert got.shape == (1, 3, 64, 96)  # 16x the 4x6 patch grid (patch 8 here; patch 16 gives the crop size)
    assert torch.equal(got, expected)
    assert without.logits.shape == (1, 3, 4, 6)


def test_any_preset_can_use_the_upsampler_and_segearth_fails_without_one():
    """No silent fallback: segearth on a model without SimFeatUp is an error naming the convert flag, unless the
    call says feature_upsampling=False (what then runs, and is recorded)."""
    model = tiny_model(feature_upsampler="jbu_stack")
    pixels, text = torch.randn(1, 3, 32, 32), torch.randn(2, 16)
    with torch.no_grad():
        seed = model(pixels, text_embeds=text, settings=model.config.with_method("seed", feature_upsampling=True))
    assert seed.logits.shape == (1, 2, 64, 64)
    plain = tiny_model("segearth")
    with pytest.raises(ValueError, match=r"carries no feature upsampler: embed one with `hf-ovseg convert CLIP OUT "
                                         r"--feature-upsampler CKPT`"), torch.no_grad():  # fmt: skip
        plain(pixels, text_embeds=text)
    without = plain.config.with_method("segearth", feature_upsampling=False)
    with torch.no_grad():
        assert plain(pixels, text_embeds=text, settings=without).logits.shape == (1, 2, 4, 4)
    assert plain.components(without) == {"feature_upsampler": None, "proxy": None, "sam": None}
    ran = model.components(model.config.with_method("segearth"))
    assert ran == {"feature_upsampler": "jbu_stack", "proxy": None, "sam": None}


def test_forward_upsamples_crop_by_crop():
    """``forward`` upsamples and scores one crop at a time (bounded memory), in the span of the crop's features.
    In float64 its logits equal the cosine of ``get_dense_image_features``' per-pixel features (all channels, the
    whole batch at once) with the text; in float32 both are as close to the float64 result (this random upsampler
    amplifies rounding: 0.038 on logits of ~25 for both, measured)."""
    torch.manual_seed(2)
    model = tiny_model("segearth", feature_upsampler="jbu_one").eval()
    for parameter in model.feature_upsampler.parameters():  # away from the zero-initialised fixups
        parameter.data.add_(torch.randn_like(parameter) * 0.2)
    pixels, text = torch.randn(3, 3, 32, 48), torch.randn(4, 16)

    def both(model, pixels, text):
        with torch.no_grad():
            out = model(pixels, text_embeds=text)
            dense = model.get_dense_image_features(pixels)
        unit_text = torch.nn.functional.normalize(text, dim=-1)
        cosine = torch.nn.functional.normalize(dense.patch_embeds, dim=-1) @ unit_text.T
        cls = torch.nn.functional.normalize(dense.cls_embeds, dim=-1) @ unit_text.T
        expected = (cosine + model.config.cls_logit_lambda * cls[:, None]) * model.config.dense_logit_scale
        return out, dense, expected.transpose(1, 2).reshape(3, 4, 64, 96)

    out, dense, expected = both(model, pixels, text)
    assert dense.patch_embeds.shape == (3, 64 * 96, 16) and dense.grid_size == (64, 96)
    assert out.logits.shape == (3, 4, 64, 96) and out.grid_size == (64, 96)
    assert out.patch_embeds.shape == (3, 4 * 6, 16)  # the patch grid's features
    out64, _, expected64 = both(model.double(), pixels.double(), text.double())
    torch.testing.assert_close(out64.logits, expected64, rtol=0, atol=1e-9)
    span_error = (out.logits.double() - expected64).abs().max()
    full_error = (expected.double() - expected64).abs().max()
    assert span_error <= 1.5 * full_error + 1e-5, (span_error, full_error)


def test_pipeline_segments_with_simfeatup(fixtures):
    """The pipeline runs the upsampler (the probabilities change when it is turned off) at the photo's size; its
    output against SegEarth-OV's code, end to end, is tested in test_anchor_parity."""
    pipe = tiny_pipeline("segearth", feature_upsampler="jbu_one")
    photo = str(fixtures / "voc" / "JPEGImages" / "2011_000003.jpg")
    call = {"candidate_labels": ["person", "bottle", "wall"], "short_side": 64, "crop_size": 32,
            "return_probabilities": True}  # fmt: skip
    upsampled, plain = pipe(photo, **call), pipe(photo, feature_upsampling=False, **call)
    assert upsampled["label_map"].shape == (338, 500) and upsampled["probabilities"].shape == (3, 338, 500)
    assert np.abs(np.asarray(upsampled["probabilities"]) - np.asarray(plain["probabilities"])).max() > 1e-3


def test_pickled_checkpoint_needs_trust(tiny_folder, tmp_path, capsys):
    ckpt = tmp_path / "lightning.ckpt"
    tensors = official_checkpoint(ckpt, pickled_extra=True)
    with pytest.raises(ConversionError, match="cannot be read safely .* If you trust it, pass --trust-pickle"):
        read_upsampler_checkpoint(ckpt)
    assert main(["convert", str(tiny_folder), str(tmp_path / "o"), "--feature-upsampler", str(ckpt)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--trust-pickle" in err[0] and not (tmp_path / "o").exists()
    kind, loaded = read_upsampler_checkpoint(ckpt, trust_pickle=True)
    assert kind == "jbu_one" and all(torch.equal(loaded[k], tensors[k]) for k in tensors)


def test_bad_upsampler_checkpoints(tiny_folder, tmp_path):
    wrong = tmp_path / "wrong.ckpt"
    torch.save({"state_dict": {"model.weight": torch.zeros(2)}}, wrong)
    with pytest.raises(ConversionError, match="not a SimFeatUp JBU checkpoint: expected keys upsampler.up"):
        convert(str(tiny_folder), tmp_path / "o1", feature_upsampler=str(wrong))
    wide = tmp_path / "wide.ckpt"
    tensors = official_checkpoint(wide)
    tensors["fixup_proj.1.weight"] = torch.zeros(512, 512, 1, 1)
    torch.save({"state_dict": {f"upsampler.{k}": v for k, v in tensors.items()}}, wide)
    with pytest.raises(ConversionError, match="works on 512-channel features, but this CLIP projects to 16"):
        convert(str(tiny_folder), tmp_path / "o2", feature_upsampler=str(wide))
    with pytest.raises(ConversionError, match="feature upsampler checkpoint not found"):
        convert(str(tiny_folder), tmp_path / "o3", feature_upsampler=str(tmp_path / "none.ckpt"))
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 4))


CHILD = """
import sys
import torch
from transformers import AutoModel
model = AutoModel.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
assert type(model.feature_upsampler).__module__.startswith("transformers_modules")
data = torch.load(sys.argv[2])
with torch.no_grad():
    out = model(data["pixels"], text_embeds=data["text"], settings=model.config.with_method("segearth"))
torch.save(out.logits, sys.argv[3])
"""


def test_remote_code_folder_with_upsampler_in_clean_process(tiny_folder, tmp_path):
    ckpt = tmp_path / "up.ckpt"
    official_checkpoint(ckpt, kind="jbu_stack")
    out = convert(str(tiny_folder), tmp_path / "model", feature_upsampler=str(ckpt))
    assert (out / "upsampler.py").is_file()
    torch.manual_seed(3)
    data = {"pixels": torch.randn(1, 3, 32, 40), "text": torch.randn(3, 16)}
    torch.save(data, tmp_path / "in.pt")
    run_clean_process(CHILD, [str(out), str(tmp_path / "in.pt"), str(tmp_path / "out.pt")], tmp_path)
    model = OVSegModel.from_pretrained(out).eval()
    with torch.no_grad():
        expected = model(data["pixels"], text_embeds=data["text"], settings=model.config.with_method("segearth"))
    assert torch.equal(torch.load(tmp_path / "out.pt"), expected.logits)


def potsdam_root(folder, fixtures):
    """A one-image ISPRS Potsdam layout (img_dir/val, ann_dir/val; labels 1..6, reduce_zero_label)."""
    from PIL import Image

    (folder / "img_dir" / "val").mkdir(parents=True)
    (folder / "ann_dir" / "val").mkdir(parents=True)
    photo = Image.open(fixtures / "voc" / "JPEGImages" / "2011_000006.jpg").convert("RGB").resize((96, 72))
    photo.save(folder / "img_dir" / "val" / "tile.png")
    mask = np.random.default_rng(0).integers(1, 7, (72, 96), dtype=np.uint8)
    Image.fromarray(mask).save(folder / "ann_dir" / "val" / "tile.png")
    return folder


def test_segearth_protocol_records_what_ran(tiny_folder, fixtures, tmp_path, capsys):
    """--protocol segearth on a model without SimFeatUp stops with one line naming the convert flag; with
    --no-feature-upsampler it runs and the result says feature_upsampling=false; with the upsampler embedded it
    says which one ran."""
    root = potsdam_root(tmp_path / "potsdam", fixtures)
    args = ["evaluate", "--dataset", "potsdam", "--protocol", "segearth", "--data-root", str(root), "--short-side",
            "48", "--crop-size", "32", "--stride", "16", "--num-workers", "0"]  # fmt: skip
    assert main([*args, "--model", str(tiny_folder)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "hf-ovseg convert CLIP OUT --feature-upsampler CKPT" in error
    assert "--no-feature-upsampler" in error
    out = tmp_path / "without.json"
    assert main([*args, "--model", str(tiny_folder), "--no-feature-upsampler", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["knobs"]["feature_upsampling"] is False and result["components"]["feature_upsampler"] is None
    ckpt = tmp_path / "jbu.ckpt"
    official_checkpoint(ckpt)
    with_upsampler = tmp_path / "with"
    assert main(["convert", str(tiny_folder), str(with_upsampler), "--feature-upsampler", str(ckpt)]) == 0
    out = tmp_path / "with.json"
    assert main([*args, "--model", str(with_upsampler), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["knobs"]["feature_upsampling"] is True and result["components"]["feature_upsampler"] == "jbu_one"
