"""``autosim compare`` end to end at tiny size, on the CLI tests' toy experiment (module:attr)."""

import json

import pytest
from conftest import TOY

from autosim_jax.cli import main
from autosim_jax.compare import reach_table


@pytest.fixture(scope="module")
def toy(toy_path):
    """The toy experiment's name, its module on sys.path (conftest's toy_path)."""
    return TOY


@pytest.fixture(scope="module")
def compared(toy, tmp_path_factory):
    out = tmp_path_factory.mktemp("compare") / "c"
    argv = ["compare", toy, "--methods", "autosimulate,lts,bo,random", "--seeds", "2", "--budget-images", "128",
            "--approximations", "linear,exact_quadratic", "--lts-samples", "2", "--out", str(out)]
    assert main(argv) == 0
    return out


@pytest.fixture()
def assessments(monkeypatch):
    """The seeds of the fresh-model assessments ``autosim compare`` trains from here on (cached ones
    are read back from the runs' assessed.json and do not count)."""
    from autosim_jax import experiments  # compare imports make_assessor from there when it assesses

    calls, make_assessor = [], experiments.make_assessor

    def counting(setup, **kw):
        assess = make_assessor(setup, **kw)
        return lambda psi, seed, on_model=None: calls.append(seed) or assess(psi, seed, on_model)

    monkeypatch.setattr(experiments, "make_assessor", counting)
    return calls


def test_compare_writes_tables_plots_and_run_dirs(compared):
    out = compared
    result = json.loads((out / "compare.json").read_text())
    labels = [r["label"] for r in result["rows"]]
    assert labels == ["autosimulate (linear)", "autosimulate (exact_quadratic)", "lts", "bo", "random"]
    for row in result["rows"]:
        assert [s["seed"] for s in row["seeds"]] == [0, 1]
        for s in row["seeds"]:
            # The same budget for everyone: 128 images = 4 evaluations of K = 32 (LTS: 2 steps x 2).
            assert s["images"] == 128 and s["evaluations"] == 4 and s["train_steps"] == 4 * 2 * 2, row["label"]
            assert 32 <= s["images_to_best"] <= 128 and s["time_to_best"] <= s["time"]
            assert s["time"] == pytest.approx(s["time_render"] + s["time_train"] + s["time_other"])
        agg = row["aggregate"]["best_val_metric"]
        assert agg["std"] >= 0 and agg["mean"] == pytest.approx(sum(s["best_val_metric"] for s in row["seeds"]) / 2)
        # Every run's final psi was assessed by fresh models (a metric, not a NaN).
        assert all(s["assessed_val_metric"] <= 0 and s["assessed_test_metric"] <= 0 for s in row["seeds"])
    md = (out / "compare.md").read_text()
    assert "fresh model on final psi" in md
    assert "Table 2" in md and "Table 4" in md and "best val neg_mse" in md and "| bo |" in md
    table2, table4 = md.split("Table 2")[1].split("Table 4")
    assert "exact_quadratic" not in table2  # Table 2: AutoSimulate with its first approximation only
    assert "autosimulate (linear)" in table4 and "autosimulate (exact_quadratic)" in table4 and "| lts |" not in table4
    assert "Fresh models along the run" in table2 and "Images to reach" in table2
    for name in ("val_vs_images.png", "val_vs_time.png", "assessed_vs_images.png"):
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000, name
    for d in ("autosimulate-linear", "autosimulate-exact_quadratic", "lts", "bo", "random"):
        for seed in (0, 1):
            run = out / d / f"seed{seed}"
            assert (run / "metrics.jsonl").stat().st_size > 0 and (run / "checkpoint.npz").exists(), run


def test_assessment_along_the_run_and_reach_table(compared):
    """Table 2's runs are assessed after 16, 32, 64, 128 images (budget 128, 4 points)."""
    result = json.loads((compared / "compare.json").read_text())
    assessment = result["assessment"]
    assert assessment["thresholds"] == [16, 32, 64, 128]
    assert len(assessment["start_psi"]["seeds"]) == 2
    for row in result["rows"]:
        for s in row["seeds"]:
            curve = s["assessed_curve"]
            if row["label"] == "autosimulate (exact_quadratic)":  # Table 4 only: the final psi
                assert [p["images"] for p in curve] == [128] and curve[0]["step"] == 4
                continue
            assert [p["images"] for p in curve] == [16, 32, 64, 128]
            # The psi held having rendered at most each count (equal budgets): K = 32 per evaluation,
            # and an LTS step renders 2 x 32, so LTS holds its start psi (step 0) up to 63 images.
            expected = [0, 0, 1, 2] if row["method"] == "lts" else [0, 1, 2, 4]
            assert [p["step"] for p in curve] == expected, row["label"]
            assert [p["images_rendered"] for p in curve] == [64 * e if row["method"] == "lts" else 32 * e
                                                             for e in expected]
            assert curve[-1]["val_metric"] == s["assessed_val_metric"]
            # Before its first update a run's point is the start psi's own assessment (same seed).
            start = assessment["start_psi"]["seeds"][s["seed"]]
            assert {k: curve[0][k] for k in start} == start
        assert ("assessed_curve" in row["aggregate"]) == row["table2"]
    reach = assessment["reach"]
    assert [(e["baseline"], e["target_ratio"]) for e in reach] == [("lts", 5.0), ("bo", 3.0), ("random", None)]
    rows = {r["label"]: r for r in result["rows"]}
    for e in reach:
        assert e["autosimulate"] == "autosimulate (linear)" and e["baseline_grid_images"] in assessment["thresholds"]
        # Each side is charged what its assessed psi cost, not the grid point: an LTS update renders
        # 2 x 32 images, so its psi at the grid's 64 and 128 cost 64 and 128, at 16 and 32 nothing.
        best = next(p for p in rows[e["baseline"]]["aggregate"]["assessed_curve"]
                    if p["images"] == e["baseline_grid_images"])
        assert e["baseline_images"] == best["images_rendered"] <= e["baseline_grid_images"]
        if e["baseline"] == "lts":
            assert e["baseline_images"] % 64 == 0
        assert e["ratio"] is None or e["ratio"] == e["baseline_images"] / e["images"]


def test_reach_table_finds_the_first_point_at_least_as_good():
    from autosim_jax.compare import reach_table

    def row(method, vals):
        curve = [{"images": i, "val": {"mean": v, "std": 0.0}} for i, v in zip((100, 200, 400, 800), vals)]
        return {"method": method, "label": method, "aggregate": {"assessed_curve": curve}}

    ours = row("autosimulate", (0.3, 0.5, 0.5, 0.2))
    got = reach_table([ours, row("bo", (0.1, 0.2, 0.45, 0.45)), row("lts", (0.1, 0.2, 0.3, 0.6)),
                       row("random", (0.3, 0.2, 0.1, 0.1))], 0.15, True)
    assert [(e["baseline_images"], e["images"], e["ratio"], e["resolved"]) for e in got] == [
        (400, 200, 2.0, True), (800, None, None, False), (100, 100, 1.0, False)]
    # A baseline that never beats the start psi leaves nothing to reach.
    (never,) = reach_table([ours, row("lts", (0.1, 0.12, 0.1, 0.1))], 0.15, True)
    assert not never["beats_start"] and never["ratio"] is None
    lower = reach_table([row("autosimulate", (0.9, 0.5, 0.4, 0.4)), row("random", (0.8, 0.7, 0.5, 0.6))], 1.0, False)
    assert (lower[0]["baseline_images"], lower[0]["images"], lower[0]["ratio"]) == (400, 200, 2.0)


def test_reach_table_charges_the_images_each_psi_cost():
    """Each point is charged what its psi cost (the last update within the grid point): a baseline
    updating every 3,000 images holds its start psi at the grid's 1,000 and 2,000 and its 6,000-image
    psi at 8,000; AutoSimulate updating every 150 has spent 1,950 at 2,000 (2026-12-04: at digits'
    gpu size LTS updates every 4,096 images)."""
    from autosim_jax.compare import _aggregate_curve, reach_table

    def row(method, vals, step):
        per_seed = [[{"images": i, "images_rendered": i // step * step, "val_metric": v, "test_metric": v}
                     for i, v in zip((1000, 2000, 4000, 8000), vals)] for _ in range(2)]
        return {"method": method, "label": method, "aggregate": {"assessed_curve": _aggregate_curve(per_seed)}}

    got, = reach_table([row("autosimulate", (0.3, 0.5, 0.5, 0.6), 150), row("lts", (0.2, 0.2, 0.4, 0.45), 3000)],
                       0.2, True)
    assert (got["baseline_grid_images"], got["baseline_images"]) == (8000, 6000)
    assert (got["grid_images"], got["images"], got["resolved"]) == (2000, 1950, True)
    assert got["ratio"] == pytest.approx(6000 / 1950)
    # Curves written before the field existed fall back to the grid point.
    old = [[{"images": 100, "val_metric": 0.1, "test_metric": 0.1}]]
    assert _aggregate_curve(old)[0]["images_rendered"] == 100

def test_a_blind_baseline_is_named_under_table_2_with_the_fix(compared):
    """clevr-seg at cpu size (session 40): every candidate's model predicted the background only, so
    BO and random search chose blind without a word. The note names the run, the seeds and the fix;
    the toy's baselines, whose rewards vary, get none."""
    from autosim_jax.compare import _blind_markdown

    result = json.loads((compared / "compare.json").read_text())
    assert all("blind_reward" not in s for r in result["rows"] for s in r["seeds"])
    assert "Blind search" not in (compared / "compare.md").read_text()
    seeds = [{"seed": 0, "blind_reward": 0.2383}, {"seed": 1}, {"seed": 2, "blind_reward": 0.2383}]
    note = _blind_markdown([{"method": "bo", "label": "bo", "seeds": seeds},
                            {"method": "lts", "label": "lts", "seeds": seeds[:1]},
                            {"method": "autosimulate", "label": "autosimulate", "seeds": seeds}], "mIoU")
    bo, lts = note.strip().splitlines()
    assert "evaluations of bo scored val mIoU 0.2383 exactly on seed(s) 0, 2" in bo
    assert "--evaluation-images N --evaluation-epochs E" in bo
    assert "lts" in lts and "warm model" in lts and "--evaluation-images" not in lts
    assert _blind_markdown([{"method": "random", "label": "random", "seeds": [{"seed": 0}]}], "mIoU") == ""


def test_a_blind_baseline_is_warned_about_after_its_first_steps():
    """The run warns once, after BLIND_AFTER steps that mostly scored one value exactly (clevr-seg cpu's
    BO: 0.2383 four times, then 0.2391), early enough to stop it; never for AutoSimulate (its in-run
    model is no reward) or a search whose rewards move."""
    import io

    from autosim_jax.compare import BLIND_AFTER, _blind_watch

    def warnings(method, values):
        stream = io.StringIO()
        watch = _blind_watch(method, method, 3, "mIoU", stream)
        for v in values:
            watch(v)
        return stream.getvalue()

    flat = warnings("bo", [0.2383] * (3 * BLIND_AFTER))
    assert flat.count("warning") == 1 and f"bo, seed 3: its first {BLIND_AFTER} steps" in flat
    assert "0.2383" in flat and "--evaluation-images N" in flat
    assert warnings("bo", [0.2383] * (BLIND_AFTER - 1)) == ""
    assert "0.2383" in warnings("bo", [0.2383] * (BLIND_AFTER - 1) + [0.2391])  # the smoke run's
    assert warnings("random", [0.2383] * (BLIND_AFTER - 2) + [0.25, 0.26] + [0.2383] * 10) == ""
    assert warnings("autosimulate", [0.2383] * (3 * BLIND_AFTER)) == ""
    assert "warm model" in warnings("lts", [0.1] * BLIND_AFTER)


def test_resume_reuses_finished_runs(compared, toy, capsys, assessments):
    before = (compared / "compare.json").read_text()
    argv = ["compare", toy, "--methods", "autosimulate,lts,bo,random", "--seeds", "2", "--budget-images", "128",
            "--approximations", "linear,exact_quadratic", "--lts-samples", "2", "--out", str(compared)]
    assert main(argv) == 2  # not empty: needs --resume
    assert "--resume" in capsys.readouterr().err
    assert main([*argv, "--resume"]) == 0
    assert assessments == []  # every assessment came from the runs' assessed.json
    a, b = json.loads(before), json.loads((compared / "compare.json").read_text())
    assert a["assessment"] == b["assessment"]
    for ra, rb in zip(a["rows"], b["rows"]):
        for sa, sb in zip(ra["seeds"], rb["seeds"]):
            assert sa["best_val_metric"] == sb["best_val_metric"] and sa["images"] == sb["images"]
            assert sa["assessed_curve"] == sb["assessed_curve"]


def test_assess_at_adds_points_and_resume_assesses_only_the_new_psi(compared, toy, tmp_path, assessments):
    """``--assess-at 48,96`` on a finished comparison (``--resume``): the points join the grid of Table 2's
    curves, a point whose psi was assessed at another point is read back (48 images: the psi held at 32, or
    LTS's start), and only psi no point held before are trained on (96: AutoSimulate's, BO's and random
    search's third update; LTS's at 96 is its first, assessed at 64); the reach table reads the finer grid."""
    import shutil

    out = tmp_path / "c"
    shutil.copytree(compared, out)
    argv = ["compare", toy, "--methods", "autosimulate,lts,bo,random", "--seeds", "2", "--budget-images", "128",
            "--approximations", "linear,exact_quadratic", "--lts-samples", "2", "--out", str(out), "--resume",
            "--assess-at", "96,48"]
    assert main(argv) == 0
    assert sorted(assessments) == [0, 0, 0, 1, 1, 1]  # autosimulate (linear), bo, random at 96 images, each seed
    before, after = (json.loads((d / "compare.json").read_text()) for d in (compared, out))
    assert after["assessment"]["thresholds"] == [16, 32, 48, 64, 96, 128]
    for ra, rb in zip(before["rows"], after["rows"]):
        for sa, sb in zip(ra["seeds"], rb["seeds"]):
            if not ra["table2"]:
                assert sb["assessed_curve"] == sa["assessed_curve"]  # Table 4: the final psi only
                continue
            old = {p["images"]: p for p in sa["assessed_curve"]}
            new = {p["images"]: p for p in sb["assessed_curve"]}
            assert {t: new[t] for t in old} == old  # the grid's points unchanged
            held_at_32 = old[16] if ra["method"] == "lts" else old[32]
            assert {k: v for k, v in new[48].items() if k != "images"} == \
                {k: v for k, v in held_at_32.items() if k != "images"}
            assert new[96]["step"] == (1 if ra["method"] == "lts" else 3)
    table2 = [r for r in after["rows"] if r["table2"]]
    assert all(48 in {p["images"] for p in r["aggregate"]["assessed_curve"]} for r in table2)
    assert after["assessment"]["reach"] == reach_table(  # recomputed on the finer curves, not kept from before
        table2, after["assessment"]["start_psi"]["val"]["mean"], after["higher_is_better"])
    assert "`--assess-at N` adds points" in (out / "compare.md").read_text()


@pytest.mark.parametrize(
    "extra, needles",
    [
        (["--methods", "autosimulate,cmaes"], ["cmaes", "autosimulate", "lts", "bo", "random"]),
        (["--approximations", "cubic"], ["cubic", "exact_quadratic", "approx_quadratic", "linear", "no_val"]),
        (["--renderer", "clevr"], ["clevr", "square", "flaky"]),
        (["--seeds", "0"], ["--seeds"]),
        (["--budget-images", "0"], ["--budget-images"]),
        (["--assess-points", "0"], ["--assess-points"]),
        (["--assess-at", "32,65"], ["--assess-at", "[65]", "--budget-images"]),
        (["--jobs", "0"], ["--jobs"]),
        (["--jobs", "2", "--devices", "2"], ["--jobs", "--devices 1"]),
    ],
)
def test_bad_options_exit_2_listing_the_choices(toy, tmp_path, capsys, extra, needles):
    argv = ["compare", toy, "--budget-images", "64", "--out", str(tmp_path / "c"), *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, (needle, err)
    assert not (tmp_path / "c").exists()


def test_budget_is_required(toy, capsys):
    assert main(["compare", toy]) == 2
    assert "--budget-images" in capsys.readouterr().err


def test_gap_closed_per_method_and_progress_lines(toy, tmp_path, capsys):
    """With a reference psi, compare tabulates G (mean ± std over seeds); progress reaches the log."""
    import numpy as np
    from toy_reference import SPEC

    from autosim_jax.experiments import gap_closed

    out = tmp_path / "c"
    assert main(["compare", SPEC, "--methods", "autosimulate,random", "--seeds", "2", "--budget-images", "64",
                 "--assess-points", "1", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    result = json.loads((out / "compare.json").read_text())
    a = result["assessment"]
    assert len(a["reference_psi"]["seeds"]) == 2
    for row in result["rows"]:
        gs = []
        for s in row["seeds"]:
            start, ref = a["start_psi"]["seeds"][s["seed"]], a["reference_psi"]["seeds"][s["seed"]]
            assert s["gap_closed"] == gap_closed(start["val_metric"], s["assessed_val_metric"], ref["val_metric"])
            gs.append(s["gap_closed"])
        agg = row["aggregate"]["gap_closed"]
        assert agg["mean"] == pytest.approx(np.mean(gs)) and agg["std"] == pytest.approx(np.std(gs, ddof=1))
    md = (out / "compare.md").read_text()
    assert "gap closed G" in md and md.count("±") >= 6
    # Progress in a log: the runs, their steps (by images) and the assessments, each with an ETA.
    err = captured.err
    assert "autosim compare: run 1/4" in err and "autosim compare: run 4/4" in err
    assert "autosim compare: autosimulate (exact_quadratic), seed 0: images 32/64, step 1" in err
    assert "autosim compare: assessing: assessment 1/" in err and "ETA" in err
    # Every run directory is of this version's format, with a summary and a released lock.
    for run in (out / "autosimulate-exact_quadratic" / "seed0", out / "random" / "seed1"):
        config = json.loads((run / "config.json").read_text())
        assert config["format"].startswith("autosim_jax.run/") and config["command"] == "compare"
        assert json.loads((run / "summary.json").read_text())["target"] == config["target"]


def test_resume_refuses_finished_runs_of_options_the_experiment_no_longer_has(compared, toy, capsys, monkeypatch,
                                                                             tmp_path):
    """Session 60: a finished run is reused without running again, but its options are checked against
    the experiment's of today, so that a preset changed since (clevr-seg gpu's K) is refused and not
    reported as the new preset's."""
    import importlib
    import shutil

    from autosim_jax.experiments import Experiment

    out = tmp_path / "c"  # a copy: the module's later tests read the comparison's compare.json
    shutil.copytree(compared, out)
    module = importlib.import_module(toy.partition(":")[0])
    old = module.TOY

    def changed(**kw):
        setup = old.build(**kw)
        return setup._replace(config=setup.config.replace(outer_learning_rate=setup.config.outer_learning_rate / 2))

    monkeypatch.setattr(module, "TOY", Experiment(old.name, old.description, old.renderers, changed))
    argv = ["compare", toy, "--methods", "autosimulate", "--seeds", "2", "--budget-images", "128",
            "--approximations", "linear", "--out", str(out), "--resume"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "options.outer_learning_rate" in err and "Traceback" not in err
    monkeypatch.setattr(module, "TOY", old)
    assert main(argv) == 0  # the experiment as it was: reused


def test_resume_with_another_budget_is_refused(compared, toy, capsys):
    argv = ["compare", toy, "--methods", "autosimulate,lts,bo,random", "--seeds", "2", "--budget-images", "256",
            "--approximations", "linear,exact_quadratic", "--lts-samples", "2", "--out", str(compared), "--resume"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "budget_images" in err and "Traceback" not in err
    assert "building" not in err  # refused before the setup is built (BO and random search need it built)


def test_jobs_run_in_processes_with_the_results_of_one_process(toy, tmp_path, capsys):
    """--jobs 2 runs each (method, seed) in a spawned process, then each seed's assessments; every
    run's records (metrics and psi per step) and the assessments equal those of one process."""
    argv = ["compare", toy, "--methods", "autosimulate,random", "--seeds", "2", "--budget-images", "64",
            "--assess-points", "1"]
    assert main([*argv, "--out", str(tmp_path / "serial")]) == 0
    assert main([*argv, "--jobs", "2", "--out", str(tmp_path / "jobs")]) == 0
    err = capsys.readouterr().err
    assert "4 runs, 2 at a time in processes of their own" in err and "run 4/4" in err
    assert "assessments of seed 0 done in a process of their own" in err and "seed 1 done" in err

    def records(root, run):
        lines = (root / run / "metrics.jsonl").read_text().splitlines()
        return [{k: r[k] for k in ("step", "images", "val_metric", "psi")} for r in map(json.loads, lines)]

    for run in ("autosimulate-exact_quadratic/seed0", "autosimulate-exact_quadratic/seed1", "random/seed0",
                "random/seed1"):
        assert records(tmp_path / "serial", run) == records(tmp_path / "jobs", run), run
    a, b = (json.loads((tmp_path / d / "compare.json").read_text()) for d in ("serial", "jobs"))
    assert a["assessment"] == b["assessment"]


def test_a_run_that_fails_in_its_process_is_named_and_resumable(toy, tmp_path, capsys):
    """--jobs: a run whose renderer returns garbage fails in its process (which can start its own
    render pool); the comparison exits 1 naming the run and the cause, its steps on disk for --resume."""
    out = tmp_path / "c"
    argv = ["compare", toy, "--renderer", "flaky", "--methods", "random", "--seeds", "2", "--budget-images", "160",
            "--jobs", "2", "--render-workers", "2", "--assess-images", "0", "--out", str(out)]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "random, seed 0" in err and "random, seed 1" in err and "--resume" in err and "Traceback" not in err
    assert "non-finite" in err or "NaN" in err or "nan" in err, err
    assert (out / "random" / "seed0" / "config.json").exists()  # the run directory, ready for --resume


def test_search_scales_adds_the_log_scales_to_the_baselines_space(toy, tmp_path, capsys):
    """--search-scales: the baselines' space holds each continuous field's log-scale too (config.json
    lists it), and a --resume without the flag is refused (the runs would differ)."""
    out = tmp_path / "c"
    argv = ["compare", toy, "--methods", "autosimulate,random", "--seeds", "1", "--budget-images", "64",
            "--assess-images", "0", "--out", str(out)]
    assert main([*argv, "--search-scales"]) == 0
    config = json.loads((out / "random" / "seed0" / "config.json").read_text())
    assert config["search_scales"] is True and any("log_scale" in n for n in config["search_space"])
    assert json.loads((out / "autosimulate-exact_quadratic" / "seed0" / "config.json").read_text())[
        "search_scales"] is None
    capsys.readouterr()
    assert main([*argv, "--resume"]) == 2
    assert "search_scales" in capsys.readouterr().err


def test_evaluation_images_and_epochs_set_one_evaluation_of_random_search_and_bo(toy, tmp_path, capsys):
    """--evaluation-images/--evaluation-epochs: random search and BO render N images and train E epochs
    per evaluation (fewer evaluations at the same budget); LTS keeps AutoSimulate's K; a --resume
    without the flags is refused (the runs would differ)."""
    out = tmp_path / "c"
    argv = ["compare", toy, "--methods", "random,bo,lts", "--seeds", "1", "--budget-images", "128",
            "--lts-samples", "2", "--assess-images", "0", "--out", str(out)]
    assert main([*argv, "--evaluation-images", "64", "--evaluation-epochs", "3"]) == 0
    for method in ("random", "bo"):
        config = json.loads((out / method / "seed0" / "config.json").read_text())
        assert (config["evaluation_images"], config["evaluation_epochs"]) == (64, 3)
        records = [json.loads(line) for line in (out / method / "seed0" / "metrics.jsonl").read_text().splitlines()]
        assert [r["images"] for r in records] == [64, 128], method
        steps = [b["train_steps"] - a["train_steps"] for a, b in zip([{"train_steps": 0}, *records], records)]
        assert steps == [3 * 64 // config["options"]["batch_size"]] * 2, (method, steps)
    lts = json.loads((out / "lts" / "seed0" / "config.json").read_text())
    assert lts["evaluation_images"] is None
    lts_records = (out / "lts" / "seed0" / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lts_records[0])["images"] == 2 * lts["options"]["dataset_size"]
    capsys.readouterr()
    assert main([*argv, "--resume"]) == 2
    assert "evaluation_images" in capsys.readouterr().err
    assert main([*argv, "--evaluation-images", "256", "--out", str(tmp_path / "d")]) == 2
    assert "--evaluation-images 256" in capsys.readouterr().err
    assert main([*argv, "--evaluation-images", "40", "--out", str(tmp_path / "e")]) == 2  # batch size 16
    err = capsys.readouterr().err
    assert "--evaluation-images 40" in err and "multiple of batch_size" in err and "Traceback" not in err
    assert not (tmp_path / "e" / "random").exists()


def test_the_experiments_baseline_evaluation_is_random_search_and_bos_default(toy, tmp_path, capsys):
    """An experiment's ``baseline_evaluation`` (64 images x 3 epochs; its own K x epochs: 32 x 2) is
    random search's and BO's default, named in compare.md; LTS keeps K; the flags override it, and
    its own K and epochs are stored as no override (older comparisons resume); a budget below one
    default evaluation is refused before any run, naming the flag that fixes it."""
    scored = toy.replace(":TOY", ":SCORED")
    out = tmp_path / "c"
    argv = ["compare", scored, "--methods", "random,lts", "--seeds", "1", "--budget-images", "128",
            "--lts-samples", "2", "--assess-images", "0"]
    assert main([*argv, "--out", str(out)]) == 0
    assert "random search and bo score a candidate by a model trained from its initialisation on 64 images x 3 " \
        "epochs" in capsys.readouterr().err.lower()  # the log says it before the runs, as compare.md after
    config = json.loads((out / "random" / "seed0" / "config.json").read_text())
    assert (config["evaluation_images"], config["evaluation_epochs"]) == (64, 3)
    records = [json.loads(line) for line in (out / "random" / "seed0" / "metrics.jsonl").read_text().splitlines()]
    assert [r["images"] for r in records] == [64, 128]
    assert [r["train_steps"] for r in records] == [12, 24]  # 3 epochs x 64 / 16
    assert json.loads((out / "lts" / "seed0" / "config.json").read_text())["evaluation_images"] is None
    assert "64 images x 3 epochs (the experiment's own: 32 x 2)" in (out / "compare.md").read_text()
    assert main([*argv, "--out", str(out), "--resume"]) == 0  # the default resolves to the stored evaluation

    own = tmp_path / "own"
    assert main([*argv, "--evaluation-images", "32", "--evaluation-epochs", "2", "--out", str(own)]) == 0
    config = json.loads((own / "random" / "seed0" / "config.json").read_text())
    assert (config["evaluation_images"], config["evaluation_epochs"]) == (None, None)
    assert "32 images x 2 epochs (the experiment's own K and epochs)" in (own / "compare.md").read_text()
    capsys.readouterr()
    small = [a if a != "128" else "48" for a in argv]
    assert main([*small, "--out", str(tmp_path / "small")]) == 2
    err = capsys.readouterr().err
    assert "64 images" in err and "--budget-images 48" in err and "--evaluation-images" in err
    assert not (tmp_path / "small" / "random").exists()


def test_assess_models_averages_several_fresh_models_per_psi(toy, tmp_path, capsys):
    """--assess-models 2: each assessed psi is the mean of 2 fresh models, the first of which is the
    one-model comparison's (the same keys): mean of 2 - that one = half their difference, != 0."""
    from toy_reference import SPEC

    common = ["compare", SPEC, "--methods", "random", "--seeds", "1", "--budget-images", "32", "--assess-points", "1"]
    assert main([*common, "--out", str(tmp_path / "one")]) == 0
    assert main([*common, "--assess-models", "2", "--out", str(tmp_path / "two")]) == 0
    assert "autosim compare: assessing start psi, seed 0: fresh model 2/2: val" in capsys.readouterr().err
    one, two = (json.loads((tmp_path / d / "compare.json").read_text()) for d in ("one", "two"))
    assert one["assess_models"] == 1 and two["assess_models"] == 2
    s1, s2 = one["assessment"]["start_psi"]["seeds"][0], two["assessment"]["start_psi"]["seeds"][0]
    assert s2["test_metric_std"] == pytest.approx(abs(s2["test_metric"] - s1["test_metric"]), rel=1e-5, abs=1e-7)
    assert s2["test_metric_std"] > 0
    assert "the mean of 2 models per psi" in (tmp_path / "two" / "compare.md").read_text()
    assert main([*common, "--assess-models", "0", "--out", str(tmp_path / "bad")]) == 2
    assert "--assess-models must be an integer >= 1" in capsys.readouterr().err


def test_baselines_keep_the_experiments_own_options_when_its_learner_is_tuned(toy, tmp_path, capsys):
    """An experiment whose AutoSimulate learner has its own options (``config``: K = 16, minibatches
    of 8) beside the experiment's (``assess_config``: K = 32, 16): AutoSimulate runs with the first,
    the baselines' evaluations with the second, and compare.json records both."""
    out = tmp_path / "c"
    tuned = toy.replace(":TOY", ":TUNED")
    assert main(["compare", tuned, "--methods", "autosimulate,lts", "--seeds", "1", "--budget-images", "64",
                 "--lts-samples", "2", "--assess-images", "0", "--out", str(out)]) == 0
    auto = json.loads((out / "autosimulate-exact_quadratic" / "seed0" / "config.json").read_text())
    lts = json.loads((out / "lts" / "seed0" / "config.json").read_text())
    assert (auto["options"]["dataset_size"], auto["options"]["batch_size"]) == (16, 8)
    assert (lts["options"]["dataset_size"], lts["options"]["batch_size"]) == (32, 16)
    first = json.loads((out / "lts" / "seed0" / "metrics.jsonl").read_text().splitlines()[0])
    assert first["images"] == 2 * 32  # two samples of the experiment's K per LTS step
    summary = json.loads((out / "compare.json").read_text())
    assert summary["options"]["dataset_size"] == 16 and summary["baseline_options"]["dataset_size"] == 32
    capsys.readouterr()

