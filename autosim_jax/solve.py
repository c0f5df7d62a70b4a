"""Damped linear solves ``(A + lambda I) x = b`` by conjugate gradient, with a report of how they went.

``jax.scipy.sparse.linalg.cg`` returns only ``x``: a solve that ran out of iterations, or
met negative curvature, looks exactly like a good one. :func:`solve_damped` runs the same
iteration (its arithmetic, under the same ``lax.custom_linear_solve``) and also records the
smallest curvature ``p^T (A + lambda I) p / p^T p`` along CG's search directions; it hands
back the true residual of the returned ``x``, a ``converged`` flag and an ``indefinite``
flag, so that a caller (the AutoSimulate step, a benchmark, a user) can see a bad ``v = (H +
lambda I)^-1 g_val`` instead of silently following it.
"""

from __future__ import annotations

import functools
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
_BAD_MATVEC = (
    "operator: the matvec must map a vector like b to a vector like b (v -> A v with A square), "
    "but {problem}. Check the matvec (for a dense matrix A of shape (n, n) and b of shape (n,): "
    "`lambda v: A @ v`)."
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
      indefinite: True when, for a nonzero ``b``, ``x^T (A + lambda I) x <= 0`` or CG met a
        search direction ``p`` with ``p^T (A + lambda I) p <= 0`` (``min_curvature <= 0``):
        then ``A + lambda I`` is certainly not positive definite, and CG's answer is no
        minimiser of Eq. 13a's quadratic (at best a saddle point of it): raise the damping.
        (A False flag does not prove definiteness: CG sees ``A`` only on the Krylov space of
        ``b``, and where that space holds no negative curvature the answer is the minimiser
        of the quadratic on it, which the residual then vouches for.)
      min_curvature: the smallest ``p^T (A + lambda I) p / p^T p`` over CG's search
        directions (``+inf`` when CG took no step). An upper bound on the smallest
        eigenvalue of ``A + lambda I``: a value ``<= 0`` proves the system indefinite, and
        the damping must grow by more than its magnitude.
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
    min_curvature: jax.Array


def _as_operator(operator: Any, b: PyTree) -> CurvatureOperator:
    if isinstance(operator, CurvatureOperator):
        return operator
    if isinstance(operator, (jax.Array, np.ndarray, float, int)) or not callable(operator):
        raise ValueError(_NOT_AN_OPERATOR.format(kind=type(operator).__name__))
    return CurvatureOperator.from_matvec(operator, b)


def _describe(tree: PyTree) -> str:
    leaves = jax.tree.leaves(tree)
    if len(leaves) == 1 and jax.tree.structure(tree).num_nodes == 1:
        return f"shape {tuple(leaves[0].shape)} and dtype {leaves[0].dtype}"
    return f"{jax.tree.structure(tree)} with shapes {[tuple(x.shape) for x in leaves]}"


def _check_matvec(op: CurvatureOperator, b: PyTree) -> None:
    """Traces the matvec once on a vector like ``b``: it must return the same structure,
    shapes and dtypes (else CG fails inside its loop with a broadcasting or carry-type error)."""
    like = jax.tree.map(lambda x: jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x)), b)
    try:
        out = jax.eval_shape(op.undamped_matvec, like)
    except (TypeError, ValueError) as err:
        raise ValueError(_BAD_MATVEC.format(problem=f"on a vector like b ({_describe(like)}) it raised "
                                                    f"{type(err).__name__}: {err}")) from err
    if jax.tree.structure(out) != jax.tree.structure(like):
        raise ValueError(_BAD_MATVEC.format(problem=f"for b of {_describe(like)} it returned {_describe(out)}"))
    for (path, want), got in zip(jax.tree_util.tree_flatten_with_path(like)[0], jax.tree.leaves(out)):
        if tuple(got.shape) != tuple(want.shape) or got.dtype != want.dtype:
            where = f"b{jax.tree_util.keystr(path)}" if path else "b"
            raise ValueError(_BAD_MATVEC.format(
                problem=f"for {where} of shape {tuple(want.shape)} and dtype {want.dtype} it returned shape "
                        f"{tuple(got.shape)} and dtype {got.dtype}"))


def _vdot(x: PyTree, y: PyTree) -> jax.Array:
    """``jax.scipy.sparse.linalg``'s tree inner product (real, HIGHEST precision)."""
    return sum(jax.tree.leaves(jax.tree.map(functools.partial(jnp.vdot, precision=jax.lax.Precision.HIGHEST),
                                            x, y)))


def _cg(matvec, b, x0, *, tol, atol, maxiter, M):
    """``jax.scipy.sparse.linalg.cg``'s preconditioned CG (the same arithmetic, step for step),
    also returning ``min_k p_k^T A p_k / p_k^T p_k`` over its search directions."""
    bs = _vdot(b, b)
    atol2 = jnp.maximum(jnp.square(tol) * bs, jnp.square(atol))

    def cond_fun(value):
        _, r, gamma, _, k, _ = value
        rs = gamma if M is None else _vdot(r, r)
        return (rs > atol2) & (k < maxiter)

    def body_fun(value):
        x, r, gamma, p, k, min_curv = value
        ap = matvec(p)
        pap = _vdot(p, ap).astype(dtype)
        alpha = gamma / pap
        x_ = jax.tree.map(lambda a, q: a + alpha * q, x, p)
        r_ = jax.tree.map(lambda a, q: a - alpha * q, r, ap)
        z_ = r_ if M is None else M(r_)
        gamma_ = _vdot(r_, z_).astype(dtype)
        beta_ = gamma_ / gamma
        p_ = jax.tree.map(lambda a, q: a + beta_ * q, z_, p)
        min_curv = jnp.minimum(min_curv, pap / _vdot(p, p).astype(dtype))
        return x_, r_, gamma_, p_, k + 1, min_curv

    r0 = jax.tree.map(jnp.subtract, b, matvec(x0))
    p0 = z0 = r0 if M is None else M(r0)
    dtype = jnp.result_type(*jax.tree.leaves(p0))
    gamma0 = _vdot(r0, z0).astype(dtype)
    init = (x0, r0, gamma0, p0, 0, jnp.asarray(jnp.inf, dtype))
    x, *_, min_curv = jax.lax.while_loop(cond_fun, body_fun, init)
    return x, min_curv


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
        structure or shapes differ from the operator's domain, a non-finite ``b``, an
        ``operator`` that is a raw array instead of a matvec, or a matvec that does not
        return a vector like ``b`` (structure, shapes and dtypes; checked by tracing it once).

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
    _check_matvec(op, b)
    _check_finite(b, "b")
    if x0 is not None:
        check_like(op.domain, x0, "x0")
    if tol < 0 or atol < 0:
        raise ValueError(f"tol and atol must be >= 0, got tol={tol}, atol={atol}.")
    if maxiter is not None and not isinstance(maxiter, jax.core.Tracer) and maxiter < 1:
        raise ValueError(f"maxiter must be a positive number of iterations, got {maxiter}.")
    op = op.damped(damping) if not _is_zero(damping) else op

    if x0 is None:
        x0 = jax.tree.map(jnp.zeros_like, b)
    if maxiter is None:
        maxiter = 10 * sum(jnp.size(leaf) for leaf in jax.tree.leaves(b))  # JAX's (and SciPy's) default
    solve = functools.partial(_cg, x0=x0, tol=tol, atol=atol, maxiter=maxiter, M=preconditioner)
    # As in jax.scipy.sparse.linalg.cg: derivatives by implicit differentiation (another solve).
    x, min_curvature = jax.lax.custom_linear_solve(op.matvec, b, solve, transpose_solve=solve, symmetric=True,
                                                   has_aux=True)

    # One extra product gives the true residual: CG's own recursive residual drifts in
    # floating point and is not returned by JAX anyway.
    ax = op.matvec(x)
    residual_norm = optax.tree.norm(optax.tree.sub(b, ax))
    b_norm = optax.tree.norm(b)
    relative = jnp.where(b_norm > 0, residual_norm / jnp.where(b_norm > 0, b_norm, 1.0), residual_norm)
    damping_ok = jnp.logical_and(jnp.isfinite(op.damping), jnp.asarray(op.damping) >= 0)
    # x^T (A + lambda I) x > 0 for any x != 0 when the system is positive definite.
    xax = optax.tree.vdot(x, ax)
    indefinite = (b_norm > 0) & (~(xax > 0) | (min_curvature <= 0))
    small = residual_norm <= jnp.maximum(tol * b_norm, atol)
    converged = damping_ok & jnp.isfinite(residual_norm) & small & ~indefinite
    return SolveResult(x, residual_norm, relative, converged, indefinite, 0.5 * xax - optax.tree.vdot(b, x),
                       min_curvature)


def _is_zero(damping: Any) -> bool:
    return isinstance(damping, (int, float)) and damping == 0
