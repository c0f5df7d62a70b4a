r"""Table 1 of the paper as named functions: which curvature, which approximation vector.

AutoSimulate's four approximations differ only in the vector ``u`` that the score-function
term carries to ``psi`` (``dL~/dpsi = -S(u)``, see :mod:`autosim_jax.autosimulate` for the
signs):

========================  =========================================  =====================
approximation             ``u``                                      local model
========================  =========================================  =====================
``exact_quadratic``       ``(H + lambda I)^-1 g_val`` by CG (Eq. 13a)  Newton step
``approx_quadratic``      ``H g_val``                                 quadratic, no solve
``linear``                ``g_val``                                   one gradient step
``no_val``                (REINFORCE on the training loss)           no validation
========================  =========================================  =====================

``H`` is one of three curvature operators (:func:`curvature_operator`): the Hessian of the
training loss (the paper's), the generalised Gauss-Newton matrix (PSD) or the empirical
Fisher. Both functions are pure and jit-able and know nothing of simulators.

Example:
  >>> import jax.numpy as jnp
  >>> predict = lambda w, x: x @ w
  >>> loss = lambda out, y: 0.5 * (out - y) ** 2          # per-sample loss of the outputs
  >>> x, y, w = jnp.eye(2), jnp.ones(2), jnp.zeros(2)
  >>> u, report = approximation_vector(
  ...     "exact_quadratic", jnp.array([1.0, 2.0]),
  ...     lambda: curvature_operator("gauss_newton", predict, loss, w, x, y),
  ...     damping=0.5, cg_tol=1e-6, cg_maxiter=5)
  >>> u, bool(report.converged)                           # (0.5 I + 0.5 I)^-1 g
  (Array([1., 2.], dtype=float32), True)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from .config import APPROXIMATIONS, CURVATURES
from .curvature import CurvatureOperator, empirical_fisher_operator, gauss_newton_operator, hessian_operator
from .solve import solve_damped

PyTree = Any


class SolveReport(NamedTuple):
    """How the approximation vector was obtained (all scalars; trivial when there is no solve)."""

    relative_residual: jax.Array  # f32[]: ||g - (H + lambda I) u|| / ||g||; 0 without a solve
    converged: jax.Array  # bool[]: the residual met cg_tol, the system showed no negative curvature
    indefinite: jax.Array  # bool[]: u^T (H + lambda I) u <= 0 or a CG direction with p^T (H + lambda I) p <= 0
    model_value: jax.Array  # f32[]: q(u) = u^T (H + lambda I) u / 2 - g^T u; < 0 beats u = 0
    min_curvature: jax.Array  # f32[]: min p^T (H + lambda I) p / p^T p over CG's directions; inf without a solve

    @classmethod
    def no_solve(cls) -> SolveReport:
        return cls(jnp.float32(0), jnp.bool_(True), jnp.bool_(False), jnp.float32(0), jnp.float32(jnp.inf))

    @classmethod
    def of_solve(cls, sol) -> SolveReport:
        """The report of a :class:`~autosim_jax.solve.SolveResult`."""
        return cls(sol.relative_residual, sol.converged, sol.indefinite, sol.model_value, sol.min_curvature)

    def and_(self, other: SolveReport) -> SolveReport:
        """Two solves that one vector needs: usable and converged only if both are (the worse
        residual, model value and curvature of the two)."""
        return SolveReport(jnp.maximum(self.relative_residual, other.relative_residual),
                           self.converged & other.converged, self.indefinite | other.indefinite,
                           jnp.maximum(self.model_value, other.model_value),
                           jnp.minimum(self.min_curvature, other.min_curvature))

    @property
    def usable(self) -> jax.Array:
        """True unless the vector is non-finite or no better than zero (``q(u) >= 0``)."""
        finite = jnp.isfinite(self.relative_residual) & jnp.isfinite(self.model_value)
        no_solve = self.relative_residual == 0
        return finite & ((self.model_value < 0) | no_solve)


def curvature_operator(
    kind: str,
    predict: Callable[[PyTree, Any], jax.Array],
    output_loss: Callable[[jax.Array, Any], jax.Array],
    theta: PyTree,
    inputs: Any,
    labels: Any,
) -> CurvatureOperator:
    """The curvature of the mean training loss at ``theta`` named by ``kind``.

    Args:
      kind: ``"hessian"``, ``"gauss_newton"`` or ``"empirical_fisher"``.
      predict: ``(theta, inputs) -> outputs``.
      output_loss: ``(outputs, labels) -> [N]`` per-sample loss of the outputs.
      theta: the point (``theta_hat(psi_t)``).
      inputs, labels: the rendered batch (or a curvature sub-batch of it).

    Returns:
      A :class:`~autosim_jax.CurvatureOperator` of the mean loss over the batch.

    Raises:
      ValueError: for an unknown ``kind``.

    References:
      Paper Eq. 13a and Section 4.2 (``H``); Martens (2010) for Gauss-Newton.
    """
    if kind not in CURVATURES:
        raise ValueError(f"Unknown curvature {kind!r}; valid choices are {list(CURVATURES)}.")

    def per_sample(t, x, y):
        return output_loss(predict(t, x), y)

    if kind == "hessian":
        return hessian_operator(lambda t, x, y: jnp.mean(per_sample(t, x, y)), theta, inputs, labels)
    if kind == "empirical_fisher":
        return empirical_fisher_operator(per_sample, theta, inputs, labels)
    return gauss_newton_operator(predict, lambda out, y: jnp.mean(output_loss(out, y)), theta, inputs, labels)


def approximation_vector(
    kind: str,
    g_val: PyTree,
    make_operator: Callable[[], CurvatureOperator],
    *,
    damping: float,
    cg_tol: float,
    cg_maxiter: int,
) -> tuple[PyTree, SolveReport]:
    """The vector ``u`` of Table 1's row ``kind`` and a report of how it was obtained.

    Args:
      kind: ``"exact_quadratic"``, ``"approx_quadratic"`` or ``"linear"`` (``"no_val"`` has
        no vector: it does not use ``g_val``).
      g_val: gradient of the validation loss at ``theta_hat``.
      make_operator: ``() -> CurvatureOperator`` (called only by the quadratic rows).
      damping, cg_tol, cg_maxiter: Eq. 13a's ``lambda`` and the CG's stopping rule.

    Returns:
      ``(u, SolveReport)``.

    Raises:
      ValueError: for an unknown ``kind`` or ``"no_val"``.

    References:
      Paper Table 1 and Eq. 13a.
    """
    if kind not in APPROXIMATIONS or kind == "no_val":
        valid = [a for a in APPROXIMATIONS if a != "no_val"]
        raise ValueError(f"approximation_vector: kind must be one of {valid}, got {kind!r}.")
    if kind == "linear":
        return g_val, SolveReport.no_solve()
    op = make_operator()
    if kind == "approx_quadratic":
        return op.matvec(g_val), SolveReport.no_solve()
    sol = solve_damped(op, g_val, damping, tol=cg_tol, maxiter=cg_maxiter)
    return sol.x, SolveReport.of_solve(sol)
