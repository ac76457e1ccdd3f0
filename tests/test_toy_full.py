"""The recipe still builds a world of the designed shape (~7 minutes on 2 cores: `make
test-rebuild`, run by hand after a recipe change; CI runs the fast piece-by-piece check of
tests/test_toy_recipe.py, `make test-recipe`).

The world users get is the shipped one (tests/test_toy_shipped.py); this rebuilds it from the
recipe, as `tcopd prepare toy --rebuild` does, so that the recipe stays checkable. A rebuild on
another machine is a different set of weights (float differences in SGD grow), so the bounds are
the design's shape, not the shipped table's numbers (docs/prepare.md: how far rebuilds land). On
the float stream of tests/fixtures/toy_recipe_prefix.json, when its recording found that stream's
rebuild to be the shipped bytes, the rebuild must be those bytes again: the link that makes the
fast prefix check (tests/test_toy_recipe.py) stand for the whole recipe.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import record_toy_recipe_prefix as recorder  # noqa: E402


@pytest.mark.slow
@pytest.mark.rebuild
def test_rebuilt_toy_world_has_the_designed_shape(tmp_path):
    from tcopd.runtime.toy import ensure_toy
    from tcopd.runtime.toy.shipped import shipped_table

    t0 = time.time()
    world = ensure_toy(tmp_path / "toy", rebuild=True)
    elapsed = time.time() - t0
    table = world.table()
    m = table["models"]
    student, expert, anti = m["student"], m["expert"], m["anti_expert"]
    assert table["problems"] >= 200 and table["temperature"] == 1.0
    assert expert["accuracy"] >= student["accuracy"] + 0.30, table
    assert anti["accuracy"] <= student["accuracy"] + 0.05, table
    assert student["mean_length"] >= 1.1 * expert["mean_length"], table
    assert anti["mean_length"] >= 1.3 * student["mean_length"], table
    shipped = shipped_table("toy")["models"]
    for name in m:
        print(
            f"{name}: rebuilt {100 * m[name]['accuracy']:.1f} % / {m[name]['mean_length']:.1f} tok,"
            f" shipped {100 * shipped[name]['accuracy']:.1f} % / {shipped[name]['mean_length']:.1f}"
        )
    # The design target is 5 minutes on 2 free cores; a shared CI box gets some slack.
    assert elapsed < 900, f"full toy build took {elapsed:.0f} s"

    differ = recorder.rebuild_differences(world.root)
    print(f"differs from the shipped world ({recorder.float_stream()}): {differ or 'nothing'}")
    recorded = json.loads(recorder.FIXTURE.read_text())
    on_recorded_stream = recorder.float_stream() == recorded["float_stream"]
    if on_recorded_stream and recorded["rebuild_reproduces_shipped"]:
        assert differ == [], "the recipe no longer rebuilds the shipped bytes on their stream"
