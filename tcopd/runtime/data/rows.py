"""The prepared-row builder, shared by the dataset loaders and the toy world.

Its own module so that :mod:`tcopd.runtime.toy` need not import :mod:`tcopd.runtime.data.datasets`
(which imports the toy package to serve the ``toy`` benchmark): the dependency goes one way.
The row format is described in :mod:`tcopd.runtime.data.datasets` and docs/internals.md "Data".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tcopd.runtime.data.prompts import DEFAULT_INSTRUCTION

# How a response's answer is read (``reward_model.answer_format``; absent: boxed): the last
# ``\\boxed{...}`` (G-OPD's rule), or the last number written (tcopd.runtime.evaluation.grading).
ANSWER_FORMATS = ("boxed", "last_number")


def make_row(
    question: str,
    answer: str,
    *,
    data_source: str,
    domain: str = "math",
    split: str = "train",
    index: int = 0,
    instruction: str = DEFAULT_INSTRUCTION,
    ability: str | None = None,
    extra: Mapping[str, Any] | None = None,
    answer_format: str = "boxed",
) -> dict[str, Any]:
    """One prepared row: the user turn is ``question + instruction``."""
    reward = {"style": "rule", "ground_truth": answer}
    if answer_format != "boxed":
        reward["answer_format"] = answer_format
    return {
        "data_source": data_source,
        "prompt": [{"role": "user", "content": question + instruction}],
        "ability": ability or domain,
        "reward_model": reward,
        "extra_info": {"split": split, "index": index, "question": question, **(extra or {})},
        "domain": domain,
    }
