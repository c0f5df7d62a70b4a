# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # The differentiable approximation of AutoSimulate on a 1-D toy
#
# AutoSimulate never differentiates through training: at the current simulator setting
# $\psi_t$ it replaces $L_\mathrm{val}(\hat\theta(\psi))$ by a local model $\tilde L(\psi) =
# L_\mathrm{val}(\theta_t) + \Delta\theta(\psi)^\top g_\mathrm{val}$ built from one step
# $\Delta\theta(\psi)$ of the training loss (Eq. 6 and Table 1 of the paper). This notebook
# draws the paper's Figure 2 on a toy where everything has a closed form: the true curve
# $L_\mathrm{val}(\hat\theta(\psi))$ against $\psi$ and, at one $\psi_t$, the local model of
# each approximation (exact quadratic, approximate quadratic, linear), computed with the
# library's `hvp`, `hessian_operator` and `solve_damped` on exact expectations (Gauss-Hermite
# quadrature). It then prints the slopes at $\psi_t$: the exact-quadratic slope tends to the
# true derivative as the damping goes to 0, and the library's Monte Carlo score-function
# estimate agrees with it within its standard error. It runs in about 10 s on a CPU.

# %%
import os

import jax

jax.config.update("jax_enable_x64", True)  # exact references: float64 throughout this notebook

import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import autosim_jax as asj

SMALL = os.environ.get("AUTOSIM_NOTEBOOK_SMALL") == "1"  # smaller Monte Carlo samples under test

# %% [markdown]
# ## The toy
#
# Scenes are $x \sim \mathcal N(\mu, \sigma^2)$ with a fixed $\sigma$; the simulator's
# parameter is $\psi = \mu$. The "renderer" is $r(x) = (x, x^2)$: input $x$, label $x^2$.
# The task model is affine, $h_\theta(x) = w x + b$, trained by squared error (the toy of
# `tests/test_autosimulate.py`). Its least-squares fit under $\mathcal N(\mu, \sigma^2)$ is
# $\hat\theta(\mu) = (2\mu,\ \sigma^2 - \mu^2)$, so the true validation curve is
# $L_\mathrm{val}(\hat\theta(\mu)) = \mathrm{mean}_\mathrm{val}\,((x - \mu)^2 - \sigma^2)^2$,
# with the validation set a fixed sample around $x = 2$.
#
# The training loss $L_\mathrm{train}(\theta, \mu) = E_{x \sim \mathcal N(\mu,\sigma^2)}
# [(w x + b - x^2)^2]$ is a polynomial of degree 4 in $x$, so Gauss-Hermite quadrature with 5
# nodes computes it, and its derivatives in $\theta$ and $\mu$, exactly.

# %%
SIGMA = 0.5
X_VAL = 2.0 + 0.3 * np.random.default_rng(0).standard_normal(64)
NODES, WEIGHTS = np.polynomial.hermite_e.hermegauss(5)  # weight exp(-z^2 / 2)
WEIGHTS = WEIGHTS / WEIGHTS.sum()


def per_sample_loss(theta, x, y):
    return (theta["w"] * x + theta["b"] - y) ** 2


def train_loss(theta, mu):
    """E_{x ~ N(mu, SIGMA^2)}[l(theta, x, x^2)], exactly (quadrature)."""
    x = mu + SIGMA * NODES
    return jnp.sum(WEIGHTS * per_sample_loss(theta, x, x**2))


def val_loss(theta):
    return jnp.mean(per_sample_loss(theta, X_VAL, X_VAL**2))


def theta_hat(mu):
    return {"w": 2.0 * mu, "b": SIGMA**2 - mu**2}


def true_curve(mu):
    return val_loss(theta_hat(mu))


mu_t = 1.0  # psi_t, where the local models are built
theta_t = theta_hat(mu_t)
g_tr_at_t = jax.grad(train_loss)(theta_t, mu_t)
print("theta_hat(psi_t) =", {k: float(v) for k, v in theta_t.items()})
print("training gradient there (0 at the exact minimiser):", {k: float(v) for k, v in g_tr_at_t.items()})

# %% [markdown]
# ## The local models of Table 1
#
# Every row of Table 1 is $\tilde L(\psi) = L_\mathrm{val}(\theta_t) - u^\top
# g_\mathrm{tr}(\theta_t, \psi)$ for a vector $u$ (`autosim_jax/autosimulate.py` gives the
# signs; we use $\Delta\theta = -H g_\mathrm{tr}$ for the approximate quadratic, a descent
# step, where the paper prints $+$):
#
# | approximation | $\Delta\theta(\psi)$ | $u$ |
# | --- | --- | --- |
# | exact quadratic | $-(H + \lambda I)^{-1} g_\mathrm{tr}(\psi)$ | $(H + \lambda I)^{-1} g_\mathrm{val}$ (CG, `solve_damped`) |
# | approximate quadratic | $-H g_\mathrm{tr}(\psi)$ | $H g_\mathrm{val}$ (`hvp`) |
# | linear | $-g_\mathrm{tr}(\psi)$ | $g_\mathrm{val}$ |
#
# $H$ is the Hessian of the training loss at $(\theta_t, \psi_t)$ and
# $g_\mathrm{val} = \nabla_\theta L_\mathrm{val}(\theta_t)$; both stay fixed while $\psi$ moves.
# The linear model's step size is 1 here; in AutoSimulate it is absorbed into the outer
# learning rate, so only the sign of its slope matters.

# %%
DAMPING = 1e-3
L_t, g_val = jax.value_and_grad(val_loss)(theta_t)
H = asj.hessian_operator(train_loss, theta_t, mu_t)
solve = asj.solve_damped(H, g_val, DAMPING, tol=1e-12, maxiter=10)
print(f"CG: relative residual {float(solve.relative_residual):.1e}, converged {bool(solve.converged)}")
u = {
    "exact quadratic": solve.x,
    "approximate quadratic": asj.hvp(train_loss, theta_t, g_val, mu_t),
    "linear": g_val,
}


def local_model(u, mu):
    """L~(mu) = L_val(theta_t) + Delta_theta(mu)^T g_val, with Delta_theta(mu)^T g_val = -u^T g_tr(theta_t, mu)."""
    g_tr = jax.grad(train_loss)(theta_t, mu)
    return L_t - sum(jnp.vdot(u[k], g_tr[k]) for k in ("w", "b"))


# %%
mus = jnp.linspace(0.0, 3.0, 301)
fig, ax = plt.subplots(figsize=(7, 4.5), layout="constrained")
ax.plot(mus, jax.vmap(true_curve)(mus), color="k", lw=2.5, label=r"true $L_\mathrm{val}(\hat\theta(\psi))$")
styles = {"exact quadratic": "-", "approximate quadratic": "--", "linear": ":"}
for name, vec in u.items():
    label = name + (rf" ($\lambda$={DAMPING:g})" if name == "exact quadratic" else "")
    ax.plot(mus, jax.vmap(lambda m: local_model(vec, m))(mus), ls=styles[name], lw=1.8, label=label)
ax.plot([mu_t], [L_t], "o", color="k")
ax.annotate(r"$\psi_t$", (mu_t, L_t), textcoords="offset points", xytext=(6, 6))
mu_star = float(mus[jnp.argmin(jax.vmap(true_curve)(mus))])
ax.axvline(mu_star, color="grey", lw=0.8, ls="-.", label=rf"true optimum $\psi^*\approx${mu_star:.2f}")
ax.set_ylim(-1.0, 1.2 * float(true_curve(mus[0])))
ax.set_xlabel(r"$\psi = \mu$ (mean of the scene distribution)")
ax.set_ylabel("validation loss")
ax.set_title("True validation loss and the local models of Table 1 at $\\psi_t$ (cf. paper Fig. 2)")
ax.grid(alpha=0.3)
ax.legend(fontsize=9)
plt.show()

# %% [markdown]
# All three local models equal the true curve at $\psi_t$ (there $g_\mathrm{tr} = 0$) and
# fall towards the optimum, but only the exact quadratic is tangent to the true curve: with
# $g_\mathrm{tr}(\hat\theta(\psi), \psi) = 0$ the implicit function theorem gives
# $d\hat\theta/d\psi = -H^{-1}\, \partial g_\mathrm{tr}/\partial\psi$, so
# $dL_\mathrm{val}/d\psi = -g_\mathrm{val}^\top H^{-1} \partial g_\mathrm{tr}/\partial\psi$,
# which is the exact quadratic's slope at $\lambda = 0$. The other two have the right sign
# but not the right size (and the linear model's size is arbitrary anyway).
#
# ## Slopes at $\psi_t$
#
# The true derivative, by `jax.grad` of the closed form and by a central difference,
# against the slope of each local model, $-u^\top \partial g_\mathrm{tr}/\partial\psi$, for
# the exact quadratic at decreasing damping.

# %%
true_slope = float(jax.grad(true_curve)(mu_t))
h = 1e-5
fd_slope = float((true_curve(mu_t + h) - true_curve(mu_t - h)) / (2 * h))
dg_dmu = jax.jacfwd(lambda m: jax.grad(train_loss)(theta_t, m))(mu_t)  # d g_tr / d psi at psi_t


def slope(vec):
    return float(-sum(jnp.vdot(vec[k], dg_dmu[k]) for k in ("w", "b")))


print(f"true dL_val/dpsi at psi_t:      {true_slope:+.10f}  (jax.grad of the closed form)")
print(f"                                {fd_slope:+.10f}  (central difference, h = {h:g})")
print()
print(f"{'local model':<34}{'slope':>16}{'slope - true':>16}")
for lam in (1e-1, 1e-2, 1e-3, 1e-4, 1e-6, 0.0):
    x = asj.solve_damped(H, g_val, lam, tol=1e-12, maxiter=10).x
    s = slope(x)
    print(f"{f'exact quadratic, lambda = {lam:g}':<34}{s:>+16.10f}{s - true_slope:>+16.2e}")
for name in ("approximate quadratic", "linear"):
    s = slope(u[name])
    print(f"{name:<34}{s:>+16.10f}{s - true_slope:>+16.2e}")

# %% [markdown]
# ## The library's estimator of the same slope
#
# AutoSimulate cannot differentiate the renderer, so it estimates
# $\partial (u^\top g_\mathrm{tr})/\partial\psi$ by the score-function term of Eq. 11,
# $\frac1K \sum_k \nabla_\psi \log q_\psi(s_k)\, (\partial l_k/\partial\theta \cdot u - b_k)$
# (`score_function_term`, leave-one-out baseline). Here $q_\psi$ is the library's `gaussian`
# with $\sigma$ held fixed, and the slope is minus the estimate's `loc` component. With
# $R$ independent batches of $K$ samples the mean should agree with the exact slope
# ($\lambda = 0$) to within a few standard errors (a statistical check: fixed seed).

# %%
q = asj.gaussian(loc=mu_t, scale=SIGMA)
psi_t = q.init()
u_exact = asj.solve_damped(H, g_val, 0.0, tol=1e-12, maxiter=10).x
K, R = (20_000, 8) if SMALL else (200_000, 16)


@jax.jit
def score_slope(key):
    x = q.sample(key, psi_t, K)
    s = asj.score_function_term(q.log_prob, psi_t, x, per_sample_loss, theta_t, u_exact, x, x**2)
    return -s.loc


estimates = np.array([score_slope(k) for k in jax.random.split(jax.random.PRNGKey(0), R)])
mean, se = estimates.mean(), estimates.std(ddof=1) / np.sqrt(R)
print(f"score-function slope, {R} batches of K = {K}: {mean:+.5f} +- {se:.5f} (standard error)")
print(f"exact-quadratic slope (lambda = 0):              {slope(u_exact):+.5f}")
print(f"difference / standard error:                     {(mean - slope(u_exact)) / se:+.2f}")
