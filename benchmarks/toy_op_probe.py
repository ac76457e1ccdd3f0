"""What a toy model does at the two token decisions the world v3 design is about.

    .venv/bin/python benchmarks/toy_op_probe.py MODEL_DIR [MODEL_DIR ...]

For the first 100 held-out math problems: the teacher-forced probability of the *right* operation
token after the first number (prompt + " Hmm, let me think. <start>"), and the probability of
another hedge after one hedge. docs/prepare.md quotes it for the student, the expert and OPD
checkpoints (`tcopd train --toy --lambdas 1 --steps 12 --save-every 3 --keep-checkpoints 10`).
"""

from __future__ import annotations

import re
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tcopd.runtime.data.datasets import load_prepared
from tcopd.runtime.data.prompts import render_prompt
from tcopd.runtime.toy import ensure_toy

HEDGE = " Hmm, let me think."


def probe(model_dir: str, rows: list[dict], tok) -> tuple[float, float]:
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    plus, minus = tok.convert_tokens_to_ids("▁+"), tok.convert_tokens_to_ids("▁-")
    right_p, hedge_p = [], []
    for r in rows:
        first = re.match(r"(\d+) ([+-])", r["extra_info"]["solution"])
        prompt = render_prompt(r["prompt"], template="plain") + HEDGE
        for text, want in ((prompt + " " + first.group(1), "op"), (prompt, "hedge")):
            ids = tok(text, add_special_tokens=False, return_tensors="pt").input_ids
            with torch.no_grad():
                lp = torch.log_softmax(model(ids).logits[0, -1].double(), -1)
            if want == "op":
                right_p.append(lp[plus if first.group(2) == "+" else minus].exp().item())
            else:  # anything but the first digit of the start value: another hedge
                start = tok.convert_tokens_to_ids("▁" + first.group(1)[0])
                hedge_p.append(1 - lp[start].exp().item())
    return sum(right_p) / len(right_p), sum(hedge_p) / len(hedge_p)


def main(paths: list[str]) -> None:
    world = ensure_toy()
    tok = AutoTokenizer.from_pretrained(world.tokenizer)
    rows = load_prepared(world.test_files["math"])[:100]
    for path in paths:
        op, hedge = probe(path, rows, tok)
        print(f"{path}: p(right first op) = {op:.3f}, p(another hedge after one) = {hedge:.3f}")


if __name__ == "__main__":
    main(sys.argv[1:])
