"""Conversation templates and the chat engine used by both command-line demos."""

from minigpt4.conversation.chat import AnswerStream, Chat, ContextTooLongError, PendingImage, Reply
from minigpt4.conversation.conversation import (
    CONV_CHAT_TEMPLATE,
    CONV_VISION_LLama2,
    CONV_VISION_minigptv2,
    CONV_VISION_Vicuna0,
    IMAGE_PLACEHOLDER,
    TEMPLATES,
    ChatTemplateConversation,
    Conversation,
    SeparatorStyle,
    TemplateError,
    template_for,
    template_name_for,
)
from minigpt4.conversation.generation import AnswerCleaner, GenerationSettings, SettingsError

__all__ = [
    "AnswerCleaner", "AnswerStream", "CONV_CHAT_TEMPLATE", "CONV_VISION_LLama2", "CONV_VISION_Vicuna0",
    "CONV_VISION_minigptv2", "Chat", "ChatTemplateConversation", "ContextTooLongError", "Conversation",
    "GenerationSettings", "IMAGE_PLACEHOLDER", "PendingImage", "Reply", "SeparatorStyle", "SettingsError",
    "TEMPLATES", "TemplateError", "template_for", "template_name_for",
]
