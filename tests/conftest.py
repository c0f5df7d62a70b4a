"""Shared test fixtures, and the toy experiment of the CLI and compare tests.

The toy (the one of tests/test_autosimulate.py: scenes x ~ N(mu, sigma^2), r(x) = (x, x^2),
an affine model) is written to a module on sys.path and named as ``module:attr`` (``TOY``),
the way a user runs an experiment of their own; subprocesses find it through PYTHONPATH.
"""

import importlib
import importlib.util
import os
import pathlib
import sys
import textwrap

# The suite is compile-bound: at its default optimisation level XLA's CPU backend spends about a
# second on each small program (a weight initialiser of one shape, one sampling op), and the
# tests build many. At level 0 those take about 0.2 s and the suite 641 s against 816 s on 2
# cores, at the price of slower generated code, which the notebook that trains longest and the
# detection end-to-end runs pay for more than it saves; they run optimised in their own processes
# (test_notebooks.py, test_detection_experiments.py, test_experiments.py; docs/quickstart.md,
# sessions 32-33 and 36).
# Set here, before JAX starts its backend; the test processes' children (CLI runs, compare jobs,
# notebook kernels) inherit it. Results are the same programs' results; tests that compare runs
# bit for bit compare runs compiled alike.
FAST_COMPILE = "--xla_backend_optimization_level=0"
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE}".strip()


def optimised_xla_flags() -> str:
    """``XLA_FLAGS`` without the suite's fast-compile flag, for a child process (a notebook kernel,
    a CLI run) that trains long enough that optimised code pays for its slower compilation."""
    return os.environ.get("XLA_FLAGS", "").replace(FAST_COMPILE, "").strip()


def run_autosim_optimised(*args: str):
    """``python -m autosim_jax ARGS`` in a child process compiled at XLA's default optimisation
    level (:func:`optimised_xla_flags`): for the end-to-end runs that train long enough to pay for
    it. Returns the ``subprocess.CompletedProcess`` (text stdout and stderr; not checked)."""
    import subprocess

    return subprocess.run([sys.executable, "-m", "autosim_jax", *args], capture_output=True, text=True,
                          timeout=600, check=False, env={**os.environ, "XLA_FLAGS": optimised_xla_flags()})

import jax  # after XLA_FLAGS
import pytest

BENCHMARKS = pathlib.Path(__file__).parents[1] / "benchmarks"


def load_benchmark(name: str):
    """The script ``benchmarks/NAME.py`` as a module, loaded from its file (``benchmarks/`` is no
    package and not on the test path), for tests of its pure helpers at a test module's import.
    ``benchmarks/`` is on ``sys.path`` while it loads, as when the script runs, so that its imports
    of siblings (``provenance``) resolve; a test that imports several scripts as one program takes
    them through the ``benchmark_script`` fixture."""
    path = BENCHMARKS / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCHMARKS))
    return module


@pytest.fixture()
def benchmark_script(monkeypatch):
    """``benchmark_script(NAME)``: ``benchmarks/NAME.py`` imported as a module, with ``benchmarks/`` on
    ``sys.path`` for the test, as the scripts import their siblings (``reassess`` imports
    ``field_drift`` and ``psi_learning``)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    return importlib.import_module


def pytest_collection_modifyitems(items):
    """Files with an end-to-end (``slow``) test run first, each file's tests in their order.

    pytest-xdist (``--dist loadfile --no-loadscope-reorder``, pyproject's addopts) hands the
    files to its two workers in this order, the next whenever a worker runs low. Its default
    order (most tests first) hands out files of a few 20-50 s tests last (the detection
    end-to-end file ran last in a measured run), where one worker can be left running one while
    the other has nothing left; started first, they leave the many short files and doctest
    modules to even out the end.
    """
    slow_files = {item.nodeid.split("::")[0] for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.nodeid.split("::")[0] not in slow_files)  # stable


@pytest.fixture(scope="session", autouse=True)
def compilation_cache(tmp_path_factory):
    """JAX's persistent compilation cache, in a fresh directory of this test process.

    Many tests compile programs identical to earlier ones under new jitted functions (every
    ``autosim run`` of the toy builds and compiles its steps afresh); a hit loads the compiled
    program instead of running XLA again. Every program is cached, not only those that took
    over the default second to compile. The directory is this process's alone (subprocesses and
    notebook kernels do not inherit it), so no other process writes into it or is killed mid-write.
    """
    jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.mktemp("jax-compilation-cache")))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


@pytest.fixture
def x64():
    """Runs a test with float64 enabled (dense references need it); restores the default after."""
    with jax.enable_x64(True):
        yield


TOY_MODULE = "autosim_toy_experiment"
TOY = f"{TOY_MODULE}:TOY"
TOY_SOURCE = textwrap.dedent('''
    """A toy experiment for the CLI tests (see tests/test_cli.py)."""
    import os
    import time

    import jax.numpy as jnp
    import numpy as np
    import optax
    from flax import nnx

    from autosim_jax.distributions import from_schema
    from autosim_jax.experiments import Experiment, ExperimentSetup
    from autosim_jax.schema import Field, OutputSpec, SceneSchema
    from autosim_jax.simulator import Simulator
    from autosim_jax.tasks import Task
    from autosim_jax.config import AutoSimConfig


    class SquareRenderer:
        """r(x) = (x, x^2); sleeps AUTOSIM_TOY_SLEEP seconds per call (to be killed mid-run)."""

        name = "square"
        schema = SceneSchema((Field.continuous("x", doc="the input value"),))
        inputs_spec = OutputSpec((1,), np.float32)
        labels_spec = OutputSpec((1,), np.float32)

        def __init__(self):
            self.calls = 0

        def render(self, scenes, seed):
            self.calls += 1
            time.sleep(float(os.environ.get("AUTOSIM_TOY_SLEEP", "0")))
            x = np.asarray(scenes["x"], np.float32)[:, None]
            return x.copy(), x**2


    class FlakyRenderer(SquareRenderer):
        """Returns a NaN image for scene 1 from its third call on."""

        name = "flaky"

        def render(self, scenes, seed):
            inputs, labels = super().render(scenes, seed)
            if self.calls >= 3:
                inputs[1] = np.nan
            return inputs, labels


    def _data(seed):
        x = (2.0 + 0.3 * np.random.default_rng(seed).standard_normal(64)).astype(np.float32)[:, None]
        return x, x**2


    TASK = Task.from_per_sample(
        lambda out, y: jnp.sum((out - y) ** 2, axis=-1), lambda out, y: -jnp.sum((out - y) ** 2, axis=-1), "neg_mse"
    )


    def build(*, renderer="square", seed=0):
        render = {"square": SquareRenderer, "flaky": FlakyRenderer}[renderer]()
        sim = Simulator(from_schema(render.schema, {"x": {"loc": -1.0, "scale": 0.5}}), render)
        options = dict(
            dataset_size=32, batch_size=16, finetune_epochs=2, inner_learning_rate=0.1,
            outer_learning_rate=0.1, damping=1e-3, cg_maxiter=5, cg_tol=1e-6,
        )
        model = nnx.Linear(1, 1, rngs=nnx.Rngs(seed))
        return ExperimentSetup(sim, model, TASK, _data(0), _data(1), AutoSimConfig(**options), iterations=6,
                               assess_images=512, assess_epochs=10)


    TOY = Experiment("toy", "a 1-d toy with a known optimum", ("square", "flaky"), build)


    def build_tuned(*, renderer="square", seed=0):
        """The toy whose learner renders K = 16 in minibatches of 8; the rest keeps the toy's options."""
        setup = build(renderer=renderer, seed=seed)
        return setup._replace(config=setup.config.replace(dataset_size=16, batch_size=8), assess_config=setup.config)


    TUNED = Experiment("toy-tuned", "the toy with its learner's K halved", ("square", "flaky"), build_tuned)


    def build_scored(*, renderer="square", seed=0):
        """The toy whose random search and BO evaluate on 64 images x 3 epochs by default."""
        return build(renderer=renderer, seed=seed)._replace(baseline_evaluation=(64, 3))


    SCORED = Experiment("toy-scored", "the toy with a baseline evaluation of its own", ("square", "flaky"),
                        build_scored)
''')


@pytest.fixture(scope="session")
def toy_path(tmp_path_factory):
    """A directory holding the toy experiment's module, put on sys.path for the session."""
    path = tmp_path_factory.mktemp("plugin")
    (path / f"{TOY_MODULE}.py").write_text(TOY_SOURCE)
    sys.path.insert(0, str(path))
    yield path
    sys.path.remove(str(path))
    sys.modules.pop(TOY_MODULE, None)
