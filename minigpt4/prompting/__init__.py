"""Prompts: the image markers, the prompt format shared by training and chat, and the sample encoder."""

from minigpt4.prompting.encoder import EncodingCollater, SampleEncoder
from minigpt4.prompting.format import PRESET_TEMPLATES, PromptError, PromptFormat, PromptPiece
from minigpt4.prompting.markers import IGNORE_INDEX, IMAGE_HERE, IMAGE_PROMPT, IMAGE_SLOT_ID, LLAVA_IMAGE_TOKEN
from minigpt4.prompting.stops import stop_sequences_for

__all__ = [
    "EncodingCollater", "IGNORE_INDEX", "IMAGE_HERE", "IMAGE_PROMPT", "IMAGE_SLOT_ID", "LLAVA_IMAGE_TOKEN",
    "PRESET_TEMPLATES", "PromptError", "PromptFormat", "PromptPiece", "SampleEncoder", "stop_sequences_for",
]
