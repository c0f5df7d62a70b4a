"""solve_damped against numpy.linalg.solve on problems of bounded condition number."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import autosim_jax as asj


def _spd(n, cond, seed=0, negative=0):
    """A symmetric matrix with eigenvalues log-spaced in [1, cond] (the last ``negative`` flipped)."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    eig = np.logspace(0, np.log10(cond), n)
    eig[:negative] *= -1
    return (q * eig) @ q.T


@pytest.mark.parametrize("cond", [1.0, 10.0, 1e3])
@pytest.mark.parametrize("damping", [0.0, 0.1, 5.0])
def test_matches_numpy_solve(x64, cond, damping):
    A = _spd(20, cond, seed=int(cond))
    b = np.random.default_rng(1).normal(size=20)
    res = asj.solve_damped(lambda v: jnp.asarray(A) @ v, jnp.asarray(b), damping, tol=1e-12, maxiter=200)
    expected = np.linalg.solve(A + damping * np.eye(20), b)
    np.testing.assert_allclose(res.x, expected, rtol=1e-9, atol=1e-11)
    assert bool(res.converged) and not bool(res.indefinite)
    assert float(res.relative_residual) <= 1e-12


def test_pytree_operator_and_preconditioner(x64):
    """A block-diagonal operator on a dict; a Jacobi preconditioner gives the same answer."""
    A1, A2 = _spd(5, 50.0, seed=2), _spd(3, 8.0, seed=3)
    b = {"w": jnp.arange(5.0), "b": jnp.ones(3)}
    op = asj.CurvatureOperator.from_matvec(lambda v: {"w": A1 @ v["w"], "b": A2 @ v["b"]}, b)
    precond = lambda r: {"w": r["w"] / np.diag(A1), "b": r["b"] / np.diag(A2)}  # noqa: E731
    res = asj.solve_damped(op, b, 0.5, tol=1e-12, maxiter=100, preconditioner=precond)
    np.testing.assert_allclose(res.x["w"], np.linalg.solve(A1 + 0.5 * np.eye(5), b["w"]), rtol=1e-9)
    np.testing.assert_allclose(res.x["b"], np.linalg.solve(A2 + 0.5 * np.eye(3), b["b"]), rtol=1e-9)
    assert bool(res.converged)


def test_hessian_solve_matches_dense(x64):
    """The curvature operator of a small regression net solved by CG equals the dense solve.

    H has eigenvalues down to -1.29 here: the damping 2 makes H + 2 I positive definite.
    (With damping 1 CG reaches the exact solution of the indefinite system, a saddle point of
    the quadratic; that solve is now flagged indefinite and not converged.)
    """
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    params = {"w1": jax.random.normal(k1, (3, 4)) / 2, "w2": jax.random.normal(k2, (4,)) / 2}
    x = jax.random.normal(k3, (16, 3))
    y = jnp.sin(x[:, 0])
    loss = lambda p, x, y: jnp.mean((jnp.tanh(x @ p["w1"]) @ p["w2"] - y) ** 2)  # noqa: E731
    g = jax.grad(loss)(params, x, y)

    @jax.jit
    def solve(params):
        return asj.solve_damped(asj.hessian_operator(loss, params, x, y), g, damping, tol=1e-12, maxiter=100)

    damping = 2.0
    res = solve(params)
    op = asj.hessian_operator(loss, params, x, y)
    flat_g, unravel = jax.flatten_util.ravel_pytree(g)
    dense = np.asarray(op.as_dense()) + damping * np.eye(flat_g.size)
    assert np.linalg.eigvalsh(dense).min() > 0.5
    np.testing.assert_allclose(jax.flatten_util.ravel_pytree(res.x)[0], np.linalg.solve(dense, flat_g), rtol=1e-9)
    assert bool(res.converged) and not bool(res.indefinite)
    assert float(res.min_curvature) >= np.linalg.eigvalsh(dense).min() - 1e-12  # an upper bound on lambda_min


def test_reports_non_convergence_when_out_of_iterations(x64):
    A = _spd(30, 1e4, seed=4)
    b = jnp.ones(30)
    res = asj.solve_damped(lambda v: jnp.asarray(A) @ v, b, tol=1e-10, maxiter=3)
    assert not bool(res.converged)
    assert float(res.relative_residual) > 1e-10


def _search_directions(A, b, k):
    """CG's first k search directions on A x = b (no preconditioner), in float64."""
    x, r = np.zeros_like(b), b.copy()
    p, out = r.copy(), []
    for _ in range(k):
        out.append(p.copy())
        ap = A @ p
        alpha = (r @ r) / (p @ ap)
        x, r_new = x + alpha * p, r - alpha * ap
        p, r = r_new + (r_new @ r_new) / (r @ r) * p, r_new
    return out


def test_indefinite_system_is_reported_never_silent(x64):
    """Indefinite A + lambda I: every answer is flagged (indefinite, or not converged).

    CG may break down (large residual -> not converged), step along negative curvature
    (p^T (A + lambda I) p <= 0 for a search direction p, or x^T (A + lambda I) x <= 0 ->
    indefinite) or, having spanned the Krylov space, land on the exact solution of the
    indefinite system: a saddle point of the quadratic, which the negative curvature met on
    the way flags too (issue 15, item 9: it used to come back converged, not indefinite).
    """
    flagged = 0
    for seed in range(20):
        A = _spd(12, 10.0, seed=seed, negative=1 + seed % 5)  # eigenvalues -1 ... -k, then positive
        b = jnp.asarray(np.random.default_rng(seed).normal(size=12))
        for damping in (0.0, 0.5):
            res = asj.solve_damped(lambda v: jnp.asarray(A) @ v, b, damping, tol=1e-8, maxiter=8)
            shifted = A + damping * np.eye(12)
            quad = float(res.x @ (shifted @ res.x))
            curvatures = [p @ shifted @ p / (p @ p) for p in _search_directions(shifted, np.asarray(b), 8)]
            np.testing.assert_allclose(float(res.min_curvature), min(curvatures), rtol=1e-6)
            assert bool(res.indefinite) == (quad <= 0 or min(curvatures) <= 0)
            assert not bool(res.converged)
            flagged += bool(res.indefinite)
    assert flagged == 40  # each system's Krylov space meets its negative curvature


def test_saddle_point_of_an_indefinite_system_is_flagged(x64):
    """Issue 15, item 9: on diag(3, -1) CG reaches the exact solution in two steps, with x^T A x
    > 0 and a zero residual; only the negative curvature of its second search direction shows
    that the answer is a saddle point of the quadratic, not its minimiser."""
    A, b = jnp.diag(jnp.array([3.0, -1.0])), jnp.array([1.0, 0.1])
    res = asj.solve_damped(lambda v: A @ v, b, tol=1e-10, maxiter=2)
    np.testing.assert_allclose(res.x, [1 / 3, -0.1], rtol=1e-12)  # the exact solution
    assert float(res.x @ (A @ res.x)) > 0 and float(res.relative_residual) < 1e-12
    assert float(res.min_curvature) < 0
    assert bool(res.indefinite) and not bool(res.converged)
    # Enough damping (more than the most negative eigenvalue's magnitude) makes it solvable.
    A = _spd(12, 10.0, seed=3, negative=4)
    b = jnp.ones(12)
    res = asj.solve_damped(lambda v: jnp.asarray(A) @ v, b, 1.0 + float(-np.linalg.eigvalsh(A).min()), tol=1e-10,
                           maxiter=200)
    assert bool(res.converged) and not bool(res.indefinite)


def test_works_under_vmap_over_rhs_and_damping(x64):
    A = jnp.asarray(_spd(8, 20.0, seed=6))
    bs = jax.random.normal(jax.random.key(0), (4, 8), jnp.float64)
    lams = jnp.array([0.0, 0.1, 1.0, 10.0])
    res = jax.jit(jax.vmap(lambda b, lam: asj.solve_damped(lambda v: A @ v, b, lam, tol=1e-12, maxiter=100)))(bs, lams)
    for i in range(4):
        np.testing.assert_allclose(res.x[i], np.linalg.solve(A + lams[i] * np.eye(8), bs[i]), rtol=1e-9)
    assert bool(jnp.all(res.converged))


def test_traced_negative_damping_is_not_converged():
    A = jnp.eye(3)
    res = jax.jit(lambda lam: asj.solve_damped(lambda v: A @ v, jnp.ones(3), lam, maxiter=5))(-0.5)
    assert not bool(res.converged)


def test_solve_does_not_retrace():
    traces = []

    @jax.jit
    def solve(b):
        traces.append(1)
        return asj.solve_damped(lambda v: 3.0 * v, b, 1.0, maxiter=5)

    solve(jnp.ones(4))
    jax.block_until_ready(solve(2 * jnp.ones(4)))
    assert len(traces) == 1


@pytest.mark.parametrize(
    "damping, match",
    [(-1e-3, "damping must be finite and >= 0"), (float("nan"), "damping must be finite"), (float("inf"), "damping")],
)
def test_rejects_bad_damping(damping, match):
    with pytest.raises(ValueError, match=match):
        asj.solve_damped(lambda v: v, jnp.ones(3), damping)


def test_matvec_of_the_wrong_shape_is_named():
    """Issue 15, item 8: a matvec returning the wrong shape used to fail with a broadcasting error."""
    A = jnp.eye(3)
    with pytest.raises(ValueError, match=r"for b of shape \(3,\) and dtype float32 it returned shape \(3, 1\)"):
        asj.solve_damped(lambda v: (A @ v)[:, None], jnp.ones(3))
    with pytest.raises(ValueError, match=r"matvec must map a vector like b.*raised TypeError"):
        asj.solve_damped(lambda v: jnp.ones((3, 4)) @ v, jnp.ones(3))
    with pytest.raises(ValueError, match=r"for b\['w'\] of shape \(2,\) .* returned shape \(1,\)"):
        asj.solve_damped(lambda v: {"w": v["w"][:1]}, {"w": jnp.ones(2)})
    with pytest.raises(ValueError, match=r"returned shape \(3,\) and dtype int32"):
        asj.solve_damped(lambda v: v.astype(jnp.int32), jnp.ones(3))


def test_rejects_raw_matrix_and_bad_rhs():
    with pytest.raises(ValueError, match=r"pass `lambda v: A @ v`"):
        asj.solve_damped(jnp.eye(3), jnp.ones(3))
    op = asj.CurvatureOperator.from_matvec(lambda v: v, {"w": jnp.zeros(3)})
    with pytest.raises(ValueError, match="b must have the same tree structure"):
        asj.solve_damped(op, jnp.ones(3))
    with pytest.raises(ValueError, match=r"b leaf \['w'\] has shape \(4,\)"):
        asj.solve_damped(op, {"w": jnp.ones(4)})
    with pytest.raises(ValueError, match=r"b\['w'\] has non-finite entries"):
        asj.solve_damped(op, {"w": jnp.array([1.0, jnp.nan, 0.0])})
    with pytest.raises(ValueError, match="x0 must have the same tree structure"):
        asj.solve_damped(op, {"w": jnp.ones(3)}, x0=jnp.ones(3))
    with pytest.raises(ValueError, match="maxiter"):
        asj.solve_damped(op, {"w": jnp.ones(3)}, maxiter=0)
    with pytest.raises(ValueError, match="tol and atol"):
        asj.solve_damped(op, {"w": jnp.ones(3)}, tol=-1.0)


def test_zero_rhs_gives_zero(x64):
    res = asj.solve_damped(lambda v: 2.0 * v, jnp.zeros(3), 0.0)
    np.testing.assert_array_equal(res.x, jnp.zeros(3))
    assert bool(res.converged) and not bool(res.indefinite)
    assert float(optax.tree.norm(res.x)) == 0.0
