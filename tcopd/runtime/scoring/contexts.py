"""Teachers that are prompts: a teacher that scores the student's response under its own context.

``--teacher-prompt NAME=FILE`` gives teacher ``NAME`` a list of chat messages (FILE: JSON or
YAML; a system message and/or worked user/assistant pairs) placed *before* each conversation's
own messages. The teacher then scores the student's response ids after its own rendering of
``context + conversation`` (on-policy context distillation: the student learns to behave as
if it had been given the prompt; with a negative λ it moves away from a bad prompt).

Choices:

- The response ids are never re-tokenized: a teacher's prompt ids are its rendering of the
  prompt alone (generation prompt included), and the student's response ids follow them, exactly
  as they follow the student's own prompt. :func:`tcopd.runtime.data.prompts.check_framing` refuses a
  teacher whose chat template would frame the response differently.
- ``chat``: the teacher's tokenizer's chat template renders ``context + conversation``.
  ``plain``: the context is written in the plain format itself: a system message as its own
  paragraph, each worked pair as ``PLAIN_FORMAT(user) + " " + assistant``, then the
  conversation's plain prompt — so a few-shot context reads like the prompts the model answers.
- Rendered prompt ids are cached per (teacher, conversation): a step's ``samples_per_prompt``
  responses share one rendering.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tcopd.errors import ConfigError, DataError
from tcopd.runtime.data.prompts import PLAIN_FORMAT, render_prompt

ROLES = ("system", "user", "assistant")
Messages = Sequence[Mapping[str, Any]]


@dataclass(frozen=True)
class Context:
    """Teacher ``name``'s context: the messages placed before every conversation."""

    name: str
    path: str
    messages: tuple[tuple[str, str], ...]  # (role, content)

    def as_messages(self) -> list[dict[str, str]]:
        return [{"role": r, "content": c} for r, c in self.messages]


def parse_teacher_prompt(text: str) -> tuple[str, str]:
    """``"expert=prompts/concise.yaml"`` → ``("expert", "prompts/concise.yaml")``."""
    name, sep, path = text.partition("=")
    if not sep or not name.strip() or not path.strip():
        raise ConfigError(
            f"--teacher-prompt {text!r} must look like NAME=FILE (a JSON or YAML list of chat "
            "messages), e.g. expert=prompts/concise.yaml"
        )
    return name.strip(), path.strip()


def load_context_messages(path: str | Path) -> tuple[tuple[str, str], ...]:
    """The messages of a context file: a non-empty list of ``{role, content}``, roles ``system``
    (first only), ``user`` and ``assistant``. Every mistake is one line naming the file."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"teacher prompt file {str(p)!r} does not exist")
    try:
        text = p.read_text()
        data = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(
            f"teacher prompt file {str(p)!r} is not valid JSON/YAML: {e}".split("\n")[0]
        )
    if isinstance(data, Mapping) and "messages" in data:
        data = data["messages"]
    if not isinstance(data, list) or not data:
        raise ConfigError(
            f"teacher prompt file {str(p)!r} must hold a non-empty list of chat messages "
            "[{role, content}, ...] (or {messages: [...]})"
        )
    out: list[tuple[str, str]] = []
    for i, m in enumerate(data):
        if not isinstance(m, Mapping) or not isinstance(m.get("content"), str):
            raise ConfigError(f"{str(p)!r} message {i}: needs a 'role' and a string 'content'")
        role = m.get("role")
        if role not in ROLES:
            raise ConfigError(f"{str(p)!r} message {i}: role {role!r} is not one of {ROLES}")
        if role == "system" and i != 0:
            raise ConfigError(f"{str(p)!r} message {i}: a system message must come first")
        out.append((role, m["content"]))
    if out[-1][0] == "user":
        raise ConfigError(
            f"{str(p)!r}: the last message is a user turn; the conversation's own user turn "
            "follows the context, so end with a system or an assistant message"
        )
    return tuple(out)


def load_contexts(args: Sequence[str], teacher_names: Sequence[str]) -> dict[str, Context]:
    """``--teacher-prompt`` arguments → ``{name: Context}``; each names a configured teacher once."""
    out: dict[str, Context] = {}
    for arg in args:
        name, path = parse_teacher_prompt(arg)
        if name not in teacher_names:
            have = ", ".join(teacher_names) or "none"
            raise ConfigError(
                f"--teacher-prompt {arg!r}: no teacher named {name!r} (teachers: {have})"
            )
        if name in out:
            raise ConfigError(f"--teacher-prompt: teacher {name!r} is given two prompts")
        out[name] = Context(name, path, load_context_messages(path))
    return out


def plain_context(context: Context, plain_format: str = PLAIN_FORMAT) -> str:
    """The plain-template text of a context, placed before the conversation's plain prompt."""
    parts: list[str] = []
    pending_user: str | None = None
    for role, content in context.messages:
        if role == "system":
            parts.append(content)
        elif role == "user":
            pending_user = content
        else:  # an assistant turn answers the user turn before it (or stands alone)
            question = plain_format.format(content=pending_user) if pending_user is not None else ""
            parts.append(f"{question} {content}".strip())
            pending_user = None
    if pending_user is not None:
        parts.append(plain_format.format(content=pending_user))
    return "\n\n".join(parts) + "\n\n"


class ContextRenderer:
    """Prompt ids of each context teacher for given conversations (cached); see the module doc.

    ``tokenizers[name]``: the tokenizer whose chat template renders teacher ``name`` (its own for
    a local teacher; the student's for a served one, whose tokenizer was checked to equal it).
    """

    def __init__(
        self,
        contexts: Mapping[str, Context],
        tokenizers: Mapping[str, Any],
        template: str,
        plain_format: str = PLAIN_FORMAT,
    ):
        self.contexts = dict(contexts)
        self.tokenizers = dict(tokenizers)
        self.template = template
        self.plain_format = plain_format
        self._cache: dict[tuple[str, str], list[int]] = {}

    @property
    def names(self) -> list[str]:
        return list(self.contexts)

    def text(self, name: str, conversation: Messages) -> str:
        """Teacher ``name``'s prompt text for ``conversation`` (its context first)."""
        ctx = self.contexts[name]
        if self.template == "plain":
            own = render_prompt(conversation, None, "plain", self.plain_format)
            return plain_context(ctx, self.plain_format) + own
        messages = ctx.as_messages() + [dict(m) for m in conversation]
        return render_prompt(messages, self.tokenizers[name], "chat", self.plain_format)

    def prompt_ids(self, name: str, conversation: Messages) -> list[int]:
        key = (name, json.dumps([dict(m) for m in conversation], sort_keys=True))
        if key not in self._cache:
            text = self.text(name, conversation)
            tok = self.tokenizers[name]
            self._cache[key] = list(tok(text, add_special_tokens=False)["input_ids"])
        return self._cache[key]

    def batch(self, conversations: Sequence[Messages | None]) -> dict[str, list[list[int]]]:
        """``{teacher: [prompt ids of each conversation]}`` for every context teacher."""
        if self.contexts and any(c is None for c in conversations):
            i = next(i for i, c in enumerate(conversations) if c is None)
            raise DataError(
                f"sequence {i} has token ids but no messages: context teacher "
                f"{self.names[0]!r} needs the conversation as chat messages"
            )
        return {n: [self.prompt_ids(n, c) for c in conversations] for n in self.contexts}
