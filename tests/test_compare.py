"""``autosim compare`` end to end at tiny size, on the CLI tests' toy experiment (module:attr)."""

import json
import sys

import pytest

from autosim_jax.cli import main
from test_cli import TOY_SOURCE

MODULE = "autosim_toy_compare"
TOY = f"{MODULE}:TOY"


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    path = tmp_path_factory.mktemp("plugin_compare")
    (path / f"{MODULE}.py").write_text(TOY_SOURCE)
    sys.path.insert(0, str(path))
    yield TOY
    sys.path.remove(str(path))
    sys.modules.pop(MODULE, None)


@pytest.fixture(scope="module")
def compared(toy, tmp_path_factory):
    out = tmp_path_factory.mktemp("compare") / "c"
    argv = ["compare", toy, "--methods", "autosimulate,lts,bo,random", "--seeds", "2", "--budget-images", "128",
            "--approximations", "linear,exact_quadratic", "--lts-samples", "2", "--out", str(out)]
    assert main(argv) == 0
    return out


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
    table4 = md.split("Table 4")[1]
    assert "autosimulate (linear)" in table4 and "| lts |" not in table4
    for name in ("val_vs_images.png", "val_vs_time.png"):
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000, name
    for d in ("autosimulate-linear", "autosimulate-exact_quadratic", "lts", "bo", "random"):
        for seed in (0, 1):
            run = out / d / f"seed{seed}"
            assert (run / "metrics.jsonl").stat().st_size > 0 and (run / "checkpoint.npz").exists(), run


def test_resume_reuses_finished_runs(compared, toy, capsys):
    before = (compared / "compare.json").read_text()
    argv = ["compare", toy, "--methods", "autosimulate,lts,bo,random", "--seeds", "2", "--budget-images", "128",
            "--approximations", "linear,exact_quadratic", "--lts-samples", "2", "--out", str(compared)]
    assert main(argv) == 2  # not empty: needs --resume
    assert "--resume" in capsys.readouterr().err
    assert main([*argv, "--resume"]) == 0
    a, b = json.loads(before), json.loads((compared / "compare.json").read_text())
    for ra, rb in zip(a["rows"], b["rows"]):
        for sa, sb in zip(ra["seeds"], rb["seeds"]):
            assert sa["best_val_metric"] == sb["best_val_metric"] and sa["images"] == sb["images"]


@pytest.mark.parametrize(
    "extra, needles",
    [
        (["--methods", "autosimulate,cmaes"], ["cmaes", "autosimulate", "lts", "bo", "random"]),
        (["--approximations", "cubic"], ["cubic", "exact_quadratic", "approx_quadratic", "linear", "no_val"]),
        (["--renderer", "clevr"], ["clevr", "square", "flaky"]),
        (["--seeds", "0"], ["--seeds"]),
        (["--budget-images", "0"], ["--budget-images"]),
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
