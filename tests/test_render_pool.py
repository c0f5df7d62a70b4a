"""Tests of autosim_jax.render_pool: the same renders bitwise serially, with 1 and 2 worker
processes and with 2 Ray actors (against a batch rendered chunk by chunk by hand); a
renderer that raises, a worker killed or crashed mid-batch, a batch past the timeout; no
worker process left after close(), after an error, or after Ctrl-C in the parent; and the
simulator's jit/vmap path through a pool.

The toy renderers live in tests/render_pool_helpers.py, a module the workers can import.
"""

import itertools
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest
import render_pool_helpers as helpers

from autosim_jax.distributions import from_schema
from autosim_jax.render_pool import (
    DEFAULT_CHUNK_SIZE,
    RenderError,
    chunk_bounds,
    chunk_seed,
    make_render_pool,
)
from autosim_jax.simulator import Simulator, reraise_render_errors

N = 37  # chunks 0..7, ..., 32..36: the last one is short
RENDERER = helpers.NoisyRenderer()


def _alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def _wait_channel(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/wchan") as f:
            return f.read() or "running"
    except OSError:
        return "gone"


def _gone(pids, within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while any(_alive(p) for p in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _by_hand(scenes, seed, chunk_size=DEFAULT_CHUNK_SIZE):
    """The batch rendered chunk by chunk in this process, chunk i seeded by
    SeedSequence([seed, i]) (the definition, written out independently of the module)."""
    n = len(scenes["x"])
    outs = []
    for i, a in enumerate(range(0, n, chunk_size)):
        part = {k: v[a:a + chunk_size] for k, v in scenes.items()}
        seed_i = int(np.random.SeedSequence([seed, i]).generate_state(1)[0])
        outs.append(RENDERER.render(part, seed_i))
    return tuple(np.concatenate([o[j] for o in outs]) for j in range(2))


@pytest.fixture(scope="module")
def process2():
    """A 2-worker process pool shared by the module; closing it leaves no worker behind."""
    with make_render_pool(RENDERER, workers=2) as pool:
        yield pool
        pids = pool.worker_pids
    assert _gone(pids), "process workers left after close()"


@pytest.fixture(scope="module")
def ray2():
    """A 2-actor Ray pool on a local Ray instance that the pool starts and shuts down."""
    pytest.importorskip("ray")
    with make_render_pool(RENDERER, workers=2, backend="ray") as pool:
        yield pool
        pids = pool.worker_pids
    assert _gone(pids, within=30.0), "Ray actors left after close()"


def _has_ray():
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


def _pools(request, names):
    serial = make_render_pool(RENDERER)
    return {name: serial if name == "serial" else request.getfixturevalue(name) for name in names}


def test_process_workers_cap_their_blas_threads_unless_the_user_did(monkeypatch):
    """Each worker gets cpu_count // workers BLAS/OpenMP threads for the variables the user left
    unset, keeps the user's value where one is set, and the parent's environment is unchanged."""
    from autosim_jax.render_pool import THREAD_ENV_VARS

    for var in THREAD_ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "3")
    scenes = {"x": np.zeros(4), "kind": np.zeros(4, np.int32)}
    with make_render_pool(helpers.ThreadEnvRenderer(), workers=2, chunk_size=2) as pool:
        inputs, _ = pool.render(scenes, seed=0)
    cap = max(1, (os.cpu_count() or 1) // 2)
    np.testing.assert_array_equal(inputs, np.tile([cap, 3, cap, cap], (4, 1)))
    assert "OMP_NUM_THREADS" not in os.environ and os.environ["OPENBLAS_NUM_THREADS"] == "3"


# ------------------------------------------------------------------------- seeding


def test_chunks_cover_the_batch_and_get_distinct_seeds():
    bounds = chunk_bounds(N, 8)
    assert bounds[0] == (0, 8) and bounds[-1] == (32, 37)
    assert all(a == b for (_, a), (b, _) in itertools.pairwise(bounds))
    seeds = {chunk_seed(s, i) for s in range(50) for i in range(50)}
    assert len(seeds) == 2500 and all(0 <= s < 2**32 for s in seeds)
    with pytest.raises(ValueError, match="non-negative"):
        chunk_seed(-1, 0)


def test_same_renders_bitwise_for_every_backend_and_worker_count(request):
    """serial == 1 process == 2 processes == 2 Ray actors == the batch rendered by hand."""
    names = ["serial", "process2"] + (["ray2"] if _has_ray() else [])
    pools = _pools(request, names)
    with make_render_pool(RENDERER, workers=1, backend="process") as one:
        pools["process1"] = one
        for seed in (0, 2**32 - 1):
            scenes = helpers.scenes(N, seed=seed % 7)
            want = _by_hand(scenes, seed)
            for name, pool in pools.items():
                got = pool.render(scenes, seed)
                for g, w in zip(got, want):
                    assert g.dtype == w.dtype, name
                    np.testing.assert_array_equal(g, w, err_msg=name)
        pids = one.worker_pids
    assert len(pids) == 1 and _gone(pids)
    if not _has_ray():
        pytest.skip("ray is not installed: compared serial and process pools only")


# ------------------------------------------------------------------------ failures


@pytest.mark.parametrize("name", ["serial", "process2", "ray2"])
def test_a_raising_renderer_names_its_scenes_in_the_whole_batch(request, name):
    if name == "ray2" and not _has_ray():
        pytest.skip("ray is not installed")
    pool = _pools(request, [name])[name]
    scenes = helpers.scenes(N, at_21=helpers.RAISE)
    with pytest.raises(RenderError) as info:
        pool.render(scenes, 4)
    err = info.value
    assert (
        "Renderer 'noisy' raised ValueError: a scene asked to fail while "
        f"rendering scenes 16..23 of {N} with seed 4 (chunk 2, chunk seed {chunk_seed(4, 2)})"
    ) in str(err)
    assert err.renderer == "noisy" and err.scene_range == (16, 24) and err.field is None
    if name != "serial":  # the worker's traceback travels as the cause
        assert "asked to fail" in str(err.__cause__) and "render_pool_helpers" in str(err.__cause__)
    # the pool goes on: the next batch renders normally
    ok = helpers.scenes(N)
    np.testing.assert_array_equal(pool.render(ok, 4)[0], _by_hand(ok, 4)[0])


@pytest.mark.parametrize("name", ["process2", "ray2"])
def test_the_lowest_failing_chunk_is_reported_whichever_finishes_first(request, name):
    """Chunks 1 (slow) and 2 both raise; chunk 2's error arrives first, chunk 1's is raised,
    as serially. A process pool starts no chunk after a failure (chunk 3 would kill its
    worker); a Ray actor may hold chunk 3 in its queue already, so there it only raises."""
    if name == "ray2" and not _has_ray():
        pytest.skip("ray is not installed")
    pool = _pools(request, [name])[name]
    ok = helpers.scenes(N)
    pool.render(ok, 0)
    before = pool.worker_pids
    third = helpers.KILL if name == "process2" else helpers.RAISE
    scenes = helpers.scenes(N, at_9=helpers.SLOW, at_10=helpers.RAISE, at_17=helpers.RAISE,
                            at_25=third)
    with pytest.raises(RenderError, match=r"scenes 8\.\.15 of 37") as info:
        pool.render(scenes, 0)
    assert info.value.scene_range == (8, 16)
    np.testing.assert_array_equal(pool.render(ok, 0)[0], _by_hand(ok, 0)[0])
    assert pool.worker_pids == before  # no worker died: chunk 3 did not run on a process
    with pytest.raises(RenderError, match=r"scenes 8\.\.15 of 37"):
        make_render_pool(RENDERER).render(scenes, 0)


@pytest.mark.parametrize(
    "name,trigger,how",
    [
        ("process2", helpers.KILL, "killed by SIGKILL"),
        ("process2", helpers.SEGFAULT, "killed by SIGSEGV"),
        ("ray2", helpers.KILL, "died"),
    ],
)
def test_a_worker_that_dies_mid_batch_is_replaced(request, name, trigger, how):
    if name == "ray2" and not _has_ray():
        pytest.skip("ray is not installed")
    pool = _pools(request, [name])[name]
    ok = helpers.scenes(N)
    pool.render(ok, 1)  # every worker is up (a Ray actor reports its pid when first used)
    before = set(pool.worker_pids)
    with pytest.raises(RenderError, match=how) as info:
        pool.render(helpers.scenes(N, at_27=trigger), 1)
    err = info.value
    assert "replaced the worker" in str(err)
    if name == "process2":  # a process worker holds one chunk at a time: that one is named
        assert f"while rendering scenes 24..31 of {N} with seed 1 (chunk 3" in str(err)
        assert err.scene_range == (24, 32)
    else:  # an actor holds up to two; Ray may also fail one it finished just before dying
        assert re.search(rf"while rendering (scenes 24\.\.31|.*, scenes .*24\.\.31.*) of {N}",
                         str(err))
        assert err.scene_range in ((24, 32), None)
    dead = int(re.search(r"pid (\d+)", str(err)).group(1))
    assert dead in before and _gone([dead])
    np.testing.assert_array_equal(pool.render(ok, 1)[0], _by_hand(ok, 1)[0])
    after = set(pool.worker_pids)
    assert len(after) == 2 and dead not in after and all(_alive(p) for p in after)


def test_a_hung_renderer_times_out_and_the_pool_closes_clean():
    """The batch fails after the timeout naming the scenes, the hung worker is killed and
    replaced, the next batch renders, and close() leaves no worker behind, busy or not."""
    with make_render_pool(RENDERER, workers=1, timeout=1.5) as pool:
        assert pool.backend == "process"
        hung = pool.worker_pids
        start = time.monotonic()
        with pytest.raises(RenderError) as info:
            pool.render(helpers.scenes(N, at_10=helpers.HANG), 0)
        assert time.monotonic() - start < 5.0
        assert (
            f"Renderer 'noisy' did not return within 1.5 s for scenes 8..15 of {N} (seed 0); "
            "raise timeout= or fix the renderer"
        ) in str(info.value)
        assert info.value.scene_range == (8, 16) and _gone(hung, within=2.0)
        ok = helpers.scenes(N)
        np.testing.assert_array_equal(pool.render(ok, 0)[1], _by_hand(ok, 0)[1])
        replacement = pool.worker_pids
        assert replacement != hung
        with pytest.raises(RenderError, match="raised ValueError"):
            pool.render(helpers.scenes(N, at_0=helpers.RAISE), 0)
    assert _gone(replacement)
    with pytest.raises(ValueError, match="is closed"):
        pool.render(ok, 0)


def test_a_hung_ray_actor_times_out_and_is_replaced(request):
    if not _has_ray():
        pytest.skip("ray is not installed")
    pool = request.getfixturevalue("ray2")
    ok = helpers.scenes(N)
    pool.render(ok, 0)
    before = set(pool.worker_pids)
    pool.timeout = 1.5
    try:
        with pytest.raises(RenderError, match=r"did not return within 1.5 s for scenes 0\.\.7"):
            pool.render(helpers.scenes(N, at_3=helpers.HANG), 0)
    finally:
        pool.timeout = None
    np.testing.assert_array_equal(pool.render(ok, 0)[0], _by_hand(ok, 0)[0])
    assert len(set(pool.worker_pids) - before) >= 1


# Only another thread can receive the signal: a helper thread that sleeps, then SIGINT blocked
# in the main thread (as when the kernel picks a BLAS or JAX thread for a process-directed one).
_ANOTHER_THREAD = """
            import signal, threading, time
            threading.Thread(target=time.sleep, args=(3600,), daemon=True).start()
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})"""


@pytest.mark.parametrize("lands_on", ["any thread", "another thread"])
def test_ctrl_c_in_the_parent_leaves_no_worker_behind(tmp_path, lands_on):
    """Ctrl-C (SIGINT to the whole process group, as a terminal sends it) while a batch is
    rendering: the parent exits with KeyboardInterrupt and its workers are gone, also when the
    signal lands on a thread other than the main one, which waits for the hung workers (the
    pool waits in slices of SIGNAL_CHECK_S so that Python runs the handler; with one blocking
    poll() the parent hung there)."""
    script = tmp_path / "interrupted.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        sys.path[:0] = {sys.path!r}
        import render_pool_helpers as helpers
        from autosim_jax.render_pool import make_render_pool

        if __name__ == "__main__":
            import signal
            # A terminal's process takes Ctrl-C; a child of the test runner may inherit SIGINT
            # ignored or blocked (a clean-clone CI run hung here in both variants), so say what
            # came in and start from a terminal's state.
            inherited = signal.getsignal(signal.SIGINT), sorted(signal.pthread_sigmask(signal.SIG_BLOCK, []))
            print("inherited SIGINT handler and blocked signals:", *inherited, file=sys.stderr, flush=True)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {{signal.SIGINT}})
            pool = make_render_pool(helpers.NoisyRenderer(), workers=2)
            {_ANOTHER_THREAD if lands_on == "another thread" else ""}
            print(*pool.worker_pids, flush=True)
            pool.render(helpers.scenes(16, at_0=helpers.HANG, at_8=helpers.HANG), 0)
    """))
    proc = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True,
    )
    try:
        pids = [int(p) for p in proc.stdout.readline().split()]
        assert len(pids) == 2 and all(_alive(p) for p in pids), proc.stderr.read()
        time.sleep(0.5)  # both workers are inside the hanging render
        os.killpg(proc.pid, signal.SIGINT)
        try:
            _, stderr = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            alive = {p: _wait_channel(p) for p in (proc.pid, *pids) if _alive(p)}
            os.killpg(proc.pid, signal.SIGKILL)
            raise AssertionError(f"30 s after SIGINT these processes (pid: kernel wait channel) were alive: "
                                 f"{alive}; parent {proc.pid}, workers {pids}; the parent's stderr: "
                                 f"{proc.communicate()[1][-2000:]}") from None
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode != 0 and "KeyboardInterrupt" in stderr
    assert _gone(pids)


# ---------------------------------------------------------------------- simulator


def test_simulator_with_a_pool_under_jit_and_vmap(process2):
    """jit and vmap of simulate through a 2-worker pool equal the serial simulator bitwise,
    and the pool's failures reach the caller as RenderError."""
    serial = Simulator(from_schema(helpers.SCHEMA, {"x": {"loc": 0.0, "scale": 3.0}}), RENDERER)
    pooled = serial.with_pool(process2)
    psi = serial.distribution.init()
    keys = jax.random.split(jax.random.key(0), 3)
    one = [jax.jit(s.simulate, static_argnums=2)(keys[0], psi, N) for s in (serial, pooled)]
    jax.tree.map(np.testing.assert_array_equal, *one)
    many = [
        jax.jit(jax.vmap(lambda k, s=s: s.simulate(k, psi, 20)))(keys) for s in (serial, pooled)
    ]
    jax.tree.map(np.testing.assert_array_equal, *many)
    assert not np.array_equal(many[0].inputs[0], many[0].inputs[1])

    bad = Simulator(
        from_schema(helpers.SCHEMA, {"x": {"loc": 950.0, "scale": 1.0}}), RENDERER
    ).with_pool(process2)
    with pytest.raises(RenderError, match=r"raised ValueError.*scenes 0\.\.7 of 9"), (
        reraise_render_errors()
    ):
        jax.block_until_ready(
            jax.jit(bad.simulate, static_argnums=2)(keys[0], bad.distribution.init(), 9)
        )


# ------------------------------------------------------------------------ options


class _Unpicklable(helpers.NoisyRenderer):
    def __init__(self):
        self.hook = lambda: None


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"workers": 0}, "workers must be a positive int"),
        ({"workers": 2, "backend": "serial"}, "backend='serial' has one worker"),
        ({"timeout": 1.0, "backend": "serial"}, "for a timeout use backend='process'"),
        ({"timeout": -1.0}, "timeout must be a positive number"),
        ({"chunk_size": 0}, "chunk_size must be a positive int"),
        ({"backend": "gpu"}, "backend must be one of"),
        ({"address": "auto"}, "pass backend='ray'"),
    ],
)
def test_bad_options_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_render_pool(RENDERER, **kwargs)


def test_an_unpicklable_renderer_is_rejected_before_any_worker_starts():
    with pytest.raises(ValueError, match="cannot be pickled.*module level"):
        make_render_pool(_Unpicklable(), workers=2)
    assert make_render_pool(_Unpicklable()).backend == "serial"  # serial needs no pickling
