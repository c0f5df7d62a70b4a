"""Which defaults of AutoSimConfig make the toy of tests/ converge? (issue 12 item 5, issue 13)

The toy of ``tests/test_autosimulate.py``: scenes x ~ N(mu, sigma^2) starting at mu = -1,
sigma = 0.5; the renderer returns (x, x^2); the task model is ``nnx.Linear(1, 1)``
(``nnx.Rngs(0)``), trained by squared error; the validation set is 64 points at 2 +- 0.3.
The optimum mu* (2.0257) is found by brute force as in that file. For every candidate set of
defaults (a dict of AutoSimConfig fields applied to the *old* defaults, ``OLD``), every
approximation that uses validation and every seed, one run of ``--steps`` outer steps records
mu and log sigma every ``--every`` steps; the figure of merit is the final ``|mu - mu*|``
(issue 13's target: < 0.1 on every seed), also the worst ``|mu - mu*|`` over the last quarter
of the run and the step at which mu first comes within 0.1. The candidate ``library`` is
``AutoSimConfig()`` of the package imported (no overrides at all).

Other modes (all write into the same JSON, or ``*_search.json`` for the search):

* ``--search N --search-space S --search-order ROWS``: N random candidates from a space of
  ``SPACES``, seeds ``--seeds``; a candidate stops at its first run >= 0.1 from mu*;
* ``--diagnose CANDIDATE:ROW,...``: per 50 steps the median hypergradient norm, the mean / std
  of mu's step, mu and sigma (why a run stalls, leaves or collapses);
* ``--experiment-configs LABEL``: ``AutoSimConfig()`` and every registered experiment's config
  (run with the old and the new package: the defaults must not reach the experiments).
* ``--val-mean M``: the toy translated (validation at M +- 0.3, the start at M - 3; entries
  ``NAME_valM`` with ``closed_form``'s conditioning at that M); ``--plot-translated FOLDER`` plots
  every such record in FOLDER (docs/defaults.md, session 42).

Usage (2-core CPU; docs/defaults.md has every command that produced the committed JSON)::

    python benchmarks/toy_defaults.py --candidates old,library --seeds 0,1,2,3,4 --steps 400

Writes ``benchmarks/results/toy_defaults.json`` (merged with what is there: a candidate run
again replaces its old entry) and prints one line per run and a table.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import time

import numpy as np
from provenance import command_line  # the record's command, quoted for a shell

_TRIPLE = re.compile(r"\[\s*(-?[0-9.e+-]+,\s*-?[0-9.e+-]+,\s*-?[0-9.e+-]+)\s*\]")

APPROXIMATIONS = ("exact_quadratic", "approx_quadratic", "linear")

# The defaults of AutoSimConfig before this benchmark (commit c645626).
OLD = {
    "approximation": "exact_quadratic", "dataset_size": 64, "batch_size": 32, "finetune_epochs": 1,
    "inner_optimizer": "adam", "inner_learning_rate": 1e-3, "outer_optimizer": "adam", "outer_learning_rate": 5e-2,
    "max_kl": 0.05, "entropy_weight": 0.0, "damping": 1e-2, "curvature": "gauss_newton", "curvature_batch_size": None,
    "cg_maxiter": 10, "cg_tol": 1e-3, "estimator": "jvp", "baseline": "leave_one_out", "val_batch_size": None,
}


def _adam(k, batch, epochs, inner_lr, outer_lr=0.1):
    """Adam on psi, minibatch fine-tuning: K, batch, epochs, Adam's rate inside and on psi."""
    return ({"dataset_size": k, "batch_size": batch, "finetune_epochs": epochs, "inner_learning_rate": inner_lr,
             "outer_learning_rate": outer_lr},
            f"K {k}, batch {batch}, {epochs} epochs, Adam {inner_lr} on theta / {outer_lr} on psi")


def _s5(**changes):
    """Session 5: the session-3 defaults (K 256, batch 32, 4 epochs Adam 3e-2, Adam 0.1 on psi)
    with ``changes`` (the new options ``finetune_schedule``, ``outer_beta2``, ...)."""
    base, _ = _adam(256, 32, 4, 0.03)
    return {**base, **changes}, "session-3 defaults + " + ", ".join(f"{k}={v}" for k, v in changes.items())


# name -> (changes to OLD, what the candidate tests); "library" means AutoSimConfig() itself.
CANDIDATES = {
    # -- session 6: a fresh model per step (what the registered experiments use since 2026-12-01)
    "s6_reset0": _s5(theta_reset_every=0),
    "s6_reset1": _s5(theta_reset_every=1),
    "s6_reset5": _s5(theta_reset_every=5),
    "s6_reset10": _s5(theta_reset_every=10),
    # -- session 8: a fresh model per step fine-tuned longer (is N = 1's fixed point short-horizon?)
    **{f"s8_reset1_e{e}": _s5(theta_reset_every=1, finetune_epochs=e) for e in (8, 12, 16, 32)},
    # -- session 8: Eq. 13 at the Newton point (exact quadratic only: --approximations exact_quadratic)
    "s8_newton_reset0": _s5(val_gradient_at="newton_point"),
    "s8_newton_reset1": _s5(val_gradient_at="newton_point", theta_reset_every=1),
    # -- session 12: a decaying psi step (outer_decay_steps; lr / (1 + t / tau)): less drift after mu*?
    **{f"s12_o{lr}_t{tau}": _s5(outer_learning_rate=lr, outer_decay_steps=tau)
       for lr, tau in ((0.1, 50), (0.1, 100), (0.2, 50), (0.3, 20), (0.2, 100), (0.3, 50), (0.2, 25), (0.15, 100))},
    # -- session 12: the noise gate (outer_snr_gate), alone and with three times the step
    "s12_gate2": _s5(outer_snr_gate=2.0),
    "s12_gate2_o0.3": _s5(outer_snr_gate=2.0, outer_learning_rate=0.3),
    **{f"s12_gate2_o{lr}_t{tau}": _s5(outer_snr_gate=2.0, outer_learning_rate=lr, outer_decay_steps=tau)
       for lr, tau in ((0.2, 50), (0.2, 25), (0.15, 100))},
    # -- session 42: theta trained at the start psi before the first step (the translated toys'
    #    sigma collapse while theta is still far from theta_hat; run with --val-mean)
    "s42_pretrain10": _s5(pretrain_rounds=10),
    "old": ({}, "the old defaults"),
    # -- session 34: the outer stage on renders other than the fine-tuning's (the finite-K
    #    correlation between the fit and the estimate, the closed-form check's first suspect)
    "s34_independent": _s5(outer_renders="independent"),
    # -- session 55: Adam fed the hypergradient's direction only (outer_unit_norm; the digits cpu and
    #    clevr-seg gpu presets), at a constant and a decaying rate: not measured on the toy before
    "s55_unit_norm": _s5(outer_unit_norm=True),
    **{f"s55_unit_norm_t{tau}": _s5(outer_unit_norm=True, outer_decay_steps=tau) for tau in (50, 100, 200)},
    "library": (None, "AutoSimConfig() of the installed package, no overrides"),
    # -- the toy's own test options (tests/test_autosimulate.py::_toy), as names
    "test_options": ({"dataset_size": 128, "batch_size": 32, "finetune_epochs": 8, "inner_learning_rate": 0.1,
                      "outer_learning_rate": 0.1, "damping": 1e-3, "cg_maxiter": 5, "cg_tol": 1e-6},
                     "the toy test's explicit options (Adam 0.1 inside and outside)"),
    # -- one factor at a time from the old defaults (the diagnosis)
    "inner_lr0.1": ({"inner_learning_rate": 0.1}, "old + Adam 0.1 inside: is it the untrained model?"),
    "inner_lr0.1_ep8": ({"inner_learning_rate": 0.1, "finetune_epochs": 8}, "old + Adam 0.1 x 8 epochs inside"),
    # -- full-batch fine-tuning: the exact row stalls (Adam's second moment keeps the early scale)
    "fullbatch_adam0.1": ({"dataset_size": 128, "batch_size": 128, "finetune_epochs": 16, "inner_learning_rate": 0.1,
                           "outer_learning_rate": 0.1}, "K 128 full batch x 16 epochs, Adam 0.1 on psi"),
    # -- natural gradient in a KL trust region: the exact row converges, approx/linear collapse sigma
    "natural_kl0.003": ({"dataset_size": 256, "batch_size": 32, "finetune_epochs": 4, "inner_learning_rate": 0.1,
                         "outer_optimizer": "natural", "outer_learning_rate": 1.0, "max_kl": 0.003},
                        "natural gradient, trust region 0.003 nats (passed linear and exact on 2 seeds)"),
    "natural_kl0.05": ({"dataset_size": 256, "batch_size": 32, "finetune_epochs": 4, "inner_learning_rate": 0.1,
                        "outer_optimizer": "natural", "outer_learning_rate": 1.0},
                       "the same with the default trust region 0.05 nats"),
    # -- Adam on psi, minibatch fine-tuning (the region where the searches found exact + linear)
    "mb_K128_b16_e2_lr0.03": _adam(128, 16, 2, 0.03),
    "mb_K256_b16_e2_lr0.01": _adam(256, 16, 2, 0.01),
    "mb_K256_b32_e4_lr0.01": _adam(256, 32, 4, 0.01),
    "mb_K256_b32_e4_lr0.03": _adam(256, 32, 4, 0.03),
    "mb_K512_b32_e2_lr0.03": _adam(512, 32, 2, 0.03),
    "mb_K512_b32_e4_lr0.03": _adam(512, 32, 4, 0.03),
    "mb_K512_b16_e4_lr0.03": _adam(512, 16, 4, 0.03),
    "mb_K512_b32_e4_lr0.03_o0.15": _adam(512, 32, 4, 0.03, 0.15),
    # -- session 5: the new options (changes to the session-3 defaults, mb_K256_b32_e4_lr0.03)
    **{f"s5_{name}": _s5(**changes) for name, changes in {
        "decay": {"finetune_schedule": "linear_decay"},
        "b2_0.99": {"outer_beta2": 0.99},
        "b2_0.9": {"outer_beta2": 0.9},
        "decay_b2_0.99": {"finetune_schedule": "linear_decay", "outer_beta2": 0.99},
        "decay_b2_0.9": {"finetune_schedule": "linear_decay", "outer_beta2": 0.9},
        "decay_lr0.1": {"finetune_schedule": "linear_decay", "inner_learning_rate": 0.1},
        "decay_o0.2_b2_0.95": {"finetune_schedule": "linear_decay", "outer_learning_rate": 0.2, "outer_beta2": 0.95},
        "decay_o0.2_b2_0.99": {"finetune_schedule": "linear_decay", "outer_learning_rate": 0.2, "outer_beta2": 0.99},
        "decay_o0.3": {"finetune_schedule": "linear_decay", "outer_learning_rate": 0.3},
        "decay_b2_0.99_e8": {"finetune_schedule": "linear_decay", "outer_beta2": 0.99, "finetune_epochs": 8},
        "decay_b2_0.98": {"finetune_schedule": "linear_decay", "outer_beta2": 0.98},
    }.items()},
}


def _load(path, empty):
    if not os.path.exists(path):
        return empty
    with open(path) as f:
        return json.load(f)


def _dump(results, path):
    """Writes ``results`` atomically; a trajectory is one line."""
    text = json.dumps(results, indent=1)
    text = _TRIPLE.sub(lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]", text)
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def _optimal_mu(x_val: np.ndarray) -> float:
    mid = round(float(x_val.mean()))
    grid = np.linspace(mid - 2.0, mid + 2.0, 40001)
    d2 = (x_val[:, 0][None, :] - grid[:, None]) ** 2
    return float(grid[np.argmin(d2.var(axis=1))])


def toy(config, val_mean: float = 2.0, **overrides):
    """The toy's simulator, model, task and validation data with ``config`` (and
    ``make_autosimulate``'s ``overrides``, e.g. an optax ``outer_optimizer``): an AutoSimulate.

    ``val_mean`` translates the toy: validation at ``val_mean +- 0.3``, the start at ``val_mean - 3``
    (2.0: the toy of tests/). The optimum moves with it; the line model's Hessian,
    ``2 [[E x^2, mu], [mu, 1]]``, is not translation-invariant: its condition number at the optimum
    grows with ``|val_mean|`` (``closed_form``)."""
    import jax.numpy as jnp
    from flax import nnx

    from autosim_jax import make_autosimulate
    from autosim_jax.distributions import from_schema
    from autosim_jax.schema import Field, OutputSpec, SceneSchema
    from autosim_jax.simulator import Simulator
    from autosim_jax.tasks import Task

    class SquareRenderer:
        name = "square"
        schema = SceneSchema((Field.continuous("x", doc="the input value"),))
        inputs_spec = OutputSpec((1,), np.float32)
        labels_spec = OutputSpec((1,), np.float32)

        def render(self, scenes, seed):
            x = np.asarray(scenes["x"], np.float32)[:, None]
            return x.copy(), x**2

    x_val = (val_mean + 0.3 * np.random.default_rng(0).standard_normal(64)).astype(np.float32)[:, None]
    task = Task.from_per_sample(lambda out, y: jnp.sum((out - y) ** 2, axis=-1),
                                lambda out, y: -jnp.sum((out - y) ** 2, axis=-1), "neg_mse")
    sim = Simulator(from_schema(SquareRenderer.schema, {"x": {"loc": val_mean - 3.0, "scale": 0.5}}), SquareRenderer())
    model = nnx.Linear(1, 1, rngs=nnx.Rngs(0))
    return make_autosimulate(sim, model, task, (x_val, x_val**2), config, **overrides), _optimal_mu(x_val)


def closed_form(val_mean: float, damping: float = 1e-2, h: float = 1e-6) -> dict:
    """The population (K -> infinity) check of docs/defaults.md (session 5) for the toy translated
    to ``val_mean``, in float64 numpy: theta = theta_hat(psi) = (2 mu, sigma^2 - mu^2) exactly, each
    row's hypergradient ``-d/dpsi E_q[dl/dtheta] . u`` with ``u`` = ``(H + damping I)^-1 g_val``,
    ``H g_val`` or ``g_val``. Returns cond(H) at psi*, and per row the eigenvalues of the
    hypergradient's Jacobian in psi = (mu, log sigma) (central differences, step ``h``) and the shift
    of its stationary point per 0.05 of theta's slope w (the sensitivity to an unsettled theta).

    Example (the toy of tests/ reproduces session 5's jax check; centred, the rows are conditioned alike):
      >>> cf = closed_form(2.0)
      >>> round(cf["mu_star"], 4), round(cf["hessian_condition"]), round(
      ...     cf["rows"]["approx_quadratic"]["jacobian_condition"])
      (2.0257, 356, 11512)
      >>> round(cf["rows"]["approx_quadratic"]["mu_shift_per_0.05_of_w"]), round(
      ...     cf["rows"]["linear"]["mu_shift_per_0.05_of_w"], 1)
      (3681, 10.5)
      >>> [round(r["jacobian_condition"]) for r in closed_form(0.0)["rows"].values()]
      [13, 13, 1]
    """
    x = (val_mean + 0.3 * np.random.default_rng(0).standard_normal(64)).astype(np.float32).astype(np.float64)
    mu_star = _optimal_mu(x[:, None])
    psi_star = np.array([mu_star, 0.5 * np.log(np.mean((x - mu_star) ** 2))])

    def moments(psi):  # E[x^0..3] and their psi-derivatives (rows: moment, columns: mu, log sigma)
        mu, s2 = psi[0], np.exp(2 * psi[1])
        m = np.array([1.0, mu, mu**2 + s2, mu**3 + 3 * mu * s2])
        dm = np.array([[0.0, 0.0], [1.0, 0.0], [2 * mu, 2 * s2], [3 * mu**2 + 3 * s2, 6 * mu * s2]])
        return m, dm

    def hessian(psi):
        m, _ = moments(psi)
        return 2 * np.array([[m[2], m[1]], [m[1], 1.0]])

    def hyper(row, psi, theta):
        (w, b), (_, dm) = theta, moments(psi)
        r = w * x + b - x**2
        g_val = 2 * np.array([np.mean(r * x), np.mean(r)])
        u = {"exact_quadratic": np.linalg.solve(hessian(psi) + damping * np.eye(2), g_val),
             "approx_quadratic": hessian(psi) @ g_val, "linear": g_val}[row]
        d_grad = 2 * np.stack([w * dm[2] + b * dm[1] - dm[3], w * dm[1] - dm[2]])  # d E_q[dl/dtheta] / d psi
        return -d_grad.T @ u

    def theta_hat(psi):
        return np.array([2 * psi[0], np.exp(2 * psi[1]) - psi[0] ** 2])

    rows = {}
    for row in APPROXIMATIONS:
        jac = np.stack([(hyper(row, psi_star + e, theta_hat(psi_star + e))
                         - hyper(row, psi_star - e, theta_hat(psi_star - e))) / (2 * h) for e in h * np.eye(2)], 1)
        eig = np.sort(np.abs(np.linalg.eigvals(jac)))
        shift = -np.linalg.solve(jac, hyper(row, psi_star, theta_hat(psi_star) + np.array([0.05, 0.0])))
        rows[row] = {"jacobian_eigenvalues": eig.tolist(), "jacobian_condition": float(eig[-1] / eig[0]),
                     "mu_shift_per_0.05_of_w": float(shift[0])}
    return {"val_mean": val_mean, "mu_star": mu_star, "hessian_condition": float(np.linalg.cond(hessian(psi_star))),
            "rows": rows}


def run_one(autosim, mu_star, seed, steps, every):
    state = autosim.init(seed)
    traj, conv, upd = [], [], []
    t0 = time.perf_counter()
    for i in range(steps):
        state, info = autosim.step(state)
        conv.append(info.cg_converged)
        upd.append(info.psi_updated)
        if (i + 1) % every == 0 or i + 1 == steps:
            traj.append((i + 1, round(float(state.psi["x"].loc), 5), round(float(state.psi["x"].log_scale), 5)))
    wall = time.perf_counter() - t0
    dist = [abs(m - mu_star) for _, m, _ in traj]
    last_q = [d for (s, _, _), d in zip(traj, dist) if s > 0.75 * steps]
    first = next((s for (s, _, _), d in zip(traj, dist) if d < 0.1), None)
    return {"seed": seed, "final_mu": traj[-1][1], "final_sigma": float(np.exp(traj[-1][2])), "final_err": dist[-1],
                "worst_err_last_quarter": max(last_q), "first_within_0_1": first, "cg_converged": float(np.mean(conv)),
                "psi_updated": float(np.mean(upd)), "seconds": wall, "trajectory": traj}


SEARCH_SPACE = {
    "outer": [("adam", lr, None) for lr in (0.03, 0.05, 0.1, 0.15)]
    + [("natural", lr, kl) for lr in (1.0, 10.0, 1e3) for kl in (1e-3, 3e-3, 1e-2, 3e-2)],
    "entropy_weight": [0.0, 0.0, 0.05, 0.1],
    "dataset_size": [64, 128, 256],
    "full_batch": [False, True],
    "finetune_epochs": [2, 4, 8, 16],
    "inner_learning_rate": [0.01, 0.03, 0.1],
    "damping": [1e-3, 1e-2, 1e-1],
}


# The natural-gradient part of the space only (the second search, rows linear and exact).
NATURAL_SPACE = dict(
    SEARCH_SPACE,
    outer=[("natural", lr, kl) for lr in (1.0, 3.0, 10.0, 1e3) for kl in (1e-3, 3e-3, 1e-2, 3e-2, 5e-2)],
    entropy_weight=[0.0],
)


# Adam on psi only (the third search, the exact row first): is Adam's slow end avoidable?
ADAM_SPACE = dict(
    SEARCH_SPACE,
    outer=[("adam", lr, None) for lr in (0.05, 0.1, 0.15, 0.2)],
    entropy_weight=[0.0],
    dataset_size=[128, 256, 512],
)
# Adam on psi with minibatch fine-tuning (the fourth search: where the third found the exact row
# within 0.1; ``full_batch`` False means batch_size from ``batch_size``).
ADAM_MINIBATCH_SPACE = dict(
    ADAM_SPACE,
    outer=[("adam", lr, None) for lr in (0.1, 0.15, 0.2)],
    full_batch=[False],
    batch_size=[16, 32, 64],
    finetune_epochs=[1, 2, 4, 8],
)
# The fifth search: the approximate-quadratic row first, larger psi steps and K.
ADAM_APPROX_SPACE = dict(
    ADAM_MINIBATCH_SPACE,
    outer=[("adam", lr, None) for lr in (0.15, 0.2, 0.3)],
    dataset_size=[256, 512, 1024],
    finetune_epochs=[1, 2, 4],
    inner_learning_rate=[0.01, 0.03, 0.1],
)
SPACES = {"all": SEARCH_SPACE, "natural": NATURAL_SPACE, "adam": ADAM_SPACE, "adam_minibatch": ADAM_MINIBATCH_SPACE,
          "adam_approx": ADAM_APPROX_SPACE}


def search(n, steps, seeds, rng_seed, out, order, space):
    """Random search over ``space`` (changes to OLD); a candidate stops at its first run with
    final |mu - mu*| >= 0.1, the rows tried in ``order``."""
    import jax

    from autosim_jax import AutoSimConfig

    rng = np.random.default_rng(rng_seed)
    found = _load(out, {"trials": []})
    for _ in range(n):
        pick = {k: v[rng.integers(len(v))] for k, v in space.items()}
        opt, lr, kl = pick.pop("outer")
        full = pick.pop("full_batch")
        batch = pick.pop("batch_size", 32)
        changes = dict(pick, outer_optimizer=opt, outer_learning_rate=lr, batch_size=pick["dataset_size"] if full
                       else batch, cg_tol=1e-6)
        if kl is not None:
            changes["max_kl"] = kl
        config = AutoSimConfig(**{**OLD, **changes})
        errs, ok = {}, True
        t0 = time.perf_counter()
        for approx in order:
            autosim, mu_star = toy(config.replace(approximation=approx))
            for seed in seeds:
                r = run_one(autosim, mu_star, seed, steps, steps)
                errs[f"{approx}/{seed}"] = r["final_err"]
                ok = r["final_err"] < 0.1
                if not ok:
                    break
            if not ok:
                break
        trial = {"space": next(k for k, v in SPACES.items() if v is space), "search_seed": rng_seed,
                 "changes": changes, "order": list(order), "errors": errs, "passed": ok,
                 "seconds": time.perf_counter() - t0}
        found["trials"].append(trial)
        print(("PASS " if ok else "fail ") + json.dumps(changes) + " " +
              " ".join(f"{k}={v:.3f}" for k, v in errs.items()), flush=True)
        found.update(date=datetime.date.today().isoformat(), jax_version=jax.__version__, steps=steps,
                     seeds=list(seeds))
        found.setdefault("spaces", {})[next(k for k, v in SPACES.items() if v is space)] = {
            k: [list(x) if isinstance(x, tuple) else x for x in v] for k, v in space.items()}
        with open(out + ".tmp", "w") as f:
            json.dump(found, f, indent=1)
        os.replace(out + ".tmp", out)


def diagnose(name, approx, seed, steps, window=50):
    """Per window of steps: median ||dL~/dpsi|| and the mean / std of the per-step change of mu,
    and mu, sigma at the window's end (why a run stalls or collapses)."""
    from autosim_jax import AutoSimConfig

    changes, _ = CANDIDATES[name]
    config = AutoSimConfig() if changes is None else AutoSimConfig(**{**OLD, **changes})
    autosim, mu_star = toy(config.replace(approximation=approx))
    state, g, mu, sig = autosim.init(seed), [], [float(autosim.init(seed).psi["x"].loc)], []
    for _ in range(steps):
        state, info = autosim.step(state)
        g.append(info.psi_grad_norm)
        mu.append(float(state.psi["x"].loc))
        sig.append(float(np.exp(state.psi["x"].log_scale)))
    dmu = np.diff(mu)
    rows = [{"steps": f"{lo + 1}-{lo + window}", "median_grad_norm": float(np.median(g[lo:lo + window])),
                 "mean_dmu": float(dmu[lo:lo + window].mean()), "std_dmu": float(dmu[lo:lo + window].std()),
                 "mu": mu[lo + window], "sigma": sig[lo + window - 1]} for lo in range(0, steps, window)]
    for r in rows:
        print(f"{name} {approx} seed {seed} steps {r['steps']:>8}: median |g| {r['median_grad_norm']:9.3g}  "
              f"mean dmu {r['mean_dmu']:+.4f}  std dmu {r['std_dmu']:.4f}  mu {r['mu']:+.3f}  sigma {r['sigma']:.3f}")
    return {"candidate": name, "approximation": approx, "seed": seed, "mu_star": mu_star, "windows": rows}


def experiment_configs():
    """AutoSimConfig() and the config of every registered experiment at both sizes (as data)."""
    from autosim_jax import AutoSimConfig
    from autosim_jax.experiments import EXPERIMENTS

    out = {"AutoSimConfig()": AutoSimConfig().to_dict()}
    for name, experiment in EXPERIMENTS.items():
        for size in ("cpu", "gpu"):
            out[f"{name}/{size}"] = experiment.build(size=size).config.to_dict()
    return out


def plot_translated(folder: str) -> str:
    """``folder/final_error_vs_val_mean.png``: every toy run in ``folder`` (this script's JSON with
    ``--val-mean``, and ``toy_settled_theta.py``'s records), final |mu - mu*| per seed against the
    validation mean M, one panel per row, each with its closed-form conditioning at psi* on top."""
    import glob

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict = {}  # label -> row -> [(M, errors)]
    for path in sorted(glob.glob(os.path.join(folder, "*.json"))):
        record = _load(path, {})
        if "candidates" in record:  # toy_defaults.py: the library's defaults, one entry per M
            for name, entry in record["candidates"].items():
                what = "defaults" if name.startswith("library") else name.rsplit("_val", 1)[0]
                label = f"{what}, {entry['steps']} steps"
                for row, r in entry["runs"].items():
                    series.setdefault(label, {}).setdefault(row, []).append(
                        (entry.get("val_mean", 2.0), [x["final_err"] for x in r["seeds"]]))
        elif record.get("benchmark") == "toy_settled_theta":
            for key, r in record["results"].items():
                mode, row = key.split("/")
                theta = "exact fit" if mode == "same" else "defaults' theta"
                label = f"{theta}, beta2 {record['outer_beta2']}, {record['steps']} steps"
                series.setdefault(label, {}).setdefault(row, []).append(
                    (record.get("val_mean", 2.0), [x["final_err"] for x in r["runs"]]))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6), sharey=True)
    markers = "osD^v<>"
    forms = [closed_form(m) for m in (0.0, 0.5, 1.0, 2.0, 3.0)]
    for ax, row in zip(axes, APPROXIMATIONS):
        for i, (label, rows) in enumerate(sorted(series.items())):
            pts = sorted(rows.get(row, []))
            if not pts:
                continue
            ms = [m + 0.06 * (i - 2) for m, errs in pts for _ in errs]
            es = [max(e, 1e-3) for _, errs in pts for e in errs]
            ax.scatter(ms, es, marker=markers[i % len(markers)], s=22, alpha=0.75, label=label)
        ax.axhline(0.1, color="k", lw=0.8, ls="--")
        ax.set_yscale("log")
        ax.set_xlabel("validation mean M (the start at M - 3; M = 2 is the toy of tests/)")
        ax.set_title(f"{row}\nJacobian condition at psi* for M = 0, 0.5, 1, 2, 3: "
                     + ", ".join(f"{f['rows'][row]['jacobian_condition']:.0f}" for f in forms), fontsize=9)
    axes[0].set_ylabel("final |mu - mu*| per seed (0.1: the target)")
    axes[0].legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    out = os.path.join(folder, "final_error_vs_val_mean.png")
    fig.savefig(out, dpi=90)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--candidates", default="old,library")
    p.add_argument("--approximations", default=",".join(APPROXIMATIONS))
    p.add_argument("--seeds", default="0,1,2,3,4")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--every", type=int, default=10)
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "toy_defaults.json"))
    p.add_argument("--search", type=int, default=0, help="random-search this many candidates instead")
    p.add_argument("--experiment-configs", default="", metavar="LABEL",
                   help="record AutoSimConfig() and every experiment's config under LABEL instead (run it with "
                        "the old and the new package to see that the defaults do not reach the experiments)")
    p.add_argument("--diagnose", default="", help="CANDIDATE:APPROXIMATION[,...]: per-50-step gradient norms "
                   "and psi steps of seed --seeds[0] instead (stored under 'diagnosis')")
    p.add_argument("--search-seed", type=int, default=0)
    p.add_argument("--search-space", choices=tuple(SPACES), default="all")
    p.add_argument("--search-order", default="approx_quadratic,linear,exact_quadratic")
    p.add_argument("--val-mean", type=float, default=2.0, metavar="M",
                   help="translate the toy: validation at M +- 0.3, the start at M - 3 (2: the toy of tests/); a "
                        "candidate's entry is then NAME_valM, with the closed form's conditioning beside it")
    p.add_argument("--plot-translated", default="", metavar="FOLDER",
                   help="plot every translated-toy record in FOLDER (FOLDER/final_error_vs_val_mean.png) instead")
    args = p.parse_args(argv)
    if args.plot_translated:
        print(f"wrote {plot_translated(args.plot_translated)}")
        return None
    if args.experiment_configs:
        results = _load(args.out, {"candidates": {}})
        results.setdefault("experiment_configs", {})[args.experiment_configs] = experiment_configs()
        _dump(results, args.out)
        labels = results["experiment_configs"]
        if len(labels) > 1:
            (a, ca), (b, cb) = list(labels.items())[:2]
            for key in ca:
                diff = {f: (ca[key][f], cb[key][f]) for f in ca[key] if ca[key][f] != cb[key][f]}
                print(f"{key}: {'identical' if not diff else diff} ({a} vs {b})")
        return None
    if args.diagnose:
        results = _load(args.out, {"candidates": {}})
        for item in args.diagnose.split(","):
            name, approx = item.split(":")
            results.setdefault("diagnosis", {})[item] = diagnose(name, approx, int(args.seeds.split(",")[0]),
                                                                 args.steps)
        _dump(results, args.out)
        return None
    if args.search:
        space = SPACES[args.search_space]
        return search(args.search, args.steps, [int(s) for s in args.seeds.split(",")], args.search_seed,
                      args.out.replace(".json", "_search.json"), args.search_order.split(","), space)

    import jax

    from autosim_jax import AutoSimConfig

    seeds = [int(s) for s in args.seeds.split(",")]
    results = _load(args.out, {"candidates": {}})
    for name in args.candidates.split(","):
        changes, what = CANDIDATES[name]
        config = AutoSimConfig() if changes is None else AutoSimConfig(**{**OLD, **changes})
        entry = {"what": what, "config": config.to_dict(), "steps": args.steps, "runs": {}}
        if args.val_mean != 2.0:
            entry.update(val_mean=args.val_mean, closed_form=closed_form(args.val_mean, config.damping))
        for approx in args.approximations.split(","):
            t0 = time.perf_counter()
            autosim, mu_star = toy(config.replace(approximation=approx), val_mean=args.val_mean)
            runs = []
            for seed in seeds:
                r = run_one(autosim, mu_star, seed, args.steps, args.every)
                runs.append(r)
                print(f"{name:>18} {approx:>16} seed {seed}: mu {r['final_mu']:+.3f} sigma {r['final_sigma']:.3f} "
                      f"|mu-mu*| {r['final_err']:.3f} (worst last quarter {r['worst_err_last_quarter']:.3f}, "
                      f"first <0.1 at {r['first_within_0_1']}) cg conv {r['cg_converged']:.2f} "
                      f"{r['seconds']:.1f}s", flush=True)
            entry["runs"][approx] = {"mu_star": mu_star, "seconds_incl_compile": time.perf_counter() - t0,
                                     "seeds": runs, "all_within_0_1": all(r["final_err"] < 0.1 for r in runs)}
        results["candidates"][name if args.val_mean == 2.0 else f"{name}_val{args.val_mean:g}"] = entry
        results.update(benchmark="toy_defaults", date=datetime.date.today().isoformat(),
                       jax_version=jax.__version__, device=str(jax.devices()[0]), host=platform.processor() or
                       platform.machine(), cpu_count=os.cpu_count(), old_defaults=OLD)
        results.setdefault("commands", [])
        cmd = command_line(__file__, argv)
        if cmd not in results["commands"]:
            results["commands"].append(cmd)
        os.makedirs(os.path.dirname(args.out), exist_ok=True)
        _dump(results, args.out)

    print("\ncandidate | approximation | final |mu - mu*| per seed | all < 0.1")
    for name, entry in results["candidates"].items():
        for approx, r in entry["runs"].items():
            errs = " ".join(f"{s['final_err']:.3f}" for s in r["seeds"])
            print(f"{name} | {approx} | {errs} | {r['all_within_0_1']}")


if __name__ == "__main__":
    main()
