"""The shipped toy worlds: installed in seconds with every digest checked, the same bytes everywhere.

The install recomputes the data from the seed; these tests check the digests independently
(hashlib over the installed files against shipped.json), and that damage anywhere is one line
with nothing left behind.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

import pytest

from tcopd.errors import DataError
from tcopd.runtime.toy import build, multitask
from tcopd.runtime.toy.shipped import SHIPPED_MANIFEST, SHIPPED_ROOT


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _shipped(name: str) -> dict:
    return json.loads((SHIPPED_ROOT / name / SHIPPED_MANIFEST).read_text())


@pytest.mark.parametrize("name", ["toy", "toy-multitask"])
def test_shipped_world_installs_in_seconds_with_the_shipped_bytes(name, tmp_path):
    ensure = build.ensure_toy if name == "toy" else multitask.ensure_toy_multitask
    t0 = time.time()
    world = ensure(tmp_path / name)
    elapsed = time.time() - t0
    shipped = _shipped(name)
    # every shipped file and every regenerated data file, hashed here independently
    for rel, digest in {**shipped["files"], **shipped["data"]}.items():
        assert _sha(world.root / rel) == digest, rel
    assert len(shipped["data"]) >= 6 and any(r.endswith(".safetensors") for r in shipped["files"])
    manifest = json.loads(
        (world.root / ("toy.json" if name == "toy" else multitask.MANIFEST)).read_text()
    )
    assert manifest["origin"] == "shipped" and manifest["seed"] == 0
    assert world.table() == json.loads((SHIPPED_ROOT / name / "table.json").read_text())
    assert elapsed < 60, f"install took {elapsed:.1f} s"
    # installed again: reused, not rewritten
    mtime = (world.root / "student" / "model.safetensors").stat().st_mtime_ns
    ensure(tmp_path / name)
    assert (world.root / "student" / "model.safetensors").stat().st_mtime_ns == mtime


def test_models_of_the_shipped_world_load_and_generate(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    world = build.ensure_toy(tmp_path / "toy")
    tok = AutoTokenizer.from_pretrained(world.tokenizer)
    for path in world.models.values():
        model = AutoModelForCausalLM.from_pretrained(path)
        ids = tok(
            "Question: Tom has 40 pens. Tom buys 3. Then Tom eats 2. How many pens does "
            "Tom have now?\nAnswer:",
            return_tensors="pt",
        ).input_ids
        out = model.generate(ids, max_new_tokens=60, do_sample=False)
        assert "\\boxed{" in tok.decode(out[0, ids.shape[1] :])


def test_shipped_world_v3_table_has_the_designed_shape():
    """World v3's design (docs/prepare.md), read off the table measured when it was built: the
    expert far above the student, the anti-expert at or below it; the student *longer* than the
    expert (the hedging habit) and the anti-expert longer still."""
    t = _shipped("toy")["build"]
    assert t["version"] == build.BUILD_VERSION == 3 and t["seed"] == 0 and t["size"] == "full"
    m = json.loads((SHIPPED_ROOT / "toy" / "table.json").read_text())["models"]
    s, e, a = m["student"], m["expert"], m["anti_expert"]
    assert e["accuracy"] >= s["accuracy"] + 0.30
    assert a["accuracy"] <= s["accuracy"]
    assert s["mean_length"] >= 1.1 * e["mean_length"]
    assert a["mean_length"] >= 1.3 * s["mean_length"]


def _copy_source(tmp_path: Path) -> Path:
    src = tmp_path / "source"
    shutil.copytree(SHIPPED_ROOT / "toy", src)
    return src


def test_a_damaged_shipped_file_is_one_line_and_nothing_is_left(tmp_path):
    src = _copy_source(tmp_path)
    weights = src / "expert" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    root = tmp_path / "worlds" / "toy"
    with pytest.raises(DataError) as e:
        build.ensure_toy(root, source=src)
    msg = str(e.value)
    assert "\n" not in msg and "expert/model.safetensors" in msg and "damaged" in msg
    assert not root.exists() and list((tmp_path / "worlds").iterdir()) == []


def test_data_that_no_longer_regenerates_is_refused(tmp_path):
    src = _copy_source(tmp_path)
    shipped = json.loads((src / SHIPPED_MANIFEST).read_text())
    rel = sorted(shipped["data"])[0]
    shipped["data"][rel] = "0" * 64  # as if the generator had changed since shipping
    (src / SHIPPED_MANIFEST).write_text(json.dumps(shipped))
    root = tmp_path / "worlds" / "toy"
    with pytest.raises(DataError, match="no longer reproduces"):
        build.ensure_toy(root, source=src)
    assert not root.exists()


def test_other_seeds_and_sizes_are_built_not_installed(tmp_path):
    world = build.ensure_toy(tmp_path / "small", seed=3, size="small")
    assert json.loads((world.root / "toy.json").read_text())["origin"] == "built"


def test_cli_prepare_toy_installs_and_prints_the_table(tmp_path, capsys):
    from tcopd.cli.main import main

    try:
        main(["prepare", "toy", "--out", str(tmp_path / "toy")])
    except SystemExit as e:
        assert e.code in (0, None)
    out = capsys.readouterr().out
    assert "shipped" in out and "student" in out and "anti_expert" in out


def test_a_rebuilt_world_given_by_path_is_used_as_it_is(tmp_path):
    """load_benchmark("toy", from_path=DIR) never replaces DIR's world with the shipped one, even
    when DIR holds a rebuild of the shipped seed and size (origin "built")."""
    from tcopd.pipelines.benchmarks import load_benchmark

    world = build.ensure_toy(tmp_path / "rebuilt", seed=3, size="small")
    manifest_path = world.root / "toy.json"
    manifest = json.loads(manifest_path.read_text())
    manifest.update(seed=0, size="full")  # what `prepare toy --rebuild` writes (origin built)
    manifest_path.write_text(json.dumps(manifest))
    rows = load_benchmark("toy", from_path=str(world.root))
    assert [r["prompt"] for r in rows] == [
        json.loads(x)["prompt"] for x in (world.root / "data" / "test_math.jsonl").open()
    ]
    assert json.loads(manifest_path.read_text())["origin"] == "built"
    assert (
        not (world.root / "student" / "model.safetensors").read_bytes()
        == (SHIPPED_ROOT / "toy" / "student" / "model.safetensors").read_bytes()
    )
