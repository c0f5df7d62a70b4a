"""``benchmarks/evaluation_ranking.py``: the rank statistics against a hand computation, and the check that two
evaluations scored the same candidates."""

import json

import numpy as np
import pytest


@pytest.fixture()
def ranking(benchmark_script):
    return benchmark_script("evaluation_ranking")


def test_spearman_by_hand_with_ties(ranking):
    # ranks of x with its tie averaged: 1.5, 1.5, 3, 4; of y: 1, 3, 2, 4; Pearson of those by hand
    rx, ry = np.array([1.5, 1.5, 3, 4]), np.array([1.0, 3, 2, 4])
    dx, dy = rx - rx.mean(), ry - ry.mean()
    expected = (dx @ dy) / np.sqrt((dx @ dx) * (dy @ dy))
    assert ranking.spearman([0.1, 0.1, 0.2, 0.5], [0.3, 0.7, 0.5, 0.9]) == pytest.approx(expected, abs=1e-12)
    assert ranking.spearman([3.0, 2.0, 1.0], [1.0, 2.0, 3.0]) == pytest.approx(-1.0)
    assert np.isnan(ranking.spearman([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]))


def _run(root, seed, rewards, psis):
    d = root / "random" / f"seed{seed}"
    d.mkdir(parents=True)
    with open(d / "metrics.jsonl", "w") as f:
        for step, (r, psi) in enumerate(zip(rewards, psis), 1):
            f.write(json.dumps({"step": step, "reward": r, "improved": psi is not None,
                                "psi": psi if psi is not None else {"a": [0.0]}}) + "\n")


def test_collect_cuts_to_common_candidates_and_summarises(ranking, tmp_path):
    start, b, c = {"a": [0.0]}, {"a": [1.0]}, {"a": [2.0]}
    _run(tmp_path / "cheap", 0, [0.1, 0.3, 0.2, 0.0], [start, b, None, None])
    _run(tmp_path / "dear", 0, [0.5, 0.6, 0.9], [start, b, c])
    table = ranking.collect({"cheap": str(tmp_path / "cheap"), "dear": str(tmp_path / "dear")}, "random")
    assert table == {0: {"cheap": [0.1, 0.3, 0.2], "dear": [0.5, 0.6, 0.9]}}
    s = ranking.summarise(table, "dear")
    assert s["per_seed"][0]["cheap"]["pick_rank_under_reference"] == 2
    assert s["pooled"]["cheap"]["pick_shortfall_mean"] == pytest.approx(0.3)


def test_collect_refuses_runs_of_different_candidates(ranking, tmp_path):
    _run(tmp_path / "x", 0, [0.1, 0.3], [{"a": [0.0]}, {"a": [1.0]}])
    _run(tmp_path / "y", 0, [0.1, 0.2], [{"a": [0.0]}, {"a": [1.5]}])
    with pytest.raises(ValueError, match="candidate 2: x and y evaluated different psi"):
        ranking.collect({"x": str(tmp_path / "x"), "y": str(tmp_path / "y")}, "random")
    with pytest.raises(ValueError, match="no random/seedS"):
        ranking.collect({"x": str(tmp_path / "x"), "z": str(tmp_path / "nothing")}, "random")
