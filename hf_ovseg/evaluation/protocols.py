"""The anchors' evaluation protocols as names: ``hf-ovseg evaluate --dataset voc21 --protocol sclip``.

A protocol fixes, per dataset: the resize (short side), the sliding window (crop / stride), the logit
scale, the background threshold (``prob_thd``), the method, and the class-name list (the shipped
``classes/<dataset>.txt``, with the anchors' synonyms; in VOC21 and COCO-Object 26 stuff words stand in for
"background"). Values are those of the anchors' public configs; see ``SOURCES``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from .benchmarks import DATASETS


@dataclass(frozen=True)
class Protocol:
    """One (protocol, dataset) setting."""

    method: str
    short_side: int
    crop_size: int
    stride: int
    dense_logit_scale: float
    background_threshold: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


SOURCES = {
    "sclip": "SCLIP (Wang et al., ECCV 2024), configs/cfg_*.py of its public code: short side 336 "
    "(Cityscapes 560, COCO-Stuff 448), crop 224 / stride 112, logit scale 40 (50 for Context60 and "
    "COCO-Object), prob_thd 0.1 on VOC21 / Context60 / COCO-Object",
    "naclip": "NACLIP (Hajimiri et al., WACV 2025) evaluates with SCLIP's settings",
    "clearclip": "ClearCLIP (Lan et al., ECCV 2024): short side 448, crop 448 / stride 224, logit scale 50, "
    "SCLIP's background thresholds",
    "segearth": "SegEarth-OV (Li et al., CVPR 2025), configs/cfg_*.py: short side 448, crop 224 / stride 112, "
    "logit scale 50, per-dataset prob_thd and background index; SimFeatUp not included",
    "sfp": "SFP (Jin et al., ICCV 2025) evaluates with SCLIP's settings",
}

_SCLIP = Protocol("sclip", 336, 224, 112, 40.0)
_SCLIP_DATASETS = {
    "voc21": replace(_SCLIP, background_threshold=0.1),
    "context60": replace(_SCLIP, dense_logit_scale=50.0, background_threshold=0.1),
    "coco_object": replace(_SCLIP, dense_logit_scale=50.0, background_threshold=0.1),
    "coco_stuff164k": replace(_SCLIP, short_side=448),
    "cityscapes": replace(_SCLIP, short_side=560),
}
_CLEAR = Protocol("clearclip", 448, 448, 224, 50.0)
_SEGEARTH = Protocol("segearth", 448, 224, 112, 50.0)
#: SegEarth-OV's per-dataset prob_thd (the background index is the dataset's, see DatasetSpec).
_SEGEARTH_THRESHOLDS = {
    "openearthmap": 0.1, "loveda": 0.3, "isaid": 0.4, "potsdam": 0.1, "vaihingen": 0.1, "uavid": 0.3,
    "udd5": 0.4, "vdd": 0.3, "voc21": 0.1, "context60": 0.1, "coco_object": 0.1,
}  # fmt: skip


def resolve_protocol(name: str, dataset: str) -> Protocol:
    """The full setting of protocol ``name`` on ``dataset``."""
    if name not in SOURCES:
        raise ValueError(f"unknown protocol {name!r}; choose one of {', '.join(SOURCES)}")
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    if name in ("sclip", "naclip", "sfp"):
        return replace(_SCLIP_DATASETS.get(dataset, _SCLIP), method=name)
    if name == "clearclip":
        return replace(_CLEAR, background_threshold=_SCLIP_DATASETS.get(dataset, _SCLIP).background_threshold)
    return replace(_SEGEARTH, background_threshold=_SEGEARTH_THRESHOLDS.get(dataset, 0.0))


def protocol_table() -> str:
    """Markdown table of every protocol on every dataset."""
    lines = [
        "| protocol | dataset | method | short side | crop / stride | logit scale | bg threshold | bg class |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name in SOURCES:
        for dataset, spec in DATASETS.items():
            p = resolve_protocol(name, dataset)
            background = "-" if spec.background_index is None else spec.class_names[spec.background_index]
            lines.append(
                f"| {name} | {dataset} | {p.method} | {p.short_side} | {p.crop_size} / {p.stride} | "
                f"{p.dense_logit_scale:g} | {p.background_threshold:g} | {background} |"
            )
    return "\n".join(lines)
