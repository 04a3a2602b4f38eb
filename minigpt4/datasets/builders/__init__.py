"""Dataset builders; importing this package registers them (``sharegpt_face``, ``facegpt4vision``, ...)."""

from minigpt4.datasets.builders.base_dataset_builder import BaseDatasetBuilder, DatasetConfigError
from minigpt4.datasets.builders.image_text_pair_builder import (
    CCSBUAlignBuilder,
    ConversationBuilder,
    FaceGPT4VisionBuilder,
    ShareGPTFaceBuilder,
)

__all__ = [
    "BaseDatasetBuilder",
    "DatasetConfigError",
    "ConversationBuilder",
    "ShareGPTFaceBuilder",
    "FaceGPT4VisionBuilder",
    "CCSBUAlignBuilder",
]
