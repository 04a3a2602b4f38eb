"""Dataset classes and the batch collater."""

from minigpt4.datasets.datasets.base_dataset import BaseDataset, ConversationDataset
from minigpt4.datasets.datasets.cc_sbu_dataset import CCSBUAlignDataset
from minigpt4.datasets.datasets.chatgpt4vision_datasets import FaceGPT4VisionDataset
from minigpt4.datasets.datasets.collate import EmptyBatch, SkippedSample, collate_samples, is_empty_batch
from minigpt4.datasets.datasets.sharegpt_dataset import ShareGPTFaceDataset

__all__ = [
    "BaseDataset",
    "ConversationDataset",
    "ShareGPTFaceDataset",
    "FaceGPT4VisionDataset",
    "CCSBUAlignDataset",
    "collate_samples",
    "is_empty_batch",
    "SkippedSample",
    "EmptyBatch",
]
