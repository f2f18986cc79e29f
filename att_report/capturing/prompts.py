"""Turn the user's prompt (raw or chat) and optional known completion into token ids."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from att_report.capturing.config import CaptureConfig
from att_report.errors import UsageError


@dataclass(frozen=True)
class PromptTokens:
    """The ids to run: the prompt, and the completion to teacher-force when one was given."""

    prompt_ids: list[int]
    completion_ids: list[int] | None
    mode: str


def check_prompt_options(config: CaptureConfig) -> None:
    """Refuse prompt options that cannot work with any model, so they fail before a model is loaded."""
    if not config.prompt.strip():
        raise UsageError("the prompt is empty; give some text with --prompt or --prompt-file.")
    if config.system is not None and not config.chat:
        raise UsageError("--system needs --chat, because a system message only exists in a chat template.")


def tokenize_input(tokenizer: Any, config: CaptureConfig, causal: bool) -> PromptTokens:
    """Tokenize the prompt as the model expects it, checking the options make sense for this model."""
    check_prompt_options(config)
    if not causal and (config.chat or config.completion is not None):
        raise UsageError("this model is a bidirectional encoder: it has no chat template or completion; drop --chat/--completion.")
    if config.chat:
        prompt_ids = _chat_ids(tokenizer, config)
    else:
        prompt_ids = list(tokenizer(config.prompt).input_ids)
    completion_ids = None
    if config.completion is not None:
        if not config.completion:
            raise UsageError("the given completion is empty; give text with --completion or drop the option to generate.")
        completion_ids = list(tokenizer(config.completion, add_special_tokens=False).input_ids)
    return PromptTokens(prompt_ids=prompt_ids, completion_ids=completion_ids, mode="chat" if config.chat else "raw")


def _chat_ids(tokenizer: Any, config: CaptureConfig) -> list[int]:
    if not getattr(tokenizer, "chat_template", None):
        raise UsageError("this tokenizer has no chat template, so --chat cannot be used; drop --chat to use a raw prompt.")
    messages = [{"role": "system", "content": config.system}] if config.system is not None else []
    messages.append({"role": "user", "content": config.prompt})
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return list(tokenizer(text, add_special_tokens=False).input_ids)
