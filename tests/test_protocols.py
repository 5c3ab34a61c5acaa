"""Named protocols of the anchors, the faithful segearth and sfp presets' plumbing, and class lists."""

from __future__ import annotations

import json

import pytest

from hf_ovseg.cli import main
from hf_ovseg.evaluation import DATASETS
from hf_ovseg.evaluation.protocols import SOURCES, resolve_protocol


def test_sclip_family_settings():
    voc = resolve_protocol("sclip", "voc21")
    assert (voc.method, voc.short_side, voc.crop_size, voc.stride) == ("sclip", 336, 224, 112)
    assert (voc.dense_logit_scale, voc.background_threshold) == (40.0, 0.1)
    assert resolve_protocol("sclip", "cityscapes").short_side == 560
    assert resolve_protocol("sclip", "coco_stuff164k").short_side == 448
    assert resolve_protocol("sclip", "ade20k").background_threshold == 0.0
    assert resolve_protocol("sclip", "coco_object").dense_logit_scale == 50.0
    assert resolve_protocol("naclip", "voc21").method == "naclip"
    assert resolve_protocol("sfp", "context60").method == "sfp"


def test_clearclip_and_segearth_settings():
    clear = resolve_protocol("clearclip", "context60")
    assert (clear.short_side, clear.crop_size, clear.stride, clear.dense_logit_scale) == (448, 448, 224, 50.0)
    potsdam = resolve_protocol("segearth", "potsdam")
    assert (potsdam.method, potsdam.short_side, potsdam.crop_size, potsdam.stride) == ("segearth", 448, 224, 112)
    assert potsdam.background_threshold == 0.1 and DATASETS["potsdam"].background_index == 5
    assert resolve_protocol("segearth", "udd5").background_threshold == 0.4 and DATASETS["udd5"].background_index == 4
    assert resolve_protocol("segearth", "loveda").background_threshold == 0.3
    with pytest.raises(ValueError, match="unknown protocol 'mine'"):
        resolve_protocol("mine", "voc21")


def test_every_protocol_resolves_on_every_dataset_with_a_background_when_thresholded():
    for name in SOURCES:
        for dataset, spec in DATASETS.items():
            protocol = resolve_protocol(name, dataset)
            assert protocol.background_threshold == 0 or spec.background_index is not None, (name, dataset)


def test_evaluate_with_protocol_needs_no_other_flag_and_records_it(tiny_folder, shared_data, tmp_path):
    out = tmp_path / "r.json"
    args = [
        "evaluate",
        "--dataset",
        "voc21",
        "--protocol",
        "clearclip",
        "--data-root",
        str(shared_data / "voc"),
        "--model",
        str(tiny_folder),
        "--limit",
        "1",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    result = json.loads(out.read_text())
    protocol = result["protocol"]
    assert result["method"] == "clearclip" and protocol["name"] == "clearclip"
    assert (protocol["short_side"], protocol["crop_size"], protocol["stride"]) == (448, 448, 224)
    assert protocol["dense_logit_scale"] == 50.0 and result["knobs"]["dense_logit_scale"] == 50.0
    assert protocol["background_threshold"] == 0.1 and protocol["background_label"] == "sky"
    assert protocol["classes"][0].startswith("sky, wall, tree") and len(protocol["classes"]) == 21
    assert "ClearCLIP" in protocol["source"]
    # an explicit flag overrides the protocol
    assert main([*args, "--short-side", "64", "--crop-size", "32", "--stride", "16", "--logit-scale", "33"]) == 0
    result = json.loads(out.read_text())
    assert result["protocol"]["short_side"] == 64 and result["knobs"]["dense_logit_scale"] == 33.0


def test_protocols_command_prints_table(capsys):
    assert main(["protocols"]) == 0
    out = capsys.readouterr().out
    assert "| sclip | voc21 | sclip | 336 | 224 / 112 | 40 | 0.1 | background |" in out
    assert "| segearth | potsdam | segearth | 448 | 224 / 112 | 50 | 0.1 | clutter |" in out
    assert "- segearth: SegEarth-OV" in out


def test_class_lists_follow_label_ids(shared_data):
    official = (shared_data / "voc" / "class_names.txt").read_text().split()
    renamed = {"background": "sky", "boat": "ship", "diningtable": "table", "tvmonitor": "television monitor"}
    prompts = DATASETS["voc21"].prompts
    assert len(prompts) == len(official) == 21
    for name, line in zip(official, prompts, strict=True):
        assert line.split(",")[0].strip() == renamed.get(name, name)
    assert DATASETS["voc20"].prompts == prompts[1:]
    assert DATASETS["context60"].prompts[1:] == DATASETS["context59"].prompts
    city = [
        "road",
        "sidewalk",
        "building",
        "wall",
        "fence",
        "pole",
        "trafficlight",
        "trafficsign",
        "vegetation",
        "terrain",
        "sky",
        "person",
        "rider",
        "car",
        "truck",
        "bus",
        "train",
        "motorcycle",
        "bicycle",
    ]
    assert DATASETS["cityscapes"].class_names == city
    assert (
        DATASETS["coco_object"].prompts[1].startswith("person") and DATASETS["coco_object"].prompts[-1] == "toothbrush"
    )
    assert (
        DATASETS["coco_stuff164k"].class_names[0] == "person" and DATASETS["coco_stuff164k"].class_names[-1] == "wood"
    )
