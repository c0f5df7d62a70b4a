"""Curvature of the training loss as pytree linear operators (paper Section 4.2).

AutoSimulate needs ``v = (H + lambda I)^-1 g_val`` (Eq. 13a), where ``H`` is the Hessian of the
training loss at the fine-tuned parameters. Conjugate gradient only touches ``H`` through
matrix-vector products, so this module provides:

* :func:`hvp`: one Hessian-vector product, in forward-over-reverse, reverse-over-reverse or
  reverse-over-forward mode;
* :func:`hessian_operator`: ``H`` as a :class:`CurvatureOperator` whose product reuses a
  single ``jax.linearize`` of the gradient, so the primal forward and backward passes are
  paid once per solve, not once per CG iteration;
* :func:`gauss_newton_operator`: the generalised Gauss-Newton ``J^T H_out J``, positive
  semi-definite for convex output losses, built from one linearisation of the network and
  its transpose;
* :func:`empirical_fisher_operator`: the empirical Fisher ``(1/N) sum_i g_i g_i^T`` of the
  per-example gradients, positive semi-definite for any loss, from one linearisation of the
  per-example losses;
* :func:`hutchinson_diagonal`: a stochastic estimate of an operator's diagonal, for a
  Jacobi preconditioner.

Everything works on parameter pytrees (no flattening on the hot path) and is meant to be
called inside ``jax.jit``. Curvature code sees only ``loss_fn(params, *args) -> scalar``; it
knows nothing of simulators.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, Literal

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

PyTree = Any
HVP_MODES = ("fwd_rev", "rev_rev", "rev_fwd")


def check_like(primal: PyTree, tangent: PyTree, name: str) -> None:
    """Raises a ValueError when ``tangent`` does not match the structure and shapes of ``primal``."""
    p_def, t_def = jax.tree.structure(primal), jax.tree.structure(tangent)
    if p_def != t_def:
        raise ValueError(
            f"{name} must have the same tree structure as the parameters.\n"
            f"  parameters: {p_def}\n  {name}: {t_def}\n"
            f"Build it with jax.tree.map over the parameters (e.g. optax.tree.zeros_like(params))."
        )
    for (path, p), t in zip(jax.tree_util.tree_flatten_with_path(primal)[0], jax.tree.leaves(tangent)):
        if _shape(p) != _shape(t):
            raise ValueError(
                f"{name} leaf {jax.tree_util.keystr(path)} has shape {_shape(t)}, "
                f"but the parameter has shape {_shape(p)}."
            )


def _shape(x: Any) -> tuple[int, ...]:
    """Shape of an array, a scalar or a ``jax.ShapeDtypeStruct``."""
    return tuple(x.shape) if hasattr(x, "shape") else jnp.shape(x)


def hvp(
    loss_fn: Callable[..., jax.Array],
    params: PyTree,
    v: PyTree,
    *args: Any,
    mode: Literal["fwd_rev", "rev_rev", "rev_fwd"] = "fwd_rev",
) -> PyTree:
    r"""Hessian-vector product ``H v`` of ``loss_fn(params, *args)`` with respect to ``params``.

    .. math:: H v = \nabla^2_\theta \ell(\theta)\, v

    Modes (all exact; they differ in cost and memory):

    * ``"fwd_rev"``: ``jax.jvp`` of ``jax.grad`` (forward-over-reverse). Usually the fastest:
      one forward and one backward pass carrying a tangent.
    * ``"rev_rev"``: ``jax.grad`` of ``<grad, v>`` (reverse-over-reverse, the "Pearlmutter by
      double backward" of other frameworks).
    * ``"rev_fwd"``: ``jax.grad`` of the directional derivative ``jax.jvp(loss, v)``.

    Args:
      loss_fn: ``loss_fn(params, *args) -> scalar``.
      params: the point at which the Hessian is taken (any pytree of arrays).
      v: a pytree with the structure and shapes of ``params``.
      *args: further arguments of ``loss_fn`` (data); they are not differentiated.
      mode: one of ``"fwd_rev"``, ``"rev_rev"``, ``"rev_fwd"``.

    Returns:
      ``H v``, a pytree like ``params``.

    Performance: for convolutional nets at float32 ``"highest"`` precision on an NVIDIA GPU,
    compile with ``jax.jit(..., compiler_options={"xla_gpu_force_conv_nchw": True})``. On an
    H200 this removed cuDNN's layout conversions and made the HVP 0.81-0.87x the time of
    PyTorch's ``torch.compile``d one (without it: 1.01x). Not at the default precision,
    where it is ~1.5x slower (``benchmarks/curvature_depth.py``, ``benchmarks/hvp_kernels.py``).

    References:
      Behl et al., AutoSimulate (ECCV 2020), Section 4.2, the products inside CG for Eq. 13a.

    Example:
      >>> import jax.numpy as jnp
      >>> loss = lambda w, x: jnp.sum((x @ w) ** 2)
      >>> hvp(loss, jnp.ones(2), jnp.array([1.0, 0.0]), jnp.eye(2))
      Array([2., 0.], dtype=float32)
    """
    if mode not in HVP_MODES:
        raise ValueError(f"Unknown hvp mode {mode!r}; choose one of {HVP_MODES}.")
    check_like(params, v, "v")
    f = lambda p: loss_fn(p, *args)  # noqa: E731  (differentiate params only)
    if mode == "fwd_rev":
        return jax.jvp(jax.grad(f), (params,), (v,))[1]
    if mode == "rev_rev":
        return jax.grad(lambda p: optax.tree.vdot(jax.grad(f)(p), v))(params)
    return jax.grad(lambda p: jax.jvp(f, (p,), (v,))[1])(params)


@dataclasses.dataclass(frozen=True)
class CurvatureOperator:
    """A symmetric linear operator on parameter pytrees, optionally damped: ``A + damping I``.

    Build one with :func:`hessian_operator` or :func:`gauss_newton_operator` (or wrap any
    symmetric matvec with :meth:`from_matvec`), inside the jitted function that uses it.

    Attributes:
      undamped_matvec: ``v -> A v`` on pytrees shaped like :attr:`domain`.
      domain: a pytree of ``jax.ShapeDtypeStruct`` describing the vectors it acts on.
      damping: ``lambda`` in ``A + lambda I`` (0 for the undamped operator).
      name: for messages and benchmark tables.

    Example:
      >>> import jax.numpy as jnp
      >>> op = CurvatureOperator.from_matvec(lambda v: 2.0 * v, jnp.zeros(3))
      >>> op.damped(1.0).matvec(jnp.ones(3))
      Array([3., 3., 3.], dtype=float32)
    """

    undamped_matvec: Callable[[PyTree], PyTree]
    domain: PyTree
    damping: Any = 0.0
    name: str = "operator"

    @classmethod
    def from_matvec(cls, matvec: Callable[[PyTree], PyTree], like: PyTree, name: str = "operator") -> CurvatureOperator:
        """Wraps a symmetric ``matvec`` acting on pytrees shaped like ``like``."""
        if not callable(matvec):
            raise ValueError(f"matvec must be callable, got {type(matvec).__name__}.")
        return cls(matvec, _domain(like), 0.0, name)

    def matvec(self, v: PyTree) -> PyTree:
        """``(A + damping I) v``."""
        av = self.undamped_matvec(v)
        if isinstance(self.damping, (int, float)) and self.damping == 0:
            return av
        return optax.tree.add_scale(av, self.damping, v)

    def damped(self, damping: Any) -> CurvatureOperator:
        """The operator ``A + (self.damping + damping) I`` (Levenberg damping, paper Section 4.2).

        Raises:
          ValueError: when a concrete ``damping`` is negative or not finite.
        """
        check_damping(damping)
        return dataclasses.replace(self, damping=self.damping + damping)

    def stored_bytes(self) -> int | None:
        """Bytes of the arrays that the operator keeps alive between products.

        For the operators built here this is the memory of their linearisation residuals:
        what a linearised operator trades for not recomputing the forward and backward
        passes. ``None`` for a plain matvec closure, whose captured arrays are invisible.
        Works under ``jit`` (only shapes and dtypes are read).
        """
        if not isinstance(self.undamped_matvec, jax.tree_util.Partial):
            return None
        return sum(math.prod(x.shape) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(self.undamped_matvec))

    def as_dense(self) -> jax.Array:
        """The operator as an ``(n, n)`` matrix in ``jax.flatten_util.ravel_pytree`` order.

        Builds one column per parameter through the matvec (vmapped): for small problems and
        tests only.
        """
        zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), self.domain)
        flat, unravel = ravel_pytree(zeros)
        columns = jax.vmap(lambda e: ravel_pytree(self.matvec(unravel(e)))[0])(jnp.eye(flat.size, dtype=flat.dtype))
        return columns.T


def check_damping(damping: Any) -> None:
    """Raises ``ValueError`` for a concrete damping that is negative or not finite.

    A traced damping (under ``jit``/``vmap``) cannot be checked at trace time; the solvers
    report such a solve as not converged instead.
    """
    if isinstance(damping, jax.core.Tracer):
        return
    try:
        value = float(damping)
    except TypeError as e:
        raise ValueError(f"damping must be a scalar, got {damping!r}.") from e
    if not (value >= 0 and value < float("inf")):
        raise ValueError(
            f"damping must be finite and >= 0, got {damping!r}. Use a small positive value "
            "(e.g. 1e-3 times the gradient scale) to make an indefinite Hessian positive definite."
        )


def _domain(params: PyTree) -> PyTree:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x)), params)


def hessian_operator(loss_fn: Callable[..., jax.Array], params: PyTree, *args: Any) -> CurvatureOperator:
    r"""The Hessian of ``loss_fn(params, *args)`` as a linear operator.

    The gradient map ``theta -> grad loss(theta)`` is linearised once with ``jax.linearize``
    at ``params``; every :meth:`CurvatureOperator.matvec` then evaluates only that linear map
    (forward-over-reverse without redoing the primal forward and backward passes), so a CG
    solve of ``k`` iterations costs one gradient plus ``k`` tangent passes. The price is
    memory: the residuals of the linearisation are kept alive for the operator's lifetime
    (reported by ``benchmarks/curvature_depth.py``).

    Args:
      loss_fn: ``loss_fn(params, *args) -> scalar``.
      params: the point at which the Hessian is taken.
      *args: data passed to ``loss_fn``; pass a sub-batch here for Hessian-free practice
        (curvature on a subset of the batch, Martens 2010), which cuts each product's cost
        in proportion.

    Returns:
      A :class:`CurvatureOperator` for ``H`` (symmetric, possibly indefinite).

    References:
      Behl et al., AutoSimulate (ECCV 2020), Eq. 13a and Section 4.2.

    Example:
      >>> import jax.numpy as jnp
      >>> loss = lambda w: 0.5 * jnp.sum(jnp.array([1.0, 3.0]) * w**2)
      >>> hessian_operator(loss, jnp.zeros(2)).matvec(jnp.ones(2))
      Array([1., 3.], dtype=float32)
    """
    _, linear_hvp = jax.linearize(jax.grad(lambda p: loss_fn(p, *args)), params)
    return CurvatureOperator(linear_hvp, _domain(params), 0.0, "hessian")


def gauss_newton_operator(
    predict_fn: Callable[[PyTree, Any], PyTree],
    output_loss_fn: Callable[[PyTree, Any], jax.Array],
    params: PyTree,
    inputs: Any,
    targets: Any,
) -> CurvatureOperator:
    r"""The generalised Gauss-Newton matrix ``G = J^T H_out J`` as a linear operator.

    .. math:: G = J_\theta f(\theta, x)^\top\, \nabla^2_{f} L(f, y)\, J_\theta f(\theta, x)

    ``J`` is the Jacobian of ``predict_fn(params, inputs)`` with respect to ``params`` and
    ``H_out`` the Hessian of ``output_loss_fn(outputs, targets)`` with respect to the outputs.
    ``G`` drops the second-order terms of the network from the Hessian; it is positive
    semi-definite whenever ``output_loss_fn`` is convex in the outputs (squared error,
    softmax cross-entropy), so CG on ``G + lambda I`` never meets negative curvature.

    The network is linearised once (``jax.linearize``) and ``J^T`` is obtained by
    ``jax.linear_transpose`` of that linear map, so a product costs one tangent pass and
    one transposed pass, with no primal recomputation.

    Args:
      predict_fn: ``predict_fn(params, inputs) -> outputs`` (e.g. logits).
      output_loss_fn: ``output_loss_fn(outputs, targets) -> scalar``, the loss as a function
        of the outputs, averaged the same way as the training loss.
      params: the point of linearisation.
      inputs, targets: the data (pass a sub-batch for cheaper curvature).

    Returns:
      A :class:`CurvatureOperator` for ``G``.

    References:
      Schraudolph (2002); Martens (2010); used as the cheaper curvature for Eq. 13a.

    Example:
      >>> import jax.numpy as jnp
      >>> predict = lambda w, x: x @ w
      >>> mse = lambda out, y: 0.5 * jnp.sum((out - y) ** 2)
      >>> op = gauss_newton_operator(predict, mse, jnp.zeros(2), jnp.eye(2), jnp.ones(2))
      >>> op.matvec(jnp.array([1.0, 2.0]))
      Array([1., 2.], dtype=float32)
    """
    outputs, jvp_fn = jax.linearize(lambda p: predict_fn(p, inputs), params)
    vjp_fn = jax.linear_transpose(jvp_fn, params)
    _, out_hvp = jax.linearize(jax.grad(lambda o: output_loss_fn(o, targets)), outputs)
    # A Partial (a pytree of the three linear maps' residuals), so stored_bytes can see them.
    matvec = jax.tree_util.Partial(_gauss_newton_product, jvp_fn, vjp_fn, out_hvp)
    return CurvatureOperator(matvec, _domain(params), 0.0, "gauss_newton")


def _gauss_newton_product(jvp_fn, vjp_fn, out_hvp, v: PyTree) -> PyTree:
    """``J^T (H_out (J v))``."""
    (jtv,) = vjp_fn(out_hvp(jvp_fn(v)))
    return jtv


def empirical_fisher_operator(
    per_example_loss_fn: Callable[..., jax.Array], params: PyTree, *args: Any
) -> CurvatureOperator:
    r"""The empirical Fisher ``F = (1/N) sum_i g_i g_i^T`` as a linear operator.

    .. math:: F = \frac{1}{N} \sum_{i=1}^N \nabla_\theta \ell_i\, \nabla_\theta \ell_i^\top
       = \frac{1}{N} J^\top J, \qquad J = \partial_\theta\, [\ell_1, \dots, \ell_N]

    ``g_i`` is the gradient of example ``i``'s loss. ``F`` is positive semi-definite for any
    loss and needs no output-space Hessian, but it is only a proxy for the curvature: it
    matches the Gauss-Newton matrix when the model fits the labels' distribution and can
    differ widely elsewhere (Kunstner, Balles and Hennig, 2019). Prefer
    :func:`gauss_newton_operator` when the loss is a function of network outputs; this is the
    curvature for losses that are not (or when per-example gradients are what is at hand).

    The per-example losses are linearised once (``jax.linearize``) and ``J^T`` comes from
    ``jax.linear_transpose``, so a product ``F v = J^T (J v) / N`` costs one tangent pass and
    one transposed pass; the ``N x n`` matrix of per-example gradients is never built.

    Args:
      per_example_loss_fn: ``per_example_loss_fn(params, *args) -> [N]``, one loss per
        example (the training loss is their mean).
      params: the point of linearisation.
      *args: the data (pass a sub-batch for cheaper curvature).

    Returns:
      A :class:`CurvatureOperator` for ``F``.

    Raises:
      ValueError: when ``per_example_loss_fn`` does not return a 1-D array of losses.

    References:
      Martens (2020), "New insights and perspectives on the natural gradient method";
      Kunstner, Balles and Hennig (2019) on its limits.

    Example:
      >>> import jax.numpy as jnp
      >>> losses = lambda w, x: x @ w  # example i has gradient x[i]
      >>> op = empirical_fisher_operator(losses, jnp.zeros(2), jnp.array([[1.0, 0.0], [1.0, 2.0]]))
      >>> op.matvec(jnp.array([1.0, 0.0]))  # (x0 x0^T + x1 x1^T) v / 2
      Array([1., 1.], dtype=float32)
    """
    losses, jvp_fn = jax.linearize(lambda p: per_example_loss_fn(p, *args), params)
    if jnp.ndim(losses) != 1:
        raise ValueError(
            f"per_example_loss_fn must return one loss per example, a 1-D array; got shape "
            f"{jnp.shape(losses)}. Return the unreduced losses (no .mean()), flattened to [N]."
        )
    vjp_fn = jax.linear_transpose(jvp_fn, params)
    matvec = jax.tree_util.Partial(_empirical_fisher_product, jvp_fn, vjp_fn)
    return CurvatureOperator(matvec, _domain(params), 0.0, "empirical_fisher")


def _empirical_fisher_product(jvp_fn, vjp_fn, v: PyTree) -> PyTree:
    """``J^T (J v) / N``."""
    jv = jvp_fn(v)
    (jtjv,) = vjp_fn(jv / jv.shape[0])
    return jtjv


def hutchinson_diagonal(operator: CurvatureOperator, key: jax.Array, num_samples: int = 16) -> PyTree:
    r"""Hutchinson's estimate of the diagonal of ``operator``: ``E[z * (A z)]`` with Rademacher ``z``.

    Unbiased; the variance of entry ``i`` is ``sum_{j != i} A_ij^2 / num_samples``. Use it for
    a Jacobi preconditioner: ``lambda r: r / (diag + damping)`` (clip the estimate at a small
    positive floor first, as it can be negative for an indefinite ``A``).

    Args:
      operator: a :class:`CurvatureOperator` (its damping is included).
      key: PRNG key.
      num_samples: number of probe vectors (products of the operator).

    Returns:
      A pytree like the operator's domain.

    References:
      Hutchinson (1990); Bekas, Kokiopoulou and Saad (2007) for the diagonal.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> op = CurvatureOperator.from_matvec(lambda v: jnp.array([2.0, 5.0]) * v, jnp.zeros(2))
      >>> hutchinson_diagonal(op, jax.random.key(0), 4)
      Array([2., 5.], dtype=float32)
    """
    leaves, treedef = jax.tree.flatten(operator.domain)

    def probe(sample_key):
        ks = jax.random.split(sample_key, len(leaves))
        z = treedef.unflatten(
            [jax.random.rademacher(k, s.shape, s.dtype) for k, s in zip(ks, leaves)]
        )
        return jax.tree.map(jnp.multiply, z, operator.matvec(z))

    estimates = jax.lax.map(probe, jax.random.split(key, num_samples))
    return jax.tree.map(lambda e: jnp.mean(e, axis=0), estimates)
