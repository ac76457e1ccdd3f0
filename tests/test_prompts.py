"""render_prompt: chat template (enable_thinking=False, generation prompt) and the plain template."""

from __future__ import annotations

import pytest
from helpers_tiny import make_tokenizer

from tcopd.errors import ConfigError, DataError
from tcopd.runtime.data.prompts import DEFAULT_INSTRUCTION, PLAIN_FORMAT, render_prompt

MSG = [{"role": "user", "content": "what is 2 + 3 ?" + DEFAULT_INSTRUCTION}]

# A Qwen3-like template fragment: the think block depends on enable_thinking.
THINKING_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}"
    "{% endif %}"
)


def test_plain_template_default_and_custom():
    assert render_prompt(MSG, None, "plain") == "Question: " + MSG[0]["content"] + "\nAnswer:"
    assert PLAIN_FORMAT == "Question: {content}\nAnswer:"
    assert render_prompt(MSG, None, "plain", "Q: {content}\nA:") == f"Q: {MSG[0]['content']}\nA:"
    with pytest.raises(ConfigError, match="must contain"):
        render_prompt(MSG, None, "plain", "no placeholder")
    with pytest.raises(ConfigError, match="not a valid format"):
        render_prompt(MSG, None, "plain", "{content} {other}")


def test_chat_template_adds_generation_prompt(tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(make_tokenizer(tmp_path)))
    text = render_prompt(MSG, tok, "chat")
    assert isinstance(text, str)
    assert text == f"<|im_start|> user {MSG[0]['content']} <|im_end|> <|im_start|> assistant "


def test_chat_template_disables_thinking(tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(make_tokenizer(tmp_path)))
    tok.chat_template = THINKING_TEMPLATE
    text = render_prompt(MSG, tok, "chat")
    expected = f"<|im_start|>user\n{MSG[0]['content']}<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    assert text == expected


def test_chat_errors(tmp_path):
    from transformers import AutoTokenizer

    with pytest.raises(ConfigError, match="needs a tokenizer"):
        render_prompt(MSG, None, "chat")
    tok = AutoTokenizer.from_pretrained(str(make_tokenizer(tmp_path)))
    tok.chat_template = None
    with pytest.raises(ConfigError, match="no chat template; use --template plain"):
        render_prompt(MSG, tok, "chat")
    with pytest.raises(ConfigError, match="unknown prompt template"):
        render_prompt(MSG, tok, "fancy")  # type: ignore[arg-type]
    with pytest.raises(DataError):
        render_prompt([], tok, "plain")
