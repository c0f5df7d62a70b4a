"""The run directory (autosim_jax.rundir): lock, atomic files, checked resume, the one run loop, progress.

A counting "method" (init, step) with a two-number state stands in for AutoSimulate and the
baselines, so these tests compile nothing.
"""

import ast
import io
import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
import pytest

from autosim_jax import rundir
from autosim_jax.rundir import (
    Interrupted,
    Progress,
    RenderFailed,
    RunDir,
    RunDirError,
    read_config,
    read_json,
    run_loop,
    write_json,
)


class State(NamedTuple):
    psi: dict
    step: jnp.ndarray
    images: jnp.ndarray


class Counter:
    """``psi.x`` grows by 1 per step; 10 images a step; ``fail_at`` raises a RenderError there."""

    def __init__(self, fail_at=None):
        self.fail_at, self.calls = fail_at, 0

    def init(self, seed):
        return State({"x": jnp.float32(seed)}, jnp.int32(0), jnp.int32(0))

    def step(self, state):
        self.calls += 1
        if self.fail_at is not None and int(state.step) + 1 == self.fail_at:
            from autosim_jax.simulator import RenderError

            raise RenderError("the renderer exploded", renderer="toy", scene_index=3)
        new = State({"x": state.psi["x"] + 1}, state.step + 1, state.images + 10)
        return new, {"val_metric": float(new.psi["x"]), "time_render": 0.0}


def _lines(path):
    return [json.loads(line) for line in pathlib.Path(path).read_text().splitlines()]


def _run(path, iterations, *, resume=False, method=None, **kw):
    with RunDir.open(path) as run:
        return run_loop(method or Counter(), run, seed=5, resume=resume, iterations=iterations, **kw)


def test_loop_writes_a_line_and_a_checkpoint_per_step_and_resumes(tmp_path):
    result = _run(tmp_path, 3)
    assert [r["step"] for r in _lines(tmp_path / "metrics.jsonl")] == [1, 2, 3]
    assert result.stopped_by == "iterations" and int(result.state.step) == 3 and float(result.initial.psi["x"]) == 5
    assert _lines(tmp_path / "metrics.jsonl")[-1]["psi"] == {"x": [8.0]}
    resumed = _run(tmp_path, 5, resume=True)
    assert resumed.resumed_at == 3 and [r["step"] for r in resumed.records] == [1, 2, 3, 4, 5]
    assert [r["psi"]["x"] for r in _lines(tmp_path / "metrics.jsonl")] == [[6.0], [7.0], [8.0], [9.0], [10.0]]
    budget = _run(tmp_path / "b", 100, budget_images=25)
    assert budget.stopped_by == "budget_images" and int(budget.state.images) == 30


def test_lock_refuses_a_second_holder_naming_its_pid(tmp_path):
    with RunDir.open(tmp_path), pytest.raises(RunDirError, match=f"pid {os.getpid()}"), RunDir.open(tmp_path):
        pass
    with RunDir.open(tmp_path):  # released at the end of the block
        pass


def test_lock_is_held_against_another_process(tmp_path):
    """A child process holding the lock (the same flock protocol) is named by its pid."""
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import fcntl, os, sys, time
        fd = os.open({str(tmp_path / ".lock")!r}, os.O_RDWR | os.O_CREAT)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0); os.write(fd, str(os.getpid()).encode())
        print("locked", flush=True)
        sys.stdin.read()
    """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "locked"
        with pytest.raises(RunDirError, match=f"pid {child.pid}"), RunDir.open(tmp_path):
            pass
    finally:
        child.stdin.close()
        child.wait()
        child.stdout.close()
    with RunDir.open(tmp_path):  # the child's exit released it
        pass


def test_stale_tmp_files_are_removed_when_the_directory_is_opened(tmp_path):
    (tmp_path / ".tmp-checkpoint.npz-k1ll3d").write_bytes(b"PK half a checkpoint")
    (tmp_path / ".tmp-config.json-x").write_text("{")
    (tmp_path / "keep.txt").write_text("mine")
    with RunDir.open(tmp_path) as run:
        assert run.removed_tmp == [".tmp-checkpoint.npz-k1ll3d", ".tmp-config.json-x"]
    assert sorted(os.listdir(tmp_path)) == [".lock", "keep.txt"]


def test_out_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(RunDirError, match="is a file"), RunDir.open(tmp_path / "f"):
        pass


@pytest.mark.parametrize("content, needle", [(b"", "empty"), (b'{"format": "autosim', "truncated"),
                                             (b"\xff\xfe", "not valid JSON")])
def test_corrupt_json_is_a_run_dir_error(tmp_path, content, needle):
    (tmp_path / "config.json").write_bytes(content)
    with pytest.raises(RunDirError, match=needle) as err:
        read_config(str(tmp_path))
    assert isinstance(err.value, ValueError) and "config.json" in str(err.value)
    with pytest.raises(RunDirError, match="does not exist"):
        read_json(tmp_path / "nothing.json")


@pytest.mark.parametrize("config", [
    {"experiment": "clevr-seg", "seed": 0, "options": {"dataset_size": 32}},  # after 592637a, before the format key
    {"experiment": "clevr-seg", "options": {"inner_optimizer": {"name": "adam", "learning_rate": 0.003,
                                                                "spec": {"chain": ["scale_by_adam"]}}}},  # optax text
])
def test_a_directory_of_an_older_version_is_refused(tmp_path, config):
    write_json(tmp_path / "config.json", config)
    with pytest.raises(RunDirError, match="older version of autosim_jax.*another --out"):
        read_config(str(tmp_path))
    write_json(tmp_path / "config.json", {**config, "format": "autosim_jax.run/99"})
    with pytest.raises(RunDirError, match="run/99"):
        read_config(str(tmp_path))


def test_resume_verifies_the_step_sequence(tmp_path):
    """Line i must be step i + 1 (two runs into one directory wrote 1,1,2,2: refused, nothing lost)."""
    _run(tmp_path, 2)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    (tmp_path / "metrics.jsonl").write_text("\n".join([lines[0], lines[0], lines[1], lines[1]]) + "\n")
    with pytest.raises(RunDirError, match="line 2 is step 1, expected step 2"):
        _run(tmp_path, 4, resume=True)
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 4  # untouched


def test_resume_keeps_the_checkpointed_steps_and_drops_an_unfinished_one(tmp_path):
    _run(tmp_path, 3)
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write(json.dumps({**_lines(tmp_path / "metrics.jsonl")[-1], "step": 4}) + "\n")  # no checkpoint yet
        f.write('{"step": 5, "ima')  # torn
    result = _run(tmp_path, 3, resume=True)
    assert [r["step"] for r in result.records] == [1, 2, 3]
    assert [r["step"] for r in _lines(tmp_path / "metrics.jsonl")] == [1, 2, 3]


@pytest.mark.parametrize("edit, needle", [
    (lambda lines: lines[:2], "holds 2 complete steps but the checkpoint is at step 3"),
    (lambda lines: lines + [json.dumps({"step": 4}), json.dumps({"step": 5})], "older than the metrics"),
    (lambda lines: [lines[0], "garbage", lines[2]], "line 2 is not JSON"),
    (lambda lines: lines[:2] + [json.dumps({**json.loads(lines[2]), "images": 999})], "999 images"),
])
def test_resume_refuses_metrics_that_disagree_with_the_checkpoint(tmp_path, edit, needle):
    _run(tmp_path, 3)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    (tmp_path / "metrics.jsonl").write_text("\n".join(edit(lines)) + "\n")
    with pytest.raises(RunDirError, match=needle):
        _run(tmp_path, 5, resume=True)


def test_resume_refuses_a_corrupt_or_foreign_checkpoint(tmp_path):
    _run(tmp_path, 2)
    data = (tmp_path / "checkpoint.npz").read_bytes()
    (tmp_path / "checkpoint.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(RunDirError, match="not a readable autosim_jax checkpoint"):
        _run(tmp_path, 3, resume=True)

    class Other(Counter):
        def init(self, seed):
            return State({"x": jnp.zeros(3)}, jnp.int32(0), jnp.int32(0))

    _run(tmp_path / "o", 2)
    with pytest.raises(RunDirError, match="does not fit"):
        _run(tmp_path / "o", 3, resume=True, method=Other())


def test_render_failure_and_interrupt_leave_the_last_step_on_disk(tmp_path):
    with pytest.raises(RenderFailed, match="step 3 .*scene 3.*exploded") as err:
        _run(tmp_path, 5, method=Counter(fail_at=3))
    assert err.value.step == 3 and len(_lines(tmp_path / "metrics.jsonl")) == 2

    def stop(record, state):
        if record["step"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(Interrupted) as err:
        _run(tmp_path / "i", 5, on_step=stop)
    assert err.value.step == 2
    assert [r["step"] for r in _run(tmp_path / "i", 4, resume=True).records] == [1, 2, 3, 4]


def test_progress_lines_without_a_terminal():
    """One line every N items, with the first and the last; ETA from the second item (the first compiles)."""
    stream = io.StringIO()
    p = Progress(10, desc="autosim run", stream=stream, every=3, seconds=1e9)
    for i in range(10):
        p.update(f"{32 * (i + 1)} images, CG ok")
    p.close()
    lines = stream.getvalue().splitlines()
    assert [line.split(",")[0] for line in lines] == [f"autosim run: step {i}/10" for i in (1, 4, 7, 10)]
    assert "ETA after the first (compiling) step" in lines[0] and all("ETA 0s" in line for line in lines[1:])
    assert "128 images, CG ok" in lines[1]
    stream = io.StringIO()
    p = Progress(4, desc="x", stream=stream, every=100, seconds=0.0, unit="psi")  # every 0 s: each item
    for _ in range(4):
        p.update()
    assert len(stream.getvalue().splitlines()) == 4 and "psi 2/4" in stream.getvalue()


def test_interrupt_guard_raises_keyboard_interrupt_and_restores_the_handler():
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt), rundir.interrupt_guard("interrupted", stream=io.StringIO()):
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(10**6):  # the handler runs at the next bytecode
            pass
    assert signal.getsignal(signal.SIGINT) is before
    assert signal.set_wakeup_fd(-1) == -1  # the guard's wakeup fd is gone


def test_seed_range():
    assert rundir.check_seed(2**32 - 1) == 2**32 - 1
    for bad in (2**32, -1, 1.5, True):
        with pytest.raises(rundir.UsageError, match=r"\[0, 2\*\*32\)"):
            rundir.check_seed(bad)


def test_no_import_between_cli_and_compare_except_the_dispatch():
    """compare and rundir never import cli; rundir imports neither (no cycle). cli dispatches to compare."""
    root = pathlib.Path(rundir.__file__).parent

    def imports(name):
        tree = ast.parse((root / f"{name}.py").read_text())
        found = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                found |= {node.module or ""} | {f"{node.module or ''}.{a.name}" for a in node.names}
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
        return {m.lstrip(".").replace("autosim_jax.", "") for m in found}

    assert not {"cli", "compare", ".cli", ".compare"} & imports("rundir")
    assert not {"cli", ".cli"} & imports("compare") and not any(m.startswith("cli") for m in imports("compare"))
    assert "rundir" in {m.split(".")[0] for m in imports("compare")} & {m.split(".")[0] for m in imports("cli")}
    np.testing.assert_equal(sorted(imports("checkpoint") & {"rundir", "cli", "compare"}), [])


def test_interrupt_guard_ends_a_process_whose_main_thread_is_stuck_outside_python():
    """SIGINT while the main thread cannot run Python (here: SIGINT blocked in it, as inside a long XLA
    call or a hung renderer on another thread): the watcher exits with 130 after the grace period."""
    script = textwrap.dedent("""
        import signal, time
        from autosim_jax.rundir import interrupt_guard
        with interrupt_guard("autosim: interrupted; continue with --resume", grace=1.0):
            signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGINT])
            print("ready", flush=True)
            time.sleep(60)
        print("not reached", flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.5)  # let the main thread enter its sleep (a signal before that runs the handler there)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=30)
        elapsed = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out, err = proc.stdout.read(), proc.stderr.read()
    proc.stdout.close()
    proc.stderr.close()
    assert code == 130 and 0.9 <= elapsed < 5, (code, elapsed, err)
    assert "continue with --resume" in err and "not reached" not in out


def test_an_option_added_later_reads_as_its_default(tmp_path):
    """A run written before an AutoSimConfig option existed resumes: the option reads as its
    default, the behaviour the run had (e.g. finetune_schedule and outer_beta2 of session 5)."""
    from autosim_jax.config import AutoSimConfig
    from autosim_jax.rundir import CONFIG, FORMAT, read_config

    old = AutoSimConfig(approximation="linear").to_dict()
    del old["finetune_schedule"], old["outer_beta2"]
    (tmp_path / CONFIG).write_text(json.dumps({"format": FORMAT, "options": old}))
    options = read_config(str(tmp_path))["options"]
    assert options == AutoSimConfig(approximation="linear").to_dict()


def test_assessment_cache_is_kept_per_model_count(tmp_path):
    """An assessed.json is read back only under the same protocol: a file of 2 models per psi is
    not one of 1, and a file written before --assess-models (no "models" key) is one of 1."""
    from autosim_jax.rundir import assess_protocol, cached_assessment, is_assessed

    path = str(tmp_path / "assessed.json")
    two = assess_protocol(64, 3, 2, seed=0)
    value, cached = cached_assessment(path, "0", two, lambda: {"val_metric": 0.5, "test_metric": 0.4})
    assert not cached and is_assessed(path, "0", two)
    assert not is_assessed(path, "0", assess_protocol(64, 3, 1, seed=0))
    assert not is_assessed(path, "0", assess_protocol(64, 3, 4, seed=0))
    old = tmp_path / "old.json"  # as written before the flag existed
    old.write_text(json.dumps({"images": 64, "epochs": 3, "seed": 0, "results": {"0": value}}))
    assert is_assessed(str(old), "0", assess_protocol(64, 3, 1, seed=0))
    assert not is_assessed(str(old), "0", two)
