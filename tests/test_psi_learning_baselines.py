"""``benchmarks/psi_learning.py --baselines-from``: reused start and reference assessments must
have been made with this call's assessment budget as resolved (the experiment's defaults applied),
and a record that does not say which budget it used is refused (session 49 reused 512-image models
against 2,048-image ones because both calls said "the experiment's default")."""

import argparse
import gzip
import json
import pathlib

import pytest

_BENCHMARKS = pathlib.Path(__file__).parents[1] / "benchmarks"


@pytest.fixture
def pl(monkeypatch):
    import importlib
    monkeypatch.syspath_prepend(str(_BENCHMARKS))
    return importlib.import_module("psi_learning")


def _write(tmp_path, budget=None):
    base = {"variant": "_baseline", "seed": 0, "start": {"test_metric": 0.2}, "reference": {"test_metric": 0.5}}
    if budget is not None:
        base["assess_budget"] = budget
    path = tmp_path / "old.json.gz"
    with gzip.open(path, "wt") as f:
        json.dump({"experiment": "digits-sim2real", "size": "cpu", "repeats": 2, "baseline_repeats": 2,
                   "runs": [base]}, f)
    return str(path)


def _args(**kw):
    return argparse.Namespace(**{"experiment": "digits-sim2real", "size": "cpu", "repeats": 2, "baseline_repeats": None,
                                 "assess_images": None, "assess_epochs": None, **kw})


def test_baselines_are_reused_only_with_the_resolved_budget(pl, tmp_path):
    # digits-sim2real cpu assesses on 4,096 images x 10 epochs by default
    reused = pl.load_baselines(_write(tmp_path, [4096, 10]), _args(), [0])
    assert reused[0]["start"]["test_metric"] == 0.2 and reused[0]["index"] == -1
    assert pl.load_baselines(_write(tmp_path, [4096, 10]), _args(assess_images=4096), [0])
    with pytest.raises(SystemExit, match=r"assessed with \[\(512, 10\)\].*this call assesses with \[4096, 10\]"):
        pl.load_baselines(_write(tmp_path, [512, 10]), _args(), [0])
    with pytest.raises(SystemExit, match=r"this call assesses with \[1024, 10\]"):
        pl.load_baselines(_write(tmp_path, [4096, 10]), _args(assess_images=1024), [0])
    with pytest.raises(SystemExit, match="does not record the assessment budget"):
        pl.load_baselines(_write(tmp_path), _args(), [0])
    with pytest.raises(SystemExit, match=r"no start/reference assessment for seeds \[1\]"):
        pl.load_baselines(_write(tmp_path, [4096, 10]), _args(), [0, 1])
