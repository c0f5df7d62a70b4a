"""The pure helpers of benchmarks/hypergradient_signal.py (issue 13), and its argument checks.

The script is loaded from its file (benchmarks/ is no package and not on the test path); its
statistics use autosim_jax.outer's test, and these tests build no experiment but the CLI tests'
toy (holding a recorded psi, 3 steps).
The statistical tests are probabilistic with fixed seeds; each states its tolerance's origin.
"""

import json
import pathlib

import numpy as np
import pytest
from conftest import load_benchmark

hs = load_benchmark("hypergradient_signal")


def test_recover_steps_inverts_the_gate_kept_in_float32():
    """The gate's recursion run in float32 (as the library keeps its state) over 300 steps with
    decay 0.99, then inverted: measured errors are 5e-6 in g and 1e-5 relative in se^2."""
    rng = np.random.default_rng(0)
    steps, n, d = 300, 50, np.float32(hs.DECAY)
    g = rng.normal(0.3, 1.0, (steps, n)).astype(np.float32)
    se2 = rng.uniform(0.5, 2.0, (steps, n)).astype(np.float32)
    m, v = [np.zeros(n, np.float32)], [np.zeros(n, np.float32)]
    for t in range(steps):
        m.append(d * m[-1] + (1 - d) * g[t])
        v.append(d * d * v[-1] + (1 - d) ** 2 * se2[t])
    g_back, se2_back = hs.recover_steps(np.stack(m), np.stack(v), hs.DECAY)
    assert g_back.shape == se2_back.shape == (steps, n)
    np.testing.assert_allclose(g_back, g, atol=1e-4)
    np.testing.assert_allclose(se2_back, se2, rtol=1e-4)


def test_leaf_statistics_on_pure_noise():
    """Noise with its true standard error: calibration ~ 1, and the 'no signal' test rejects
    5% of leaves at level 0.05.

    Each coordinate's ratio is chi2_79 / 79 (sd 0.16); the median of 200 has sd ~0.014 and is
    0.99 in expectation, so 0.06 is 4 sd. z divides by the known standard error, so it is a
    standard normal and the rejection rate is 0.05 exactly; 1000 leaves give it a sd of 0.0069,
    and [0.025, 0.075] is 3.6 sd.
    """
    rng = np.random.default_rng(0)
    scale = np.exp(rng.normal(0.0, 1.0, 200))
    stats = hs.leaf_statistics(rng.normal(0.0, 1.0, (80, 200)) * scale, np.broadcast_to(scale**2, (80, 200)))
    assert stats["n"] == 200 and stats["steps"] == 80 and len(stats["z"]) == len(stats["ratio"]) == 200
    assert stats["dof"] == 200
    assert abs(stats["calibration"] - 1) < 0.06
    rejected = np.mean([hs.leaf_statistics(rng.normal(0.0, 1.0, (80, 4)), np.ones((80, 4)))["p"] < 0.05
                        for _ in range(1000)])
    assert 0.025 < rejected < 0.075


def test_leaf_statistics_counts_a_categoricals_rows_as_c_minus_1_directions():
    """A logits leaf of 4 rows of 8 classes (classes=8): 28 degrees of freedom, and the statistic
    scaled by 7 / 8 (autosim_jax.outer.leaf_signal; its level is tested in tests/test_outer.py)."""
    rng = np.random.default_rng(1)
    g, se2 = rng.normal(0.0, 1.0, (20, 32)), np.ones((20, 32))
    plain, logits = hs.leaf_statistics(g, se2), hs.leaf_statistics(g, se2, classes=8)
    assert (plain["dof"], logits["dof"]) == (32, 28)
    assert logits["chi2"] == pytest.approx(plain["chi2"] * 7 / 8, rel=1e-6)


def test_leaf_statistics_with_a_signal():
    """Half a standard error of signal per step needs (2 / 0.5)^2 = 16 steps to reach |z| = 2.

    With the honest se^2 = 1, z = sum g / sqrt(80) has mean 0.5 sqrt(80) = 4.47 and sd 1 per
    coordinate; the median |z| of 100 has sd ~0.13, so the estimate 4 * 80 / median^2 is 16 +- 1
    and 4 is 4 sd. An understated standard error (se^2 a quarter of the noise) reads as
    calibration 4 (and would double every z: the test would pass noise).
    """
    rng = np.random.default_rng(0)
    g = rng.normal(0.5, 1.0, (80, 100))
    stats = hs.leaf_statistics(g, np.ones((80, 100)))
    assert stats["steps_to_detect"] == pytest.approx(16, abs=4)
    assert stats["p"] < 1e-30
    assert hs.leaf_statistics(g, np.full((80, 100), 0.25))["calibration"] == pytest.approx(4, rel=0.25)
    assert hs.leaf_statistics(np.array([[1.0], [-1.0], [0.0]]), np.ones((3, 1)))["steps_to_detect"] is None


def test_pool_statistics_adds_chi_square_and_takes_medians_over_seeds():
    a = {"dof": 2.0, "steps": 10, "chi2": 3.0, "z": [1.0, -1.0], "ratio": [0.5, 1.0], "mean_abs_g": 0.2,
         "adam_travel": 0.9}
    b = {"dof": 1.0, "steps": 8, "chi2": 9.0, "z": [3.0], "ratio": [2.0], "mean_abs_g": 0.4, "adam_travel": 0.1}
    pooled = hs.pool_statistics([a, b])
    assert (pooled["dof"], pooled["chi2"]) == (3.0, 12.0)
    assert pooled["p"] == pytest.approx(0.00738, rel=1e-3)  # P(chi^2_3 > 12), scipy
    assert (pooled["calibration"], pooled["median_abs_z"]) == (1.0, 1.0)
    assert pooled["steps_to_detect"] == 4 * 8 / 1.0**2
    assert (pooled["mean_abs_g"], pooled["adam_travel"]) == pytest.approx((0.3, 0.5))


def test_adam_travel_against_optax_and_its_two_limits():
    """adam_travel replays optax.adam's update (b1 0.9, b2 0.999, eps 1e-8, bias-corrected) and
    sums it: checked against optax itself to float32 rounding. A gradient of constant sign
    travels at the full rate whatever its size (1e-3 or 1e3: 1 to 1e-5); one that alternates
    travels almost nothing (its first moment's sign flips each step)."""
    import optax

    rng = np.random.default_rng(2)
    g = rng.normal(0.2, 1.0, (50, 3))
    opt, params = optax.adam(1.0), np.zeros(3, np.float32)
    state, total = opt.init(params), np.zeros(3)
    for row in g.astype(np.float32):
        updates, state = opt.update(row, state, params)
        total -= np.asarray(updates, np.float64)  # optax's update is minus the direction
    np.testing.assert_allclose(hs.adam_travel(g), np.abs(total) / 50, rtol=1e-5, atol=1e-6)
    constant = np.array([[1e-3, 1e3]] * 40)
    np.testing.assert_allclose(hs.adam_travel(constant), [1.0, 1.0], atol=1e-5)
    alternating = np.array([[1.0], [-1.0]] * 40)
    assert hs.adam_travel(alternating)[0] < 0.1


def test_adam_travel_null_matches_its_simulation_and_shrinks_with_the_steps():
    """Noise alone: the expected travel falls like about 1 / sqrt(N) (a random walk of Adam's
    nearly unit steps, correlated over the first moment's ~10 steps); 4000 draws give each level
    to about 1%."""
    levels = [hs.adam_travel_null(n) for n in (12, 40, 80)]
    assert levels[0] > levels[1] > levels[2]
    assert levels[2] == pytest.approx(levels[1] * np.sqrt(40 / 80), rel=0.1)


@pytest.mark.parametrize("argv, message", [
    (["--steps", "2"], "--steps 2: give at least 3"),
    (["--seeds", ""], "--seeds: give at least one seed"),
    (["--seeds", "0,x"], "give a comma list of integers"),
    (["--seeds", "1,1"], "each seed once"),
    (["--render-workers", "0"], "--render-workers 0"),
    (["--dataset-size", "0"], "--dataset-size 0: give at least 1"),
    (["--finetune-epochs", "-1"], "--finetune-epochs -1: give at least 1"),
    (["--experiment", "no-such"], "valid choices are"),
    (["--experiment", "digits-sim2real", "--image-size", "16"], "clevr-seg only"),
    (["--val-objective", "miou"], "invalid choice: 'miou'"),
])
def test_main_refuses_bad_arguments_before_running(argv, message, monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(hs, "run_seed", lambda *a: pytest.fail("an experiment ran"))
    with pytest.raises(SystemExit) as exit_info:
        hs.main([*argv, "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_an_image_size_the_unet_cannot_take_is_refused_before_anything_renders(tmp_path, monkeypatch):
    """--image-size / --base-channels reach build_clevr_seg, whose checks come before the renders."""
    from autosim_jax import experiments

    monkeypatch.setattr(experiments, "_render_fixed_set", lambda *a, **k: pytest.fail("rendered"))
    with pytest.raises(ValueError, match="image_size=15 is odd"):
        hs.main(["--image-size", "15", "--steps", "3", "--out", str(tmp_path / "out")])
    with pytest.raises(ValueError, match="base_channels=0"):
        hs.main(["--base-channels", "0", "--steps", "3", "--out", str(tmp_path / "out")])


def _record(tmp_path, experiment, psi_after_steps):
    record = {"experiment": experiment, "size": "cpu",
              "runs": [{"variant": "default", "seed": 0, "psi": psi_after_steps}]}
    path = tmp_path / "record.json"
    path.write_text(json.dumps(record))
    return path


@pytest.mark.parametrize("spec, message", [
    ("{path}:default", "write start, reference or FILE:VARIANT@STEP"),
    ("{path}@1", "write FILE:VARIANT"),
    ("{path}.missing:default@1", "No such file"),
    ("{path}:other@1", "holds no run of variant 'other' with seed 0"),
    ("{path}:default@3", "has steps 1-2, not 3"),
])
def test_a_recorded_psi_is_checked_before_running(spec, message, monkeypatch, capsys, tmp_path):
    monkeypatch.syspath_prepend(str(pathlib.Path(hs.__file__).parent))  # field_drift, as the script finds it
    monkeypatch.setattr(hs, "run_seed", lambda *a: pytest.fail("an experiment ran"))
    path = _record(tmp_path, "clevr-seg", [{}, {}])
    with pytest.raises(SystemExit) as exit_info:
        hs.main(["--psi", spec.format(path=path), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_a_recorded_psi_is_the_one_held(toy_path, monkeypatch, tmp_path):
    """``--psi FILE:VARIANT@STEP`` holds each seed's recorded psi after STEP (session 34: digits-det's
    learned psi), not the start: the steps run there and psi does not move (the gate is closed)."""
    import toy_reference

    from autosim_jax import experiments

    monkeypatch.syspath_prepend(str(pathlib.Path(hs.__file__).parent))
    from field_drift import flatten

    # the script builds registered experiments with a size; the toy takes none
    toy = experiments.Experiment("toy-sized", "the toy, any size", ("square",),
                                 lambda *, renderer, seed, size: toy_reference.build(renderer=renderer, seed=seed))
    monkeypatch.setitem(experiments.EXPERIMENTS, "toy-sized", toy)
    start = flatten(toy_reference.build().simulator.distribution.init())
    after = [{k: [x + 0.5 * step for x in v] for k, v in start.items()} for step in (1, 2)]
    path = _record(tmp_path, "toy-sized", after)
    assert hs.main(["--experiment", "toy-sized", "--psi", f"{path}:default@2", "--steps", "3",
                    "--out", str(tmp_path / "out")]) == 0
    record = json.loads((tmp_path / "out.json").read_text())
    held = record["per_seed"]["0"]["psi_held"]
    assert held.keys() == after[1].keys()
    for k in held:
        np.testing.assert_allclose(held[k], after[1][k], rtol=1e-6)


def test_the_gate_stays_closed_when_the_preset_ends_its_own_gate(toy_path, monkeypatch, tmp_path):
    """An experiment whose preset gates only its first update (``outer_snr_gate_steps=1``, as
    digits-sim2real's cpu preset gates 60) still holds psi for every step: the script closes the
    gate for the whole run (before session 39's fix, psi moved from the second step and the
    script stopped with its "psi moved" error)."""
    import toy_reference

    from autosim_jax import experiments

    def build(*, renderer, seed, size):
        setup = toy_reference.build(renderer=renderer, seed=seed)
        return setup._replace(config=setup.config.replace(outer_snr_gate=1.0, outer_snr_gate_steps=1))

    monkeypatch.setitem(experiments.EXPERIMENTS, "toy-gated", experiments.Experiment(
        "toy-gated", "the toy, its gate on the first update only", ("square",), build))
    assert hs.main(["--experiment", "toy-gated", "--psi", "start", "--steps", "3", "--val-objective", "loss",
                    "--out", str(tmp_path / "out")]) == 0
    record = json.loads((tmp_path / "out.json").read_text())
    assert record["per_seed"]["0"]["steps_used"] == 3
    assert record["step_options"] == {"val_objective": "loss"}  # passed to the step's config
