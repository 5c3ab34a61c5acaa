"""Configuration of hf_ovseg: a CLIP configuration plus the knobs of the three training-free modules."""

from __future__ import annotations

from typing import Any

from huggingface_hub.dataclasses import strict
from transformers import CLIPConfig
from transformers.utils import logging

from .modules import ATTENTION_MODES, GLOBAL_DEBIAS_MODES, SIMILARITY_MODES

OUTLIER_RULES = ("seed", "sfp")

logger = logging.get_logger(__name__)

_MODULES_OFF = {
    "outlier_suppression": False,
    "similarity_enhancement": False,
    "global_debias_factor": 0.0,
    "last_block_residual": False,
    "last_block_mlp": False,
}

#: Named presets. ``seed`` is the method of the seed text (all three modules on); the others are the
#: training-free baselines that replace the last block's attention, with the seed's modules off.
METHOD_PRESETS: dict[str, dict[str, Any]] = {
    "seed": {
        "attention_mode": "gated",
        "outlier_suppression": True,
        "similarity_enhancement": True,
        "global_debias_factor": 0.2,
        "last_block_residual": False,
        "last_block_mlp": False,
    },
    "vanilla": {**_MODULES_OFF, "attention_mode": "vanilla", "last_block_residual": True, "last_block_mlp": True},
    "maskclip": {**_MODULES_OFF, "attention_mode": "maskclip"},
    "sclip": {**_MODULES_OFF, "attention_mode": "sclip"},
    "clearclip": {**_MODULES_OFF, "attention_mode": "clearclip"},
    "naclip": {**_MODULES_OFF, "attention_mode": "naclip"},
    # SegEarth-OV: its attention plus its logit-space global-bias step (SimFeatUp is not included: its
    # trained weights are not available).
    "segearth": {**_MODULES_OFF, "attention_mode": "segearth", "cls_logit_lambda": -0.3},
    # SFP: outliers (CLS attends more than self, top 10) of block L-1 replaced by their neighbours' mean,
    # a thresholded cosine map of block 9's output, and the three-softmax attention in the last block.
    "sfp": {
        **_MODULES_OFF,
        "attention_mode": "sfp",
        "outlier_suppression": True,
        "outlier_rule": "sfp",
        "outlier_top_k": 10,
        "similarity_enhancement": True,
        "similarity_layer": 9,
    },
}

#: Knobs that do not depend on the preset, with their defaults.
KNOB_DEFAULTS: dict[str, Any] = {
    "outlier_rule": "seed",
    "outlier_top_k": 30,
    "outlier_tau": 0.1,
    "similarity_weight": 1.0,
    "similarity_temperature": 1.0,
    "similarity_layer": None,
    "global_debias_mode": "similarity",
    "dense_logit_scale": 50.0,
    "cls_logit_lambda": 0.0,
}

#: Every knob a ``method=`` preset or a per-call override may set.
METHOD_KNOBS: tuple[str, ...] = tuple(METHOD_PRESETS["seed"]) + tuple(KNOB_DEFAULTS)


def preset_values(method: str) -> dict[str, Any]:
    """Every knob of a named preset: the shared defaults, overridden by the preset's own values."""
    if method not in METHOD_PRESETS:
        raise ValueError(f"unknown method {method!r}; valid methods: {', '.join(METHOD_PRESETS)}")
    return {**KNOB_DEFAULTS, **METHOD_PRESETS[method]}


@strict
class OVSegConfig(CLIPConfig):
    r"""[`CLIPConfig`] plus the method knobs of hf_ovseg.

    Any knob left at ``None`` takes its value from the ``method`` preset (see ``METHOD_PRESETS``);
    an explicit value overrides the preset.

    method (`str`, defaults to `"seed"`): named preset, one of ``METHOD_PRESETS``.
    attention_mode (`str`): last-block attention, one of ``ATTENTION_MODES``.
    outlier_suppression (`bool`): outlier suppression (module 1, or SFP's rule, see ``outlier_rule``).
    outlier_rule (`str`, `"seed"`): ``"seed"`` = module 1 on the last block's output; ``"sfp"`` = SFP's rule
        (block L-1 attention, neighbour mean on the last block's input and on the similarity features).
    outlier_top_k (`int`, 30): outliers per crop (clamped to the number of patches; 0 disables).
    outlier_tau (`float`, 0.1): decontamination strength τ of module 1.
    similarity_enhancement (`bool`): add the mid-layer self-similarity map S to the gated attention.
    similarity_weight (`float`, 1.0): λ_s. similarity_temperature (`float`, 1.0): τ_s.
    similarity_layer (`int`, optional): index into ``hidden_states`` for S; ``None`` = ``(L-1)//2``.
    global_debias_factor (`float`, 0.2 for seed): α of module 3 (0 = off).
    global_debias_mode (`str`, `"similarity"`): or ``"uniform"`` (plain CLS subtraction).
    last_block_residual, last_block_mlp (`bool`): keep the last block's residual / MLP.
    dense_logit_scale (`float`, 50.0): multiplies the patch-text cosine to give logits.
    cls_logit_lambda (`float`, 0.0; -0.3 for segearth): SegEarth-OV's logit-space global-bias step,
        ``logits = scale * (cos(patch, text) + λ cos(cls, text))``.
    """

    model_type = "ovseg"

    method: str = "seed"
    attention_mode: str | None = None
    outlier_suppression: bool | None = None
    outlier_rule: str | None = None
    outlier_top_k: int | None = None
    outlier_tau: float | None = None
    similarity_enhancement: bool | None = None
    similarity_weight: float | None = None
    similarity_temperature: float | None = None
    similarity_layer: int | None = None
    global_debias_factor: float | None = None
    global_debias_mode: str | None = None
    last_block_residual: bool | None = None
    last_block_mlp: bool | None = None
    dense_logit_scale: float | None = None
    cls_logit_lambda: float | None = None

    def __post_init__(self, **kwargs: Any) -> None:
        kwargs.pop("model_type", None)  # a plain CLIP config.json says "clip"; this class is "ovseg"
        super().__post_init__(**kwargs)
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
            self.method = method
        for name, value in knobs.items():
            setattr(self, name, value)
        self.check_method_knobs()

    def check_method_knobs(self) -> None:
        """Raise ``ValueError`` naming the problem for any knob out of its domain."""
        if self.attention_mode not in ATTENTION_MODES:
            raise ValueError(
                f"unknown attention_mode {self.attention_mode!r}; valid modes: {', '.join(ATTENTION_MODES)}"
            )
        if self.global_debias_mode not in GLOBAL_DEBIAS_MODES:
            raise ValueError(
                f"unknown global_debias_mode {self.global_debias_mode!r}; valid modes: {', '.join(GLOBAL_DEBIAS_MODES)}"
            )
        if self.similarity_enhancement and self.attention_mode not in SIMILARITY_MODES:
            raise ValueError(
                "similarity_enhancement=True needs attention_mode='gated' (module 2) or 'sfp'; "
                f"got attention_mode={self.attention_mode!r}"
            )
        if self.attention_mode == "sfp" and not self.similarity_enhancement:
            raise ValueError("attention_mode='sfp' needs similarity_enhancement=True (its cosine map)")
        if self.outlier_rule not in OUTLIER_RULES:
            raise ValueError(f"unknown outlier_rule {self.outlier_rule!r}; valid rules: {', '.join(OUTLIER_RULES)}")
        if self.outlier_top_k < 0:
            raise ValueError(f"outlier_top_k must be >= 0, got {self.outlier_top_k}")
        if not 0.0 <= self.outlier_tau <= 1.0:
            raise ValueError(f"outlier_tau must be in [0, 1], got {self.outlier_tau}")
        if self.similarity_temperature <= 0:
            raise ValueError(f"similarity_temperature must be > 0, got {self.similarity_temperature}")
        if self.global_debias_factor < 0:
            raise ValueError(f"global_debias_factor must be >= 0, got {self.global_debias_factor}")
        num_layers = self.vision_config.num_hidden_layers
        if not 0 <= self.resolved_similarity_layer < num_layers:
            raise ValueError(
                f"similarity_layer must index hidden_states before the last block, i.e. lie in "
                f"[0, {num_layers - 1}]; got {self.similarity_layer}"
            )


__all__ = [
    "ATTENTION_MODES",
    "GLOBAL_DEBIAS_MODES",
    "KNOB_DEFAULTS",
    "METHOD_KNOBS",
    "METHOD_PRESETS",
    "OUTLIER_RULES",
    "OVSegConfig",
    "preset_values",
]
