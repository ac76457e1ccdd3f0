"""The toy world's tokenizer: word-level, one token per digit, a real HF fast tokenizer.

Pre-tokenization (``tokenizers``): Metaspace turns each space into ``▁`` glued to the following
word, then a regex isolates every digit and every punctuation mark, each with its leading ``▁``
if it had one. So ``"Answer: 63 + 15 = 78. \\boxed{78}"`` becomes ``Answer : ▁6 3 ▁+ ▁1 5 ▁= ▁7 8 .
▁\\boxed { 7 8 }``. The vocabulary is every piece of the generated corpus (sorted, so it is
deterministic) plus the specials. The Metaspace decoder turns ``▁`` back into spaces, so
``decode(encode(text)) == text`` exactly — answers come back as ``\\boxed{78}``, not ``\\boxed{7 8}``.

Specials: ``<|endoftext|>`` (pad), ``<|im_end|>`` (EOS: the models learn to emit it after the
answer), ``<|im_start|>`` (chat turns), ``<unk>``. A tiny Qwen-style chat template is included so
``--template chat`` works too; the toy world itself uses the plain template.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

PAD, EOS, BOS_TURN, UNK = "<|endoftext|>", "<|im_end|>", "<|im_start|>", "<unk>"
SPECIALS = (PAD, EOS, BOS_TURN, UNK)
SPLIT_PATTERN = r"▁?\d|▁?[^\w\\▁]"
# The toy tokenizer carries *no* chat template: the toy models are trained on plain-template
# prompts, so `--template auto` (eval) must resolve to plain for them and their checkpoints.
# The chat-turn pieces stay in the vocabulary so a chat template can still be added later.
CHAT_PIECES = "user\nassistant\nsystem\n"


def _pre_tokenizer():
    from tokenizers import Regex, pre_tokenizers

    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=True),
            pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
        ]
    )


def corpus_pieces(texts: Iterable[str]) -> list[str]:
    """Sorted set of pre-tokenized pieces of ``texts`` plus all digits with and without ``▁``."""
    pre = _pre_tokenizer()
    pieces = {p for t in texts for p, _ in pre.pre_tokenize_str(t)}
    pieces.update(str(d) for d in range(10))
    pieces.update(f"▁{d}" for d in range(10))
    return sorted(pieces - set(SPECIALS))


def build_tokenizer(texts: Iterable[str]):
    """A ``PreTrainedTokenizerFast`` whose vocabulary covers every piece of ``texts``."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    tokens = list(SPECIALS) + corpus_pieces([*texts, CHAT_PIECES])
    core = Tokenizer(models.WordLevel(vocab={t: i for i, t in enumerate(tokens)}, unk_token=UNK))
    core.pre_tokenizer = _pre_tokenizer()
    core.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="never", split=True)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        unk_token=UNK,
        eos_token=EOS,
        pad_token=PAD,
        bos_token=None,
        additional_special_tokens=[BOS_TURN],
        model_max_length=512,
        clean_up_tokenization_spaces=False,
    )
    return tok


def save_tokenizer(tok, out_dir: str | Path) -> Path:
    out = Path(out_dir)
    tok.save_pretrained(out)
    return out
