"""``benchmarks/pooled_gain.py``: learned psi against a start and reference pooled over records (issue 14)."""

import json
import pathlib

import pytest

RESULTS = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "psi_learning"


@pytest.fixture()
def pg(benchmark_script):
    return benchmark_script("pooled_gain")


def _psi_learning(runs, **options):
    return {"benchmark": "psi_learning", "experiment": "x", "size": "gpu", "assess_images": None,
            "assess_epochs": None, "repeats": 2, "baseline_repeats": 2, "runs": runs, **options}


def _write(tmp_path, name, record):
    path = tmp_path / name
    path.write_text(json.dumps(record))
    return str(path)


def _records(tmp_path):
    """Seed 0 and 1: a run's own baselines (one diverged reference model), a run that reused them, and a
    re-assessment of both seeds' start, reference and learned psi (two rows for seed 0: its start once)."""
    def m(*xs, diverged=None):
        return {"test_metrics": list(xs), **({"diverged_models": diverged} if diverged else {})}
    own = _psi_learning([
        {"variant": "_baseline", "seed": 0, "start": m(0.1, 0.3), "reference": m(0.5, 0.0, diverged=[1])},
        {"variant": "_baseline", "seed": 1, "start": m(0.2, 0.2), "reference": m(0.6, 0.6)},
        {"variant": "a", "seed": 0, "assessed": {"10": m(0.4, 0.4)}},
        {"variant": "a", "seed": 1, "assessed": {"10": m(0.3, 0.3)}}])
    reused = _psi_learning([
        {"variant": "_baseline", "seed": 0, "start": m(9.0, 9.0), "reference": m(9.0, 9.0), "reused_from": "own"},
        {"variant": "_baseline", "seed": 1, "start": m(9.0, 9.0), "reference": m(9.0, 9.0), "reused_from": "own"},
        {"variant": "b", "seed": 0, "assessed": {"10": m(0.45, 0.45)}},
        {"variant": "b", "seed": 1, "assessed": {"10": m(0.5, 0.5)}}])
    again = {"benchmark": "reassess", "experiment": "x", "size": "gpu", "assess_images": None, "assess_epochs": None,
             "repeats": 1, "rows": [
                 {"file": "own.json", "variant": "a", "seed": 0, "step": 10,
                  "new": {"start": m(0.4), "reference": m(0.8), "learned": m(0.1)}},
                 {"file": "own.json", "variant": "a", "seed": 0, "step": 5,
                  "new": {"start": m(0.4), "reference": m(0.8), "learned": m(0.9)}},
                 {"file": "own.json", "variant": "a", "seed": 1, "step": 10,
                  "new": {"start": m(0.2), "reference": m(0.6), "learned": m(0.3)}}]}
    return [_write(tmp_path, "own.json", own), _write(tmp_path, "reused.json.gz.json", reused),
            _write(tmp_path, "again.json", again)]


def test_pools_every_record_once_leaves_diverged_and_reused_models_out(pg, tmp_path):
    paths = _records(tmp_path)
    out = pg.main(["--records", *paths, "--psi", "a=own.json:a@10", "--psi", "b=reused.json.gz.json:b@10",
                   "--base", "a", "--out", str(tmp_path / "p")])
    # seed 0: start 0.1, 0.3 (own) and 0.4 (again, once, though two rows); reference 0.5 (the diverged 0.0
    # left out) and 0.8; the reused run's 9.0s nowhere
    assert out["start"]["0"] == {"mean": pytest.approx(0.8 / 3), "models": 3, "sources": ["again.json", "own.json"]}
    assert out["reference"]["0"]["mean"] == pytest.approx(0.65) and out["reference"]["0"]["models"] == 2
    assert out["start"]["1"]["mean"] == pytest.approx(0.2) and out["reference"]["1"]["mean"] == pytest.approx(0.6)
    # a@10 on seed 0: its own 0.4, 0.4 and the re-assessment's 0.1 at step 10 (not step 5's 0.9)
    a = out["psi"]["a"]
    assert a["per_seed"]["0"]["mean"] == pytest.approx(0.3) and a["per_seed"]["0"]["models"] == 3
    assert a["gain"]["per_seed"] == pytest.approx([0.3 - 0.8 / 3, 0.1])
    assert a["G"]["per_seed"] == pytest.approx([(0.3 - 0.8 / 3) / (0.65 - 0.8 / 3), 0.25])
    b = out["psi"]["b"]
    assert b["paired_with_base"]["per_seed"] == pytest.approx([0.15, 0.2])
    assert (b["paired_with_base"]["ahead"], b["paired_with_base"]["behind"]) == (2, 0)
    assert b["paired_with_base"]["se"] == pytest.approx(0.025)  # std(ddof=1) 0.0354 / sqrt(2)
    for ext in (".json", ".md", ".png"):
        assert (tmp_path / f"p{ext}").stat().st_size > 0
    assert "| a (a@10) |" in (tmp_path / "p.md").read_text()


def test_a_runs_replay_product_is_named_by_trajectory(pg, tmp_path):
    """``--psi NAME=RECORD:VARIANT@trajectory``: the fresh models a ``--assess-trajectory`` run trained on the mixture
    of its steps' psi, kept apart from those on its final psi (the same run's step 10)."""
    paths = _records(tmp_path)
    own = json.loads(pathlib.Path(paths[0]).read_text())
    for run, mix in zip(own["runs"][2:], (0.2, 0.1)):
        run["assessed"]["trajectory"] = {"test_metrics": [mix, mix]}
    pathlib.Path(paths[0]).write_text(json.dumps(own))
    out = pg.main(["--records", *paths, "--psi", "a=own.json:a@10", "--psi", "mix=own.json:a@trajectory",
                   "--base", "a", "--out", str(tmp_path / "p")])
    mix = out["psi"]["mix"]
    assert mix["step"] == "trajectory" and [mix["per_seed"][s]["mean"] for s in "01"] == pytest.approx([0.2, 0.1])
    assert mix["paired_with_base"]["per_seed"] == pytest.approx([0.2 - 0.3, 0.1 - 0.3])
    assert "| mix (a@trajectory) |" in (tmp_path / "p.md").read_text()


@pytest.mark.parametrize("change, message", [
    ({"experiment": "y"}, "one experiment, size and assessment budget"),
    ({"assess_epochs": 24}, "one experiment, size and assessment budget"),
])
def test_refuses_records_that_cannot_be_pooled(pg, tmp_path, capsys, change, message):
    paths = _records(tmp_path)
    record = json.loads(pathlib.Path(paths[1]).read_text())
    pathlib.Path(paths[1]).write_text(json.dumps({**record, **change}))
    with pytest.raises(SystemExit):
        pg.main(["--records", *paths, "--psi", "a=own.json:a@10", "--out", str(tmp_path / "p")])
    assert message in capsys.readouterr().err


def test_names_a_psi_without_models_and_a_record_given_twice(pg, tmp_path, capsys):
    paths = _records(tmp_path)
    with pytest.raises(SystemExit):
        pg.main(["--records", *paths, "--psi", "a=own.json:a@99", "--out", str(tmp_path / "p")])
    assert "no models of a@99 in own.json for seeds" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        pg.main(["--records", *paths, paths[0], "--psi", "a=own.json:a@10", "--out", str(tmp_path / "p")])
    assert "names own.json twice" in capsys.readouterr().err


def test_a_name_given_again_joins_the_seeds_of_a_run_split_over_records(pg, tmp_path, capsys):
    """Seed 0's run in one record and seed 1's in another (``det_s012`` / ``det_s34``) make one row; a seed that two
    records hold is refused (two runs are two psi); the command is stored quoted, so a variant with spaces runs
    again as written."""
    def m(*xs):
        return {"test_metrics": list(xs)}
    base = [{"variant": "_baseline", "seed": s, "start": m(0.1, 0.1), "reference": m(0.5, 0.5)} for s in (0, 1)]
    own = _write(tmp_path, "own.json", _psi_learning([*base, {"variant": "a", "seed": 0, "assessed": {"10": m(0.3)}}]))
    split = _write(tmp_path, "split.json", _psi_learning([{"variant": "a b", "seed": 1, "assessed": {"10": m(0.2)}}]))
    dup = _write(tmp_path, "dup.json", _psi_learning([{"variant": "a", "seed": 0, "assessed": {"10": m(0.4)}}]))
    out = pg.main(["--records", own, split, dup, "--psi", "a=own.json:a@10", "--psi", "a=split.json:a b@10",
                   "--out", str(tmp_path / "p")])
    a = out["psi"]["a"]
    assert out["seeds"] == [0, 1] and a["record"] == "own.json + split.json"
    assert a["gain"]["per_seed"] == pytest.approx([0.2, 0.1])
    assert a["seeds_from"] == {"0": "own.json:a@10", "1": "split.json:a b@10"}
    assert "'a=split.json:a b@10'" in out["command"]
    with pytest.raises(SystemExit):
        pg.main(["--records", own, split, dup, "--psi", "a=own.json:a@10", "--psi", "a=dup.json:a@10",
                 "--psi", "a=split.json:a b@10", "--out", str(tmp_path / "p")])
    assert "seed 0 has models in own.json:a@10 and dup.json:a@10: give each seed's run once" in capsys.readouterr().err


def test_reproduces_the_committed_digits_det_pools(pg, tmp_path):
    """Session 66's table (docs/learning.md): the default's step-120 psi judged by 17-20 detectors, and
    unit_norm_decay60's gain +0.121 +- 0.027, G 0.74 +- 0.11 over the pooled start, from the records alone."""
    names = ["digits-det_gpu_new_start.json.gz", "digits-det_gpu_120steps_det_s012.json.gz",
             "reassess_digits-det_gpu_baselines.json", "reassess_digits-det_gpu_baselines_more.json",
             "reassess_digits-det_gpu_default_marginals.json", "reassess_digits-det_gpu_steps30_120_more.json",
             "reassess_digits-det_gpu_steps_s012.json", "digits-det_gpu_120steps_unit_norm_decay60.json.gz"]
    out = pg.main(["--records", *[str(RESULTS / n) for n in names], "--seeds", "0,1,2",
                   "--psi", "default=digits-det_gpu_120steps_det_s012.json:default@120",
                   "--psi", "u=digits-det_gpu_120steps_unit_norm_decay60.json:unit_norm_decay60@120",
                   "--out", str(tmp_path / "p")])
    assert [out["start"][s]["models"] for s in "012"] == [10, 10, 9]
    assert [out["reference"][s]["models"] for s in "012"] == [9, 10, 10]
    default = out["psi"]["default"]["per_seed"]
    assert [round(default[s]["mean"], 3) for s in "012"] == [0.382, 0.327, 0.354]
    assert [default[s]["models"] for s in "012"] == [20, 17, 20]
    u = out["psi"]["u"]
    assert round(u["gain"]["mean"], 3) == 0.121 and round(u["gain"]["std"], 3) == 0.027
    assert round(u["G"]["mean"], 2) == 0.74 and round(u["G"]["std"], 2) == 0.11


def test_reproduces_the_readme_digits_det_five_seed_pool(pg, tmp_path):
    """The README's digits-det figure (session 72): the default's runs split over two records, joined into one row,
    gain +0.123 +- 0.019 over a start judged by 60 detectors; the command stored beside the table makes it."""
    import shlex

    stored = json.loads((RESULTS / "pooled_gain_digits-det_gpu_120_5seeds.json").read_text())
    argv = shlex.split(stored["command"])[2:]  # after "python benchmarks/pooled_gain.py"
    argv[argv.index("--out") + 1] = str(tmp_path / "p")
    root = RESULTS.parents[2]
    argv = [str(root / a) if a.startswith("benchmarks/") else a for a in argv]
    out = pg.main(argv)
    assert sum(out["start"][s]["models"] for s in "01234") == 60
    default = out["psi"]["default"]
    assert round(default["gain"]["mean"], 3) == 0.123 and round(default["gain"]["std"], 3) == 0.019
    assert round(default["G"]["mean"], 2) == 0.74 and round(out["reference_gain"]["mean"], 3) == 0.166
    assert default["record"] == "digits-det_gpu_120steps_det_s012.json + digits-det_gpu_120steps_det_s34.json"
