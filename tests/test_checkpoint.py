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
