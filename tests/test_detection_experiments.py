"""clevr-det and digits-det end to end at a tiny size: `autosim run` with the fresh-model
assessment (mAP@0.5), and the assessor's numbers are mAP of a model on real/target data."""

import json

import numpy as np
import pytest
from conftest import run_autosim_optimised

from autosim_jax.experiments import get_experiment
from autosim_jax.renderers.clevr_det import CELLS


@pytest.mark.slow
@pytest.mark.parametrize("name", ["clevr-det", "digits-det"])
def test_detection_experiment_runs_end_to_end_with_assessment(name, tmp_path):
    # `autosim run` in a process of its own, compiled at XLA's default optimisation level: the
    # detectors train long enough that optimised code pays (clevr-det alone on 2 cores: 38 s,
    # against 54 s at the suite's fast-compile level; conftest.py, session 33).
    out_dir = tmp_path / "run"
    proc = run_autosim_optimised("run", name, "--approximation", "linear", "--iterations", "2",
                                 "--dataset-size", "16", "--assess-images", "16", "--out", str(out_dir))
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = proc.stdout
    assert "mAP@0.5" in out and "reference psi" in out and "gap closed" in out
    records = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    metrics = [r["val_metric"] for r in records if "val_metric" in r]
    assert len(metrics) == 2 and all(0.0 <= m <= 1.0 for m in metrics)
    # The 54-cell categorical as heat maps next to the target's (tests/test_detection_heatmap.py).
    assert (out_dir / "cells.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_detection_setups_hold_boxes_and_the_54_cell_psi():
    setups = {name: get_experiment(name).build(size="cpu") for name in ("clevr-det", "digits-det")}
    for name, k in (("clevr-det", 3), ("digits-det", 10)):
        setup = setups[name]
        psi = setup.simulator.distribution.init()
        assert list(psi) == ["cell"] and psi["cell"].logits.shape == (54,)
        assert setup.simulator.renderer.schema["cell"].choices == CELLS
        x, y = setup.val_data
        assert y.shape[1:] == (setup.simulator.renderer.max_objects, 6) and np.all(y[:, 0, 5] == 1)
        assert setup.task.metric_name == "mAP@0.5"
        assert setup.model(x[:1]).shape == (1, *x.shape[1:3], k + 4)
    # clevr-det's start puts most mass on low quality, its hidden target on high quality.
    setup = setups["clevr-det"]
    start = np.exp(np.asarray(setup.simulator.distribution.init()["cell"].logits))
    target = np.exp(np.asarray(setup.reference_psi["cell"].logits))
    high = np.array([c.endswith("/high") for c in CELLS])
    assert start[high].sum() < 0.2 and target[high].sum() > 0.9
