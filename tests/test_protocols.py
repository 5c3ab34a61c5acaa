"""The anchors' protocols against the values read in their official configs (a table per config file, each
value with its file and line), the shipped class files against the official files, and the CLI plumbing."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from hf_ovseg.cli import main
from hf_ovseg.evaluation import DATASETS
from hf_ovseg.evaluation.benchmarks import CLASSES_DIR
from hf_ovseg.evaluation.protocols import ANCHORS, protocol_table, resolve_protocol
from hf_ovseg.labels import parse_labels

#: Segmentor defaults, with the line of the official file that sets each (the configs override them).
DEFAULTS = {
    "sclip": {  # wangf3014/SCLIP@b56bd30
        "method": ("sclip", "clip_segmentor.py:63 csa=True; the last block keeps residual and MLP, model.py:249-251"),
        "crop_size": (224, "clip_segmentor.py:21"),
        "stride": (112, "clip_segmentor.py:21"),
        "dense_logit_scale": (40.0, "clip_segmentor.py:20"),
        "background_threshold": (0.0, "clip_segmentor.py:20"),
        "area_threshold": (None, "clip_segmentor.py:21"),
        "refine": (None, "clip_segmentor.py:20 pamr_steps=0"),
        "patch_padding": ("none", "clip_segmentor.py:80-84, 68-71"),
        "background_index": (0, "clip_segmentor.py:170"),
    },
    "naclip": {  # sinahmr/NACLIP@0cac3a6
        "method": ("naclip", "naclip.py:21 arch='reduced', attn_strategy='naclip'"),
        "naclip_gaussian_std": (5.0, "naclip.py:21"),
        "crop_size": (224, "naclip.py:22"),
        "stride": (112, "naclip.py:22"),
        "dense_logit_scale": (40.0, "naclip.py:22"),
        "background_threshold": (0.0, "naclip.py:22"),
        "area_threshold": (None, "naclip.py has no area_thd"),
        "refine": ("pamr", "naclip.py:21 pamr_steps=10; eval.py:56-57 --pamr on"),
        "patch_padding": ("none", "naclip.py:71-74, 64-68"),
        "background_index": (0, "naclip.py:152"),
    },
    "clearclip": {  # mc-lan/ClearCLIP@ad68a40
        "method": ("clearclip", "open_clip/transformer.py:614-616 (paper, demo; base_config.py:6 says vanilla)"),
        "crop_size": (448, "clearclip_segmentor.py:23"),
        "stride": (224, "clearclip_segmentor.py:23"),
        "dense_logit_scale": (50.0, "clearclip_segmentor.py:23"),
        "background_threshold": (0.0, "clearclip_segmentor.py:23"),
        "area_threshold": (None, "clearclip_segmentor.py has no area_thd"),
        "refine": (None, "clearclip_segmentor.py has no PAMR"),
        "patch_padding": ("center", "clearclip_segmentor.py:168-180, 246-258"),
        "background_index": (0, "clearclip_segmentor.py:230"),
    },
    "segearth": {  # likyoo/SegEarth-OV@3e22a96
        "method": ("segearth", "configs/base_config.py:6 model_type='SegEarth'"),
        "crop_size": (224, "segearth_segmentor.py:34"),
        "stride": (112, "segearth_segmentor.py:33"),
        "dense_logit_scale": (50.0, "segearth_segmentor.py:32"),
        "background_threshold": (0.0, "segearth_segmentor.py:31"),
        "cls_logit_lambda": (-0.3, "configs/base_config.py:12"),
        "area_threshold": (None, "segearth_segmentor.py has no area_thd"),
        "refine": (None, "segearth_segmentor.py has no PAMR"),
        "patch_padding": ("center", "segearth_segmentor.py:251-263, 327-339"),
        "background_index": (0, "segearth_segmentor.py:36"),
    },
    "sfp": {  # Kimsure/SFP@2804f5b:SFP_ICCV
        "method": ("sfp", "configs/base_config.py:3-9"),
        "sfp_residual_cls": (0.3, "configs/base_config.py:9"),
        "crop_size": (224, "SFP_segmentor.py:24"),
        "stride": (112, "SFP_segmentor.py:24"),
        "dense_logit_scale": (40.0, "SFP_segmentor.py:23"),
        "background_threshold": (0.0, "SFP_segmentor.py:23"),
        "area_threshold": (None, "SFP_segmentor.py:24"),
        "refine": (None, "SFP_segmentor.py:23 pamr_steps=0"),
        "patch_padding": ("none", "SFP_segmentor.py:89-93, 77-80"),
        "background_index": (0, "SFP_segmentor.py:178"),
    },
    "proxyclip": {  # mc-lan/ProxyCLIP@e7b767f
        "method": ("proxyclip", "configs/base_config.py:6 vfm_model='dino' (dino_vitb8, proxyclip_segmentor.py:53)"),
        "crop_size": (336, "proxyclip_segmentor.py:31 slide_crop=336"),
        "stride": (112, "proxyclip_segmentor.py:31 slide_stride=112"),
        "dense_logit_scale": (40.0, "proxyclip_segmentor.py:30 logit_scale=40"),
        "background_threshold": (0.0, "proxyclip_segmentor.py:30 prob_thd=0.0"),
        "area_threshold": (None, "proxyclip_segmentor.py has no area_thd"),
        "refine": (None, "proxyclip_segmentor.py has no PAMR"),
        "patch_padding": ("center", "proxyclip_segmentor.py:218-231, 294-306 (pad to 56, cut back)"),
        "background_index": (0, "proxyclip_segmentor.py:281"),
        "synonym_separator": ("; ", "proxyclip_segmentor.py:336"),
    },
    "trident": {  # YuHengsss/Trident@a93b346 (configs/base_config.py over the segmentor defaults, trident.py:29-33)
        "method": ("trident", "configs/base_config.py:6-9,16 openai ViT-B/16, dino_vitb16 (trident.py:48), vit_b"),
        "crop_size": (336, "configs/base_config.py:15 slide_crop=336"),
        "stride": (224, "configs/base_config.py:14 slide_stride=224 (trident.py:30 default 112)"),
        "dense_logit_scale": (40.0, "trident.py:30 logit_scale=40"),
        "proxy_beta": (1.2, "configs/base_config.py:11 beta=1.2"),
        "proxy_gamma": (3.0, "trident.py:30 gamma=3.0"),
        "sam_cosine_factor": (1.2, "configs/base_config.py:12 cos_fac=1.2"),
        "sam_refine_negative_cosine": (True, "configs/base_config.py:13 refine_neg_cos=True"),
        "sam_split_halves": (False, "trident.py:61 dataset_type='PascalVOCDataset' unless the model sets it, 141"),
        "sam_refinement": (True, "dist_test.sh:3 --sam_refine -> eval.py:63 (configs/base_config.py:3 False)"),
        "sam_iou_threshold": (0.8, "configs/base_config.py:17 sam_iou_thresh=0.80 (trident.py:93 default 0.9)"),
        "sam_coarse_threshold": (0.2, "configs/base_config.py:18 coarse_thresh=0.2 (trident.py:33 default 0.10)"),
        "sam_minimal_area": (225, "configs/base_config.py:19 minimal_area=225"),
        "sam_mask_coefficient": (0.005, "trident.py:33 sam_mask_coff=0.005"),
        "background_threshold": (0.0, "trident.py:30 prob_thd=0.0"),
        "area_threshold": (None, "trident.py has no area_thd"),
        "refine": (None, "trident.py:31 pamr_steps=0 (SAM refinement is the knob sam_refinement)"),
        "patch_padding": ("center", "trident.py:219-221 pad to 56 on both sides; windows are full 336 crops"),
        "background_index": (0, "trident.py:273"),
        "synonym_separator": ("; ", "trident.py:338"),
    },
}

#: Values set by each official configs/cfg_<dataset>.py (read off the files), with their lines.
CONFIGS = {
    ("sclip", "ade20k"): {
        "classes": ("sclip/cls_ade20k.txt", "cfg_ade20k.py:5"),
        "long_side": (2048, "cfg_ade20k.py:14"),
        "short_side": (336, "cfg_ade20k.py:14"),
    },
    ("sclip", "cityscapes"): {
        "classes": ("sclip/cls_city_scapes.txt", "cfg_city_scapes.py:5"),
        "long_side": (2048, "cfg_city_scapes.py:14"),
        "short_side": (560, "cfg_city_scapes.py:14"),
    },
    ("sclip", "coco_object"): {
        "classes": ("sclip/cls_coco_object.txt", "cfg_coco_object.py:5"),
        "dense_logit_scale": (50.0, "cfg_coco_object.py:6"),
        "background_threshold": (0.1, "cfg_coco_object.py:7"),
        "long_side": (2048, "cfg_coco_object.py:16"),
        "short_side": (336, "cfg_coco_object.py:16"),
    },
    ("sclip", "coco_stuff164k"): {
        "classes": ("sclip/cls_coco_stuff.txt", "cfg_coco_stuff164k.py:5"),
        "long_side": (2048, "cfg_coco_stuff164k.py:14"),
        "short_side": (448, "cfg_coco_stuff164k.py:14"),
    },
    ("sclip", "context59"): {
        "classes": ("sclip/cls_context59.txt", "cfg_context59.py:5"),
        "long_side": (2048, "cfg_context59.py:14"),
        "short_side": (336, "cfg_context59.py:14"),
    },
    ("sclip", "context60"): {
        "classes": ("sclip/cls_context60.txt", "cfg_context60.py:5"),
        "dense_logit_scale": (50.0, "cfg_context60.py:6"),
        "background_threshold": (0.1, "cfg_context60.py:7"),
        "long_side": (2048, "cfg_context60.py:16"),
        "short_side": (336, "cfg_context60.py:16"),
    },
    ("sclip", "voc20"): {
        "classes": ("sclip/cls_voc20.txt", "cfg_voc20.py:5"),
        "long_side": (2048, "cfg_voc20.py:14"),
        "short_side": (336, "cfg_voc20.py:14"),
    },
    ("sclip", "voc21"): {
        "classes": ("sclip/cls_voc21.txt", "cfg_voc21.py:5"),
        "dense_logit_scale": (65.0, "cfg_voc21.py:6"),
        "background_threshold": (0.1, "cfg_voc21.py:7"),
        "area_threshold": (0.1, "cfg_voc21.py:8"),
        "long_side": (2048, "cfg_voc21.py:17"),
        "short_side": (336, "cfg_voc21.py:17"),
    },
    ("naclip", "ade20k"): {
        "classes": ("naclip/cls_ade20k.txt", "cfg_ade20k.py:5"),
        "long_side": (2048, "cfg_ade20k.py:14"),
        "short_side": (336, "cfg_ade20k.py:14"),
    },
    ("naclip", "cityscapes"): {
        "classes": ("naclip/cls_city_scapes.txt", "cfg_city_scapes.py:5"),
        "long_side": (2048, "cfg_city_scapes.py:14"),
        "short_side": (560, "cfg_city_scapes.py:14"),
    },
    ("naclip", "coco_object"): {
        "classes": ("naclip/cls_coco_object.txt", "cfg_coco_object.py:5"),
        "background_threshold": (0.1, "cfg_coco_object.py:6"),
        "long_side": (2048, "cfg_coco_object.py:15"),
        "short_side": (336, "cfg_coco_object.py:15"),
    },
    ("naclip", "coco_stuff164k"): {
        "classes": ("naclip/cls_coco_stuff.txt", "cfg_coco_stuff164k.py:5"),
        "long_side": (2048, "cfg_coco_stuff164k.py:14"),
        "short_side": (336, "cfg_coco_stuff164k.py:14"),
    },
    ("naclip", "context59"): {
        "classes": ("naclip/cls_context59.txt", "cfg_context59.py:5"),
        "long_side": (2048, "cfg_context59.py:14"),
        "short_side": (336, "cfg_context59.py:14"),
    },
    ("naclip", "context60"): {
        "classes": ("naclip/cls_context60.txt", "cfg_context60.py:5"),
        "background_threshold": (0.1, "cfg_context60.py:6"),
        "long_side": (2048, "cfg_context60.py:15"),
        "short_side": (336, "cfg_context60.py:15"),
    },
    ("naclip", "voc20"): {
        "classes": ("naclip/cls_voc20.txt", "cfg_voc20.py:5"),
        "crop_size": (None, "cfg_voc20.py:6"),
        "long_side": (2048, "cfg_voc20.py:15"),
        "short_side": (336, "cfg_voc20.py:15"),
    },
    ("naclip", "voc21"): {
        "classes": ("naclip/cls_voc21.txt", "cfg_voc21.py:5"),
        "background_threshold": (0.1, "cfg_voc21.py:6"),
        "crop_size": (None, "cfg_voc21.py:7"),
        "long_side": (2048, "cfg_voc21.py:16"),
        "short_side": (336, "cfg_voc21.py:16"),
    },
    ("clearclip", "ade20k"): {
        "classes": ("clearclip/cls_ade20k.txt", "cfg_ade20k.py:5"),
        "long_side": (2048, "cfg_ade20k.py:14"),
        "short_side": (448, "cfg_ade20k.py:14"),
    },
    ("clearclip", "cityscapes"): {
        "classes": ("clearclip/cls_city_scapes.txt", "cfg_city_scapes.py:5"),
        "crop_size": (224, "cfg_city_scapes.py:6"),
        "long_side": (2048, "cfg_city_scapes.py:15"),
        "short_side": (448, "cfg_city_scapes.py:15"),
    },
    ("clearclip", "coco_object"): {
        "classes": ("clearclip/cls_coco_object.txt", "cfg_coco_object.py:5"),
        "background_threshold": (0.4, "cfg_coco_object.py:6"),
        "long_side": (2048, "cfg_coco_object.py:15"),
        "short_side": (448, "cfg_coco_object.py:15"),
    },
    ("clearclip", "coco_stuff164k"): {
        "classes": ("clearclip/cls_coco_stuff.txt", "cfg_coco_stuff164k.py:5"),
        "long_side": (2048, "cfg_coco_stuff164k.py:14"),
        "short_side": (448, "cfg_coco_stuff164k.py:14"),
    },
    ("clearclip", "context59"): {
        "classes": ("clearclip/cls_context59.txt", "cfg_context59.py:5"),
        "long_side": (2048, "cfg_context59.py:14"),
        "short_side": (448, "cfg_context59.py:14"),
    },
    ("clearclip", "context60"): {
        "classes": ("clearclip/cls_context60.txt", "cfg_context60.py:5"),
        "background_threshold": (0.15, "cfg_context60.py:6"),
        "long_side": (2048, "cfg_context60.py:15"),
        "short_side": (448, "cfg_context60.py:15"),
    },
    ("clearclip", "voc20"): {
        "classes": ("clearclip/cls_voc20.txt", "cfg_voc20.py:5"),
        "long_side": (2048, "cfg_voc20.py:14"),
        "short_side": (448, "cfg_voc20.py:14"),
    },
    ("clearclip", "voc21"): {
        "classes": ("clearclip/cls_voc21.txt", "cfg_voc21.py:5"),
        "background_threshold": (0.5, "cfg_voc21.py:6"),
        "long_side": (2048, "cfg_voc21.py:15"),
        "short_side": (448, "cfg_voc21.py:15"),
    },
    ("sfp", "ade20k"): {
        "classes": ("sfp/cls_ade20k.txt", "cfg_ade20k.py:5"),
        "long_side": (2048, "cfg_ade20k.py:14"),
        "short_side": (384, "cfg_ade20k.py:14"),
    },
    ("sfp", "cityscapes"): {
        "classes": ("sfp/cls_city_scapes.txt", "cfg_city_scapes.py:5"),
        "long_side": (2048, "cfg_city_scapes.py:14"),
        "short_side": (560, "cfg_city_scapes.py:14"),
    },
    ("sfp", "coco_object"): {
        "classes": ("sfp/cls_coco_object.txt", "cfg_coco_object.py:5"),
        "dense_logit_scale": (55.0, "cfg_coco_object.py:7"),
        "background_threshold": (0.35, "cfg_coco_object.py:7"),
        "long_side": (2048, "cfg_coco_object.py:18"),
        "short_side": (336, "cfg_coco_object.py:18"),
    },
    ("sfp", "coco_stuff164k"): {
        "classes": ("sfp/cls_coco_stuff.txt", "cfg_coco_stuff164k.py:5"),
        "long_side": (2048, "cfg_coco_stuff164k.py:14"),
        "short_side": (336, "cfg_coco_stuff164k.py:14"),
    },
    ("sfp", "context59"): {
        "classes": ("sfp/cls_context59.txt", "cfg_context59.py:5"),
        "long_side": (2048, "cfg_context59.py:14"),
        "short_side": (336, "cfg_context59.py:14"),
    },
    ("sfp", "context60"): {
        "classes": ("sfp/cls_context60.txt", "cfg_context60.py:5"),
        "background_threshold": (0.15, "cfg_context60.py:6"),
        "long_side": (2048, "cfg_context60.py:15"),
        "short_side": (336, "cfg_context60.py:15"),
    },
    ("sfp", "voc20"): {
        "classes": ("sfp/cls_voc20.txt", "cfg_voc20.py:5"),
        "long_side": (2048, "cfg_voc20.py:14"),
        "short_side": (336, "cfg_voc20.py:14"),
    },
    ("sfp", "voc21"): {
        "classes": ("sfp/cls_voc21.txt", "cfg_voc21.py:5"),
        "area_threshold": (0.1, "cfg_voc21.py:6"),
        "dense_logit_scale": (50.0, "cfg_voc21.py:8"),
        "background_threshold": (0.15, "cfg_voc21.py:8"),
        "long_side": (2048, "cfg_voc21.py:19"),
        "short_side": (336, "cfg_voc21.py:19"),
    },
    ("segearth", "chn6_cug"): {
        "classes": ("segearth/cls_chn6-cug.txt", "cfg_chn6-cug.py:5"),
        "background_threshold": (0.8, "cfg_chn6-cug.py:6"),
        "long_side": (448, "cfg_chn6-cug.py:15"),
        "short_side": (448, "cfg_chn6-cug.py:15"),
    },
    ("segearth", "deepglobe_road"): {
        "classes": ("segearth/cls_roadval.txt", "cfg_deepglobe_road.py:5"),
        "background_threshold": (0.7, "cfg_deepglobe_road.py:6"),
        "long_side": (448, "cfg_deepglobe_road.py:15"),
        "short_side": (448, "cfg_deepglobe_road.py:15"),
    },
    ("segearth", "isaid"): {
        "classes": ("segearth/cls_iSAID.txt", "cfg_iSAID.py:5"),
        "background_threshold": (0.4, "cfg_iSAID.py:6"),
        "long_side": (448, "cfg_iSAID.py:15"),
        "short_side": (448, "cfg_iSAID.py:15"),
    },
    ("segearth", "inria"): {
        "classes": ("segearth/cls_inria.txt", "cfg_inria.py:5"),
        "background_threshold": (0.6, "cfg_inria.py:6"),
        "long_side": (448, "cfg_inria.py:15"),
        "short_side": (448, "cfg_inria.py:15"),
    },
    ("segearth", "loveda"): {
        "classes": ("segearth/cls_loveda.txt", "cfg_loveda.py:5"),
        "background_threshold": (0.3, "cfg_loveda.py:6"),
        "long_side": (448, "cfg_loveda.py:17"),
        "short_side": (448, "cfg_loveda.py:17"),
    },
    ("segearth", "massachusetts_road"): {
        "classes": ("segearth/cls_roadval.txt", "cfg_massachusetts_road.py:5"),
        "background_threshold": (0.7, "cfg_massachusetts_road.py:6"),
        "long_side": (448, "cfg_massachusetts_road.py:15"),
        "short_side": (448, "cfg_massachusetts_road.py:15"),
    },
    ("segearth", "openearthmap"): {
        "classes": ("segearth/cls_openearthmap.txt", "cfg_openearthmap.py:5"),
        "background_threshold": (0.1, "cfg_openearthmap.py:6"),
        "long_side": (448, "cfg_openearthmap.py:15"),
        "short_side": (448, "cfg_openearthmap.py:15"),
    },
    ("segearth", "potsdam"): {
        "classes": ("segearth/cls_potsdam.txt", "cfg_potsdam.py:5"),
        "background_threshold": (0.1, "cfg_potsdam.py:6"),
        "background_index": (5, "cfg_potsdam.py:7"),
        "long_side": (448, "cfg_potsdam.py:16"),
        "short_side": (448, "cfg_potsdam.py:16"),
    },
    ("segearth", "spacenet_road"): {
        "classes": ("segearth/cls_roadval.txt", "cfg_spacenet_road.py:5"),
        "background_threshold": (0.7, "cfg_spacenet_road.py:6"),
        "long_side": (448, "cfg_spacenet_road.py:15"),
        "short_side": (448, "cfg_spacenet_road.py:15"),
    },
    ("segearth", "uavid"): {
        "classes": ("segearth/cls_uavid.txt", "cfg_uavid.py:5"),
        "background_threshold": (0.3, "cfg_uavid.py:6"),
        "long_side": (448, "cfg_uavid.py:15"),
        "short_side": (448, "cfg_uavid.py:15"),
    },
    ("segearth", "udd5"): {
        "classes": ("segearth/cls_udd5.txt", "cfg_udd5.py:5"),
        "background_threshold": (0.4, "cfg_udd5.py:6"),
        "background_index": (4, "cfg_udd5.py:7"),
        "long_side": (448, "cfg_udd5.py:16"),
        "short_side": (448, "cfg_udd5.py:16"),
    },
    ("segearth", "vaihingen"): {
        "classes": ("segearth/cls_vaihingen.txt", "cfg_vaihingen.py:5"),
        "background_threshold": (0.1, "cfg_vaihingen.py:6"),
        "background_index": (5, "cfg_vaihingen.py:7"),
        "long_side": (448, "cfg_vaihingen.py:16"),
        "short_side": (448, "cfg_vaihingen.py:16"),
    },
    ("segearth", "vdd"): {
        "classes": ("segearth/cls_vdd.txt", "cfg_vdd.py:5"),
        "background_threshold": (0.3, "cfg_vdd.py:6"),
        "long_side": (448, "cfg_vdd.py:15"),
        "short_side": (448, "cfg_vdd.py:15"),
    },
    ("segearth", "wbs_si"): {
        "classes": ("segearth/cls_wbs-si.txt", "cfg_wbs-si.py:5"),
        "background_threshold": (0.6, "cfg_wbs-si.py:6"),
        "long_side": (448, "cfg_wbs-si.py:15"),
        "short_side": (448, "cfg_wbs-si.py:15"),
    },
    ("segearth", "whu_aerial"): {
        "classes": ("segearth/cls_whu.txt", "cfg_whu_aerial.py:5"),
        "background_threshold": (0.6, "cfg_whu_aerial.py:6"),
        "long_side": (448, "cfg_whu_aerial.py:15"),
        "short_side": (448, "cfg_whu_aerial.py:15"),
    },
    ("segearth", "whu_sat_ii"): {
        "classes": ("segearth/cls_whu.txt", "cfg_whu_sat_II.py:5"),
        "background_threshold": (0.7, "cfg_whu_sat_II.py:6"),
        "long_side": (448, "cfg_whu_sat_II.py:15"),
        "short_side": (448, "cfg_whu_sat_II.py:15"),
    },
    ("segearth", "xbd"): {
        "classes": ("segearth/cls_xBD.txt", "cfg_xBD.py:5"),
        "background_threshold": (0.0, "cfg_xBD.py:6"),
        "cls_logit_lambda": (0.0, "cfg_xBD.py:7"),
        "long_side": (448, "cfg_xBD.py:16"),
        "short_side": (448, "cfg_xBD.py:16"),
    },
}  # fmt: skip

_PROXY_CONFIGS = {
    # dataset: (config, class file, prob_thd and its line or None, short side, resize line, crop, stride)
    "voc21": ("cfg_voc21.py", "cls_voc21.txt", (0.2, 6), 336, 15, None),
    "context60": ("cfg_context60.py", "cls_context60.txt", (0.15, 6), 336, 15, None),
    "coco_object": ("cfg_coco_object.py", "cls_coco_object.txt", (0.25, 6), 336, 15, None),
    "voc20": ("cfg_voc20.py", "cls_voc20.txt", None, 336, 14, None),
    "context59": ("cfg_context59.py", "cls_context59.txt", None, 336, 14, None),
    "coco_stuff164k": ("cfg_coco_stuff164k.py", "cls_coco_stuff.txt", None, 336, 14, None),
    "cityscapes": ("cfg_city_scapes.py", "cls_city_scapes.txt", None, 448, 16, (224, 112, "6-7")),
    "ade20k": ("cfg_ade20k.py", "cls_ade20k.txt", None, 448, 14, None),
}
for _dataset, (_config, _classes, _threshold, _short, _line, _slide) in _PROXY_CONFIGS.items():
    CONFIGS[("proxyclip", _dataset)] = {
        "classes": (f"proxyclip/{_classes}", f"{_config}:5"),
        "long_side": (2048, f"{_config}:{_line}"),
        "short_side": (_short, f"{_config}:{_line}"),
        **({"background_threshold": (_threshold[0], f"{_config}:{_threshold[1]}")} if _threshold else {}),
        **({"crop_size": (_slide[0], f"{_config}:{_slide[2]}"), "stride": (_slide[1], f"{_config}:{_slide[2]}")}
           if _slide else {}),
    }  # fmt: skip
#: Trident@a93b346 configs/cfg_<dataset>.py: every value each sets (the rest are DEFAULTS["trident"]).
TRIDENT_CONFIGS = {
    "voc21": {
        "classes": ("trident/cls_voc21.txt", "cfg_voc21.py:5"),
        "background_threshold": (0.2, "cfg_voc21.py:6"),
        "sam_coarse_threshold": (0.2, "cfg_voc21.py:7"),
        "long_side": (2048, "cfg_voc21.py:16"),
        "short_side": (448, "cfg_voc21.py:16"),
    },
    "context60": {
        "classes": ("trident/cls_context60.txt", "cfg_context60.py:5"),
        "background_threshold": (0.15, "cfg_context60.py:6"),
        "sam_coarse_threshold": (0.15, "cfg_context60.py:7"),
        "long_side": (2048, "cfg_context60.py:16"),
        "short_side": (576, "cfg_context60.py:16"),
    },
    "coco_object": {
        "classes": ("trident/cls_coco_object.txt", "cfg_coco_object.py:5"),
        "sam_coarse_threshold": (0.25, "cfg_coco_object.py:6"),
        "background_threshold": (0.25, "cfg_coco_object.py:7"),
        "long_side": (2048, "cfg_coco_object.py:16"),
        "short_side": (448, "cfg_coco_object.py:16"),
    },
    "voc20": {
        "classes": ("trident/cls_voc20.txt", "cfg_voc20.py:5"),
        "sam_coarse_threshold": (0.2, "cfg_voc20.py:6"),
        "stride": (112, "cfg_voc20.py:7"),
        "sam_cosine_factor": (0.0, "cfg_voc20.py:8"),
        "long_side": (2048, "cfg_voc20.py:17"),
        "short_side": (336, "cfg_voc20.py:17"),
    },
    "context59": {
        "classes": ("trident/cls_context59.txt", "cfg_context59.py:5"),
        "sam_coarse_threshold": (0.15, "cfg_context59.py:6"),
        "long_side": (2048, "cfg_context59.py:15"),
        "short_side": (576, "cfg_context59.py:15"),
    },
    "coco_stuff164k": {
        "classes": ("trident/cls_coco_stuff.txt", "cfg_coco_stuff164k.py:5"),
        "sam_coarse_threshold": (0.05, "cfg_coco_stuff164k.py:6"),
        "long_side": (2048, "cfg_coco_stuff164k.py:15"),
        "short_side": (448, "cfg_coco_stuff164k.py:15"),
    },
    "cityscapes": {
        "classes": ("trident/cls_city_scapes.txt", "cfg_city_scapes.py:5"),
        "sam_split_halves": (True, "cfg_city_scapes.py:6 model dataset_type='CityscapesDataset' (trident.py:141)"),
        "sam_cosine_factor": (3.0, "cfg_city_scapes.py:7"),
        "sam_refine_negative_cosine": (False, "cfg_city_scapes.py:8"),
        "sam_coarse_threshold": (0.10, "cfg_city_scapes.py:9"),
        "long_side": (2048, "cfg_city_scapes.py:18"),
        "short_side": (688, "cfg_city_scapes.py:18"),
    },
    "ade20k": {
        "classes": ("trident/cls_ade20k.txt", "cfg_ade20k.py:5"),
        "sam_refine_negative_cosine": (False, "cfg_ade20k.py:6"),
        "sam_coarse_threshold": (0.05, "cfg_ade20k.py:7"),
        "long_side": (2048, "cfg_ade20k.py:16"),
        "short_side": (576, "cfg_ade20k.py:16"),
    },
}
for _dataset, _values in TRIDENT_CONFIGS.items():
    CONFIGS[("trident", _dataset)] = _values
CONFIGS[("sclip", "coco_stuff10k")] = {
    "classes": ("sclip/cls_coco_stuff.txt", "cfg_coco_stuff10k.py:5"),
    "long_side": (2048, "cfg_coco_stuff10k.py:14"),
    "short_side": (336, "cfg_coco_stuff10k.py:14"),
}

KNOBS = (
    "dense_logit_scale", "cls_logit_lambda", "naclip_gaussian_std", "sfp_residual_cls", "proxy_beta", "proxy_gamma",
    "sam_cosine_factor", "sam_refine_negative_cosine", "sam_split_halves", "sam_refinement", "sam_iou_threshold",
    "sam_coarse_threshold", "sam_minimal_area", "sam_mask_coefficient",
)  # fmt: skip


def resolved_value(protocol, field):
    return protocol.knobs.get(field) if field in KNOBS else getattr(protocol, field)


@pytest.mark.parametrize(("anchor", "dataset"), list(CONFIGS))
def test_protocol_values_are_the_official_configs(anchor, dataset):
    protocol = resolve_protocol(anchor, dataset)
    expected = {**DEFAULTS[anchor], **CONFIGS[(anchor, dataset)]}
    if expected["crop_size"][0] is None:  # slide_crop=0: whole image, no stride
        expected["stride"] = (None, expected["crop_size"][1])
    for field, (value, source) in expected.items():
        assert resolved_value(protocol, field) == value, f"{anchor} {dataset} {field}: official {value!r} ({source})"
    assert protocol.dtype == "float16"  # every anchor loads fp16 weights on the GPU


def test_every_official_config_has_a_protocol_and_nothing_else_does(fixtures):
    """Against the config files listed in each official repository (tests/fixtures/official_configs.json, with
    the commits): each is a protocol, or says in NOT_OFFERED why it is not; no protocol without a config."""
    from hf_ovseg.evaluation.protocols import NOT_OFFERED

    pairs = {(name, dataset) for name, anchor in ANCHORS.items() for dataset in anchor.datasets}
    assert pairs == set(CONFIGS)
    official = json.loads((fixtures / "official_configs.json").read_text())
    assert set(official) == set(ANCHORS)
    for anchor, listing in official.items():
        shipped = {resolve_protocol(anchor, dataset).config for dataset in ANCHORS[anchor].datasets}
        files = set(listing["configs"]) | set(listing.get("class_files_without_config", []))
        unexplained = files - shipped - {what for (name, what) in NOT_OFFERED if name == anchor}
        assert not unexplained, f"{anchor} ({listing['repo']}@{listing['commit'][:7]}): no protocol for {unexplained}"
        assert shipped <= files, f"{anchor}: protocols without an official config: {shipped - files}"
    with pytest.raises(ValueError, match="protocol 'segearth' has no setting for 'voc21'"):
        resolve_protocol("segearth", "voc21")
    with pytest.raises(ValueError, match="unknown protocol 'mine'"):
        resolve_protocol("mine", "voc21")


#: sha256 (first 16 hex digits) and line count of each official class file, from the anchor repositories.
CLASS_FILES = {
    "clearclip/cls_ade20k.txt": ("e53ded02c488bdb9", 150),
    "clearclip/cls_city_scapes.txt": ("6f6782fc1bf92bfd", 19),
    "clearclip/cls_coco_object.txt": ("1f17b53017e44225", 81),
    "clearclip/cls_coco_stuff.txt": ("fb98709b9ab1baff", 171),
    "clearclip/cls_context59.txt": ("cd808465f06a1616", 59),
    "clearclip/cls_context60.txt": ("5e620446a8699f29", 60),
    "clearclip/cls_voc20.txt": ("6b9a85ffb907e34a", 20),
    "clearclip/cls_voc21.txt": ("265d9ede93be451d", 21),
    "naclip/cls_ade20k.txt": ("e53ded02c488bdb9", 150),
    "naclip/cls_city_scapes.txt": ("6f6782fc1bf92bfd", 19),
    "naclip/cls_coco_object.txt": ("3475d03d61f85ce0", 81),
    "naclip/cls_coco_stuff.txt": ("fb98709b9ab1baff", 171),
    "naclip/cls_context59.txt": ("cd808465f06a1616", 59),
    "naclip/cls_context60.txt": ("5e620446a8699f29", 60),
    "naclip/cls_voc20.txt": ("c68f65a2b342397c", 20),
    "naclip/cls_voc21.txt": ("80e643a9a1439668", 21),
    "sclip/cls_ade20k.txt": ("e53ded02c488bdb9", 150),
    "sclip/cls_city_scapes.txt": ("6f6782fc1bf92bfd", 19),
    "sclip/cls_coco_object.txt": ("3475d03d61f85ce0", 81),
    "sclip/cls_coco_stuff.txt": ("fb98709b9ab1baff", 171),
    "sclip/cls_context59.txt": ("cd808465f06a1616", 59),
    "sclip/cls_context60.txt": ("5e620446a8699f29", 60),
    "sclip/cls_voc20.txt": ("c68f65a2b342397c", 20),
    "sclip/cls_voc21.txt": ("80e643a9a1439668", 21),
    "segearth/cls_chn6-cug.txt": ("84253c70c616dfb5", 2),
    "segearth/cls_iSAID.txt": ("267ff1dceeca40c6", 16),
    "segearth/cls_inria.txt": ("8e26c94bc29aed9f", 2),
    "segearth/cls_loveda.txt": ("0f9377940105b511", 7),
    "segearth/cls_openearthmap.txt": ("42c1a32ea2dd5385", 9),
    "segearth/cls_potsdam.txt": ("7570ab23d5481e9d", 6),
    "segearth/cls_roadval.txt": ("84253c70c616dfb5", 2),
    "segearth/cls_uavid.txt": ("f33f1b914d5417da", 7),
    "segearth/cls_udd5.txt": ("39c2b88a950e7531", 5),
    "segearth/cls_vaihingen.txt": ("14a0f218225612c2", 6),
    "segearth/cls_vdd.txt": ("375233ff2811716b", 7),
    "segearth/cls_wbs-si.txt": ("cab7c233b8a1ed8e", 2),
    "segearth/cls_whu.txt": ("8e26c94bc29aed9f", 2),
    "segearth/cls_xBD.txt": ("8e26c94bc29aed9f", 2),
    "sfp/cls_ade20k.txt": ("e53ded02c488bdb9", 150),
    "sfp/cls_city_scapes.txt": ("8dba4f1e3eeefc37", 19),
    "sfp/cls_coco_object.txt": ("3475d03d61f85ce0", 81),
    "sfp/cls_coco_stuff.txt": ("fb98709b9ab1baff", 171),
    "sfp/cls_context59.txt": ("cd808465f06a1616", 59),
    "sfp/cls_context60.txt": ("5e620446a8699f29", 60),
    "sfp/cls_voc20.txt": ("317dafe95650b39e", 20),
    "sfp/cls_voc21.txt": ("3b5987c2d5028cff", 21),
    "proxyclip/cls_ade20k.txt": ("e53ded02c488bdb9", 150),
    "proxyclip/cls_city_scapes.txt": ("6f6782fc1bf92bfd", 19),
    "proxyclip/cls_coco_object.txt": ("87b6d3e1d3adf520", 81),
    "proxyclip/cls_coco_stuff.txt": ("fb98709b9ab1baff", 171),
    "proxyclip/cls_context59.txt": ("cd808465f06a1616", 59),
    "proxyclip/cls_context60.txt": ("5e620446a8699f29", 60),
    "proxyclip/cls_voc20.txt": ("6b9a85ffb907e34a", 20),
    "proxyclip/cls_voc21.txt": ("6a194e9134d44459", 21),
    "trident/cls_ade20k.txt": ("e53ded02c488bdb9", 150),
    "trident/cls_city_scapes.txt": ("6f6782fc1bf92bfd", 19),
    "trident/cls_coco_object.txt": ("87b6d3e1d3adf520", 81),
    "trident/cls_coco_stuff.txt": ("fb98709b9ab1baff", 171),
    "trident/cls_context59.txt": ("cd808465f06a1616", 59),
    "trident/cls_context60.txt": ("5e620446a8699f29", 60),
    "trident/cls_voc20.txt": ("6b9a85ffb907e34a", 20),
    "trident/cls_voc21.txt": ("6a194e9134d44459", 21),
}  # fmt: skip


@pytest.mark.parametrize("relative", list(CLASS_FILES))
def test_shipped_class_files_are_the_official_ones(relative):
    data = (CLASSES_DIR / relative).read_bytes()
    digest, lines = CLASS_FILES[relative]
    assert hashlib.sha256(data).hexdigest()[:16] == digest
    assert data.decode().count("\n") + 1 == lines and not data.endswith(b"\n")


@pytest.mark.parametrize("anchor", list(ANCHORS))
def test_class_files_parse_as_the_anchors_get_cls_idx(anchor):
    """Our parser gives each anchor's query list: SCLIP, NACLIP and SFP split lines on ', ', ClearCLIP and
    SegEarth-OV on ',' and ProxyCLIP and Trident on '; ' (get_cls_idx in their segmentors; their ADE names hold
    commas); names are stripped (the tokenizer folds spaces)."""
    separator = {"clearclip": ",", "segearth": ",", "proxyclip": "; ", "trident": "; "}.get(anchor, ", ")
    for dataset in ANCHORS[anchor].datasets:
        protocol = resolve_protocol(anchor, dataset)
        raw = (CLASSES_DIR / protocol.classes).read_text().split("\n")
        official = [tuple(name.strip() for name in line.split(separator)) for line in raw]
        labels = protocol.label_set()
        assert labels.synonyms == tuple(official), (anchor, dataset)
        assert len(labels.labels) == DATASETS[dataset].num_classes


def test_class_files_that_differ_between_anchors():
    def lines(relative):
        return (CLASSES_DIR / relative).read_text().split("\n")

    clear, sclip = lines("clearclip/cls_voc21.txt"), lines("sclip/cls_voc21.txt")
    assert (clear[0], clear[15], clear[20]) == ("background", "person", "tvmonitor")
    assert sclip[0].startswith("sky, wall, tree") and sclip[20].startswith("television monitor, ")
    person = ["person"] + [f"person in {item}" for item in ("shirt", "jeans", "dress", "sweater", "skirt", "jacket")]
    assert sclip[15] == ", ".join(person)
    assert lines("sfp/cls_voc21.txt")[15].startswith("people, people in shirt")
    assert lines("sfp/cls_voc20.txt")[14].startswith("people, ") and lines("sfp/cls_city_scapes.txt")[11] == "people"
    assert lines("clearclip/cls_coco_object.txt")[0] == "background"
    assert lines("sclip/cls_coco_object.txt")[1].endswith("person in jacket, body")
    # COCO-Object's background words include "bed", also a class: allowed for the anchors' files only
    with pytest.raises(ValueError, match="a name can belong to one class only"):
        parse_labels(lines("sclip/cls_coco_object.txt"))
    assert lines("segearth/cls_potsdam.txt") == [
        "road,parking lot", "building", "low vegetation", "tree", "car", "clutter,background"
    ]  # fmt: skip


def test_trident_class_files_are_proxyclips_with_synonyms_on_the_first_line_only():
    """Trident's eight class files are ProxyCLIP's, byte for byte (the same blobs at both pinned commits). Its
    background merge (trident.py:266-270) takes the max over the first ``Q - (C - 1)`` names and one name per
    other class, which is our max over each class's names only while no line but the first has synonyms."""
    for dataset in TRIDENT_CONFIGS:
        protocol = resolve_protocol("trident", dataset)
        shipped = (CLASSES_DIR / protocol.classes).read_bytes()
        assert shipped == (CLASSES_DIR / resolve_protocol("proxyclip", dataset).classes).read_bytes()
        assert all(len(names) == 1 for names in protocol.label_set().synonyms[1:]), dataset
    assert len(resolve_protocol("trident", "voc21").label_set().synonyms[0]) == 26
    assert len(resolve_protocol("trident", "coco_object").label_set().synonyms[0]) == 17


@pytest.mark.parametrize(("anchor", "dataset"), list(CONFIGS))
def test_protocol_knobs_are_valid_method_knobs(anchor, dataset):
    """Every protocol names a preset and knobs the configuration accepts, and call arguments the pipeline
    accepts (checked before any model loads)."""
    from hf_ovseg.configuration_ovseg import METHOD_KNOBS, METHOD_PRESETS, OVSegConfig
    from hf_ovseg.pipeline_ovseg import check_call_arguments

    protocol = resolve_protocol(anchor, dataset)
    assert protocol.method in METHOD_PRESETS and set(protocol.knobs) <= set(METHOD_KNOBS)
    settings = OVSegConfig().with_method(protocol.method, **protocol.knobs)
    assert {name: getattr(settings, name) for name in protocol.knobs} == protocol.knobs
    check_call_arguments(protocol.pipeline_arguments())


def test_protocol_table_lists_every_protocol():
    table = protocol_table()
    assert table.count("\n") == len(CONFIGS) + 1
    assert "| sclip | voc21 | sclip | 336 / 2048 | 224 / 112 | none | 65 | 0.1 (background) | 0.1 | - |" in table
    assert "| naclip | voc21 | naclip, naclip_gaussian_std=5 | 336 / 2048 | whole | none | 40 | 0.1" in table
    assert "| segearth | xbd | segearth, cls_logit_lambda=0 | 448 / 448 | 224 / 112 | center | 50 | 0 (-) |" in table
    trident = [line for line in table.split("\n") if line.startswith("| trident |")]
    assert [line.split(" | ")[1] for line in trident] == list(TRIDENT_CONFIGS)
    assert any(
        line.startswith("| trident | cityscapes | trident, ") and "sam_split_halves=True" in line
        and "sam_cosine_factor=3," in line and "| 688 / 2048 | 336 / 224 | center | 40 | 0 (-) | - | - |" in line
        for line in trident
    )  # fmt: skip
    assert any("| trident | voc20 |" in line and "| 336 / 2048 | 336 / 112 | center | 40 |" in line for line in trident)


def test_protocols_command_prints_the_table(capsys):
    assert main(["protocols"]) == 0
    out = capsys.readouterr().out
    assert protocol_table() in out and "- segearth: SegEarth-OV" in out


def test_readme_protocol_table_is_the_generated_one():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert protocol_table() in readme, "regenerate the README's protocols table with `hf-ovseg protocols`"


def evaluate_args(fixtures, folder, out, *extra):
    return [
        "evaluate", "--dataset", "voc21", "--data-root", str(fixtures / "voc"), "--model", str(folder),
        "--limit", "1", "--out", str(out), *extra,
    ]  # fmt: skip


def test_evaluate_with_protocol_records_it(tiny_folder, fixtures, tmp_path):
    out = tmp_path / "r.json"
    assert main(evaluate_args(fixtures, tiny_folder, out, "--protocol", "clearclip")) == 0
    result = json.loads(out.read_text())
    protocol = result["protocol"]
    assert result["method"] == "clearclip" and protocol["name"] == "clearclip"
    window = (protocol["short_side"], protocol["long_side"], protocol["crop_size"], protocol["stride"])
    assert window == (448, 2048, 448, 224)
    assert protocol["patch_padding"] == "center" and result["knobs"]["dense_logit_scale"] == 50.0
    assert protocol["background_threshold"] == 0.5 and protocol["background_label"] == "background"
    assert protocol["classes"][15] == "person" and len(protocol["classes"]) == 21
    assert protocol["config"] == "cfg_voc21.py" and protocol["class_file"] == "clearclip/cls_voc21.txt"
    assert protocol["dtype"] == "float32"  # on a CPU; the anchors' float16 is used on a GPU
    assert "ClearCLIP" in protocol["source"]
    # an explicit flag overrides the protocol
    extra = ["--short-side", "64", "--crop-size", "32", "--stride", "16", "--logit-scale", "33"]
    assert main(evaluate_args(fixtures, tiny_folder, out, "--protocol", "clearclip", *extra)) == 0
    result = json.loads(out.read_text())
    assert result["protocol"]["short_side"] == 64 and result["knobs"]["dense_logit_scale"] == 33.0


def test_evaluate_naclip_protocol_runs_whole_image_with_pamr(tiny_folder, fixtures, tmp_path):
    out = tmp_path / "r.json"
    assert main(evaluate_args(fixtures, tiny_folder, out, "--protocol", "naclip", "--short-side", "48")) == 0
    result = json.loads(out.read_text())
    assert result["protocol"]["crop_size"] is None and result["protocol"]["refine"] == "pamr"
    assert result["knobs"]["naclip_gaussian_std"] == 5.0 and result["method"] == "naclip"
