"""hf_ovseg: training-free open-vocabulary semantic segmentation on a frozen CLIP, for Hugging Face."""

from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoProcessor

from .api import load_model_and_processor, load_pipeline
from .configuration_ovseg import METHOD_KNOBS, METHOD_PRESETS, OVSegConfig
from .image_processing_ovseg import OVSegImageProcessor
from .labels import parse_labels
from .modeling_ovseg import OVSegDenseFeatures, OVSegModel, OVSegOutput, OVSegVisionModel, OVSegVisionOutput
from .pipeline_ovseg import TASK, ZeroShotImageSegmentationPipeline
from .processing_ovseg import OPENAI_IMAGENET_TEMPLATES, OVSegProcessor

# In-process, the package's classes serve the "ovseg" model type without trust_remote_code.
AutoConfig.register("ovseg", OVSegConfig, exist_ok=True)
AutoModel.register(OVSegConfig, OVSegModel, exist_ok=True)
AutoImageProcessor.register(OVSegConfig, OVSegImageProcessor, exist_ok=True)
AutoProcessor.register(OVSegConfig, OVSegProcessor, exist_ok=True)

__version__ = "0.1.0"

__all__ = [
    "OPENAI_IMAGENET_TEMPLATES",
    "TASK",
    "OVSegImageProcessor",
    "OVSegProcessor",
    "ZeroShotImageSegmentationPipeline",
    "load_model_and_processor",
    "load_pipeline",
    "parse_labels",
    "METHOD_KNOBS",
    "METHOD_PRESETS",
    "OVSegConfig",
    "OVSegDenseFeatures",
    "OVSegModel",
    "OVSegOutput",
    "OVSegVisionModel",
    "OVSegVisionOutput",
]
