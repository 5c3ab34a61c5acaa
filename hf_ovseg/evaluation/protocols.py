"""The anchors' evaluation protocols, one explicit table per anchor: ``hf-ovseg evaluate --protocol sclip``.

A protocol is what an anchor's official code does on one dataset: its segmentor's defaults, overridden by
its ``configs/cfg_<dataset>.py`` (resize scale, slide crop/stride or whole image, logit scale, ``prob_thd``,
``area_thd``, PAMR, background index) and its ``configs/cls_<dataset>.txt`` (shipped byte-identical under
``classes/<anchor>/``). Every value below names the file and line it comes from; a dataset the anchor has
no config for has no protocol (no value is inferred from another anchor or another dataset).

Common mechanics, the same in every anchor's code and implemented once in the pipeline: mmcv's keep-ratio
resize ``Resize(scale=(long, short))`` (``rescale_size``: short side ``short``, long side at most ``long``;
SegEarth-OV's ``(448, 448)`` therefore caps the long side at 448), cv2 bilinear without antialiasing, mmseg
slide windows, bilinear upsampling of each crop's logits, averaging of overlaps, resize to the original size,
softmax over every class name, max over each class's names, area threshold, ``prob_thd``.

Normalisation: the anchors' ``SegDataPreProcessor`` uses CLIP's mean/std rounded to three decimals in 0-255
units ([122.771, 116.746, 104.094] / [68.501, 66.632, 70.323]); the pipeline uses the processor's (CLIP's)
exact values. Over every uint8 input the normalised values differ by at most 1.41e-5 (red), 5.1e-6 (green)
and 7.2e-6 (blue) (computed over 0..255 for each channel).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from ..labels import LabelSet, parse_labels
from .benchmarks import DATASETS, read_class_file

_SCLIP = "wangf3014/SCLIP@b56bd30"
_NACLIP = "sinahmr/NACLIP@0cac3a6"
_CLEARCLIP = "mc-lan/ClearCLIP@ad68a40"
_SEGEARTH = "likyoo/SegEarth-OV@3e22a96"
_SFP = "Kimsure/SFP@2804f5b:SFP_ICCV"
_PROXYCLIP = "mc-lan/ProxyCLIP@e7b767f"
_TRIDENT = "YuHengsss/Trident@a93b346"


@dataclass(frozen=True)
class Protocol:
    """One anchor's setting on one dataset.

    method: the preset the anchor's model is (``METHOD_PRESETS``); knobs: method knobs its config changes
        (``dense_logit_scale`` = ``logit_scale``, ``cls_logit_lambda`` = SegEarth-OV's ``cls_token_lambda``,
        Trident's ``beta`` / ``gamma`` / ``cos_fac`` / ``refine_neg_cos`` / SAM refinement as ``proxy_*`` / ``sam_*``).
    short_side / long_side: ``Resize(scale=(long_side, short_side), keep_ratio=True)``.
    crop_size / stride: slide windows (``crop_size=None``: the whole image, ``slide_crop=0``).
    patch_padding: how a window whose sides are not patch multiples is run (see ``inference.PATCH_PADDINGS``).
    background_threshold / background_index: ``prob_thd`` and the class it sends pixels to.
    area_threshold: ``area_thd`` (None = off). refine: ``"pamr"`` or None.
    normalize_probabilities: the returned probabilities renormalised after the labels are chosen (NACLIP).
    classes: the class file, ``<anchor>/cls_<name>.txt``. config: the anchor's config file.
    synonym_separator: what separates a class's names in its class file (None: commas, as the other anchors'
        ``get_cls_idx`` split on ``", "`` or ``","``; ProxyCLIP's and Trident's: ``"; "``).
    dtype: the precision the anchor runs in on a GPU (all of them: fp16 weights).
    """

    anchor: str
    dataset: str
    config: str
    method: str
    classes: str
    short_side: int
    long_side: int
    crop_size: int | None
    stride: int | None
    patch_padding: str
    background_threshold: float = 0.0
    background_index: int = 0
    area_threshold: float | None = None
    refine: str | None = None
    knobs: dict[str, Any] = field(default_factory=dict)
    normalize_probabilities: bool = False
    synonym_separator: str | None = None
    dtype: str = "float16"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def prompts(self) -> list[str]:
        """The class lines of the anchor's class file."""
        return read_class_file(self.classes)

    def label_set(self, tokenizer: Any = None) -> LabelSet:
        """The class file parsed as the anchor's ``get_cls_idx`` does (its separator); a name may belong to two
        classes, as in the anchors' COCO-Object files ("bed")."""
        return parse_labels(self.prompts, tokenizer, strict=False, separator=self.synonym_separator)

    def pipeline_arguments(self) -> dict[str, Any]:
        """The pipeline call arguments of this protocol (the class names and background label excluded)."""
        return {
            "short_side": self.short_side,
            "long_side": self.long_side,
            "crop_size": self.crop_size,
            "stride": self.stride,
            "patch_padding": self.patch_padding,
            "background_threshold": self.background_threshold,
            "area_threshold": self.area_threshold,
            "refine": self.refine,
            "normalize_probabilities": self.normalize_probabilities,
            "method": self.method,
            **self.knobs,
        }


@dataclass(frozen=True)
class Anchor:
    """An anchor's code base: its segmentor defaults (``base``) and one dataset override per config file."""

    name: str
    source: str
    base: dict[str, Any]
    datasets: dict[str, dict[str, Any]]

    def protocol(self, dataset: str) -> Protocol:
        if dataset not in self.datasets:
            raise ValueError(
                f"protocol {self.name!r} has no setting for {dataset!r}: {self.source} ships configs for "
                f"{', '.join(self.datasets)}"
            )
        values = {**self.base, **self.datasets[dataset]}
        knobs = {**self.base.get("knobs", {}), **self.datasets[dataset].get("knobs", {})}
        return Protocol(anchor=self.name, dataset=dataset, **{**values, "knobs": knobs})


def _resize(short: int, long: int = 2048) -> dict[str, int]:
    return {"short_side": short, "long_side": long}


# SCLIP: clip_segmentor.py:19-21 (defaults: logit_scale=40, prob_thd=0, area_thd=None, slide 224/112,
# pamr_steps=0), 59-78 (a window is run as it is, the patch grid dropping the remainder: patch_padding="none").
SCLIP = Anchor(
    "sclip",
    _SCLIP,
    base={"method": "sclip", "crop_size": 224, "stride": 112, "patch_padding": "none",
          "knobs": {"dense_logit_scale": 40.0}},
    datasets={
        # configs/cfg_voc21.py:5-8, 17
        "voc21": {"config": "cfg_voc21.py", "classes": "sclip/cls_voc21.txt", **_resize(336),
                  "knobs": {"dense_logit_scale": 65.0}, "background_threshold": 0.1, "area_threshold": 0.1},
        # cfg_context60.py:5-7, 16
        "context60": {"config": "cfg_context60.py", "classes": "sclip/cls_context60.txt", **_resize(336),
                      "knobs": {"dense_logit_scale": 50.0}, "background_threshold": 0.1},
        # cfg_coco_object.py:5-7, 16
        "coco_object": {"config": "cfg_coco_object.py", "classes": "sclip/cls_coco_object.txt", **_resize(336),
                        "knobs": {"dense_logit_scale": 50.0}, "background_threshold": 0.1},
        # cfg_voc20.py:5, 14
        "voc20": {"config": "cfg_voc20.py", "classes": "sclip/cls_voc20.txt", **_resize(336)},
        # cfg_city_scapes.py:5, 14
        "cityscapes": {"config": "cfg_city_scapes.py", "classes": "sclip/cls_city_scapes.txt", **_resize(560)},
        # cfg_context59.py:5, 14
        "context59": {"config": "cfg_context59.py", "classes": "sclip/cls_context59.txt", **_resize(336)},
        # cfg_ade20k.py:5, 14
        "ade20k": {"config": "cfg_ade20k.py", "classes": "sclip/cls_ade20k.txt", **_resize(336)},
        # cfg_coco_stuff164k.py:5, 14
        "coco_stuff164k": {"config": "cfg_coco_stuff164k.py", "classes": "sclip/cls_coco_stuff.txt",
                           **_resize(448)},
        # cfg_coco_stuff10k.py:5, 14 (mmseg's COCOStuffDataset, reduce_zero_label=True: 15, 27)
        "coco_stuff10k": {"config": "cfg_coco_stuff10k.py", "classes": "sclip/cls_coco_stuff.txt",
                          **_resize(336)},
    },
)  # fmt: skip

# NACLIP: naclip.py:20-22 (defaults: arch='reduced', gaussian_std=5, pamr_steps=10, pamr_stride=(8, 16),
# prob_thd=0, logit_scale=40, slide 224/112); README / test_all.sh reproduce with "reduced naclip 5 on"
# (eval.py:56-57: PAMR on = 10 steps); naclip.py:54-69 (no padding: patch_padding="none"); naclip.py:153
# (the probabilities it returns are renormalised after the labels are chosen).
NACLIP = Anchor(
    "naclip",
    _NACLIP,
    base={"method": "naclip", "crop_size": 224, "stride": 112, "patch_padding": "none", "refine": "pamr",
          "normalize_probabilities": True, "knobs": {"dense_logit_scale": 40.0, "naclip_gaussian_std": 5.0}},
    datasets={
        # configs/cfg_voc21.py:5-7, 16 (slide_crop=0: the whole image)
        "voc21": {"config": "cfg_voc21.py", "classes": "naclip/cls_voc21.txt", **_resize(336),
                  "background_threshold": 0.1, "crop_size": None, "stride": None},
        # cfg_context60.py:5-6, 15
        "context60": {"config": "cfg_context60.py", "classes": "naclip/cls_context60.txt", **_resize(336),
                      "background_threshold": 0.1},
        # cfg_coco_object.py:5-6, 15
        "coco_object": {"config": "cfg_coco_object.py", "classes": "naclip/cls_coco_object.txt", **_resize(336),
                        "background_threshold": 0.1},
        # cfg_voc20.py:5-6, 15 (slide_crop=0)
        "voc20": {"config": "cfg_voc20.py", "classes": "naclip/cls_voc20.txt", **_resize(336),
                  "crop_size": None, "stride": None},
        # cfg_city_scapes.py:5, 14
        "cityscapes": {"config": "cfg_city_scapes.py", "classes": "naclip/cls_city_scapes.txt", **_resize(560)},
        # cfg_context59.py:5, 14
        "context59": {"config": "cfg_context59.py", "classes": "naclip/cls_context59.txt", **_resize(336)},
        # cfg_ade20k.py:5, 14
        "ade20k": {"config": "cfg_ade20k.py", "classes": "naclip/cls_ade20k.txt", **_resize(336)},
        # cfg_coco_stuff164k.py:5, 14
        "coco_stuff164k": {"config": "cfg_coco_stuff164k.py", "classes": "naclip/cls_coco_stuff.txt",
                           **_resize(336)},
    },
)  # fmt: skip

# ClearCLIP: clearclip_segmentor.py:22-23 (defaults: prob_thd=0, logit_scale=50, slide_stride=224,
# slide_crop=448), 168-180 (windows padded on both sides to a patch multiple: patch_padding="center").
# Its base_config.py:6 says model_type='vanilla'; its paper and demo use ClearCLIP attention, and so does
# this protocol (method "clearclip": open_clip/transformer.py:614-616, ignore_residual=True).
CLEARCLIP = Anchor(
    "clearclip",
    _CLEARCLIP,
    base={"method": "clearclip", "crop_size": 448, "stride": 224, "patch_padding": "center",
          "knobs": {"dense_logit_scale": 50.0}},
    datasets={
        # configs/cfg_voc21.py:5-6, 15
        "voc21": {"config": "cfg_voc21.py", "classes": "clearclip/cls_voc21.txt", **_resize(448),
                  "background_threshold": 0.5},
        # cfg_context60.py:5-6, 15
        "context60": {"config": "cfg_context60.py", "classes": "clearclip/cls_context60.txt", **_resize(448),
                      "background_threshold": 0.15},
        # cfg_coco_object.py:5-6, 15
        "coco_object": {"config": "cfg_coco_object.py", "classes": "clearclip/cls_coco_object.txt", **_resize(448),
                        "background_threshold": 0.4},
        # cfg_voc20.py:5, 14
        "voc20": {"config": "cfg_voc20.py", "classes": "clearclip/cls_voc20.txt", **_resize(448)},
        # cfg_city_scapes.py:5-6, 15 (slide_crop=224, the stride stays the default 224)
        "cityscapes": {"config": "cfg_city_scapes.py", "classes": "clearclip/cls_city_scapes.txt", **_resize(448),
                       "crop_size": 224},
        # cfg_context59.py:5, 14
        "context59": {"config": "cfg_context59.py", "classes": "clearclip/cls_context59.txt", **_resize(448)},
        # cfg_ade20k.py:5, 14
        "ade20k": {"config": "cfg_ade20k.py", "classes": "clearclip/cls_ade20k.txt", **_resize(448)},
        # cfg_coco_stuff164k.py:5, 14
        "coco_stuff164k": {"config": "cfg_coco_stuff164k.py", "classes": "clearclip/cls_coco_stuff.txt",
                           **_resize(448)},
    },
)  # fmt: skip

# SegEarth-OV: segearth_segmentor.py:31-36 (defaults: prob_thd=0, logit_scale=50, slide 224/112,
# cls_token_lambda=0, bg_idx=0), 251-263 (patch_padding="center"), configs/base_config.py:6-12
# (model_type='SegEarth', SimFeatUp jbu_one, cls_token_lambda=-0.3). Every config resizes with
# scale=(448, 448): the long side is capped at 448. Its configs cover remote sensing only.
SEGEARTH = Anchor(
    "segearth",
    _SEGEARTH,
    base={"method": "segearth", "crop_size": 224, "stride": 112, "patch_padding": "center", **_resize(448, 448),
          "knobs": {"dense_logit_scale": 50.0, "cls_logit_lambda": -0.3}},
    datasets={
        # configs/cfg_openearthmap.py:5-6, 15
        "openearthmap": {"config": "cfg_openearthmap.py", "classes": "segearth/cls_openearthmap.txt",
                         "background_threshold": 0.1},
        # cfg_loveda.py:5-6, 17
        "loveda": {"config": "cfg_loveda.py", "classes": "segearth/cls_loveda.txt", "background_threshold": 0.3},
        # cfg_iSAID.py:5-6, 15
        "isaid": {"config": "cfg_iSAID.py", "classes": "segearth/cls_iSAID.txt", "background_threshold": 0.4},
        # cfg_potsdam.py:5-7, 16
        "potsdam": {"config": "cfg_potsdam.py", "classes": "segearth/cls_potsdam.txt", "background_threshold": 0.1,
                    "background_index": 5},
        # cfg_vaihingen.py:5-7, 16
        "vaihingen": {"config": "cfg_vaihingen.py", "classes": "segearth/cls_vaihingen.txt",
                      "background_threshold": 0.1, "background_index": 5},
        # cfg_uavid.py:5-6, 15
        "uavid": {"config": "cfg_uavid.py", "classes": "segearth/cls_uavid.txt", "background_threshold": 0.3},
        # cfg_udd5.py:5-7, 16
        "udd5": {"config": "cfg_udd5.py", "classes": "segearth/cls_udd5.txt", "background_threshold": 0.4,
                 "background_index": 4},
        # cfg_vdd.py:5-6, 15
        "vdd": {"config": "cfg_vdd.py", "classes": "segearth/cls_vdd.txt", "background_threshold": 0.3},
        # cfg_inria.py:5-6, 15
        "inria": {"config": "cfg_inria.py", "classes": "segearth/cls_inria.txt", "background_threshold": 0.6},
        # cfg_whu_aerial.py:5-6, 15
        "whu_aerial": {"config": "cfg_whu_aerial.py", "classes": "segearth/cls_whu.txt",
                       "background_threshold": 0.6},
        # cfg_whu_sat_II.py:5-6, 15
        "whu_sat_ii": {"config": "cfg_whu_sat_II.py", "classes": "segearth/cls_whu.txt",
                       "background_threshold": 0.7},
        # cfg_xBD.py:5-7, 16 (cls_token_lambda=0)
        "xbd": {"config": "cfg_xBD.py", "classes": "segearth/cls_xBD.txt", "background_threshold": 0.0,
                "knobs": {"cls_logit_lambda": 0.0}},
        # cfg_wbs-si.py:5-6, 15
        "wbs_si": {"config": "cfg_wbs-si.py", "classes": "segearth/cls_wbs-si.txt", "background_threshold": 0.6},
        # cfg_deepglobe_road.py:5-6, 15
        "deepglobe_road": {"config": "cfg_deepglobe_road.py", "classes": "segearth/cls_roadval.txt",
                           "background_threshold": 0.7},
        # cfg_chn6-cug.py:5-6, 15
        "chn6_cug": {"config": "cfg_chn6-cug.py", "classes": "segearth/cls_chn6-cug.txt",
                     "background_threshold": 0.8},
        # cfg_massachusetts_road.py:5-6, 15
        "massachusetts_road": {"config": "cfg_massachusetts_road.py", "classes": "segearth/cls_roadval.txt",
                               "background_threshold": 0.7},
        # cfg_spacenet_road.py:5-6, 15
        "spacenet_road": {"config": "cfg_spacenet_road.py", "classes": "segearth/cls_roadval.txt",
                          "background_threshold": 0.7},
    },
)  # fmt: skip

# SFP: SFP_segmentor.py:22-25 (defaults: pamr_steps=0, prob_thd=0, logit_scale=40, slide 224/112,
# area_thd=None), 69-87 (no padding: patch_padding="none"); configs/base_config.py:5-9 (pm='SOM',
# purify=True, res_cls=0.3). The ViT-B/16 values of the configs are used (their ViT-L/14 ones are comments).
SFP = Anchor(
    "sfp",
    _SFP,
    base={"method": "sfp", "crop_size": 224, "stride": 112, "patch_padding": "none",
          "knobs": {"dense_logit_scale": 40.0, "sfp_residual_cls": 0.3}},
    datasets={
        # configs/cfg_voc21.py:5-8, 19
        "voc21": {"config": "cfg_voc21.py", "classes": "sfp/cls_voc21.txt", **_resize(336),
                  "area_threshold": 0.1, "knobs": {"dense_logit_scale": 50.0}, "background_threshold": 0.15},
        # cfg_context60.py:5-6, 15
        "context60": {"config": "cfg_context60.py", "classes": "sfp/cls_context60.txt", **_resize(336),
                      "background_threshold": 0.15},
        # cfg_coco_object.py:5-7, 18
        "coco_object": {"config": "cfg_coco_object.py", "classes": "sfp/cls_coco_object.txt", **_resize(336),
                        "knobs": {"dense_logit_scale": 55.0}, "background_threshold": 0.35},
        # cfg_voc20.py:5, 14
        "voc20": {"config": "cfg_voc20.py", "classes": "sfp/cls_voc20.txt", **_resize(336)},
        # cfg_city_scapes.py:5, 14
        "cityscapes": {"config": "cfg_city_scapes.py", "classes": "sfp/cls_city_scapes.txt", **_resize(560)},
        # cfg_context59.py:5, 14
        "context59": {"config": "cfg_context59.py", "classes": "sfp/cls_context59.txt", **_resize(336)},
        # cfg_ade20k.py:5, 14
        "ade20k": {"config": "cfg_ade20k.py", "classes": "sfp/cls_ade20k.txt", **_resize(384)},
        # cfg_coco_stuff164k.py:5, 14
        "coco_stuff164k": {"config": "cfg_coco_stuff164k.py", "classes": "sfp/cls_coco_stuff.txt",
                           **_resize(336)},
    },
)  # fmt: skip

# ProxyCLIP: proxyclip_segmentor.py:30-31 (defaults: prob_thd=0, logit_scale=40, beta=1.2, gamma=3.0,
# slide_stride=112, slide_crop=336), 218-231 (each window zero-padded on both sides to a multiple of 56, the odd
# pixel right/bottom, its logits cut back: patch_padding="center" with the preset's window_multiple=56), 267-281
# (prob_thd sends pixels to class 0), 329-340 (class files split on "; "); configs/base_config.py:4-7 (openai
# ViT-B/16, vfm_model='dino': dino_vitb8). --method proxyclip_dinov2 / proxyclip_sam run its other proxies.
PROXYCLIP = Anchor(
    "proxyclip",
    _PROXYCLIP,
    base={"method": "proxyclip", "crop_size": 336, "stride": 112, "patch_padding": "center",
          "synonym_separator": "; ", "knobs": {"dense_logit_scale": 40.0}},
    datasets={
        # configs/cfg_voc21.py:5-6, 15
        "voc21": {"config": "cfg_voc21.py", "classes": "proxyclip/cls_voc21.txt", **_resize(336),
                  "background_threshold": 0.2},
        # cfg_context60.py:5-6, 15
        "context60": {"config": "cfg_context60.py", "classes": "proxyclip/cls_context60.txt", **_resize(336),
                      "background_threshold": 0.15},
        # cfg_coco_object.py:5-6, 15
        "coco_object": {"config": "cfg_coco_object.py", "classes": "proxyclip/cls_coco_object.txt", **_resize(336),
                        "background_threshold": 0.25},
        # cfg_voc20.py:5, 14
        "voc20": {"config": "cfg_voc20.py", "classes": "proxyclip/cls_voc20.txt", **_resize(336)},
        # cfg_context59.py:5, 14
        "context59": {"config": "cfg_context59.py", "classes": "proxyclip/cls_context59.txt", **_resize(336)},
        # cfg_coco_stuff164k.py:5, 14
        "coco_stuff164k": {"config": "cfg_coco_stuff164k.py", "classes": "proxyclip/cls_coco_stuff.txt",
                           **_resize(336)},
        # cfg_city_scapes.py:5-7, 16 (slide_crop=224, slide_stride=112)
        "cityscapes": {"config": "cfg_city_scapes.py", "classes": "proxyclip/cls_city_scapes.txt", **_resize(448),
                       "crop_size": 224, "stride": 112},
        # cfg_ade20k.py:5, 14
        "ade20k": {"config": "cfg_ade20k.py", "classes": "proxyclip/cls_ade20k.txt", **_resize(448)},
    },
)  # fmt: skip

# Trident: trident.py:29-33 (segmentor defaults: prob_thd=0.0, logit_scale=40, beta=1.2, gamma=3.0, slide_stride=112,
# slide_crop=336, pamr_steps=0, coarse_thresh=0.10, minimal_area=225, sam_mask_coff=0.005), 61 (dataset_type
# kwarg, default 'PascalVOCDataset'), 91-93 (cos_fac=1.2, refine_neg_cos=True, sam_iou_thresh=0.9 when no config
# sets them), 273 (prob_thd sends pixels to class 0), 331-342 (class files split on "; ", line 338);
# configs/base_config.py:5-22, which every cfg_<name>.py extends (line 1) and overrides: clip_type='openai',
# model_type='ViT-B/16' :7-8, vfm_model='dino' :9 (torch.hub dino_vitb16, trident.py:48), beta=1.2 :11,
# cos_fac=1.2 :12, refine_neg_cos=True :13, slide_stride=224 :14, slide_crop=336 :15, sam_model_type='vit_b' :16,
# sam_iou_thresh=0.80 :17, coarse_thresh=0.2 :18, minimal_area=225 :19, sam_refinement=False :3/:21, turned on in
# every official run (dist_test.sh:3 --sam_refine -> eval.py:63; eval_all.py:2-13 runs the eight configs below).
# Padding: Trident pads each window to a multiple of 56 on both sides (trident.py:219-221, compute_padsize
# 296-308), but its windows are always full 336 crops (336 % 56 == 0): the configs' Resize gives a short side of
# 336 to 688, and preprocess_image (seg_utils/utils.py:9-25) then rounds each side up to a multiple of the patch
# and to at least slide_crop (:20-22), so no window is ever padded; patch_padding="center" says the same.
# Its models run in fp16 (CLIP precision='fp16' trident.py:42, DINO .half() :49, SAM .half() :87 with its prompt
# encoder and mask decoder in fp32 :88-89).
# Its dataset names in our DATASETS registry: voc21 (PascalVOCDataset), context60 (PascalContext60Dataset),
# coco_object (COCOObjectDataset), voc20 (PascalVOC20Dataset), context59 (PascalContext59Dataset),
# coco_stuff164k (COCOStuffDataset), cityscapes (CityscapesDataset), ade20k (ADE20KDataset).
# Every per-dataset value a config sets is written out below, even where it equals the base one.
TRIDENT = Anchor(
    "trident",
    _TRIDENT,
    base={"method": "trident", "crop_size": 336, "stride": 224, "patch_padding": "center", "background_threshold": 0.0,
          "synonym_separator": "; ",
          "knobs": {"dense_logit_scale": 40.0, "proxy_beta": 1.2, "proxy_gamma": 3.0, "sam_cosine_factor": 1.2,
                    "sam_refine_negative_cosine": True, "sam_split_halves": False, "sam_refinement": True,
                    "sam_iou_threshold": 0.8, "sam_coarse_threshold": 0.2, "sam_minimal_area": 225,
                    "sam_mask_coefficient": 0.005}},
    datasets={
        # configs/cfg_voc21.py:5 (class file), 6 (prob_thd=0.2), 7 (coarse_thresh=0.2), 16 (Resize (2048, 448))
        "voc21": {"config": "cfg_voc21.py", "classes": "trident/cls_voc21.txt", **_resize(448),
                  "background_threshold": 0.2, "knobs": {"sam_coarse_threshold": 0.2}},
        # cfg_context60.py:5, 6 (prob_thd=0.15), 7 (coarse_thresh=0.15), 16 (Resize (2048, 576))
        "context60": {"config": "cfg_context60.py", "classes": "trident/cls_context60.txt", **_resize(576),
                      "background_threshold": 0.15, "knobs": {"sam_coarse_threshold": 0.15}},
        # cfg_coco_object.py:5, 6 (coarse_thresh=0.25), 7 (prob_thd=0.25), 16 (Resize (2048, 448))
        "coco_object": {"config": "cfg_coco_object.py", "classes": "trident/cls_coco_object.txt", **_resize(448),
                        "background_threshold": 0.25, "knobs": {"sam_coarse_threshold": 0.25}},
        # cfg_voc20.py:5, 6 (coarse_thresh=0.2), 7 (slide_stride=112), 8 (cos_fac=0.0), 17 (Resize (2048, 336))
        "voc20": {"config": "cfg_voc20.py", "classes": "trident/cls_voc20.txt", **_resize(336), "stride": 112,
                  "knobs": {"sam_coarse_threshold": 0.2, "sam_cosine_factor": 0.0}},
        # cfg_context59.py:5, 6 (coarse_thresh=0.15), 15 (Resize (2048, 576))
        "context59": {"config": "cfg_context59.py", "classes": "trident/cls_context59.txt", **_resize(576),
                      "knobs": {"sam_coarse_threshold": 0.15}},
        # cfg_coco_stuff164k.py:5, 6 (coarse_thresh=0.05), 15 (Resize (2048, 448))
        "coco_stuff164k": {"config": "cfg_coco_stuff164k.py", "classes": "trident/cls_coco_stuff.txt",
                           **_resize(448), "knobs": {"sam_coarse_threshold": 0.05}},
        # cfg_city_scapes.py:5, 6 (model dataset_type='CityscapesDataset': SAM on the left and right halves,
        # trident.py:61, 141-152), 7 (cos_fac=3.0), 8 (refine_neg_cos=False), 9 (coarse_thresh=0.10),
        # 18 (Resize (2048, 688))
        "cityscapes": {"config": "cfg_city_scapes.py", "classes": "trident/cls_city_scapes.txt", **_resize(688),
                       "knobs": {"sam_split_halves": True, "sam_cosine_factor": 3.0,
                                 "sam_refine_negative_cosine": False, "sam_coarse_threshold": 0.10}},
        # cfg_ade20k.py:5, 6 (refine_neg_cos=False), 7 (coarse_thresh=0.05), 16 (Resize (2048, 576))
        "ade20k": {"config": "cfg_ade20k.py", "classes": "trident/cls_ade20k.txt", **_resize(576),
                   "knobs": {"sam_refine_negative_cosine": False, "sam_coarse_threshold": 0.05}},
    },
)  # fmt: skip

ANCHORS: dict[str, Anchor] = {
    anchor.name: anchor for anchor in (SCLIP, NACLIP, CLEARCLIP, SEGEARTH, SFP, PROXYCLIP, TRIDENT)
}

#: The official configs (and class files without a config) that have no protocol here, and why. Every config
#: file of every anchor is either a protocol above or listed here (tests/fixtures/official_configs.json).
NOT_OFFERED: dict[tuple[str, str], str] = {
    ("sfp", "cfg_city_scapes_local.py"): "the same setting as cfg_city_scapes.py (it differs only in data_root, "
    "line 10, the authors' local path): use --protocol sfp --dataset cityscapes",
    ("proxyclip", "cfg_context459.py"): "no Pascal Context-459 loader yet (detectron2's .tif annotations)",
    ("proxyclip", "cfg_ade847.py"): "no ADE20K-847 loader yet (detectron2's .tif annotations)",
    ("trident", "cfg_context459.py"): "no Pascal Context-459 loader yet (detectron2's .tif annotations, "
    "custom_datasets.py:287)",
    ("trident", "cfg_ade847.py"): "no ADE20K-847 loader yet (detectron2's .tif annotations, custom_datasets.py:193)",
    ("segearth", "cls_massachusetts_building.txt"): "SegEarth-OV ships the class file but no config or dataset "
    "class for it, so there is no setting to reproduce",
    ("maskclip", "configs/maskclip/*.py"): "MaskCLIP's mmseg 0.x evaluation (ImageNet mean/std, bottom-right "
    "padding to a multiple of 16, whole-image inference, text embeddings from its own 85 templates and class "
    "lists) is not offered; the maskclip preset is its model code",
}

SOURCES = {
    "sclip": f"SCLIP (Wang et al., ECCV 2024), {_SCLIP}: clip_segmentor.py, configs/cfg_*.py, configs/cls_*.txt",
    "naclip": f"NACLIP (Hajimiri et al., WACV 2025), {_NACLIP}: naclip.py, pamr.py, configs/cfg_*.py, "
    "configs/cls_*.txt; reduced arch, Gaussian std 5, PAMR on (README, test_all.sh)",
    "clearclip": f"ClearCLIP (Lan et al., ECCV 2024), {_CLEARCLIP}: clearclip_segmentor.py, configs/cfg_*.py, "
    "configs/cls_*.txt; ClearCLIP attention (its base_config.py says 'vanilla')",
    "segearth": f"SegEarth-OV (Li et al., CVPR 2025), {_SEGEARTH}: segearth_segmentor.py, configs/cfg_*.py, "
    "configs/cls_*.txt; SimFeatUp when the model carries it (hf-ovseg convert --feature-upsampler)",
    "sfp": f"SFP (Jin et al., ICCV 2025), {_SFP}: SFP_segmentor.py, clip/model.py, configs/cfg_*.py, configs/cls_*.txt",
    "proxyclip": f"ProxyCLIP (Lan et al., ECCV 2024), {_PROXYCLIP}: proxyclip_segmentor.py, open_clip/transformer.py, "
    "configs/cfg_*.py, configs/cls_*.txt; needs a model with a proxy (hf-ovseg convert --proxy)",
    "trident": f"Trident (Shi et al., ICCV 2025), {_TRIDENT}: trident.py, open_clip/transformer.py, "
    "seg_utils/utils.py, configs/cfg_*.py, configs/cls_*.txt; SAM refinement on (dist_test.sh:3); needs a model "
    "with a DINO proxy and SAM (hf-ovseg convert --proxy facebook/dino-vitb16 --sam facebook/sam-vit-base)",
}


def resolve_protocol(name: str, dataset: str) -> Protocol:
    """The full setting of protocol ``name`` on ``dataset``."""
    if name not in ANCHORS:
        raise ValueError(f"unknown protocol {name!r}; choose one of {', '.join(ANCHORS)}")
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    protocol = ANCHORS[name].protocol(dataset)
    if len(protocol.prompts) != DATASETS[dataset].num_classes:
        raise AssertionError(f"{protocol.classes} does not have {DATASETS[dataset].num_classes} lines")
    return protocol


def with_overrides(protocol: Protocol, **values: Any) -> Protocol:
    """``protocol`` with explicit values replacing its own (``None`` values are ignored)."""
    return replace(protocol, **{k: v for k, v in values.items() if v is not None})


def protocol_table() -> str:
    """Markdown table of every protocol on every dataset it has a config for."""
    lines = [
        "| protocol | dataset | method | resize (short / long cap) | crop / stride | padding | logit scale "
        "| prob_thd (class) | area_thd | refine | class file |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, anchor in ANCHORS.items():
        for dataset in anchor.datasets:
            p = resolve_protocol(name, dataset)
            window = "whole" if p.crop_size is None else f"{p.crop_size} / {p.stride}"
            extra = "".join(
                f", {k}={v}" if isinstance(v, bool) else f", {k}={v:g}"
                for k, v in p.knobs.items()
                if k not in ("dense_logit_scale",)
            )
            background = DATASETS[dataset].class_names[p.background_index] if p.background_threshold else "-"
            lines.append(
                f"| {name} | {dataset} | {p.method}{extra} | {p.short_side} / {p.long_side} | {window} | "
                f"{p.patch_padding} | {p.knobs['dense_logit_scale']:g} | {p.background_threshold:g} ({background}) | "
                f"{'-' if p.area_threshold is None else f'{p.area_threshold:g}'} | {p.refine or '-'} | {p.classes} |"
            )
    return "\n".join(lines)


def not_offered_table() -> str:
    """The official configs without a protocol, and why (printed by ``hf-ovseg protocols``)."""
    return "\n".join(f"- {anchor} {what}: {why}" for (anchor, what), why in NOT_OFFERED.items())


__all__ = [
    "ANCHORS",
    "NOT_OFFERED",
    "SOURCES",
    "Anchor",
    "Protocol",
    "not_offered_table",
    "protocol_table",
    "resolve_protocol",
    "with_overrides",
]
