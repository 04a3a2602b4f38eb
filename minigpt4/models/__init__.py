"""Models: importing this package registers ``minigpt4`` and ``minigpt_v2``."""

from minigpt4.models.checkpoint import load_model_checkpoint, save_model_checkpoint
from minigpt4.models.minigpt4 import MiniGPT4
from minigpt4.models.minigpt_base import LLMInputs, MiniGPTBase
from minigpt4.models.minigpt_v2 import MiniGPTv2
from minigpt4.models.tokenizer import LLMTokenizer, load_tokenizer

__all__ = [
    "MiniGPTBase",
    "MiniGPT4",
    "MiniGPTv2",
    "LLMInputs",
    "LLMTokenizer",
    "load_tokenizer",
    "load_model_checkpoint",
    "save_model_checkpoint",
]
