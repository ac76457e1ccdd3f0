"""Tiny models and tokenizers built on the spot, for tests (nothing touches the Hub).

- :func:`make_tokenizer` writes a word-level tokenizer (whitespace split, ~100 tokens: specials,
  digits, arithmetic symbols and a few words) that ``AutoTokenizer.from_pretrained`` loads, with
  a minimal chat template.
- :func:`make_tiny_qwen3` writes a random Qwen3 causal LM (hidden 64, 2 layers, 4 heads of 16)
  with that tokenizer saved in the same directory, so the directory is a complete HF model.

Both are deterministic in their arguments (same seed → same weights).
"""

from __future__ import annotations

from pathlib import Path

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<unk>"]
WORDS = (
    [str(d) for d in range(10)]
    + list("+-*/=()[]{}.,:;?!")
    + ["\\boxed", "answer", "is", "the", "a", "of", "and", "to", "in", "we", "so", "x", "y", "n"]
    + ["user", "assistant", "system", "think", "step", "by", "please", "reason", "final"]
    + ["math", "code", "def", "return", "print", "if", "else", "for", "while", "true", "false"]
)
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|> {{ m['role'] }} {{ m['content'] }} <|im_end|> {% endfor %}"
    "{% if add_generation_prompt %}<|im_start|> assistant {% endif %}"
)


def vocab_list(size: int = 100) -> list[str]:
    """The tokenizer's tokens in id order: specials, the fixed words, then ``w<i>`` fillers."""
    tokens = SPECIALS + WORDS
    i = 0
    while len(tokens) < size:
        tokens.append(f"w{i}")
        i += 1
    return tokens[:size]


def make_tokenizer(tmpdir: str | Path, vocab_size: int = 100, name: str = "tokenizer") -> Path:
    """Build and save a word-level tokenizer under ``tmpdir/name``; return that directory."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(vocab_list(vocab_size))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        unk_token="<unk>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
        additional_special_tokens=["<|im_start|>"],
    )
    tok.chat_template = CHAT_TEMPLATE
    out = Path(tmpdir) / name
    tok.save_pretrained(out)
    return out


def make_tiny_qwen3(
    tmpdir: str | Path,
    tokenizer_path: str | Path,
    seed: int = 0,
    tie: bool = True,
    name: str | None = None,
    **cfg,
) -> Path:
    """Save a random tiny Qwen3ForCausalLM (float32) plus the tokenizer under ``tmpdir``.

    ``cfg`` overrides Qwen3Config fields (e.g. ``num_hidden_layers=1``, ``max_position_embeddings``).
    Returns the model directory (``tmpdir/name``, default ``qwen3-s<seed>-tied|untied``).
    """
    import torch
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    tok = AutoTokenizer.from_pretrained(str(tokenizer_path))
    settings = dict(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=512,
        tie_word_embeddings=tie,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=None,
    )
    settings.update(cfg)
    config = Qwen3Config(**settings)
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(config)
    # Random init at std 0.02 gives near-uniform outputs; a larger scale makes the distributions
    # peaked enough that numeric tests are sensitive to mistakes (wrong position, wrong token).
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.15)
    model.eval()
    out = Path(tmpdir) / (name or f"qwen3-s{seed}-{'tied' if tie else 'untied'}")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out
