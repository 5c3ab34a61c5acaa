"""Configuration of hf_ovseg: a CLIP configuration plus the knobs of the three training-free modules."""

from __future__ import annotations

import copy
from typing import Any

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, CLIPConfig, PreTrainedConfig
from transformers.utils import logging

from .modules import ATTENTION_MODES, GLOBAL_DEBIAS_MODES, SIMILARITY_MODES
from .proxy import PROXY_KINDS, proxy_kind_of
from .upsampler import FEATURE_UPSAMPLERS

POSITION_INTERPOLATIONS = ("scale_factor", "size", "size_if_count_changes")
ENCODER_VARIANTS = ("clip", "maskclip")
OUTLIER_SCORE_LAYERS = ("last", "penultimate")
SFP_OUTLIER_DETECTORS = ("som", "l2", "lof")

logger = logging.get_logger(__name__)

_MODULES_OFF = {
    "outlier_suppression": False,
    "similarity_enhancement": False,
    "global_debias_factor": 0.0,
    "last_block_residual": False,
    "last_block_mlp": False,
    "position_interpolation": "scale_factor",
    "encoder_variant": "clip",
    "feature_upsampling": False,
    "cls_logit_lambda": 0.0,
    "proxy_kind": None,
    "proxy_square_grid": False,
    "window_multiple": None,
    "sam_refinement": False,
    "sam_split_halves": False,
}

#: ProxyCLIP (mc-lan/ProxyCLIP@e7b767f): the last block is the proxy attention over the proxy's feature map
#: (open_clip/transformer.py:526-536, 560-587), beta 1.2 / gamma 3.0 and logit scale 40 (the segmentor's
#: defaults, proxyclip_segmentor.py:30-31, never overridden by a config), windows padded to multiples of 56
#: (proxyclip_segmentor.py:218-223), grids read as square (see ``proxy_square_grid``).
_PROXYCLIP = {
    **_MODULES_OFF,
    "attention_mode": "proxy",
    "proxy_square_grid": True,
    "window_multiple": 56,
    "dense_logit_scale": 40.0,
}

#: Named presets. ``seed`` is the method of the seed text (all three modules on); the others reproduce the
#: training-free baselines' official code, with the seed's modules off. Sources, per preset:
#:
#: - ``vanilla``: plain CLIP (Hugging Face ``CLIPVisionModel``, position embeddings resized with ``size=``).
#: - ``maskclip``: chongzhou96/MaskCLIP@245d31f:mmseg/models/backbones/vit.py:94-104 (value path
#:   ``v = out_proj(v_proj(ln1(x))) + x``, then ``v + ffn(ln2(v))``), 437 (final norm on ``v``); its ViT runs the
#:   CLIP weights with exact GELU and LayerNorm eps 1e-6 (configs/_base_/models/maskclip_vit16.py:22-23) and
#:   resizes position embeddings with ``size=`` only when the token count changes (vit.py:368, 405-410).
#: - ``sclip``: wangf3014/SCLIP@b56bd30:clip/model.py:249-251 (``x + csa_attn(ln_1(x))``, then ``+ mlp(ln_2(x))``).
#: - ``clearclip``: mc-lan/ClearCLIP@ad68a40:open_clip/transformer.py:524-526 (attention output only, no
#:   residual, no MLP) with its ``ClearCLIP`` attention (614-616).
#: - ``naclip``: sinahmr/NACLIP@0cac3a6:clip/model.py:118-119 (``arch='reduced'``: attention output only),
#:   naclip.py:21 (``gaussian_std=5.``, the setting of README's ``test_all.sh reduced naclip 5 on``).
#: - ``segearth``: likyoo/SegEarth-OV@3e22a96:open_clip/transformer.py:525-528 (attention output only),
#:   segearth_segmentor.py:172-192 (``+ cls_token_lambda * cls_logits``), configs/base_config.py:8-12
#:   (``cls_token_lambda=-0.3``, SimFeatUp ``jbu_one``: used when the model carries an upsampler).
#: - ``sfp``: Kimsure/SFP@2804f5b:SFP_ICCV/clip/model.py:242-356 (see ``OVSegVisionModel.sfp_last_stage``),
#:   configs/base_config.py:5-9 (``pm='SOM'``, ``purify=True``, ``res_cls=0.3``).
#: - ``proxyclip`` / ``proxyclip_dinov2`` / ``proxyclip_sam``: ProxyCLIP, mc-lan/ProxyCLIP@e7b767f with the proxy
#:   its base config names (``vfm_model='dino'`` = torch.hub ``dino_vitb8``, configs/base_config.py:6,
#:   proxyclip_segmentor.py:53) or its DINOv2 (``dinov2_vitb14_reg``, 57) and SAM (``vit_b``, 46) variants; the
#:   model must carry that proxy (``hf-ovseg convert --proxy``).
#: - ``trident``: Trident, YuHengsss/Trident@a93b346 (configs/base_config.py:5-22 over trident.py:29-33): the
#:   ProxyCLIP attention on DINO ViT-B/16 (trident.py:48) over all windows at once, the windows spliced onto
#:   SAM ViT-B's grid and aggregated there by SAM's last-block attention (open_clip/transformer.py:502-659), then
#:   SAM refinement of the label map (seg_utils/utils.py:92-197; on in every official run, dist_test.sh:3). The
#:   model must carry a DINO proxy and SAM (``hf-ovseg convert --proxy ... --sam ...``); see ``trident.py``.
#: - ``seed_proxy``: ours, not a published method: the proxy attention in place of the gated attention, with the
#:   seed's modules 1 and 3 (module 1 on CLIP's grid before the proxy aggregation, see ``OVSegVisionModel``).
#:
#: Every anchor except MaskCLIP resizes position embeddings with bicubic ``scale_factor=(g + 0.1) / g0``
#: (e.g. SCLIP clip/model.py:263-281); ``seed`` descends from SegEarth-OV and does the same.
METHOD_PRESETS: dict[str, dict[str, Any]] = {
    "seed": {
        **_MODULES_OFF,
        "attention_mode": "gated",
        "outlier_suppression": True,
        "similarity_enhancement": True,
        "global_debias_factor": 0.2,
    },
    "vanilla": {
        **_MODULES_OFF,
        "attention_mode": "vanilla",
        "last_block_residual": True,
        "last_block_mlp": True,
        "position_interpolation": "size",
    },
    "maskclip": {
        **_MODULES_OFF,
        "attention_mode": "maskclip",
        "last_block_residual": True,
        "last_block_mlp": True,
        "position_interpolation": "size_if_count_changes",
        "encoder_variant": "maskclip",
    },
    "sclip": {**_MODULES_OFF, "attention_mode": "sclip", "last_block_residual": True, "last_block_mlp": True},
    "clearclip": {**_MODULES_OFF, "attention_mode": "clearclip"},
    "naclip": {**_MODULES_OFF, "attention_mode": "naclip", "naclip_gaussian_std": 5.0},
    "segearth": {**_MODULES_OFF, "attention_mode": "segearth", "cls_logit_lambda": -0.3, "feature_upsampling": True},
    "sfp": {
        **_MODULES_OFF,
        "attention_mode": "sfp",
        "outlier_suppression": True,
        "outlier_top_k": 10,
        "similarity_layer": 9,
        "sfp_residual_cls": 0.3,
    },
    "proxyclip": {**_PROXYCLIP, "proxy_kind": "dino"},
    "proxyclip_dinov2": {**_PROXYCLIP, "proxy_kind": "dinov2"},
    "proxyclip_sam": {**_PROXYCLIP, "proxy_kind": "sam"},
    "trident": {
        **_MODULES_OFF,
        "attention_mode": "trident",
        "proxy_kind": "dino",
        "dense_logit_scale": 40.0,
        "sam_refinement": True,
    },
    "seed_proxy": {
        **_MODULES_OFF,
        "attention_mode": "proxy",
        "outlier_suppression": True,
        "global_debias_factor": 0.2,
    },
}

#: Knobs that do not depend on the preset (unless a preset sets them), with their defaults.
KNOB_DEFAULTS: dict[str, Any] = {
    "outlier_top_k": 30,
    "outlier_tau": 0.1,
    "outlier_score_layer": "last",
    "decontamination_clamp": False,
    "similarity_weight": 1.0,
    "similarity_temperature": 1.0,
    "similarity_layer": None,
    "global_debias_mode": "similarity",
    "global_debias_normalize_cls": False,
    "naclip_gaussian_std": 5.0,
    "sfp_residual_cls": 0.3,
    "sfp_outlier_detector": "som",
    "dense_logit_scale": 50.0,
    "proxy_beta": 1.2,
    "proxy_gamma": 3.0,
    "sam_cosine_factor": 1.2,
    "sam_refine_negative_cosine": True,
    "sam_iou_threshold": 0.8,
    "sam_coarse_threshold": 0.2,
    "sam_minimal_area": 225,
    "sam_mask_coefficient": 0.005,
}

#: Every knob a ``method=`` preset or a per-call override may set.
METHOD_KNOBS: tuple[str, ...] = tuple(METHOD_PRESETS["seed"]) + tuple(KNOB_DEFAULTS)

#: SFP's fixed constants (Kimsure/SFP@2804f5b:SFP_ICCV/clip/model.py): the CLS->patch attention is scaled by
#: ``res_cls * res_scale`` before the outlier test (230, 264); similarity maps keep cosines >= 0.4 (231, 325,
#: 333); the second re-weighting uses block 4's map (330) and the multi-layer branch sums blocks 4..10 (318).
SFP_RES_SCALE = 5.0
SFP_SIMILARITY_THRESHOLD = 0.4
SFP_AGGREGATION_LAYER = 4
SFP_FUSION_LAYERS = range(4, 11)


def preset_values(method: str) -> dict[str, Any]:
    """Every knob of a named preset: the shared defaults, overridden by the preset's own values."""
    if method not in METHOD_PRESETS:
        raise ValueError(f"unknown method {method!r}; valid methods: {', '.join(METHOD_PRESETS)}")
    return {**KNOB_DEFAULTS, **METHOD_PRESETS[method]}


def _check_choice(name: str, value: Any, choices: tuple[Any, ...]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; valid values: {', '.join(map(str, choices))}")


@strict
class OVSegConfig(CLIPConfig):
    r"""[`CLIPConfig`] plus the method knobs of hf_ovseg.

    Any knob left at ``None`` takes its value from the ``method`` preset (see ``METHOD_PRESETS``);
    an explicit value overrides the preset.

    method (`str`, defaults to `"seed"`): named preset, one of ``METHOD_PRESETS``.
    attention_mode (`str`): last-block attention, one of ``ATTENTION_MODES`` (``"sfp"``: SFP's whole last stage).
    outlier_suppression (`bool`): module 1 (with ``attention_mode="sfp"``: SFP's outlier purification).
    outlier_top_k (`int`, 30): outliers per crop (clamped to the number of patches; 0 disables).
    outlier_tau (`float`, 0.1): decontamination strength τ of module 1.
    decontamination_clamp (`bool`, False): decontaminate with ``τ·max(cos, 0)`` instead of the seed text's
        ``τ·cos`` (the seed's code base, UserNameUnavailableIsUnavailable/CLIP-Decontamination@3e1b774:
        outlier_suppression.py:195-196, ``clamp(similarity * contamination_temp, 0, 1)``; an ablation).
    outlier_score_layer (`str`, `"last"`): attention that scores module 1's outliers: the last block's (the seed
        text) or ``"penultimate"``, block L-1's head-mean attention (the seed's code base; an ablation).
    similarity_enhancement (`bool`): add the mid-layer self-similarity map S to the gated attention.
    similarity_weight (`float`, 1.0): λ_s. similarity_temperature (`float`, 1.0): τ_s.
    similarity_layer (`int`, optional): index into ``hidden_states`` of the similarity features (module 2's S;
        SFP's pre-attention map); ``None`` = ``(L-1)//2``.
    global_debias_factor (`float`, 0.2 for seed): α of module 3 (0 = off).
    global_debias_mode (`str`, `"similarity"`): or ``"uniform"`` (plain CLS subtraction).
    global_debias_normalize_cls (`bool`, False): subtract the unit-norm CLS (the seed's code base; an ablation).
    last_block_residual, last_block_mlp (`bool`): keep the last block's residual / MLP.
    position_interpolation (`str`): ``"scale_factor"`` (bicubic with ``scale_factor=(g+0.1)/g0``, as the
        anchors' CLIP files do), ``"size"`` (bicubic to the grid size unless it is the native square one, as
        Hugging Face CLIP does) or ``"size_if_count_changes"`` (the same, skipped whenever the patch count is the
        native one, as MaskCLIP does).
    encoder_variant (`str`, `"clip"`): ``"maskclip"`` runs every vision block as MaskCLIP's mmseg ViT does
        (exact GELU, LayerNorm eps 1e-6) instead of the checkpoint's activation and eps.
    naclip_gaussian_std (`float`, 5.0): width, in patches, of NACLIP's neighbourhood prior.
    sfp_residual_cls (`float`, 0.3): SFP's ``res_cls`` (CLS added after the last block; the CLS->patch
        attention of the outlier test is scaled by ``5 * res_cls``).
    sfp_outlier_detector (`str`, `"som"`): SFP's ``pm``: ``"som"`` (attention-based, its published setting),
        ``"l2"`` (largest token norms) or ``"lof"`` (local outlier factor), Kimsure/SFP@2804f5b:SFP_ICCV/clip/
        model.py:271-307 (``attention_mode="sfp"``).
    feature_upsampling (`bool`): run the model's feature upsampler (SimFeatUp); a model without one is an error.
    dense_logit_scale (`float`, 50.0): multiplies the patch-text cosine to give logits.
    cls_logit_lambda (`float`, 0.0; -0.3 for segearth): SegEarth-OV's logit-space global-bias step,
        ``logits = scale * (cos(patch, text) + λ cos(cls, text))``.
    proxy_beta, proxy_gamma (`float`, 1.2 / 3.0): ProxyCLIP's attention ``softmax(γ (S - β mean(S)))`` over the
        proxy's cosine similarities S, negatives masked (``attention_mode="proxy"``).
    proxy_kind (`str`, optional): the proxy a preset needs (``"dino"``, ``"dinov2"``, ``"sam"``); None = any.
    proxy_square_grid (`bool`, False; True for the proxyclip presets): read the proxy's and CLIP's patch grids
        as square, as ProxyCLIP's code does (see ``proxy.py``); equal to the true grids on square windows.
    window_multiple (`int`, optional): pad each window to a multiple of this (ProxyCLIP: 56); None = CLIP's patch
        size, or its least common multiple with the proxy's patch size when a proxy runs.
    sam_cosine_factor (`float`, 1.2): Trident's ``cos_fac``: a SAM attention weight is kept where the cosine of
        SAM's value vectors exceeds ``min(cos_fac * mean cosine, 0.9)`` (``attention_mode="trident"``).
    sam_refine_negative_cosine (`bool`, True): Trident's ``refine_neg_cos``; False replaces negative thresholds
        by 0.6 (its Cityscapes and ADE20K configs).
    sam_split_halves (`bool`, False): run SAM on the left and right halves of the image separately, as Trident
        does for Cityscapes (trident.py:141-152, its ``dataset_type`` key).
    sam_refinement (`bool`, False; True for trident): refine the label map with SAM's prompt encoder and mask
        decoder, prompted by the connected regions of each class (``seg_utils/utils.py:92-197``).
    sam_iou_threshold (`float`, 0.8), sam_coarse_threshold (`float`, 0.2), sam_minimal_area (`int`, 225),
    sam_mask_coefficient (`float`, 0.005): the refinement's ``sam_iou_thresh`` (a region is kept when SAM's IoU
        prediction exceeds it), ``coarse_thresh`` (pixels below it belong to no region), ``minimal_area`` (in
        half-resolution pixels) and ``sam_mask_coff`` (the scale of the probability map given as mask prompt).
    feature_upsampler (`str`, optional): architecture of the model's SimFeatUp weights (``"jbu_one"`` or
        ``"jbu_stack"``), None when the model has none. Not a method knob: it says which weights exist.
    proxy_config (`dict` or `PreTrainedConfig`, optional): the configuration of the model's proxy vision model
        (a transformers ``ViTConfig`` for DINO, ``Dinov2Config``, ``Dinov2WithRegistersConfig`` or
        ``SamVisionConfig``), None when the model has none. Not a method knob: it says which weights exist.
    sam_config (`dict` or `SamConfig`, optional): the configuration of the model's SAM (a whole ``SamModel``:
        image encoder, prompt encoder and mask decoder, for ``attention_mode="trident"``), None when it has none.
    """

    model_type = "ovseg"

    method: str = "seed"
    attention_mode: str | None = None
    outlier_suppression: bool | None = None
    outlier_top_k: int | None = None
    outlier_tau: float | None = None
    outlier_score_layer: str | None = None
    decontamination_clamp: bool | None = None
    similarity_enhancement: bool | None = None
    similarity_weight: float | None = None
    similarity_temperature: float | None = None
    similarity_layer: int | None = None
    global_debias_factor: float | None = None
    global_debias_mode: str | None = None
    global_debias_normalize_cls: bool | None = None
    last_block_residual: bool | None = None
    last_block_mlp: bool | None = None
    position_interpolation: str | None = None
    encoder_variant: str | None = None
    naclip_gaussian_std: float | None = None
    sfp_residual_cls: float | None = None
    sfp_outlier_detector: str | None = None
    feature_upsampling: bool | None = None
    dense_logit_scale: float | None = None
    cls_logit_lambda: float | None = None
    proxy_beta: float | None = None
    proxy_gamma: float | None = None
    proxy_kind: str | None = None
    proxy_square_grid: bool | None = None
    window_multiple: int | None = None
    sam_cosine_factor: float | None = None
    sam_refine_negative_cosine: bool | None = None
    sam_split_halves: bool | None = None
    sam_refinement: bool | None = None
    sam_iou_threshold: float | None = None
    sam_coarse_threshold: float | None = None
    sam_minimal_area: int | None = None
    sam_mask_coefficient: float | None = None
    feature_upsampler: str | None = None
    proxy_config: dict | PreTrainedConfig | None = None
    sam_config: dict | PreTrainedConfig | None = None

    def __post_init__(self, **kwargs: Any) -> None:
        kwargs.pop("model_type", None)  # a plain CLIP config.json says "clip"; this class is "ovseg"
        super().__post_init__(**kwargs)
        if isinstance(self.proxy_config, dict):  # as saved in config.json: the proxy's own config, with its type
            values = {k: v for k, v in self.proxy_config.items() if k != "transformers_version"}
            self.proxy_config = AutoConfig.for_model(values.pop("model_type"), **values)
        if self.proxy_config is not None:
            proxy_kind_of(self.proxy_config)  # a model type that is no supported proxy fails here
        if isinstance(self.sam_config, dict):
            values = {k: v for k, v in self.sam_config.items() if k != "transformers_version"}
            self.sam_config = AutoConfig.for_model(values.pop("model_type", "sam"), **values)
        if self.sam_config is not None and self.sam_config.model_type != "sam":
            raise ValueError(f"sam_config must be a SamConfig (model_type 'sam'), got {self.sam_config.model_type!r}")
        self._fill_from_preset()
        self.check_method_knobs()

    def _fill_from_preset(self) -> None:
        for name, value in preset_values(self.method).items():
            if getattr(self, name) is None and value is not None:
                setattr(self, name, value)

    @classmethod
    def get_config_dict(cls, *args: Any, **kwargs: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        """As ``PreTrainedConfig.get_config_dict``; a plain CLIP ``config.json`` is read as an OVSeg one."""
        config_dict, kwargs = super().get_config_dict(*args, **kwargs)
        if config_dict.get("model_type") == "clip":
            config_dict = {**config_dict, "model_type": cls.model_type}
        return config_dict, kwargs

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs: Any):
        """As ``PreTrainedConfig.from_dict``; a ``method=`` keyword re-applies that preset, then the knobs given."""
        method = kwargs.pop("method", None)
        knobs = {name: kwargs.pop(name) for name in METHOD_KNOBS if name in kwargs}
        result = super().from_dict(config_dict, **kwargs)
        if method is not None or knobs:
            config = result[0] if isinstance(result, tuple) else result
            config.set_method(method, **knobs)
        return result

    @property
    def proxy_model_kind(self) -> str | None:
        """``"dino"``, ``"dinov2"`` or ``"sam"``: the proxy this model's weights hold, None without one."""
        return None if self.proxy_config is None else proxy_kind_of(self.proxy_config)

    @property
    def resolved_similarity_layer(self) -> int:
        """Index into ``hidden_states`` of the layer that gives the similarity map."""
        if self.similarity_layer is None:
            return (self.vision_config.num_hidden_layers - 1) // 2
        return self.similarity_layer

    def method_knobs(self) -> dict[str, Any]:
        """The current value of every method knob (``method`` included)."""
        return {"method": self.method, **{name: getattr(self, name) for name in METHOD_KNOBS}}

    def set_method(self, method: str | None = None, **knobs: Any) -> None:
        """Switch preset and/or knobs in place. With ``method``, knobs not given return to that preset."""
        unknown = sorted(set(knobs) - set(METHOD_KNOBS))
        if unknown:
            raise ValueError(f"unknown method knob(s) {', '.join(unknown)}; valid knobs: {', '.join(METHOD_KNOBS)}")
        if method is not None:
            knobs = {**preset_values(method), **knobs}
        candidate = {**self.method_knobs(), **knobs, "method": method or self.method}
        self._check_knobs(candidate)  # nothing changes unless every value is valid
        for name, value in candidate.items():
            setattr(self, name, value)

    def with_method(self, method: str | None = None, **knobs: Any) -> OVSegConfig:
        """A validated copy with the preset and/or knobs applied; this config is left unchanged, so per-call
        settings never touch a model shared between threads."""
        settings = copy.copy(self)
        settings.set_method(method, **knobs)
        return settings

    def check_method_knobs(self) -> None:
        """Raise ``ValueError`` naming the problem for any knob out of its domain."""
        self._check_knobs(self.method_knobs())

    def _check_knobs(self, knobs: dict[str, Any]) -> None:
        mode = knobs["attention_mode"]
        _check_choice("attention_mode", mode, ATTENTION_MODES)
        _check_choice("global_debias_mode", knobs["global_debias_mode"], GLOBAL_DEBIAS_MODES)
        _check_choice("outlier_score_layer", knobs["outlier_score_layer"], OUTLIER_SCORE_LAYERS)
        _check_choice("sfp_outlier_detector", knobs["sfp_outlier_detector"], SFP_OUTLIER_DETECTORS)
        _check_choice("position_interpolation", knobs["position_interpolation"], POSITION_INTERPOLATIONS)
        _check_choice("encoder_variant", knobs["encoder_variant"], ENCODER_VARIANTS)
        if self.feature_upsampler is not None:
            _check_choice("feature_upsampler", self.feature_upsampler, FEATURE_UPSAMPLERS)
        if knobs["proxy_kind"] is not None:
            _check_choice("proxy_kind", knobs["proxy_kind"], PROXY_KINDS)
        if knobs["similarity_enhancement"] and mode not in SIMILARITY_MODES:
            raise ValueError(
                f"similarity_enhancement=True needs attention_mode='gated' (module 2); got attention_mode={mode!r}"
            )
        if mode in ("sfp", "proxy", "trident") and (knobs["last_block_residual"] or knobs["last_block_mlp"]):
            raise ValueError(
                f"attention_mode={mode!r} replaces the whole last block: it has no residual or MLP to keep"
            )
        if mode in ("proxy", "trident") and knobs["feature_upsampling"]:
            raise ValueError(
                f"feature_upsampling upsamples CLIP's patch grid; attention_mode={mode!r} gives another grid: "
                "use one or the other"
            )
        if mode == "trident":
            for name in ("outlier_suppression", "global_debias_factor", "cls_logit_lambda"):
                if knobs[name]:
                    raise ValueError(f"attention_mode='trident' has no CLS token or patch grid for {name}: turn it off")
        elif knobs["sam_refinement"] or knobs["sam_split_halves"]:
            name = "sam_refinement" if knobs["sam_refinement"] else "sam_split_halves"
            raise ValueError(f"{name}=True needs attention_mode='trident' (Trident's SAM), got {mode!r}")
        for name in ("sam_iou_threshold", "sam_coarse_threshold"):
            if not 0.0 <= knobs[name] <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {knobs[name]}")
        if knobs["sam_minimal_area"] < 0 or knobs["sam_mask_coefficient"] < 0:
            raise ValueError("sam_minimal_area and sam_mask_coefficient must be >= 0")
        if knobs["proxy_gamma"] <= 0:
            raise ValueError(f"proxy_gamma must be > 0, got {knobs['proxy_gamma']}")
        multiple = knobs["window_multiple"]
        if multiple is not None and (isinstance(multiple, bool) or not isinstance(multiple, int) or multiple < 1):
            raise ValueError(f"window_multiple must be a positive number of pixels or None, got {multiple!r}")
        if knobs["outlier_top_k"] < 0:
            raise ValueError(f"outlier_top_k must be >= 0, got {knobs['outlier_top_k']}")
        if not 0.0 <= knobs["outlier_tau"] <= 1.0:
            raise ValueError(f"outlier_tau must be in [0, 1], got {knobs['outlier_tau']}")
        if knobs["similarity_temperature"] <= 0:
            raise ValueError(f"similarity_temperature must be > 0, got {knobs['similarity_temperature']}")
        if knobs["global_debias_factor"] < 0:
            raise ValueError(f"global_debias_factor must be >= 0, got {knobs['global_debias_factor']}")
        if knobs["naclip_gaussian_std"] <= 0:
            raise ValueError(f"naclip_gaussian_std must be > 0, got {knobs['naclip_gaussian_std']}")
        num_layers = self.vision_config.num_hidden_layers
        if mode == "sfp" and num_layers <= max(SFP_FUSION_LAYERS):
            raise ValueError(
                f"attention_mode='sfp' reads blocks {SFP_AGGREGATION_LAYER}..{max(SFP_FUSION_LAYERS)} "
                f"(SFP_ICCV/clip/model.py:318, 330): the vision tower needs at least "
                f"{max(SFP_FUSION_LAYERS) + 1} layers, this one has {num_layers}"
            )
        layer = knobs["similarity_layer"]
        resolved = (num_layers - 1) // 2 if layer is None else layer
        if not 0 <= resolved < num_layers:
            raise ValueError(
                f"similarity_layer must index hidden_states before the last block, i.e. lie in "
                f"[0, {num_layers - 1}]; got {layer}"
            )


__all__ = [
    "ATTENTION_MODES",
    "ENCODER_VARIANTS",
    "FEATURE_UPSAMPLERS",
    "GLOBAL_DEBIAS_MODES",
    "KNOB_DEFAULTS",
    "METHOD_KNOBS",
    "METHOD_PRESETS",
    "OVSegConfig",
    "POSITION_INTERPOLATIONS",
    "preset_values",
]
