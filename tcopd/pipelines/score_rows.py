"""``tcopd score``'s input rows: token ids, text, or a conversation as chat messages.

A row gives its prompt as ``prompt_ids`` (token ids), ``prompt`` (text, tokenised with the
student's tokenizer, no special tokens added) or ``messages`` (chat messages, rendered with the
``template`` setting through the student's tokenizer); its response as ``response_ids`` or
``response`` (text). A context teacher (``--teacher-prompt``) needs ``messages``: it renders
its own context + the conversation, and scores the same response ids after it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tcopd.errors import DataError
from tcopd.runtime.data.io import read_rows
from tcopd.runtime.data.prompts import render_prompt
from tcopd.runtime.scoring.contexts import ContextRenderer


@dataclass
class Row:
    number: int
    data: dict[str, Any]
    prompt_ids: list[int]
    response_ids: list[int]
    messages: list[dict[str, Any]] | None = None  # the conversation, when the row gives it


def _id_list(value: Any, where: str, key: str) -> list[int]:
    if not isinstance(value, (list, tuple)) or not all(
        isinstance(x, int) and not isinstance(x, bool) for x in value
    ):
        raise DataError(f"{where}: {key!r} must be a list of integer token ids")
    return list(value)


def read_score_rows(
    path: str, tokenizer: Any, vocab: int, max_len: int | None, template: str = "chat"
) -> list[Row]:
    """Every row of ``path``, checked (ids in the vocabulary, lengths), each failure one line
    naming the file and row."""
    out: list[Row] = []
    for number, row in read_rows(path):
        where = f"{path}:{number}"
        messages = _messages(row, where)
        p = _prompt(row, where, tokenizer, template, messages)
        r = _response(row, where, tokenizer)
        if not r:
            raise DataError(f"{where}: empty response: there is nothing to score (drop the row)")
        if not p:
            raise DataError(
                f"{where}: empty prompt: the first response token needs at least one prompt token"
            )
        bad = next((t for t in p + r if t < 0 or t >= vocab), None)
        if bad is not None:
            raise DataError(
                f"{where}: token id {bad} is outside the vocabulary (size {vocab}): wrong tokenizer?"
            )
        if max_len is not None and len(p) + len(r) > max_len:
            raise DataError(
                f"{where}: prompt + response is {len(p) + len(r)} tokens, longer than the model's maximum "
                f"positions ({max_len}); truncate or drop the row"
            )
        out.append(Row(number, row, p, r, messages))
    if not out:
        raise DataError(f"{path}: no rows to score")
    return out


def _messages(row: dict[str, Any], where: str) -> list[dict[str, Any]] | None:
    m = row.get("messages")
    if m is None:
        return None
    if (
        not isinstance(m, list)
        or not m
        or not all(isinstance(x, dict) and "role" in x and "content" in x for x in m)
    ):
        raise DataError(f"{where}: 'messages' must be a non-empty list of {{role, content}}")
    return [dict(x) for x in m]


def _prompt(
    row: dict[str, Any], where: str, tokenizer: Any, template: str, messages: list | None
) -> list[int]:
    if "prompt_ids" in row:
        if "response_ids" not in row:
            raise DataError(f"{where}: a row needs both 'prompt_ids' and 'response_ids'")
        return _id_list(row["prompt_ids"], where, "prompt_ids")
    if isinstance(row.get("prompt"), str):
        return tokenizer(row["prompt"], add_special_tokens=False)["input_ids"]
    if messages is not None:
        text = render_prompt(messages, tokenizer, template)  # type: ignore[arg-type]
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    raise DataError(
        f"{where}: a row needs a prompt: 'prompt_ids' (token ids), 'prompt' (text) or "
        "'messages' (chat messages), and a response: 'response_ids' or 'response'"
    )


def _response(row: dict[str, Any], where: str, tokenizer: Any) -> list[int]:
    if "response_ids" in row:
        return _id_list(row["response_ids"], where, "response_ids")
    if isinstance(row.get("response"), str):
        return tokenizer(row["response"], add_special_tokens=False)["input_ids"]
    raise DataError(f"{where}: a row needs 'response_ids' (token ids) or 'response' (text)")


def context_prompts(
    renderer: ContextRenderer, rows: list[Row], path: str, max_len: int | None
) -> dict[str, list[list[int]]]:
    """``{context teacher: [its prompt ids for each row]}``; a row without ``messages`` is
    refused (one line: a context teacher cannot score a conversation it is not given)."""
    if not renderer.names:
        return {}
    for row in rows:
        if row.messages is None:
            raise DataError(
                f"{path}:{row.number}: teacher {renderer.names[0]!r} has a context "
                "(--teacher-prompt), so every row needs its conversation as 'messages' "
                "(chat messages); this row has only a prompt as ids or text"
            )
    own = renderer.batch([r.messages for r in rows])
    for name, prompts in own.items():
        for row, p in zip(rows, prompts, strict=True):
            if max_len is not None and len(p) + len(row.response_ids) > max_len:
                raise DataError(
                    f"{path}:{row.number}: with teacher {name!r}'s context the sequence is "
                    f"{len(p) + len(row.response_ids)} tokens, more than the model's maximum "
                    f"positions ({max_len})"
                )
    return own
