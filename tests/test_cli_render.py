"""``autosim run`` / ``autosim compare`` with render pools and TensorBoard, on the toy of toy_pool.py.

The toy's renderer adds noise drawn from each chunk's seed, so the runs below are equal only
because the chunks and their seeds do not depend on the pool. Pools are small (1-2 process
workers, about a second to start) and timeouts short, to keep the file fast on 2 cores.
"""

import json
import multiprocessing
import os
import pathlib
import signal
import struct
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from toy_pool import HANG_AFTER, SPEC

from autosim_jax import rundir
from autosim_jax.cli import main

TESTS = str(pathlib.Path(__file__).parent)
TIMING = ("time_step", "time_render", "time_train", "time_outer", "time_other", "wall_time")


def _lines(path):
    return [json.loads(line) for line in pathlib.Path(path).read_text().splitlines()]


def _results(records):
    """The records without their timings (what must be equal bitwise)."""
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


def _render_workers_alive():
    return [p for p in multiprocessing.active_children() if p.name.startswith("autosim-render")]


def _gone(pid: int) -> bool:
    try:
        return pathlib.Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):
        return True


def _children(pid: int) -> list[int]:
    found = []
    for stat in pathlib.Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().split(")")[-1].split()[1]) == pid:
                found.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            pass
    return found


@pytest.fixture
def spy_pools(monkeypatch):
    """Every pool the run creates, with the batch sizes it rendered."""
    created = []
    make = rundir.make_render_pool

    def spying(renderer, **kw):
        pool = make(renderer, **kw)
        pool.batches, pool.started_pids = [], pool.worker_pids
        render_chunks = pool.render_chunks

        def counted(scenes, seed):
            pool.batches.append(len(next(iter(scenes.values()))))
            return render_chunks(scenes, seed)

        pool.render_chunks = counted
        created.append(pool)
        return pool

    monkeypatch.setattr(rundir, "make_render_pool", spying)
    return created


@pytest.fixture(scope="module")
def serial_run(toy_path, tmp_path_factory):
    """Four steps rendered in this process (the default), with the assessment (64 images)."""
    out = tmp_path_factory.mktemp("serial") / "run"
    assert main(["run", SPEC, "--iterations", "4", "--out", str(out)]) == 0
    return out


def test_resume_with_two_workers_equals_one_uninterrupted_worker(serial_run, tmp_path, spy_pools, capsys):
    """Two steps in this process, then --resume to four with two worker processes."""
    out = tmp_path / "r"
    assert main(["run", SPEC, "--iterations", "2", "--assess-images", "0", "--out", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["render"] == {
        "workers": 1, "backend": "serial", "address": None, "timeout": None, "chunk_size": 8}
    capsys.readouterr()
    assert main(["run", SPEC, "--iterations", "4", "--assess-images", "64", "--out", str(out), "--resume",
                 "--render-workers", "2"]) == 0
    err = capsys.readouterr().err
    assert "rendering with 2 process workers" in err and "the renders are the same bitwise" in err
    assert _results(_lines(out / "metrics.jsonl")) == _results(_lines(serial_run / "metrics.jsonl"))
    with np.load(out / "checkpoint.npz") as a, np.load(serial_run / "checkpoint.npz") as b:
        assert a.files == b.files and all(a[k].tobytes() == b[k].tobytes() for k in a.files)
    # the fresh-model assessment of the learned psi rendered through the same pool, and agrees
    assert len(spy_pools) == 1 and spy_pools[0].workers == 2
    assert spy_pools[0].batches.count(32) == 2 and 64 in spy_pools[0].batches
    learned = json.loads((out / "summary.json").read_text())["assessment"]["learned_psi"]
    assert learned == json.loads((serial_run / "summary.json").read_text())["assessment"]["learned_psi"]
    config = json.loads((out / "config.json").read_text())
    assert config["render"] == {"workers": 2, "backend": "process", "address": None, "timeout": None,
                                "chunk_size": 8}
    assert len(spy_pools[0].started_pids) == 2 and all(_gone(pid) for pid in spy_pools[0].started_pids)
    assert not _render_workers_alive()


def test_the_toy_renders_depend_on_the_seed():
    """Without this the equality above would not test the chunk seeding."""
    from toy_pool import NoisySquareRenderer

    scenes = {"x": np.linspace(-1, 1, 8)}
    a, b = NoisySquareRenderer().render(scenes, 0)[0], NoisySquareRenderer().render(scenes, 1)[0]
    assert not np.array_equal(a, b) and NoisySquareRenderer() == NoisySquareRenderer()


def test_a_hung_renderer_with_a_timeout_exits_1_naming_renderer_and_scenes(serial_run, toy_path, tmp_path,
                                                                            monkeypatch, capsys, spy_pools):
    out = tmp_path / "r"
    monkeypatch.setenv(HANG_AFTER, "8")  # one worker, 4 chunks a step: step 3's first chunk hangs
    t0 = time.monotonic()
    assert main(["run", SPEC, "--iterations", "4", "--assess-images", "0", "--render-timeout", "1.5",
                 "--out", str(out)]) == 1
    assert time.monotonic() - t0 < 30
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error" in line]
    assert len(errors) == 1 and "Traceback" not in err, err
    for needle in ("autosim run: error: rendering failed at step 3", "'noisy-square'", "did not return within 1.5 s",
                   "scenes 0..7 of 32", "raise --render-timeout", "checkpoint of step 2", "--resume"):
        assert needle in errors[0], (needle, errors[0])
    assert "rendering with 1 process worker, timeout 1.5 s per batch" in err
    assert [r["step"] for r in _lines(out / "metrics.jsonl")] == [1, 2]
    assert len(spy_pools) == 1 and spy_pools[0].workers == 1 and not _render_workers_alive()
    monkeypatch.delenv(HANG_AFTER)
    assert main(["run", SPEC, "--iterations", "4", "--assess-images", "0", "--out", str(out), "--resume"]) == 0
    assert _results(_lines(out / "metrics.jsonl")) == _results(_lines(serial_run / "metrics.jsonl"))


@pytest.mark.parametrize("argv, needle", [
    (["--render-workers", "0"], "--render-workers must be an integer >= 1"),
    (["--render-timeout", "0"], "--render-timeout must be a positive number"),
    (["--render-timeout", "nan"], "--render-timeout must be a positive number"),
    (["--ray-address", "auto"], "pass --render-backend ray with it"),
    (["--render-backend", "gpu"], "invalid choice"),
    (["--render-backend", "ray"], "autosim_jax[distributed]"),  # with ray hidden below
])
@pytest.mark.parametrize("command", ["run", "compare"])
def test_render_flags_are_checked_before_the_build(toy_path, tmp_path, capsys, monkeypatch, argv, needle, command):
    import toy_pool

    def no_build(**kwargs):
        raise AssertionError("built")

    monkeypatch.setattr(toy_pool, "TOY_POOL", toy_pool.TOY_POOL._replace(build=no_build))
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    extra = ["--budget-images", "64"] if command == "compare" else []
    t0 = time.perf_counter()
    assert main([command, SPEC, *extra, *argv, "--out", str(tmp_path / "r")]) == 2
    assert time.perf_counter() - t0 < 1.0
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err, err
    assert not (tmp_path / "r").exists()


def test_compare_shares_one_pool_across_runs_and_assessments(serial_run, toy_path, tmp_path, spy_pools, capsys):
    out = tmp_path / "c"
    assert main(["compare", SPEC, "--methods", "autosimulate,random", "--seeds", "1", "--budget-images", "64",
                 "--assess-points", "1", "--render-workers", "2", "--out", str(out)]) == 0
    assert len(spy_pools) == 1 and not _render_workers_alive()
    batches = spy_pools[0].batches
    assert batches.count(32) == 4 and batches.count(64) == 3  # 2 steps x 2 methods; start, 2 final psi
    ours = _lines(out / "autosimulate-exact_quadratic" / "seed0" / "metrics.jsonl")
    assert _results(ours) == _results(_lines(serial_run / "metrics.jsonl")[:2])  # autosim run's first steps
    for method in ("autosimulate-exact_quadratic", "random"):
        config = json.loads((out / method / "seed0" / "config.json").read_text())
        assert config["render"]["workers"] == 2 and config["render"]["backend"] == "process"


def test_ctrl_c_leaves_no_render_worker_behind(toy_path, tmp_path):
    """SIGINT while every worker hangs in the renderer: exit 130 within seconds, no worker left."""
    out = tmp_path / "r"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(toy_path), TESTS, os.environ.get("PYTHONPATH", "")]),
               **{HANG_AFTER: "0"})
    proc = subprocess.Popen([sys.executable, "-m", "autosim_jax", "run", SPEC, "--iterations", "2",
                             "--render-workers", "2", "--out", str(out)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        line = ""
        while "compiling the first step" not in line:  # the pool has started by then
            line = proc.stderr.readline()
            assert line, "the run ended before its first step"
        time.sleep(1.0)  # inside the first step: compiling, or waiting for the hung workers
        workers = _children(proc.pid)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=30)
        elapsed = time.monotonic() - t0
        err = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    assert code == 130 and elapsed < 10, (code, elapsed, err)
    assert len(workers) >= 2 and "interrupted" in err
    deadline = time.monotonic() + 5
    while not all(_gone(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert all(_gone(pid) for pid in workers), workers


def test_a_forced_exit_kills_the_pool_workers():
    """When the main thread cannot run Python, interrupt_guard ends the process with os._exit,
    which runs no finally: the pool's workers are killed by the registered cleanup."""
    script = textwrap.dedent(f"""
        import signal, sys, time
        from typing import NamedTuple
        sys.path.insert(0, {TESTS!r})
        from toy_pool import NoisySquareRenderer
        from autosim_jax.distributions import from_schema
        from autosim_jax.rundir import RenderOptions, RenderPools, interrupt_guard
        from autosim_jax.simulator import Simulator

        class Setup(NamedTuple):
            simulator: Simulator

        renderer = NoisySquareRenderer()
        with interrupt_guard("interrupted", grace=0.5), RenderPools(RenderOptions(workers=2)) as pools:
            pools.attach(Setup(Simulator(from_schema(renderer.schema), renderer)))
            print(*pools.pool.worker_pids, flush=True)
            signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGINT])
            time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        pids = [int(p) for p in proc.stdout.readline().split()]
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        err = proc.stderr.read()
        proc.stdout.close()
        proc.stderr.close()
    assert code == 130 and len(pids) == 2, err
    deadline = time.monotonic() + 5
    while not all(_gone(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert all(_gone(pid) for pid in pids), pids


# ------------------------------------------------------------------------------ TensorBoard


def _events(directory):
    """Every event of the event files in ``directory``: (file, step, {tag: value}, session_log status)."""
    try:
        from tensorboardX.proto.event_pb2 import Event
    except ImportError:
        from tensorboard.compat.proto.event_pb2 import Event
    out = []
    for path in sorted(pathlib.Path(directory).glob("events.out.tfevents.*")):
        data, i = path.read_bytes(), 0
        while i < len(data):  # TFRecord: length, its crc, the Event, its crc
            (n,) = struct.unpack("<Q", data[i:i + 8])
            event = Event.FromString(data[i + 12:i + 12 + n])
            i += 12 + n + 4
            if event.HasField("summary") or event.HasField("session_log"):
                out.append((path.name, event.step, {v.tag: v.simple_value for v in event.summary.value},
                            event.session_log.status if event.HasField("session_log") else None))
    return out


@pytest.fixture
def needs_tensorboard():
    if not rundir.tensorboard_available():
        pytest.skip("neither tensorboardX nor tensorboard is installed (pip install 'autosim_jax[tensorboard]'; "
                    "the test extra installs it)")


def test_tensorboard_holds_exactly_the_records_of_metrics_jsonl(needs_tensorboard, serial_run, tmp_path):
    import shutil

    records = _lines(serial_run / "metrics.jsonl")
    events = _events(serial_run / "tensorboard")
    assert len({e[0] for e in events}) == 1
    assert [e[3] for e in events[:1]] == [1]  # a START first: TensorBoard drops older events of these steps
    steps = [e for e in events if e[2]]
    assert [e[1] for e in steps] == [r["step"] for r in records] == [1, 2, 3, 4]
    for (_, _, scalars, _), record in zip(steps, records):
        expected = rundir.tensorboard_scalars(record)
        assert scalars.keys() == expected.keys() and {"val/metric", "time/render", "psi/x.loc", "images"} <= set(
            scalars)
        for tag, value in expected.items():  # simple_value is a float32
            np.testing.assert_array_equal(np.float32(scalars[tag]), np.float32(value), err_msg=tag)
    # A resume writes every kept record into one new file and removes the old one: no step twice.
    out = tmp_path / "copy"
    shutil.copytree(serial_run, out)
    assert main(["run", SPEC, "--iterations", "5", "--assess-images", "0", "--out", str(out), "--resume"]) == 0
    events = _events(out / "tensorboard")
    assert len({e[0] for e in events}) == 1 and events[0][0] not in {e[0] for e in _events(serial_run / "tensorboard")}
    assert [e[1] for e in events if e[2]] == [1, 2, 3, 4, 5]
    assert [e[2] for e in events if e[2]][:4] == [e[2] for e in steps]
