"""benchmarks/reassess.py's and field_value.py's ``--cli-runs``: the psi an ``autosim run`` directory returned, read
back for new fresh models (issue 13, session 27), on a real run of the CLI tests' toy.

The script imports its siblings (``field_drift``, ``psi_learning``), so it is imported with
``benchmarks/`` on ``sys.path``, as tests/test_benchmark_doctests.py does.
"""

import argparse
import json
import shutil

import numpy as np
import pytest
from toy_reference import SPEC as TOY_REF  # the toy with a reference psi and a 64-image assessment

from autosim_jax.cli import main


@pytest.fixture()
def reassess(benchmark_script):
    return benchmark_script("reassess")


@pytest.fixture(scope="module")
def runs(toy_path, tmp_path_factory):
    """Two finished toy runs: one returns a psi chosen by --select-every, one its final psi."""
    root = tmp_path_factory.mktemp("cli_runs")
    assert main(["run", TOY_REF, "--iterations", "4", "--select-every", "2", "--assess-models", "2",
                 "--out", str(root / "selected")]) == 0
    assert main(["run", TOY_REF, "--iterations", "3", "--seed", "1", "--out", str(root / "final")]) == 0
    return root


def _args(dirs, **over):
    base = {"cli_runs": [str(d) for d in dirs], "experiment": TOY_REF, "size": "cpu", "assess_images": None,
            "assess_epochs": None}
    return argparse.Namespace(**{**base, **over})


def _setup():
    import toy_reference

    return toy_reference.build()


def test_cli_runs_give_the_returned_psi_and_the_runs_own_assessments(reassess, runs):
    from field_drift import unflatten

    from autosim_jax.rundir import psi_from_record

    setup = _setup()
    items = reassess.cli_records(argparse.ArgumentParser(), _args([runs / "selected", runs / "final"]), setup)
    assert [it["variant"] for it in items] == ["selected", "learned"]
    for it, name in zip(items, ("selected", "final")):
        summary = json.loads((runs / name / "summary.json").read_text())
        raw = json.loads((runs / name / "psi.json").read_text())["raw"]
        a = summary["assessment"]
        key = "selected" if name == "selected" else "learned"
        # the flat psi the jobs rebuild is the run's returned psi, bit for bit
        back = unflatten(it["psi"], setup.simulator.distribution.init())
        want = psi_from_record(setup.simulator.distribution.init(), raw[key])
        assert all(np.array_equal(x, y) for x, y in zip(np.asarray(back["x"]), np.asarray(want["x"])))
        assert it["old"] == (a["selected_psi"] if key == "selected" else a["learned_psi"])
        assert it["old_n"] == it["old_baseline_n"] == a["models"]
        assert it["old_baseline"] == {"start": a["start_psi"], "reference": a["reference_psi"]}
        assert it["seed"] == json.loads((runs / name / "config.json").read_text())["seed"]
    assert items[0]["returned"] == str(json.loads((runs / "selected" / "summary.json").read_text())["selected_step"])
    assert items[1]["returned"] == "final" and items[1]["step"] == 3 and items[1]["seed"] == 1


def test_cli_runs_are_checked_before_any_job(reassess, runs, tmp_path, capsys):
    setup, p = _setup(), argparse.ArgumentParser(prog="reassess.py")
    bad = tmp_path / "half"
    shutil.copytree(runs / "final", bad)
    (bad / "summary.json").unlink()  # an unfinished run
    cases = [(_args([bad]), "not a finished autosim run or compare run directory"),
             (_args([runs / "final"], experiment="clevr-seg", size="gpu"), "not clevr-seg at gpu"),
             (_args([runs / "final"], assess_images=128), "--assess-images 64 --assess-epochs 5")]
    for args, message in cases:
        with pytest.raises(SystemExit):
            reassess.cli_records(p, args, setup)
        assert message in capsys.readouterr().err, message
    with pytest.raises(SystemExit):
        reassess.main(["--experiment", TOY_REF, "--out", str(tmp_path / "o")])
    assert "give --runs FILE:VARIANT or --cli-runs DIR" in capsys.readouterr().err


def test_with_start_gives_the_select_reset_twin(reassess, runs, capsys):
    """``--with-start FIELDS``: the returned psi with the fields at the start's, as the twin of
    ``autosim run --select-reset FIELDS`` (cli.psi_at with the reset fields) has them."""
    from field_drift import flatten

    setup, p = _setup(), argparse.ArgumentParser(prog="reassess.py")
    items = reassess.cli_records(p, _args([runs / "final"]), setup)
    start = setup.simulator.distribution.init()
    (twin,) = reassess._with_fields(p, "--with-start", "x", items, start, "start")
    assert twin["variant"] == "learned+start x" and twin["old"] is None and twin["old_n"] == 0
    assert twin["psi"] == flatten(start) != items[0]["psi"]  # the run moved x; its twin has the start's
    assert twin["seed"] == items[0]["seed"] and twin["returned"] == items[0]["returned"]
    with pytest.raises(SystemExit):
        reassess._with_fields(p, "--with-start", "x,colour", items, start, "start")
    assert "--with-start: unknown fields ['colour']; the experiment's are ['x']" in capsys.readouterr().err


def test_tie_slots_gives_each_slot_the_law_of_a_slot_picked_at_random(reassess):
    """``tie_slots`` against the mixture it stands for, sampled independently: pick one of the k slots
    uniformly, then draw from that slot's law. 400,000 draws; the tied normal's mean and variance and
    the tied categorical's probabilities lie within 5 standard errors of the draws' (a false alarm has
    probability below 1e-5 per figure)."""
    from autosim_jax.distributions import CategoricalParams, NormalParams

    rng, n = np.random.default_rng(0), 400_000
    loc, scale = np.array([[3.6, -2.9], [2.8, 2.3], [1.1, 0.4]]), np.array([[0.3, 0.5], [4.2, 0.8], [1.8, 0.3]])
    tied = reassess.tie_slots(NormalParams(loc, np.log(scale)))
    assert tied.loc.shape == tied.log_scale.shape == loc.shape
    assert np.all(tied.loc == tied.loc[0]) and np.all(tied.log_scale == tied.log_scale[0])  # one law for every slot
    slot = rng.integers(0, 3, n)
    draws = loc[slot] + scale[slot] * rng.standard_normal((n, 2))
    mean_se = draws.std(0) / np.sqrt(n)
    var_se = np.sqrt(((draws - draws.mean(0)) ** 4).mean(0) - draws.var(0) ** 2) / np.sqrt(n)
    assert np.all(np.abs(tied.loc[0] - draws.mean(0)) < 5 * mean_se)
    assert np.all(np.abs(np.exp(2 * tied.log_scale[0]) - draws.var(0)) < 5 * var_se)

    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [1 / 3, 1 / 3, 1 / 3], [0.5, 0.5, 0.0001]])
    tied = reassess.tie_slots(CategoricalParams(np.log(probs) + 3.0))  # logits are unnormalised
    assert tied.logits.shape == probs.shape
    slot = rng.integers(0, 4, n)
    cats = (rng.random(n)[:, None] > np.cumsum(probs / probs.sum(-1, keepdims=True), -1)[slot]).sum(-1)
    freq = np.bincount(cats, minlength=3) / n
    tied_p = np.exp(tied.logits[0]) / np.exp(tied.logits[0]).sum()
    assert np.all(np.abs(tied_p - freq) < 5 * np.sqrt(freq * (1 - freq) / n))
    # a psi whose slots agree (the start and the reference of clevr-seg) is left as it was
    same = NormalParams(np.full((4, 2), 1.9), np.full((4, 2), -0.8))
    assert np.allclose(reassess.tie_slots(same).loc, same.loc) and np.allclose(reassess.tie_slots(same).log_scale,
                                                                               same.log_scale)


def test_tied_twins_tie_the_named_per_object_fields_only(reassess, capsys):
    """``--tied FIELDS``: the twin ties those fields and keeps the others bit for bit; a field without object
    slots, an unknown field or another family is refused before any job."""
    from field_drift import flatten, unflatten

    from autosim_jax.distributions import from_schema
    from autosim_jax.renderers import clevr_schema

    q = from_schema(clevr_schema(3), {"position": {"loc": [[2.0, 2.0], [-1.0, 0.5], [0.0, -2.0]], "scale": 0.3},
                                       "color": {"probs": np.eye(8)[[0, 3, 3]] * 0.9 + 0.1 / 8}})
    like = q.init()
    items = [{"variant": "learned", "seed": 0, "psi": flatten(like), "old": {"test_metric": 0.5}, "old_n": 4}]
    p = argparse.ArgumentParser(prog="reassess.py")
    (twin,) = reassess._tied(p, "position,color", items, like)
    assert twin["variant"] == "learned+tied position/color" and twin["old"] is None and twin["old_n"] == 0
    back = unflatten(twin["psi"], like)
    assert np.allclose(back["position"].loc, reassess.tie_slots(like["position"]).loc, atol=1e-6)
    assert np.allclose(back["color"].logits, reassess.tie_slots(like["color"]).logits, atol=1e-5)
    kept = [k for k in twin["psi"] if not k.startswith(("['position']", "['color']"))]
    assert kept and all(twin["psi"][k] == items[0]["psi"][k] for k in kept)
    for names, message in [("ambient", "['ambient'] have no object slots to tie"),
                           ("colour", "--tied: unknown fields ['colour']")]:
        with pytest.raises(SystemExit):
            reassess._tied(p, names, items, like)
        assert message in capsys.readouterr().err, message
    broad = from_schema(clevr_schema(3), explore={"position": 0.1}).init()  # a learned broad share: not tied
    with pytest.raises(SystemExit):
        reassess._tied(p, "position", [{**items[0], "psi": flatten(broad)}], broad)
    assert "['position'] are neither normal (or bounded) nor categorical" in capsys.readouterr().err


def test_field_value_takes_the_psi_that_cli_runs_returned(runs, benchmark_script, capsys):
    """``field_value.py --cli-runs``: each run's returned psi by seed, checked before any job."""
    field_value = benchmark_script("field_value")
    reassess = benchmark_script("reassess")
    setup, p = _setup(), argparse.ArgumentParser(prog="field_value.py")
    dirs = [runs / "selected", runs / "final"]
    source, found = field_value.returned_psi(p, _args(dirs, runs=None, seeds=None, step=60), setup)
    want = {it["seed"]: it["psi"] for it in reassess.cli_records(p, _args(dirs), setup)}
    assert found == want and sorted(found) == [0, 1] and source == ", ".join(map(str, dirs))
    _, only = field_value.returned_psi(p, _args(dirs, runs=None, seeds="1", step=60), setup)
    assert only == {1: want[1]}
    cases = [(_args([runs / "final", runs / "final"], runs=None, seeds=None, step=60),
              "more than one run of seed(s) [1]"),
             (_args(dirs, runs="x.json:default", seeds=None, step=60), "give --runs FILE:VARIANT or --cli-runs DIR"),
             (_args(dirs, runs=None, seeds="7", step=60), "holds no run for seeds [7]")]
    for args, message in cases:
        with pytest.raises(SystemExit):
            field_value.returned_psi(p, args, setup)
        assert message in capsys.readouterr().err, message


def test_the_scripts_take_a_plug_in_experiment(runs, benchmark_script, tmp_path, capsys):
    """``--experiment module:attr`` (the runs of an ``autosim compare`` plug-in, session 63) is resolved as
    the jobs resolve it, and the runs are then checked against it before any job starts."""
    plug_in = "digits_sim2real_variants:K64"
    for name, own in (("field_value", ["--fields", "tilt"]), ("reassess", [])):
        with pytest.raises(SystemExit):
            benchmark_script(name).main(["--experiment", plug_in, "--size", "cpu", "--cli-runs", str(runs / "final"),
                                         *own, "--out", str(tmp_path / name)])
        err = capsys.readouterr().err
        assert f"is {TOY_REF} at cpu size, not {plug_in} at cpu" in err, err


def test_cli_runs_take_a_run_of_autosim_compare(reassess, toy_path, tmp_path, capsys):
    """A run directory of ``autosim compare`` (``OUT/METHOD/seedS``): its final psi, its own fresh
    models and the comparison's start and reference models of that seed; the rows named after the
    method (issue 14: digits-det's runs, more detectors per psi without training the others again)."""
    from autosim_jax.rundir import psi_from_record

    out = tmp_path / "c"
    assert main(["compare", TOY_REF, "--methods", "autosimulate,random", "--seeds", "2", "--budget-images", "64",
                 "--assess-points", "1", "--out", str(out)]) == 0
    dirs = [out / "autosimulate-exact_quadratic" / "seed0", out / "random" / "seed1"]
    setup = _setup()
    items = reassess.cli_records(argparse.ArgumentParser(), _args(dirs), setup)
    assert [(it["variant"], it["seed"], it["returned"], it["at_step"]) for it in items] == [
        ("autosimulate-exact_quadratic", 0, "final", False), ("random", 1, "final", False)]

    def assessed(folder):
        return json.loads((folder / "assessed.json").read_text())

    for it, run in zip(items, dirs):
        summary = json.loads((run / "summary.json").read_text())
        final = psi_from_record(setup.simulator.distribution.init(), summary["psi"])
        assert it["psi"] == reassess.flatten(final) and it["step"] == summary["iterations"]
        own = assessed(run)
        assert {k: v for k, v in it["old"].items() if k != "step"} == own["results"][str(summary["iterations"])]
        assert it["old_n"] == it["old_baseline_n"] == own.get("models", 1) == 1  # compare's default, one model
        seed = f"seed{it['seed']}"
        assert it["old_baseline"] == {"start": assessed(out / "start_psi" / seed)["results"]["0"],
                                      "reference": assessed(out / "reference_psi" / seed)["results"]["reference"]}

    # DIR@STEP: the psi after that step (its metrics.jsonl record), pooled with the comparison's
    # models of that step where it assessed one (here the last step's), with none where it did not
    # (session 33: digits-det's exact quadratic at 7,680 of 30,720 images, an assessed point)
    run = dirs[0]
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    (assessed_step,) = [int(k) for k in assessed(run)["results"]]
    other = next(r["step"] for r in steps if r["step"] != assessed_step)
    items = reassess.cli_records(argparse.ArgumentParser(), _args([f"{run}@{assessed_step}", f"{run}@{other}"]),
                                 setup)
    like = setup.simulator.distribution.init()
    for it, step in zip(items, (assessed_step, other)):
        record = next(r for r in steps if r["step"] == step)
        assert it["psi"] == reassess.flatten(psi_from_record(like, record["psi"])) and it["step"] == step
        assert it["returned"] == str(step) and it["variant"] == "autosimulate-exact_quadratic" and it["at_step"]
    # two steps of one run are two summary groups, not one group's two "seeds" (session 64)
    names = [reassess.summary_name(it, [60]) for it in items]
    assert names == [f"autosimulate-exact_quadratic step {s}" for s in (assessed_step, other)]
    assert {k: v for k, v in items[0]["old"].items() if k != "step"} == assessed(run)["results"][str(assessed_step)]
    assert items[0]["old_n"] == 1 and items[1]["old"] is None and items[1]["old_n"] == 0

    # a comparison cut while it assessed (session 68): its final psi has no models yet, and the error says how
    # to finish it
    own = assessed(run)
    own["results"].pop(str(json.loads((run / "summary.json").read_text())["iterations"]))
    (run / "assessed.json").write_text(json.dumps(own))
    with pytest.raises(SystemExit):
        reassess.cli_records(argparse.ArgumentParser(), _args([run]), setup)
    assert f"autosim compare` with --resume --out {out} assesses what is missing" in capsys.readouterr().err


def test_runs_records_take_a_step_the_run_did_not_assess(reassess, toy_path, tmp_path, capsys):
    """``--runs FILE:VARIANT --step`` with a step between the recorded assessments (session 33:
    digits-det's runs assessed at step 120 only, reassessed at 30-120): its item has no recorded
    models (G from the new ones alone); an assessed step keeps its recorded ones; a step past the
    run's end is refused before any job."""
    from field_drift import flatten

    setup, p = _setup(), argparse.ArgumentParser(prog="reassess.py")
    start = flatten(setup.simulator.distribution.init())
    psi = [{k: [x + step for x in v] for k, v in start.items()} for step in (1, 2)]
    baseline = {"start": {"test_metric": 0.1, "val_metric": 0.1}, "reference": {"test_metric": 0.5, "val_metric": 0.5}}
    assessed = {"test_metric": 0.4, "val_metric": 0.3}
    record = {"experiment": TOY_REF, "size": "cpu", "repeats": 4, "baseline_repeats": 2,
              "runs": [{"variant": "_baseline", "seed": 0, **baseline},
                       {"variant": "default", "seed": 0, "psi": psi, "assessed": {"2": assessed}}]}
    path = tmp_path / "record.json"
    path.write_text(json.dumps(record))
    args = argparse.Namespace(runs=[f"{path}:default"], experiment=TOY_REF, size="cpu", assess_images=None,
                              assess_epochs=None, seeds=None, steps=[1, 2])
    items = reassess._records(p, args, setup)
    assert [(it["step"], it["old"], it["old_n"]) for it in items] == [(1, None, 0), (2, assessed, 4)]
    assert [it["psi"] for it in items] == psi and all(it["old_baseline_n"] == 2 for it in items)
    with pytest.raises(SystemExit):
        reassess._records(p, argparse.Namespace(**{**vars(args), "steps": [3]}), setup)
    assert "default seed 0 has 2 steps, not 3" in capsys.readouterr().err


def test_cell_factors_are_the_renderers_cells(reassess):
    """``CELL_FACTORS`` (sizes and order) against the cell names of clevr-det's and digits-det's renderers:
    cell i is ``scene/location/quality`` at ``np.unravel_index(i, (3, 9, 2))``."""
    from autosim_jax.renderers import clevr_det, glyphs_det

    # the factors' sizes and order are the renderers' (the script keeps its own copy: it imports no JAX
    # before a job has set its devices)
    for cells, parts in ((clevr_det.CELLS, (clevr_det.SCENES, clevr_det.LOCATIONS, clevr_det.QUALITIES)),
                         (glyphs_det.CELLS, (glyphs_det.BACKGROUNDS, clevr_det.LOCATIONS, clevr_det.QUALITIES))):
        shape = tuple(reassess.CELL_FACTORS.values())
        assert shape == tuple(len(x) for x in parts)
        assert all(c == "/".join(list(x)[j] for x, j in zip(parts, np.unravel_index(i, shape)))
                   for i, c in enumerate(cells))


@pytest.mark.parametrize("factors", [["scene"], ["location"], ["quality"], ["scene", "quality"]])
def test_reference_marginal_sets_the_named_factors_law_and_keeps_the_rest_given_them(reassess, factors):
    """``with_marginal`` against the two properties that define it, computed on the (3, 9, 2)
    table directly: the twin's marginal over the named factors is the reference's, and its conditional
    of the other factors given them is the learned psi's (a random learned psi and a random reference,
    not uniform, so neither property holds by accident)."""
    rng = np.random.default_rng(1)
    learned, reference = rng.dirichlet(np.full(54, 0.3)), rng.dirichlet(np.full(54, 2.0))
    twin = reassess.with_marginal(learned, reference, factors).reshape(3, 9, 2)
    names = list(reassess.CELL_FACTORS)
    rest = tuple(i for i, f in enumerate(names) if f not in factors)
    learned, reference = learned.reshape(3, 9, 2), reference.reshape(3, 9, 2)
    assert np.isclose(twin.sum(), 1.0)
    assert np.allclose(twin.sum(rest), reference.sum(rest))
    assert np.allclose(twin / twin.sum(rest, keepdims=True), learned / learned.sum(rest, keepdims=True))
    # every factor named: the reference itself
    assert np.allclose(reassess.with_marginal(learned.ravel(), reference.ravel(), names),
                       reference.ravel())


def test_reference_marginal_twins_are_refused_where_they_mean_nothing(reassess, capsys):
    """An unknown factor, a non-distribution, and an experiment without the 54-cell categorical are
    refused before any job, naming the culprit."""
    with pytest.raises(ValueError, match=r"unknown cell factors \['colour'\]"):
        reassess.with_marginal(np.full(54, 1 / 54), np.full(54, 1 / 54), ["colour"])
    with pytest.raises(ValueError, match="probs and donor must be distributions over the 54 cells"):
        reassess.with_marginal(np.full(54, 1.0), np.full(54, 1 / 54), ["scene"])
    setup = _setup()  # the toy: no 'cell' field
    like = setup.simulator.distribution.init()
    with pytest.raises(SystemExit):
        reassess._marginal_twins(argparse.ArgumentParser(prog="reassess.py"), "scene", [], like,
                                 setup.reference_psi, into="reference")
    assert "--learned-marginal: the experiment has no 54-way 'cell' categorical" in capsys.readouterr().err


def test_marginal_twins_go_both_ways_on_digits_det(reassess):
    """``--reference-marginal`` and ``--learned-marginal`` twins of a digits-det psi: the learned psi with
    the uniform reference's location marginal, and the reference with the learned (scene, location)
    marginal, i.e. ``p(scene, location) / 2`` (even qualities in every cell), checked on the table; the
    variant names say which."""
    from field_drift import flatten, unflatten

    from autosim_jax.distributions import CategoricalParams
    from autosim_jax.experiments import build_digits_det

    setup = build_digits_det(size="cpu")
    like, reference = setup.simulator.distribution.init(), setup.reference_psi
    probs = np.random.default_rng(2).dirichlet(np.full(54, 0.5))
    items = [{"variant": "default", "seed": 3, "psi": flatten({**like, "cell": CategoricalParams(np.log(probs))}),
              "old": {"test_metric": 0.3}, "old_n": 4}]
    p = argparse.ArgumentParser(prog="reassess.py")

    def table(twin):
        logits = np.asarray(unflatten(twin["psi"], like)["cell"].logits, float)
        return (np.exp(logits) / np.exp(logits).sum()).reshape(3, 9, 2)

    (to_learned,) = reassess._marginal_twins(p, "location", items, like, reference, into="learned")
    (to_reference,) = reassess._marginal_twins(p, "scene,location", items, like, reference, into="reference")
    assert to_learned["variant"] == "default+reference location marginal"
    assert to_reference["variant"] == "default's scene/location marginal in the reference"
    assert to_learned["old"] is None and to_learned["old_n"] == 0 and to_learned["seed"] == 3
    learned = probs.reshape(3, 9, 2)
    assert np.allclose(table(to_learned).sum((0, 2)), 1 / 9, atol=1e-6)
    assert np.allclose(table(to_reference), learned.sum(-1, keepdims=True) / 2, atol=1e-6)


def test_a_job_reports_each_fresh_model(reassess, toy_path, monkeypatch, capsys):
    """Each job writes a progress line after each fresh model (as ``psi_learning.py``'s jobs do): what a job that
    ``--deadline`` stops leaves behind, and how long the next call should give it."""
    import os

    monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))  # job_setup asks for deterministic GPU ops
    common = {"experiment": TOY_REF, "size": "cpu", "repeats": 2, "seed_offset": 0, "assess_images": None,
              "assess_epochs": None, "gpus": None, "render_workers": 1, "seed": 1, "index": 0}
    start = reassess._job({**common, "kind": "start"})
    # a learned spec as main() and field_value.py build it: seed, psi, item and label (session 69's call found
    # the label read from keys these specs do not carry)
    learned = reassess._job({**common, "kind": "learned", "item": 0, "label": "default step 4",
                             "psi": start_psi_flat()})
    assert len(start["new"]["start"]["val_metrics"]) == len(learned["new"]["learned"]["val_metrics"]) == 2
    said = [line.split("] ", 1)[1] for line in capsys.readouterr().err.splitlines() if line.startswith("[")]
    assert said == [f"{what} seed 1: fresh model {r}/2 trained" for what in ("start", "default step 4") for r in (1, 2)]


def start_psi_flat():
    """The toy's start psi, flat as the records keep it."""
    from field_drift import flatten

    return flatten(_setup().simulator.distribution.init())
