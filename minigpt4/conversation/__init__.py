"""Conversations (the model's prompt format, upstream's chat templates) and the chat engine of the demos."""

from minigpt4.conversation.chat import AnswerStream, Chat, ContextTooLongError, PendingImage, Reply
from minigpt4.conversation.conversation import (
    CONV_VISION_LLama2,
    CONV_VISION_minigptv2,
    CONV_VISION_Vicuna0,
    TEMPLATES,
    Conversation,
    FormatConversation,
    SeparatorStyle,
    TemplateError,
    upstream_template,
)
from minigpt4.conversation.generation import AnswerCleaner, GenerationSettings, SettingsError
from minigpt4.conversation.upstream_compat import Chat as UpstreamChat
from minigpt4.conversation.upstream_compat import StoppingCriteriaSub

__all__ = [
    "AnswerCleaner", "AnswerStream", "CONV_VISION_LLama2", "CONV_VISION_Vicuna0", "CONV_VISION_minigptv2", "Chat",
    "ContextTooLongError", "Conversation", "FormatConversation", "GenerationSettings", "PendingImage", "Reply",
    "SeparatorStyle", "SettingsError", "TEMPLATES", "TemplateError", "upstream_template",
    "StoppingCriteriaSub", "UpstreamChat",
]
