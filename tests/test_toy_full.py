"""The recipe still builds a world of the designed shape (~7 minutes on 2 cores: `make
test-rebuild`, which .ci/run runs; `make test` leaves it out).

The world users get is the shipped one (tests/test_toy_shipped.py); this rebuilds it from the
recipe, as `tcopd prepare toy --rebuild` does, so that the recipe stays checkable. A rebuild on
another machine is a different set of weights (float differences in SGD grow), so the bounds are
the design's shape, not the shipped table's numbers (docs/prepare.md: how far rebuilds land).
"""

from __future__ import annotations

import time

import pytest


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
