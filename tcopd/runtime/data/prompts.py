"""Prompt rendering: chat messages → the text fed to the model.

Two templates (a setting everywhere a prompt is built):

- ``chat``  — the tokenizer's own chat template, ``add_generation_prompt=True`` and
  ``enable_thinking=False`` (Qwen3's template reads it; templates that do not know the variable
  ignore it). This is how G-OPD evaluates (docs/prepare.md).
- ``plain`` — a plain-text template for base models without a chat template:
  :data:`PLAIN_FORMAT` = ``"Question: {content}\\nAnswer:"`` by default, where ``{content}`` is the
  user turn(s) joined by a blank line. The model's response follows directly (it starts with a
  space). The format string is a setting (``plain_format``); it must contain ``{content}``.

The G-OPD instruction sentence (:data:`DEFAULT_INSTRUCTION`) is appended to each problem by the
data preparation, not here: prepared rows already carry the full user turn.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from tcopd.errors import ConfigError, DataError

DEFAULT_INSTRUCTION = "\nPlease reason step by step, and put your final answer within \\boxed{}."
PLAIN_FORMAT = "Question: {content}\nAnswer:"
Template = Literal["chat", "plain"]
TEMPLATES = ("chat", "plain")


def check_plain_format(plain_format: str) -> None:
    if "{content}" not in plain_format:
        raise ConfigError(f"plain prompt format {plain_format!r} must contain '{{content}}'")
    try:
        plain_format.format(content="")
    except (KeyError, IndexError, ValueError) as e:
        raise ConfigError(
            f"plain prompt format {plain_format!r} is not a valid format string ({e}); "
            "only {content} may appear in braces (double other braces: {{ }})"
        ) from e


def render_prompt(
    messages: Sequence[Mapping[str, Any]],
    tokenizer: Any = None,
    template: Template = "chat",
    plain_format: str = PLAIN_FORMAT,
) -> str:
    """The prompt text for ``messages`` (``[{"role": "user", "content": ...}, ...]``).

    ``chat`` needs a tokenizer with a chat template; ``plain`` ignores the tokenizer.
    """
    if not messages or any("content" not in m or "role" not in m for m in messages):
        raise DataError(
            f"a prompt must be a non-empty list of {{role, content}} messages, got {messages!r}"
        )
    if template == "plain":
        check_plain_format(plain_format)
        content = "\n\n".join(str(m["content"]) for m in messages)
        return plain_format.format(content=content)
    if template != "chat":
        raise ConfigError(
            f"unknown prompt template {template!r}; use one of {', '.join(TEMPLATES)}"
        )
    if tokenizer is None:
        raise ConfigError(
            "the 'chat' prompt template needs a tokenizer (--tokenizer PATH); or use --template plain"
        )
    if not getattr(tokenizer, "chat_template", None):
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise ConfigError(
            f"tokenizer {name!r} has no chat template; use --template plain for a base model"
        )
    text = tokenizer.apply_chat_template(
        [dict(m) for m in messages],
        tokenize=False,
        add_generation_prompt=True,
        enable_thinking=False,
    )
    if not isinstance(text, str):  # some versions return a list for a batch
        text = text[0]
    return text


FRAMING_PROBE = ({"role": "user", "content": "What is 2 + 3?"},)
FRAMING_RESPONSE = "2 + 3 = 5. The answer is \\boxed{5}."


def response_framing(tokenizer: Any, template: Template = "chat") -> tuple[str, str]:
    """``(header, end)``: what a template puts between the user turn and the response (the
    generation prompt's tail: assistant header) and after the response (end of turn), rendered
    on :data:`FRAMING_PROBE`. ``plain`` frames every model alike: ``(format tail, "")``."""
    user = FRAMING_PROBE[0]["content"]
    prompt = render_prompt(FRAMING_PROBE, tokenizer, template)
    header = prompt[prompt.rindex(user) + len(user) :]
    if template == "plain":
        return header, ""
    full = tokenizer.apply_chat_template(
        [*map(dict, FRAMING_PROBE), {"role": "assistant", "content": FRAMING_RESPONSE}],
        tokenize=False,
        enable_thinking=False,
    )
    if not isinstance(full, str):
        full = full[0]
    cut = full.rfind(FRAMING_RESPONSE)
    end = full[cut + len(FRAMING_RESPONSE) :] if cut >= 0 else ""
    return header, end


def check_framing(student_tok: Any, teacher_tok: Any, name: str, template: Template) -> None:
    """Refuse a teacher whose template frames the student's response differently: another
    assistant header or end-of-turn text (a teacher scoring the response after a header it never
    produces gives a wrong signal, silently). ``plain``: nothing to compare (one format)."""
    if template != "chat":
        return
    for what, a, b in zip(
        ("text before the response (end of the user turn, assistant header)", "end of turn"),
        response_framing(student_tok, template),
        response_framing(teacher_tok, template),
        strict=True,
    ):
        if a != b:
            i = next(
                (k for k, (x, y) in enumerate(zip(a, b, strict=False)) if x != y),
                min(len(a), len(b)),
            )
            raise ConfigError(
                f"chat template of {name!r} frames the response differently from the student's: "
                f"{what} {b!r} vs {a!r} (first difference at character {i}); a teacher must "
                "score the student's response under the student's framing (docs/train.md)"
            )
