"""hf_ovseg: training-free open-vocabulary semantic segmentation on a frozen CLIP, for Hugging Face."""

from .configuration_ovseg import METHOD_KNOBS, METHOD_PRESETS, OVSegConfig
from .modeling_ovseg import OVSegDenseFeatures, OVSegModel, OVSegOutput, OVSegVisionModel, OVSegVisionOutput

__version__ = "0.1.0"

__all__ = [
    "METHOD_KNOBS",
    "METHOD_PRESETS",
    "OVSegConfig",
    "OVSegDenseFeatures",
    "OVSegModel",
    "OVSegOutput",
    "OVSegVisionModel",
    "OVSegVisionOutput",
]
