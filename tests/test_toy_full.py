"""The full-size toy world meets the table's required shape (slow: ~3–4 minutes on 2 cores)."""

from __future__ import annotations

import time

import pytest


@pytest.mark.slow
def test_full_toy_world_table_shape():
    """The default world (the one `tcopd eval toy`, `train --toy` and the demo use): built here
    on first use, reused after; its table was measured when it was built."""
    from tcopd.runtime.toy import ensure_toy

    t0 = time.time()
    world = ensure_toy()
    elapsed = time.time() - t0
    table = world.table()
    m = table["models"]
    student, expert, anti = m["student"], m["expert"], m["anti_expert"]
    assert table["problems"] >= 200 and table["temperature"] == 1.0
    assert expert["accuracy"] >= student["accuracy"] + 0.30, table
    assert anti["accuracy"] <= student["accuracy"], table
    assert anti["mean_length"] >= 1.3 * expert["mean_length"], table
    # The design target is 5 minutes on 2 free cores; a shared CI box gets some slack.
    assert elapsed < 600, f"full toy build took {elapsed:.0f} s"
    print(f"toy world ready in {elapsed:.0f} s (build recorded: {world.build_seconds:.0f} s)")
