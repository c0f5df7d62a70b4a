"""Damped linear solves ``(A + lambda I) x = b`` by conjugate gradient, with a report of how they went.

``jax.scipy.sparse.linalg.cg`` returns only ``x``: a solve that ran out of iterations, or
met negative curvature, looks exactly like a good one. :func:`solve_damped` wraps it and
hands back the true residual of the returned ``x``, a ``converged`` flag and an
``indefinite`` flag, so that a caller (the AutoSimulate step, a benchmark, a user) can see a
bad ``v = (H + lambda I)^-1 g_val`` instead of silently following it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .curvature import CurvatureOperator, check_damping, check_like

PyTree = Any

_NOT_AN_OPERATOR = (
    "operator must be a CurvatureOperator (e.g. from hessian_operator or "
    "gauss_newton_operator) or a callable matvec v -> A v over pytrees; got {kind}. "
    "To solve with a dense matrix A, pass `lambda v: A @ v`."
)


class SolveResult(NamedTuple):
    """What :func:`solve_damped` found.

    Attributes:
      x: the solution, a pytree like ``b``.
      residual_norm: ``||b - (A + lambda I) x||``, recomputed from ``x`` (scalar).
      relative_residual: ``residual_norm / ||b||`` (scalar; 0 when ``b`` is 0).
      converged: True when ``x`` is finite, the damping is valid, no negative curvature was
        detected (see ``indefinite``) and ``residual_norm <= max(tol * ||b||, atol)``: the
        stopping rule of the CG itself, checked on the true residual rather than CG's
        recursive estimate (so in float32 do not ask for a relative ``tol`` much below
        ``1e-5``).
      indefinite: True when ``x^T (A + lambda I) x <= 0`` for a nonzero ``b``: then ``A +
        lambda I`` is certainly not positive definite, and CG's answer is no minimiser of
        Eq. 13a's quadratic: raise the damping. (A False flag does not prove definiteness:
        on an indefinite system CG may still converge to the exact solution of the linear
        system, which the residual then vouches for.)
      model_value: ``q(x) = x^T (A + lambda I) x / 2 - b^T x``, the quadratic that CG
        minimises; ``q(0) = 0``, so ``q(x) < 0`` means ``x`` is better than returning zero in
        the energy norm even when the residual is large (CG from zero on a positive definite
        system always achieves it; a truncated solve is then a regularised one, not a wrong
        one).
    """

    x: PyTree
    residual_norm: jax.Array
    relative_residual: jax.Array
    converged: jax.Array
    indefinite: jax.Array
    model_value: jax.Array


def _as_operator(operator: Any, b: PyTree) -> CurvatureOperator:
    if isinstance(operator, CurvatureOperator):
        return operator
    if isinstance(operator, (jax.Array, np.ndarray, float, int)) or not callable(operator):
        raise ValueError(_NOT_AN_OPERATOR.format(kind=type(operator).__name__))
    return CurvatureOperator.from_matvec(operator, b)


def _check_finite(tree: PyTree, name: str) -> None:
    """Raises for a concrete tree with non-finite entries; traced trees are left to the flags."""
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if isinstance(leaf, jax.core.Tracer):
            continue
        # numpy, not jnp: inside a jit trace even a concrete constant's jnp ops are staged.
        if not np.all(np.isfinite(np.asarray(leaf))):
            raise ValueError(
                f"{name}{jax.tree_util.keystr(path)} has non-finite entries (nan or inf); "
                f"check the loss or gradient that produced it."
            )


def solve_damped(
    operator: CurvatureOperator | Callable[[PyTree], PyTree],
    b: PyTree,
    damping: Any = 0.0,
    *,
    tol: float = 1e-5,
    atol: float = 0.0,
    maxiter: int | None = None,
    x0: PyTree | None = None,
    preconditioner: Callable[[PyTree], PyTree] | None = None,
) -> SolveResult:
    r"""Solves ``(A + damping I) x = b`` by conjugate gradient (``jax.scipy.sparse.linalg.cg``).

    .. math:: x = \arg\min_x \tfrac12 x^\top (A + \lambda I) x - b^\top x

    This is Eq. 13a of AutoSimulate with ``A = H`` (or the Gauss-Newton matrix) and ``b =
    g_val``. ``A`` must be symmetric; CG needs ``A + lambda I`` positive definite, which
    Levenberg damping (Section 4.2) provides for large enough ``lambda``.

    Works under ``jax.jit`` and ``jax.vmap`` (e.g. over several right-hand sides or
    dampings). Concrete bad inputs raise at once; traced ones cannot be inspected, and come
    back with ``converged=False`` instead.

    Args:
      operator: a :class:`~autosim_jax.CurvatureOperator` (its own damping is kept and
        ``damping`` is added) or a callable ``v -> A v`` over pytrees like ``b``.
      b: right-hand side, a pytree.
      damping: ``lambda >= 0``.
      tol, atol: stop when ``||r|| <= max(tol * ||b||, atol)``.
      maxiter: maximum number of CG iterations (each one product with ``A``); ``None`` uses
        JAX's default of ``10 * size``, far too many for a network: set it. It may be traced
        (one compilation serves every iteration count).
      x0: initial guess (zeros by default); warm-starting from the previous solve helps.
      preconditioner: a callable ``r -> M r`` approximating ``(A + lambda I)^{-1}``, e.g.
        from :func:`~autosim_jax.hutchinson_diagonal`.

    Returns:
      A :class:`SolveResult`.

    Raises:
      ValueError: for a negative or non-finite ``damping``, a ``b`` or ``x0`` whose
        structure or shapes differ from the operator's domain, a non-finite ``b``, or an
        ``operator`` that is a raw array instead of a matvec.

    References:
      Behl et al., AutoSimulate (ECCV 2020), Eq. 13a and Section 4.2.

    Example:
      >>> import jax.numpy as jnp
      >>> A = jnp.array([[2.0, 0.0], [0.0, 4.0]])
      >>> result = solve_damped(lambda v: A @ v, jnp.array([3.0, 5.0]), damping=1.0)
      >>> result.x.round(4), bool(result.converged)
      (Array([1., 1.], dtype=float32), True)
    """
    op = _as_operator(operator, b)
    check_damping(damping)
    check_like(op.domain, b, "b")
    _check_finite(b, "b")
    if x0 is not None:
        check_like(op.domain, x0, "x0")
    if tol < 0 or atol < 0:
        raise ValueError(f"tol and atol must be >= 0, got tol={tol}, atol={atol}.")
    if maxiter is not None and not isinstance(maxiter, jax.core.Tracer) and maxiter < 1:
        raise ValueError(f"maxiter must be a positive number of iterations, got {maxiter}.")
    op = op.damped(damping) if not _is_zero(damping) else op

    x, _ = jax.scipy.sparse.linalg.cg(op.matvec, b, x0=x0, tol=tol, atol=atol, maxiter=maxiter, M=preconditioner)

    # One extra product gives the true residual: CG's own recursive residual drifts in
    # floating point and is not returned by JAX anyway.
    ax = op.matvec(x)
    residual_norm = optax.tree.norm(optax.tree.sub(b, ax))
    b_norm = optax.tree.norm(b)
    relative = jnp.where(b_norm > 0, residual_norm / jnp.where(b_norm > 0, b_norm, 1.0), residual_norm)
    damping_ok = jnp.logical_and(jnp.isfinite(op.damping), jnp.asarray(op.damping) >= 0)
    # x^T (A + lambda I) x > 0 for any x != 0 when the system is positive definite.
    xax = optax.tree.vdot(x, ax)
    indefinite = (b_norm > 0) & ~(xax > 0)
    small = residual_norm <= jnp.maximum(tol * b_norm, atol)
    converged = damping_ok & jnp.isfinite(residual_norm) & small & ~indefinite
    return SolveResult(x, residual_norm, relative, converged, indefinite, 0.5 * xax - optax.tree.vdot(b, x))


def _is_zero(damping: Any) -> bool:
    return isinstance(damping, (int, float)) and damping == 0
