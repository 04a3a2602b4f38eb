"""Image and text processors; importing this package registers them."""

from minigpt4.processors.base_processor import BaseProcessor, ProcessorConfigError
from minigpt4.processors.blip_processors import (
    CLIP_MEAN,
    CLIP_STD,
    Blip2ImageEvalProcessor,
    Blip2ImageTrainProcessor,
    BlipCaptionProcessor,
    pre_caption,
)
from minigpt4.processors.face_processors import FaceTextProcessor
from minigpt4.processors.image_io import ImageOpenError, open_image

__all__ = [
    "BaseProcessor",
    "ProcessorConfigError",
    "Blip2ImageTrainProcessor",
    "Blip2ImageEvalProcessor",
    "BlipCaptionProcessor",
    "FaceTextProcessor",
    "pre_caption",
    "open_image",
    "ImageOpenError",
    "CLIP_MEAN",
    "CLIP_STD",
]
