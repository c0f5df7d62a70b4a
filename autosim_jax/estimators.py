"""Score-function (REINFORCE) estimators of the gradient through the sampling distribution.

AutoSimulate needs the derivative of an expectation over scenes (paper Eq. 10-11, the
"gradient of expectation" line of Algorithm 1). For a fixed vector ``v`` shaped like
``theta`` (the solution of Eq. 13a, or ``g_val``, or ``H g_val``: Table 1), it is

.. math::

    \\frac{\\partial}{\\partial \\psi} \\mathbb{E}_{s \\sim q_\\psi}
        \\Big[\\frac{\\partial l(r(s), \\theta)}{\\partial \\theta} \\cdot v\\Big]
    \\approx \\frac{1}{K} \\sum_{k=1}^K \\nabla_\\psi \\log q_\\psi(s_k)\\, (c_k - b_k),
    \\qquad c_k = \\frac{\\partial l_k(\\theta)}{\\partial \\theta} \\cdot v,

which is REINFORCE (:func:`reinforce_gradient`) with the "rewards" ``c_k``
(:func:`directional_derivatives`). The paper writes the sum without ``1/K``; the mean used
here differs by the constant ``K``, absorbed by the outer step size, and keeps the scale of
the step independent of the batch size.

Two ways to get the ``c_k``:

* ``method="jvp"`` (default): one forward-mode ``jax.jvp`` of the vector of ``K`` per-sample
  losses along ``v``. It never builds the ``K x n`` matrix of per-sample gradients: it costs
  about two forward passes over the batch, and beyond the batch's activations (``K x`` the
  width of the network) it holds nothing that grows with ``K``.
* ``method="per_sample"``: ``jax.vmap`` of ``jax.grad`` over the samples (the ``K x n``
  Jacobian), contracted with ``v``. The reference, and the baseline of the benchmark
  ``benchmarks/estimator_methods.py``.

Both assume that loss ``k`` depends only on sample ``k`` (no batch statistics), which is
what makes the per-sample gradients well defined. The same assumption allows
``chunk_size``: the ``K`` samples are then processed ``chunk_size`` at a time in a
``jax.lax.map`` (a scan), so the temporaries (the jvp's activations and tangents, or the
per-sample method's ``chunk_size x n`` gradients) are bounded by the chunk and not by ``K``;
the price is a sequential loop of ``ceil(K / chunk_size)`` smaller passes instead of one
wide one. The default, ``None``, is one pass, the fastest; chunk where ``K x`` the
network's activations would not fit in memory. Measured on an H200
(``benchmarks/estimator_methods.py``, K=128..1024): with chunks of 64 the jvp's temporaries
stay at one chunk's (80 MiB for the 64x64 clevr-seg UNet, against 1.25 GiB for one pass at
K=1024) and the time at K=1024 is 1.5x (that UNet) to 12x (the 8x8 digits CNN, where one
pass is only ~80 us) that of one pass; chunks of 256 cost 1.2-2.9x.

Baselines (control variates): ``"leave_one_out"`` (default) subtracts from ``c_k`` the mean
of the other ``K - 1`` values; it does not depend on ``s_k``, so the estimate stays unbiased,
and it removes the part of ``c_k`` common to all samples, which lowers the variance.
``None`` turns it off; an array (a scalar, or ``[K]``) is subtracted as given (e.g. a moving
average that the caller keeps; unbiased as long as it does not depend on the current
samples).

Example:
  >>> import jax, jax.numpy as jnp
  >>> from autosim_jax.distributions import gaussian
  >>> q = gaussian()
  >>> psi = q.init()
  >>> s = q.sample(jax.random.key(0), psi, 4096)
  >>> loss = lambda theta, x, y: 0.5 * (theta * x - y) ** 2  # [K] per-sample losses
  >>> theta = v = jnp.float32(1.0)
  >>> g = score_function_term(q.log_prob, psi, s, loss, theta, v, s, 0 * s)
  >>> g.loc.shape  # d/dpsi E[x^2] = (2 mu, 2 sigma^2) = (0, 2) up to Monte Carlo error
  ()
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .curvature import check_like

PyTree = Any

METHODS = ("jvp", "per_sample")
BASELINES = ("leave_one_out", None)

_UNKNOWN_METHOD = "Unknown method {method!r}; valid choices are {choices}."
_BAD_CHUNK_SIZE = (
    "chunk_size must be None (all K samples at once) or a positive int (process the samples that "
    "many at a time), got {chunk_size!r}."
)
_UNKNOWN_BASELINE = (
    "Unknown baseline {baseline!r}; valid choices are {choices}, or an array (a scalar or one "
    "value per sample) to subtract as a fixed baseline."
)


def _leading_sizes(tree: PyTree) -> set[int | None]:
    return {jnp.shape(x)[0] if jnp.ndim(x) else None for x in jax.tree.leaves(tree)}


def apply_baseline(
    rewards: jax.Array, baseline: str | None | jax.Array = "leave_one_out"
) -> jax.Array:
    """Subtracts a control-variate baseline from per-sample rewards.

    Args:
      rewards: ``[K]`` per-sample values ``f(s_k)``.
      baseline: ``"leave_one_out"`` (``f_k - mean_{j != k} f_j``; needs ``K >= 2``), ``None``
        (no baseline), or an array of shape ``()`` or ``[K]`` subtracted as is.

    Returns:
      ``[K]`` centred rewards.

    References:
      Paper Eq. 11 (the REINFORCE estimator); leave-one-out baseline: Kool et al., "Buy 4
      REINFORCE samples, get a baseline for free!" (ICLR-W 2019).

    Example:
      >>> apply_baseline(jnp.array([1.0, 2.0, 3.0]))
      Array([-1.5,  0. ,  1.5], dtype=float32)
    """
    rewards = jnp.asarray(rewards)
    if rewards.ndim != 1:
        raise ValueError(f"rewards must have shape [K], got {rewards.shape}.")
    if baseline is None:
        return rewards
    if isinstance(baseline, str):
        if baseline != "leave_one_out":
            raise ValueError(_UNKNOWN_BASELINE.format(baseline=baseline, choices=BASELINES))
        k = rewards.shape[0]
        if k < 2:
            raise ValueError(f"The leave-one-out baseline needs at least 2 samples, got K={k}.")
        return rewards - (jnp.sum(rewards) - rewards) / (k - 1)
    try:
        baseline = jnp.asarray(baseline)
    except TypeError:
        raise ValueError(_UNKNOWN_BASELINE.format(baseline=baseline, choices=BASELINES)) from None
    if not jnp.issubdtype(baseline.dtype, jnp.number) or baseline.shape not in ((), rewards.shape):
        raise ValueError(
            _UNKNOWN_BASELINE.format(baseline=baseline, choices=BASELINES)
            + f" An array baseline must have shape () or {rewards.shape}."
        )
    return rewards - baseline


def reinforce_gradient(
    log_prob_fn: Callable[[PyTree, Any], jax.Array],
    psi: PyTree,
    samples: Any,
    rewards: jax.Array,
    *,
    baseline: str | None | jax.Array = "leave_one_out",
    return_stderr: bool = False,
) -> PyTree | tuple[PyTree, PyTree]:
    """REINFORCE estimate of ``d/dpsi E_{s ~ q_psi}[f(s)]`` from samples and their rewards.

    .. math:: \\frac{1}{K} \\sum_k (f(s_k) - b_k) \\nabla_\\psi \\log q_\\psi(s_k)

    computed as the gradient of the surrogate ``mean_k stop_gradient(f_k - b_k) log q(s_k)``
    (one backward pass through ``log_prob_fn``, whatever the size of ``psi``).

    With ``return_stderr=True`` it also returns each coordinate's standard error, the sample
    standard deviation (``ddof=1``) of the ``K`` terms ``(f(s_k) - b_k) grad log q(s_k)`` over
    ``sqrt(K)``; the per-sample scores come from a ``jax.vmap`` of ``jax.grad`` over the samples
    (``K x`` the size of psi, small next to the network). The leave-one-out baseline makes the
    terms weakly dependent (each ``b_k`` holds the other rewards), which this ignores: an
    approximation of order ``1/K``.

    Args:
      log_prob_fn: ``(psi, samples) -> [K]`` log-densities, e.g. ``Distribution.log_prob``.
      psi: the distribution's parameters.
      samples: ``K`` samples drawn from ``q_psi`` (a pytree with leading axis ``K``).
      rewards: ``[K]`` values ``f(s_k)``; treated as constants.
      baseline: see :func:`apply_baseline`.
      return_stderr: also return the standard error of each coordinate (above).

    Returns:
      A pytree like ``psi``: the gradient of the expectation (ascend it to maximise ``E[f]``);
      with ``return_stderr``, ``(gradient, standard_error)``, both like ``psi``.

    Raises:
      ValueError: mismatched ``K``, or an unknown baseline.

    References:
      Paper Eq. 11 (REINFORCE, Williams 1992); the Learning-to-Simulate baseline (Sec. 5).

    Example:
      >>> from autosim_jax.distributions import categorical
      >>> q = categorical(3)
      >>> s = q.sample(jax.random.key(0), q.init(), 1000)
      >>> g = reinforce_gradient(q.log_prob, q.init(), s, (s == 2).astype(jnp.float32))
      >>> g.logits.shape
      (3,)
    """
    rewards = jnp.asarray(rewards)
    if rewards.ndim != 1:
        raise ValueError(f"rewards must have shape [K], got {rewards.shape}.")
    k = rewards.shape[0]
    sizes = _leading_sizes(samples)
    if sizes != {k}:
        raise ValueError(
            f"samples hold {sorted(sizes, key=str)} along their leading axis but there are K={k} "
            "rewards; "
            "every sample needs one reward."
        )
    log_prob_shape = jax.eval_shape(log_prob_fn, psi, samples).shape
    if log_prob_shape != (k,):
        raise ValueError(
            f"log_prob_fn returned shape {log_prob_shape}; expected ({k},), one log-density per "
            "sample."
        )
    centred = jax.lax.stop_gradient(apply_baseline(rewards, baseline))

    def surrogate(p):
        logq = log_prob_fn(p, samples)
        return jnp.mean(centred.astype(logq.dtype) * logq)

    grad = jax.grad(surrogate)(psi)
    if not return_stderr:
        return grad
    if k < 2:
        raise ValueError(f"A standard error needs at least 2 samples, got K={k}.")

    def score(sample):  # grad_psi log q(s) of one sample, as a batch of one
        return jax.grad(lambda p: log_prob_fn(p, jax.tree.map(lambda x: x[None], sample))[0])(psi)

    scores = jax.vmap(score)(samples)  # like psi, each leaf with a leading axis K

    def stderr(leaf):
        terms = centred.astype(leaf.dtype).reshape((k,) + (1,) * (leaf.ndim - 1)) * leaf
        return jnp.std(terms, axis=0, ddof=1) / jnp.sqrt(jnp.asarray(k, leaf.dtype))

    return grad, jax.tree.map(stderr, scores)


def _check_chunk_size(chunk_size: int | None) -> None:
    """Raises a ValueError unless ``chunk_size`` is None or a positive (Python or numpy) int."""
    if chunk_size is None:
        return
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)):
        raise ValueError(_BAD_CHUNK_SIZE.format(chunk_size=chunk_size))
    if chunk_size < 1:
        raise ValueError(_BAD_CHUNK_SIZE.format(chunk_size=chunk_size))


def _map_over_chunks(
    fn: Callable[[Any, Any], jax.Array], inputs: Any, labels: Any, k: int, chunk_size: int
) -> jax.Array:
    """``fn`` (``[B]``-valued, of a batch) over chunks of ``chunk_size`` samples, concatenated.

    The ``K // chunk_size`` full chunks run in one ``jax.lax.map`` that slices them out of the
    batch in place (``dynamic_slice``, no copy of the batch); a shorter last chunk, if any, is one
    more call. Valid because loss ``k`` depends only on sample ``k``.
    """
    n_full, rest = divmod(k, chunk_size)

    def one_chunk(i):
        start = i * chunk_size
        take = lambda a: jax.lax.dynamic_slice_in_dim(a, start, chunk_size)
        return fn(jax.tree.map(take, inputs), jax.tree.map(take, labels))

    out = jax.lax.map(one_chunk, jnp.arange(n_full)).reshape(n_full * chunk_size)
    if rest:
        tail = lambda a: a[n_full * chunk_size :]
        out = jnp.concatenate([out, fn(jax.tree.map(tail, inputs), jax.tree.map(tail, labels))])
    return out


def _check_tangent(theta: PyTree, v: PyTree) -> PyTree:
    """Checks that v is shaped like theta; casts its leaves to theta's dtypes (jvp needs it)."""
    check_like(theta, v, "v")
    return jax.tree.map(lambda t, vv: jnp.asarray(vv, jnp.result_type(t)), theta, v)


def directional_derivatives(
    per_sample_loss_fn: Callable[..., jax.Array],
    theta: PyTree,
    v: PyTree,
    inputs: Any,
    labels: Any,
    *,
    method: str = "jvp",
    chunk_size: int | None = None,
) -> jax.Array:
    """``c_k = d l_k(theta) / d theta . v`` for each of the ``K`` samples.

    Args:
      per_sample_loss_fn: ``(theta, inputs, labels) -> [K]``, loss ``k`` depending only on
        sample ``k``.
      theta: model parameters (a pytree).
      v: a pytree shaped like ``theta``.
      inputs, labels: the rendered batch (pytrees with leading axis ``K``).
      method: ``"jvp"`` (one forward-mode pass; no ``K x n`` buffer) or ``"per_sample"``
        (the ``K x n`` per-sample gradients, contracted with ``v``).
      chunk_size: ``None`` (default: all ``K`` samples in one pass) or a positive int: the
        samples go through ``method`` that many at a time, in a sequential ``jax.lax.map``, so
        the temporary memory is that of a batch of ``chunk_size`` whatever ``K`` (the jvp's
        activations and tangents grow as ``K x`` the network's width; the per-sample method's
        gradients as ``K x n``). Same result up to float rounding; slower when one pass over
        ``K`` would have fitted (the chunks run one after the other). A chunk of ``K`` or more
        is one pass. Static: a Python int, not a traced value.

    Returns:
      ``[K]`` directional derivatives.

    Raises:
      ValueError: unknown method, bad ``chunk_size``, ``v`` not shaped like ``theta``, or the
        loss not ``[K]``.

    References:
      Paper Eq. 11 and Algorithm 1: ``[d l(r(s_k), theta) / d theta]^T v``.

    Example:
      >>> loss = lambda th, x, y: (th * x - y) ** 2
      >>> x = jnp.array([1.0, 2.0]); y = jnp.zeros(2)
      >>> directional_derivatives(loss, jnp.float32(1.0), jnp.float32(1.0), x, y)
      Array([2., 8.], dtype=float32)
      >>> x = jnp.arange(5.0); y = jnp.zeros(5)  # 5 samples, 2 at a time: chunks 2, 2 and 1
      >>> directional_derivatives(loss, jnp.float32(1.0), jnp.float32(1.0), x, y, chunk_size=2)
      Array([ 0.,  2.,  8., 18., 32.], dtype=float32)
    """
    if method not in METHODS:
        raise ValueError(_UNKNOWN_METHOD.format(method=method, choices=METHODS))
    _check_chunk_size(chunk_size)
    v = _check_tangent(theta, v)
    sizes = _leading_sizes((inputs, labels))
    if len(sizes) != 1 or None in sizes:
        raise ValueError(
            "inputs and labels must share one leading axis K, got leading sizes "
            f"{sorted(sizes, key=str)}."
        )
    (k,) = sizes
    out = jax.eval_shape(per_sample_loss_fn, theta, inputs, labels)
    if out.shape != (k,):
        raise ValueError(
            f"per_sample_loss_fn returned shape {out.shape}; expected ({k},), one loss per sample."
        )

    if chunk_size is not None and chunk_size < k:
        one_pass = functools.partial(_directional_derivatives, per_sample_loss_fn, theta, v, method)
        return _map_over_chunks(one_pass, inputs, labels, k, chunk_size)
    return _directional_derivatives(per_sample_loss_fn, theta, v, method, inputs, labels)


def _directional_derivatives(per_sample_loss_fn, theta, v, method, inputs, labels) -> jax.Array:
    """One pass of :func:`directional_derivatives` over a whole (already checked) batch."""
    if method == "jvp":
        _, c = jax.jvp(lambda th: per_sample_loss_fn(th, inputs, labels), (theta,), (v,))
        return c

    def one_loss(th, x, y):
        one = jax.tree.map(lambda a: a[None], (x, y))
        return per_sample_loss_fn(th, *one)[0]

    grads = jax.vmap(jax.grad(one_loss), in_axes=(None, 0, 0))(
        theta, inputs, labels
    )  # leaves (K, *leaf)
    contract = lambda g, vv: jnp.tensordot(g, vv, axes=vv.ndim) if vv.ndim else g * vv
    return sum(jax.tree.leaves(jax.tree.map(contract, grads, v)))


def score_function_term(
    log_prob_fn: Callable[[PyTree, Any], jax.Array],
    psi: PyTree,
    scenes: Any,
    per_sample_loss_fn: Callable[..., jax.Array],
    theta: PyTree,
    v: PyTree,
    inputs: Any,
    labels: Any,
    *,
    method: str = "jvp",
    baseline: str | None | jax.Array = "leave_one_out",
    chunk_size: int | None = None,
    return_stderr: bool = False,
) -> PyTree | tuple[PyTree, PyTree]:
    """Estimate of ``d/dpsi E_{s ~ q_psi}[d l(r(s), theta) / d theta] . v``.

    .. math:: \\frac{1}{K} \\sum_k \\nabla_\\psi \\log q_\\psi(s_k)
              \\Big(\\frac{\\partial l_k(\\theta)}{\\partial \\theta} \\cdot v - b_k\\Big)

    i.e. :func:`reinforce_gradient` with rewards :func:`directional_derivatives`.

    Args:
      log_prob_fn: ``(psi, scenes) -> [K]``, e.g. ``Distribution.log_prob``.
      psi: the distribution's parameters.
      scenes: the ``K`` scenes ``s_k`` drawn from ``q_psi``.
      per_sample_loss_fn: ``(theta, inputs, labels) -> [K]``.
      theta: model parameters at which the derivatives are taken (``theta_hat(psi_t)``).
      v: fixed pytree shaped like ``theta`` (e.g. ``(H + lambda I)^-1 g_val``, Eq. 13a).
      inputs, labels: the rendered batch ``r(s_k)``.
      method: ``"jvp"`` (default) or ``"per_sample"``; see :func:`directional_derivatives`.
      baseline: ``"leave_one_out"`` (default), ``None``, or an array; see
        :func:`apply_baseline`.
      chunk_size: ``None`` (default, one pass over the ``K`` samples) or a positive int: compute
        the ``c_k`` that many samples at a time, to bound the memory by the chunk rather than
        ``K``; see :func:`directional_derivatives`.
      return_stderr: also return each coordinate's standard error (:func:`reinforce_gradient`).

    Returns:
      A pytree like ``psi`` (with ``return_stderr``, the pair ``(estimate, standard_error)``).
      The outer update of Eq. 13b is ``psi + alpha * (this)`` with ``v`` the CG solution (the
      sign conventions of Table 1 are the caller's).

    Raises:
      ValueError: unknown method or baseline, bad ``chunk_size``, mismatched ``K`` between
        scenes and losses, or ``v`` not shaped like ``theta``.

    References:
      Paper Eq. 11-13b and Algorithm 1 ("compute gradient of expectation").

    Example:
      >>> from autosim_jax.distributions import gaussian
      >>> q = gaussian()
      >>> s = q.sample(jax.random.key(0), q.init(), 1000)
      >>> loss = lambda theta, x, y: 0.5 * (theta * x - y) ** 2  # [K] per-sample losses
      >>> one = jnp.float32(1.0)
      >>> g = score_function_term(q.log_prob, q.init(), s, loss, one, one, s, 0 * s)
      >>> g_chunked = score_function_term(q.log_prob, q.init(), s, loss, one, one, s, 0 * s,
      ...                                 chunk_size=256)  # 4 chunks: 256, 256, 256 and 232
      >>> bool(jnp.allclose(g.loc, g_chunked.loc, atol=1e-6))
      True
    """
    if method not in METHODS:
        raise ValueError(_UNKNOWN_METHOD.format(method=method, choices=METHODS))
    if isinstance(baseline, str) and baseline not in BASELINES:
        raise ValueError(_UNKNOWN_BASELINE.format(baseline=baseline, choices=BASELINES))
    c = directional_derivatives(
        per_sample_loss_fn, theta, v, inputs, labels, method=method, chunk_size=chunk_size
    )
    return reinforce_gradient(log_prob_fn, psi, scenes, jax.lax.stop_gradient(c), baseline=baseline,
                              return_stderr=return_stderr)
