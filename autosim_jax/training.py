"""Minibatch training of the task model on a rendered dataset: the one loop every method uses.

AutoSimulate's fine-tuning (Algorithm 1, line 3), the fair assessment of a psi
(:func:`~autosim_jax.experiments.assess_psi`) and the black-box baselines all train the task
model the same way, so that their image and step counts compare.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from .parallel import constrain_batch

PyTree = Any

# How the learning rate evolves within one ``train_epochs`` call (it restarts at every call;
# the optimiser's state, e.g. Adam's moments, is carried over unchanged).
SCHEDULES = ("constant", "linear_decay")


def train_epochs(
    loss_fn: Callable[[PyTree, jax.Array, jax.Array], jax.Array],
    optimizer: optax.GradientTransformation,
    theta: PyTree,
    opt_state: PyTree,
    inputs: jax.Array,
    labels: jax.Array,
    key: jax.Array,
    *,
    batch_size: int,
    epochs: int,
    schedule: str = "constant",
    mesh: Mesh | None = None,
) -> tuple[PyTree, PyTree, jax.Array]:
    """``epochs`` passes of shuffled minibatch training over ``(inputs, labels)``.

    A remainder smaller than ``batch_size`` is dropped in each epoch (a different one each
    time, as the order is reshuffled). Pure and jit-able; ``batch_size`` and ``epochs`` are
    static.

    Args:
      loss_fn: ``(theta, inputs, labels) -> scalar`` mean loss of a minibatch.
      optimizer: the optax optimiser of ``theta``.
      theta, opt_state: starting parameters and optimiser state (warm start).
      inputs, labels: the dataset, leading axis ``n >= batch_size``.
      key: PRNG key for the shuffles.
      batch_size, epochs: minibatch size and number of passes.
      schedule: ``"constant"`` (the optimiser's own rate) or ``"linear_decay"``: the update
        of the ``t``-th of this call's ``T`` steps is scaled by ``(T - t) / T`` (1 at the
        first step, ``1/T`` at the last), so that a warm-started model settles at the
        minimiser of this dataset's loss instead of circling it at the optimiser's constant
        rate. It restarts at every call; the optimiser state (Adam's moments) is carried as is.
      mesh: data parallelism (:mod:`autosim_jax.parallel`): each minibatch is split over the
        mesh's devices (``None``: one device, no constraint).

    Returns:
      ``(theta, opt_state, mean loss of the last epoch)``.

    References:
      Behl et al., AutoSimulate (ECCV 2020), Algorithm 1: "Fine-tune model for epsilon epochs".

    Example:
      >>> import jax, jax.numpy as jnp, optax
      >>> x = jnp.linspace(-1, 1, 32)[:, None]; y = 3 * x
      >>> loss = lambda w, x, y: jnp.mean((x * w - y) ** 2)
      >>> opt = optax.sgd(0.5)
      >>> w, _, last = train_epochs(loss, opt, jnp.zeros(()), opt.init(jnp.zeros(())), x, y,
      ...                           jax.random.PRNGKey(0), batch_size=8, epochs=20)
      >>> bool(abs(w - 3) < 1e-3)
      True
    """
    n = inputs.shape[0]
    if not 1 <= batch_size <= n:
        raise ValueError(f"batch_size must be in [1, {n}] (the dataset size), got {batch_size}.")
    if schedule not in SCHEDULES:
        raise ValueError(f"Unknown schedule {schedule!r}; valid choices are {list(SCHEDULES)}.")
    num_batches = n // batch_size
    total = epochs * num_batches

    def train_step(carry, batch):
        theta, opt_state, t = carry
        loss, grads = jax.value_and_grad(loss_fn)(theta, *batch)
        updates, opt_state = optimizer.update(grads, opt_state, theta)
        if schedule == "linear_decay":
            scale = (total - t) / total
            updates = jax.tree.map(lambda u: (u * scale).astype(u.dtype), updates)
        return (optax.apply_updates(theta, updates), opt_state, t + 1), loss

    def epoch(carry, epoch_key):
        order = jax.random.permutation(epoch_key, n)[: num_batches * batch_size].reshape(num_batches, batch_size)
        batches = constrain_batch((inputs[order], labels[order]), mesh, axis=1)  # minibatch axis over devices
        carry, losses = jax.lax.scan(train_step, carry, batches)
        return carry, jnp.mean(losses)

    carry = (theta, opt_state, jnp.zeros((), jnp.int32))
    (theta, opt_state, _), losses = jax.lax.scan(epoch, carry, jax.random.split(key, epochs))
    return theta, opt_state, losses[-1]
