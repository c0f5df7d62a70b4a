"""Checkpoints: exact round trip, structure checks, atomic replacement."""

import os
import signal
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from autosim_jax.checkpoint import leaf_paths, load_checkpoint, save_checkpoint


def _state(n=3, seed=0):
    rng = np.random.default_rng(seed)
    psi = {"x": (jnp.asarray(rng.standard_normal(n), jnp.float32), jnp.float32(rng.standard_normal()))}
    return {
        "psi": psi,
        "opt": optax.adam(0.1).init(psi),
        "key": jax.random.PRNGKey(seed),
        "step": jnp.int32(7),
        "flag": jnp.bool_(True),
    }


def _assert_bitwise_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape
        assert x.tobytes() == y.tobytes()


def test_round_trip_is_bitwise(tmp_path):
    state = _state()
    state["psi"]["x"] = (state["psi"]["x"][0].at[0].set(jnp.nan), state["psi"]["x"][1])  # NaN payloads survive
    path = tmp_path / "checkpoint.npz"
    save_checkpoint(path, state)
    loaded = load_checkpoint(path, _state(seed=1))
    _assert_bitwise_equal(loaded, state)
    assert all(isinstance(leaf, jax.Array) for leaf in jax.tree.leaves(loaded))
    assert not [p for p in os.listdir(tmp_path) if p != "checkpoint.npz"], "temporary files left behind"


def test_overwrite_replaces(tmp_path):
    path = tmp_path / "c.npz"
    save_checkpoint(path, _state(seed=0))
    save_checkpoint(path, _state(seed=2))
    _assert_bitwise_equal(load_checkpoint(path, _state()), _state(seed=2))


def test_leaf_paths_name_fields():
    paths = leaf_paths(_state())
    assert {"psi.x.0", "psi.x.1", "opt.0.mu.x.0", "step"} <= set(paths)


@pytest.mark.parametrize(
    "like, needle",
    [
        (_state(n=4), "(4,)"),  # another shape
        ({**_state(), "step": jnp.float32(0)}, "float32"),  # another dtype
        ({**_state(), "extra": jnp.zeros(2)}, "leaf"),  # another structure
        ({k: v for k, v in _state().items() if k != "flag"}, "leaf"),  # fewer leaves
    ],
)
def test_mismatch_raises_a_clear_error(tmp_path, like, needle):
    path = tmp_path / "c.npz"
    save_checkpoint(path, _state())
    with pytest.raises(ValueError, match="does not fit") as err:
        load_checkpoint(path, like)
    assert needle in str(err.value)


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, a=np.zeros(3))
    with pytest.raises(ValueError, match="not an autosim_jax checkpoint"):
        load_checkpoint(path, _state())


def test_typed_keys_are_refused(tmp_path):
    with pytest.raises(ValueError, match="typed PRNG key"):
        save_checkpoint(tmp_path / "c.npz", {"key": jax.random.key(0)})


def test_sigkill_during_writes_leaves_a_loadable_checkpoint(tmp_path):
    """A writer killed with SIGKILL at a random point leaves the previous or the next file, intact."""
    path = tmp_path / "c.npz"
    script = textwrap.dedent(f"""
        import numpy as np, sys
        from autosim_jax.checkpoint import save_checkpoint
        big = {{"w": np.zeros((256, 1024), np.float32), "step": np.int32(0)}}
        for i in range(100000):
            big["w"][:] = i
            big["step"] = np.int32(i)
            save_checkpoint({str(path)!r}, big)
            if i == 3:
                print("ready", flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    like = {"w": np.zeros((256, 1024), np.float32), "step": np.int32(0)}
    loaded = load_checkpoint(path, like)
    step = int(loaded["step"])
    assert step >= 3
    assert np.all(np.asarray(loaded["w"]) == step)


def _saved(tmp_path):
    path = tmp_path / "checkpoint.npz"
    save_checkpoint(path, _state())
    return path


@pytest.mark.parametrize(
    "damage, needle",
    [
        (lambda data: b"", "empty"),  # zero bytes (a full disk)
        (lambda data: data[: len(data) // 2], "BadZipFile"),  # truncated
        (lambda data: data[:30], "BadZipFile"),  # truncated inside the first member
        (lambda data: b"step,psi\n1,0.5\n", "not a .npz"),  # a text file under the name
        (lambda data: data[:200] + bytes(64) + data[264:], "readable"),  # a corrupt member
    ],
)
def test_corrupt_files_raise_a_checkpoint_error(tmp_path, damage, needle):
    """Truncated, zero-byte, corrupt or foreign files: a ValueError subclass, not BadZipFile/EOFError."""
    from autosim_jax.checkpoint import CheckpointError

    path = _saved(tmp_path)
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path, _state())
    assert isinstance(err.value, ValueError) and str(path) in str(err.value)
    assert needle in str(err.value) and "allow_pickle" not in str(err.value)


def test_a_text_file_gives_no_pickle_advice(tmp_path):
    """numpy would suggest allow_pickle=True (running code from the file); the docstring promises ValueError."""
    path = tmp_path / "notes.npz"
    path.write_text("these are notes, not arrays\n" * 20)
    with pytest.raises(ValueError) as err:
        load_checkpoint(path, _state())
    assert "allow_pickle" not in str(err.value) and "pickle" not in str(err.value)


def test_foreign_npz_with_a_bad_meta_entry(tmp_path):
    from autosim_jax.checkpoint import CheckpointError

    path = tmp_path / "c.npz"
    np.savez(path, __meta__=np.array("{not json"), leaf_00000=np.zeros(3))
    with pytest.raises(CheckpointError, match="readable"):
        load_checkpoint(path, _state())
    np.savez(path, __meta__=np.array('{"format": "autosim_jax.checkpoint/1", "leaves": [1, 2]}'))
    with pytest.raises(CheckpointError, match="malformed"):
        load_checkpoint(path, _state())


def test_atomic_write_replaces_whole_files_and_respects_the_umask(tmp_path):
    from autosim_jax.checkpoint import atomic_write

    path = tmp_path / "a.json"
    atomic_write(path, lambda f: f.write(b"old"))
    with pytest.raises(RuntimeError):  # a writer that fails midway leaves the old file and no temporary
        atomic_write(path, lambda f: (f.write(b"new, half"), (_ for _ in ()).throw(RuntimeError("disk"))))
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["a.json"]
    umask = os.umask(0o022)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's private 0600
