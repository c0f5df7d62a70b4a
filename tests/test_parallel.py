"""Data parallelism over devices (autosim_jax.parallel, make_autosimulate(devices=N)) on CPU.

Two CPU devices need ``XLA_FLAGS=--xla_force_host_platform_device_count=2`` before JAX starts,
so the two-device runs happen in one subprocess (``_WORKER``), which prints its findings as
JSON; the tests read them. The worker runs 3 steps of the 1-D toy (tests/toys.py) on one
device and on two, for the exact quadratic (Gauss-Newton CG on the first 32 of K = 64 renders,
validation in minibatches of 16) and for no_val with the per-sample score-function estimator.

Tolerance: the two runs compute the same float32 sums in another order (each device sums its
half of the batch, then the halves are added), so they differ by a few ulps per sum (float32's
epsilon is 1.2e-7), which three steps of Adam on theta and psi and a 5-iteration CG carry
forward. We allow a relative 1e-4 (atol 1e-5): about 100 ulps of room over the 1e-7 measured,
and far below what a real error makes (training on half of the batch, or a dropped device's
share of a gradient, moves psi in the second digit).
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from autosim_jax.parallel import constrain_batch, make_mesh, replicate, shard_batch

TESTS = os.path.dirname(os.path.abspath(__file__))
RTOL, ATOL = 1e-4, 1e-5

_WORKER = r"""
import json, sys, warnings
warnings.simplefilter("ignore")  # the toy's CG may stop short of cg_tol: StepInfo says so, in both runs
import jax, numpy as np, optax
from flax import nnx
from autosim_jax import Simulator, from_schema, make_autosimulate
from autosim_jax.parallel import shard_batch
from test_autosimulate import TOY_TASK, VAL
from toys import SquareRenderer

assert jax.device_count() == 2, jax.devices()


def toy(devices, **kw):
    sim = Simulator(from_schema(SquareRenderer.schema, {"x": {"loc": -1.0, "scale": 0.5}}), SquareRenderer())
    kw = {"dataset_size": 64, "batch_size": 16, **kw}
    return make_autosimulate(sim, nnx.Linear(1, 1, rngs=nnx.Rngs(0)), TOY_TASK, VAL, finetune_epochs=2,
                             inner_optimizer=optax.adam(0.1), outer_optimizer=optax.adam(0.1),
                             damping=1e-2, cg_maxiter=5, cg_tol=1e-3, devices=devices, **kw)


out = {"runs": {}}
for name, kw in (("exact_quadratic", dict(approximation="exact_quadratic", curvature_batch_size=32, val_batch_size=16)),
                 ("no_val_per_sample", dict(approximation="no_val", estimator="per_sample"))):
    runs = {}
    for devices in (None, 2):
        autosim = toy(devices, **kw)
        state, infos = autosim.init(0), []
        for _ in range(3):
            state, info = autosim.step(state)
            infos.append(info._replace(time_render=0.0, time_train=0.0, time_outer=0.0)._asdict())
        runs[str(devices)] = {"psi": [np.asarray(x).tolist() for x in jax.tree.leaves(state.psi)],
                              "theta": [np.asarray(x).tolist() for x in jax.tree.leaves(state.theta)],
                              "info": infos, "theta_devices": len(state.theta["kernel"].sharding.device_set),
                              "traces": autosim.trace_counts()}
    out["runs"][name] = runs

autosim = toy(2, approximation="exact_quadratic", curvature_batch_size=32)
state = autosim.init(0)
scenes, x, y = autosim.inner.simulate(jax.random.PRNGKey(0), state.psi)
mesh = state.theta["kernel"].sharding.mesh
scenes, x, y = shard_batch((scenes, x, y), mesh)
out["input_devices"] = len(x.sharding.device_set)
out["input_shard_rows"] = sorted({s.data.shape[0] for s in x.addressable_shards})
finetune = autosim.inner.finetune.lower(state.theta, state.inner_opt_state, x, y, jax.random.PRNGKey(1))
out["finetune_all_reduce"] = "all-reduce" in finetune.compile().as_text()
hyper = autosim.hypergradient.lower(state.psi, state.theta, scenes, x, y)
out["hypergradient_all_reduce"] = "all-reduce" in hyper.compile().as_text()

from autosim_jax.cli import main

run_dir = sys.argv[1]
codes = {"run": main(["run", "autosim_toy_experiment:TOY", "--devices", "2", "--iterations", "2",
                      "--assess-images", "0", "--out", run_dir]),
         "odd_k": main(["run", "autosim_toy_experiment:TOY", "--devices", "2", "--dataset-size", "9",
                        "--iterations", "1", "--out", run_dir + "-odd"])}
out["cli"] = {"codes": codes, "config": json.load(open(run_dir + "/config.json"))["parallel"]}

errors = {}
for name, kw in (("dataset_size", dict(dataset_size=63, batch_size=21)),
                 ("batch_size", dict(batch_size=15, dataset_size=60)),
                 ("curvature_batch_size", dict(curvature_batch_size=31))):
    try:
        toy(2, **kw)
    except ValueError as err:
        errors[name] = str(err)
out["errors"] = errors
print("RESULT" + json.dumps(out))
"""


@pytest.fixture(scope="module")
def worker(toy_path, tmp_path_factory):
    # the suite's XLA_FLAGS (its fast-compile level, tests/conftest.py) plus two host devices
    env = {**os.environ, "XLA_FLAGS": f"{os.environ['XLA_FLAGS']} --xla_force_host_platform_device_count=2",
           "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": os.pathsep.join([TESTS, str(toy_path), os.environ.get("PYTHONPATH", "")])}
    run_dir = str(tmp_path_factory.mktemp("parallel") / "run")
    result = subprocess.run([sys.executable, "-c", _WORKER, run_dir], capture_output=True, text=True, env=env,
                            check=False, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(line for line in result.stdout.splitlines() if line.startswith("RESULT"))
    out = json.loads(line[len("RESULT"):])
    out["stderr"] = result.stderr
    return out


@pytest.mark.parametrize("name", ["exact_quadratic", "no_val_per_sample"])
def test_two_devices_equal_one_within_float32_rounding(worker, name):
    one, two = worker["runs"][name]["None"], worker["runs"][name]["2"]
    assert (one["theta_devices"], two["theta_devices"]) == (1, 2)  # the 2-device state is replicated on both
    assert one["traces"] == two["traces"] == {"simulate": 1, "finetune": 1, "outer": 1}  # no retracing either
    for part in ("psi", "theta"):
        for a, b in zip(one[part], two[part], strict=True):
            np.testing.assert_allclose(b, a, rtol=RTOL, atol=ATOL, err_msg=part)
    for a, b in zip(one["info"], two["info"], strict=True):
        for key, value in a.items():
            if isinstance(value, (bool, str)):
                assert b[key] == value, key
            else:
                np.testing.assert_allclose(b[key], value, rtol=RTOL, atol=ATOL, err_msg=key)


def test_the_batch_is_split_and_the_programs_partitioned(worker):
    """The equality above is not that of two replicated runs: the inputs sit half on each
    device, and fine-tuning and the outer stage compile to programs that all-reduce."""
    assert worker["input_devices"] == 2 and worker["input_shard_rows"] == [32]
    assert worker["finetune_all_reduce"] and worker["hypergradient_all_reduce"]


def test_sizes_that_do_not_split_evenly_are_refused_naming_the_option(worker):
    errors = worker["errors"]
    assert set(errors) == {"dataset_size", "batch_size", "curvature_batch_size"}
    assert "dataset_size (K, renders per step) (63) must be a multiple of the device count (2)" in errors[
        "dataset_size"]
    assert "dataset_size=62" in errors["dataset_size"] and "fewer devices" in errors["dataset_size"]
    assert "batch_size (15) must be a multiple of the device count (2)" in errors["batch_size"]
    assert "curvature_batch_size (31)" in errors["curvature_batch_size"]


def test_one_device_is_no_mesh_and_the_helpers_are_the_identity():
    assert make_mesh(None) is None and make_mesh(1) is None
    x = np.arange(4.0)
    assert shard_batch(x, None) is x and replicate(x, None) is x and constrain_batch(x, None) is x
    with pytest.raises(ValueError, match="more devices than JAX sees"):
        make_mesh(10_000)
    with pytest.raises(ValueError, match="integer >= 1"):
        make_mesh(True)


def test_cli_devices_flag(worker, toy_path, tmp_path, capsys):
    """`autosim run --devices 2` runs and records it in config.json's parallel section (which
    --resume does not compare); a K that does not split, or more devices than JAX sees, is
    refused with exit 2 before any step."""
    assert worker["cli"]["codes"] == {"run": 0, "odd_k": 2} and worker["cli"]["config"] == {"devices": 2}
    assert "dataset_size (K, renders per step) (9) must be a multiple of the device count (2)" in worker["stderr"]
    from autosim_jax.cli import main

    for devices, needle in (("0", "--devices must be an integer >= 1"), ("64", "JAX sees 1 device")):
        assert main(["run", "autosim_toy_experiment:TOY", "--devices", devices, "--out", str(tmp_path / "r")]) == 2
        assert needle in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
