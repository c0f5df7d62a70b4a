"""What does the truncated CG solve cost the hypergradient, against the step's own noise? (issue 13, the solve)

The experiments' exact-quadratic step solves ``(G + lambda I) u = g_val`` (Eq. 13a) with a few CG
iterations and almost never meets ``cg_tol`` (digits-sim2real cpu: 0 of 240 steps, median relative
residual 0.17). Whether that matters depends on what reaches psi: ``dL/dpsi = -S(u)`` (Eq. 12), whose
error from a truncated ``u`` can be small or large against the noise of one step's renders.

At psi points of the experiment's own run (``--points``: psi after that many steps) this draws
``--draws`` steps' worth of renders, fine-tunes the step's theta on each as the run does (from the
model's initialisation when the experiment resets theta every step, else from the run's theta
there), and computes the hypergradient on the *same* renders and theta with every CG budget of
``--maxiters`` (``cg_tol`` set to ``--tol`` so that each runs its budget; the largest budget is
the reference), and with each damping of ``--dampings`` solved with the largest budget (what a
converged solve at another damping points to). Per point and solve, over the draws:

* ``relative_residual``: median and max of ``||g_val - (G + lambda I) u|| / ||g_val||``;
* ``truncation``: sqrt(mean_i ||g_k,i - g_ref,i||^2 / mean_i ||g_ref,i||^2), one step's error from
  the truncated solve, relative to one step's hypergradient;
* ``bias``: ||mean_i g_k,i - mean_i g_ref,i|| / ||mean_i g_ref,i||, the part of that error which
  does not average out over steps, with the standard error of the paired difference
  (``bias_se``; noise alone makes ``bias`` about ``bias_se``, so ``sqrt(bias^2 - bias_se^2)``
  estimates the systematic part); and ``cos_mean``, the cosine between the two mean directions;
* ``sign_agreement``: of the coordinates whose reference mean is more than 2 standard errors from
  zero, the share whose mean keeps its sign (Adam moves each coordinate by about its sign);
* ``fields_bias``: the bias per field of psi, relative to that field's own mean (which fields a
  solve redirects; Adam scales each coordinate by its own history, so a small field counts);
* ``noise`` (per point): sqrt(E||g_ref,i - mean||^2 / ||mean||^2), one step's render noise relative
  to the mean (the bias above is the number to set against ``noise / sqrt(steps)``); per solve, the
  same figure of its own hypergradients (is a truncated solve less noisy for its length?).

With ``--newton-ratio``, also per point and damping (the run's and each of ``--dampings``, solved
with the largest budget): Levenberg-Marquardt's reduction ratio of the damped Newton step on the
step's training loss, ``rho = (L(theta + p) - L(theta)) / (q(p) - q(0))`` with ``p = -(G + lambda
I)^-1 grad L`` and ``q`` the undamped quadratic model (``newton_ratio``). The Newton step is the
local model the hypergradient rests on (Eq. 6); rho near 1 says it is trusted at that step length.
An adaptive damping in Marquardt's manner lowers lambda where rho > 3/4 and raises it where
rho < 1/4: the medians per point tell what such a rule would choose, before it is built.

Usage (2-core CPU)::

    python benchmarks/solve_quality.py --experiment digits-sim2real --size cpu --seed 0 \\
        --points 0,30,60,120,240 --draws 16 --maxiters 3,10,30,100,300 --dampings 0.001,0.03,0.1,1 \\
        --out benchmarks/results/solve_quality/digits-sim2real_cpu_seed0          # 2.5 min

Writes ``OUT.json`` (device, versions, precision, command, date, every figure) and ``OUT.png``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time

import jax
import numpy as np
from jax.flatten_util import ravel_pytree

import autosim_jax as asj
from hypergradient_quality import field_slices
from init_bias import parse_config
from provenance import command_line  # the record's command, quoted for a shell
from psi_learning import job_setup


def compare(grads: dict[str, np.ndarray], reference: str, slices: dict[str, slice] | None = None) -> dict:
    """Each solve's hypergradients (``draws x d``, the same draws) against the ``reference`` solve's
    (with ``slices``, field name -> coordinates, also each field's bias relative to its own mean).

    Example:
      >>> rng = np.random.default_rng(0)
      >>> ref = 1.0 + rng.normal(size=(400, 4))           # mean (1, 1, 1, 1), noise 1 per coordinate
      >>> out = compare({"cg10": ref + 0.5, "cg300": ref}, "cg300")   # a constant error of 0.5 per coordinate
      >>> round(out["solves"]["cg10"]["bias"], 1), round(
      ...     out["solves"]["cg10"]["bias_se"], 6)   # |0.5 (1,1,1,1)| / |mean|
      (0.5, 0.0)
      >>> round(out["noise"], 1), out["solves"]["cg300"]["truncation"]   # sqrt(4 x 1) / |mean| = 1
      (1.0, 0.0)
      >>> round(out["solves"]["cg10"]["noise"], 1)   # the same noise about a mean 1.5 times as long
      0.7
    """
    ref = grads[reference]
    n = ref.shape[0]
    mean_ref = ref.mean(0)
    se_ref = ref.std(0, ddof=1) / np.sqrt(n)
    significant = np.abs(mean_ref) > 2 * se_ref
    norm_ref = float(np.linalg.norm(mean_ref))
    out = {"noise": float(np.sqrt(((ref - mean_ref) ** 2).sum(1).sum() / (n - 1)) / norm_ref),
           "mean_norm": norm_ref, "significant_coordinates": int(significant.sum()), "solves": {}}
    for label, g in grads.items():
        diff = g - ref
        mean_k = g.mean(0)
        out["solves"][label] = {
            # its own render noise against its own mean: a truncated solve that damps the noisy
            # low-curvature directions would show a lower figure than the reference's `noise`
            "noise": float(np.sqrt(((g - mean_k) ** 2).sum(1).sum() / (n - 1)) / (np.linalg.norm(mean_k) + 1e-30)),
            "truncation": float(np.sqrt((diff ** 2).sum(1).mean() / (ref ** 2).sum(1).mean())),
            "bias": float(np.linalg.norm(diff.mean(0))) / norm_ref,
            "bias_se": float(np.sqrt((diff.var(0, ddof=1) / n).sum())) / norm_ref,
            "cos_mean": float(mean_k @ mean_ref / (np.linalg.norm(mean_k) * norm_ref + 1e-30)),
            "sign_agreement": (float(np.mean(np.sign(mean_k[significant]) == np.sign(mean_ref[significant])))
                               if significant.any() else float("nan")),
        }
        if slices:
            out["solves"][label]["fields_bias"] = {
                f: float(np.linalg.norm(diff[:, sl].mean(0)) / (np.linalg.norm(mean_ref[sl]) + 1e-30))
                for f, sl in slices.items()}
    return out


def newton_ratio_fn(inner, task, config, maxiter: int):
    """``(theta, inputs, labels, damping) -> (rho, predicted, actual)`` of the damped Newton step on
    the renders' mean training loss (see the module's docstring): the curvature on the run's
    curvature sub-batch and the gradient on every render, as the step's Newton point does."""
    n = config.curvature_batch_size or config.dataset_size

    def fn(theta, inputs, labels, damping):
        loss, grad = jax.value_and_grad(inner.mean_loss)(theta, inputs, labels)
        op = asj.curvature_operator(config.curvature, inner.predict, task.per_sample_loss, theta,
                                    inputs[:n], labels[:n])
        d = asj.solve_damped(op, grad, damping, tol=1e-7, maxiter=maxiter).x
        flat_d, flat_g = ravel_pytree(d)[0], ravel_pytree(grad)[0]
        predicted = -flat_g @ flat_d + 0.5 * flat_d @ ravel_pytree(op.matvec(d))[0]
        actual = inner.mean_loss(jax.tree.map(jax.numpy.subtract, theta, d), inputs, labels) - loss
        return actual / predicted, predicted, actual

    return fn


def summarise_ratio(draws: np.ndarray) -> dict:
    """Median and quartiles of ``rho`` over the draws (rows ``(rho, predicted, actual)``), the median
    predicted and actual changes of the loss, and the share of draws in Marquardt's bands.

    Example:
      >>> out = summarise_ratio(np.array([[0.9, -1.0, -0.9], [0.5, -1.0, -0.5], [0.1, -2.0, -0.2]]))
      >>> out["rho_median"], out["share_above_0.75"], out["share_below_0.25"]
      (0.5, 0.3333333333333333, 0.3333333333333333)
    """
    rho = draws[:, 0]
    return {"rho_median": float(np.median(rho)), "rho_q25": float(np.quantile(rho, 0.25)),
            "rho_q75": float(np.quantile(rho, 0.75)), "predicted_median": float(np.median(draws[:, 1])),
            "actual_median": float(np.median(draws[:, 2])), "share_above_0.75": float(np.mean(rho > 0.75)),
            "share_below_0.25": float(np.mean(rho < 0.25))}


def measure(args, setup, t0: float, save=lambda result: None) -> dict:
    """The figures of every point; ``save(result)`` after each one, so a run cut short keeps its points."""
    config = setup.config.replace(**parse_config(args.config))
    budgets = sorted(int(k) for k in args.maxiters.split(","))
    dampings = [float(d) for d in args.dampings.split(",") if d]
    # label -> (damping, CG budget): every budget at the run's damping, each other damping with the largest budget
    solves = {f"cg{k}": (config.damping, k) for k in budgets}
    solves.update({f"damping{d:g}": (d, budgets[-1]) for d in dampings})
    reference = f"cg{budgets[-1]}"
    run = setup.make_autosimulate(0, config)
    solvers = {label: setup.make_autosimulate(0, config.replace(damping=d, cg_maxiter=k, cg_tol=args.tol))
               for label, (d, k) in solves.items()}
    simulate, finetune = jax.jit(run.inner.simulate), jax.jit(run.inner.finetune)
    ratio = jax.jit(newton_ratio_fn(run.inner, setup.task, config, budgets[-1]))
    ratio_dampings = sorted({config.damping, *dampings}) if args.newton_ratio else []
    points = sorted(int(p) for p in args.points.split(","))
    fresh = config.theta_reset_every == 1  # else the draws fine-tune the run's own theta at that point

    slices = field_slices(setup.simulator.distribution.init())
    result = {"benchmark": "solve_quality", "date": datetime.date.today().isoformat(),
              "device": str(jax.devices()[0]), "jax_version": jax.__version__, "autosim_jax": asj.__version__,
              "precision": "float32, default matmul", "experiment": args.experiment, "size": args.size,
              "seed": args.seed, "draws": args.draws, "maxiters": budgets, "dampings": dampings, "tol": args.tol,
              "newton_ratio_dampings": ratio_dampings,
              "reference": reference, "solves": {label: {"damping": d, "cg_maxiter": k}
                                                 for label, (d, k) in solves.items()},
              "config_changes": parse_config(args.config), "config": config.to_dict(),
              "theta": "fresh (the initialisation fine-tuned)" if fresh else "the run's theta fine-tuned",
              "points": {}}

    def point_figures(psi, theta_start, opt_start) -> dict:
        grads = {label: [] for label in solves}
        residual = {label: [] for label in solves}
        rho = {d: [] for d in ratio_dampings}
        for r in range(args.draws):
            scenes, x, y = simulate(jax.random.PRNGKey(10_000 + r), psi)
            theta, _, _ = finetune(theta_start, opt_start, x, y, jax.random.PRNGKey(20_000 + r))
            for label, solver in solvers.items():
                hg = solver.hypergradient(psi, theta, scenes, x, y)
                grads[label].append(np.asarray(ravel_pytree(hg.grad_psi)[0], np.float64))
                residual[label].append(float(hg.solve.relative_residual))
            for d in ratio_dampings:
                rho[d].append([float(v) for v in ratio(theta, x, y, d)])
        entry = compare({label: np.stack(v) for label, v in grads.items()}, reference, slices)
        if rho:
            entry["newton_ratio"] = {f"{d:g}": summarise_ratio(np.asarray(v)) for d, v in rho.items()}
        for label, res in residual.items():
            entry["solves"][label].update(relative_residual_median=float(np.median(res)),
                                          relative_residual_max=float(np.max(res)),
                                          met_preset_tol=int((np.asarray(res) <= config.cg_tol).sum()))
        return entry

    # The experiment's own run, measured as it reaches each point (its psi and the theta a step there
    # starts from); the draws use their own keys, so the run is the one `autosim run` would take.
    state = run.init(args.seed)
    for step in range(points[-1] + 1):
        if step in points:
            print(f"[{time.perf_counter() - t0:5.0f}s] the run reached step {step}", flush=True)
            theta = run.inner.theta0 if fresh else state.theta
            opt = run.inner.init_opt(theta) if fresh else state.inner_opt_state
            entry = point_figures(state.psi, theta, opt)
            result["points"][str(step)] = entry
            line = ", ".join(f"{label}: res {v['relative_residual_median']:.3g} trunc {v['truncation']:.3f} "
                             f"bias {v['bias']:.3f}+-{v['bias_se']:.3f} cos {v['cos_mean']:.3f} "
                             f"sign {v['sign_agreement']:.2f} noise {v['noise']:.2f}"
                             for label, v in entry["solves"].items() if label != reference)
            print(f"[{time.perf_counter() - t0:5.0f}s] step {step}: noise {entry['noise']:.2f}; {line}", flush=True)
            if "newton_ratio" in entry:
                print(f"[{time.perf_counter() - t0:5.0f}s] step {step}: Newton step's rho (median [q25, q75]) " +
                      ", ".join(f"damping {d}: {v['rho_median']:.2f} [{v['rho_q25']:.2f}, {v['rho_q75']:.2f}]"
                                for d, v in entry["newton_ratio"].items()), flush=True)
            result["seconds"] = time.perf_counter() - t0
            save(result)
        if step < points[-1]:
            state, _ = run.step(state)
    return result


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dampings = result.get("dampings") or []
    ratio = bool(result.get("newton_ratio_dampings"))
    panels = 3 + bool(dampings) + ratio
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 4.2))
    budgets = result["maxiters"][:-1]
    own = result["config"]["damping"]
    for step, entry in result["points"].items():
        s = {int(label[2:]): v for label, v in entry["solves"].items() if label.startswith("cg")}
        line, = axes[0].plot(budgets, [s[k]["relative_residual_median"] for k in budgets], "o-",
                             label=f"psi after {step} steps")
        axes[1].plot(budgets, [s[k]["truncation"] for k in budgets], "o-", color=line.get_color())
        axes[1].axhline(entry["noise"], color=line.get_color(), ls=":", lw=1)
        axes[2].errorbar(budgets, [s[k]["bias"] for k in budgets], [s[k]["bias_se"] for k in budgets],
                         fmt="o-", color=line.get_color(), capsize=3)
        if dampings:  # each damping's converged vector against the run's damping's (0 there by definition)
            ds = sorted([own, *dampings])
            d_entries = [entry["solves"][result["reference"] if d == own else f"damping{d:g}"] for d in ds]
            axes[3].errorbar(ds, [e["bias"] for e in d_entries], [e["bias_se"] for e in d_entries], fmt="o-",
                             color=line.get_color(), capsize=3)
        if ratio:
            rows = sorted((float(d), v) for d, v in entry["newton_ratio"].items())
            med = [v["rho_median"] for _, v in rows]
            axes[-1].errorbar([d for d, _ in rows], med, [[m - v["rho_q25"] for m, (_, v) in zip(med, rows)],
                                                          [v["rho_q75"] - m for m, (_, v) in zip(med, rows)]],
                              fmt="o-", color=line.get_color(), capsize=3)
    axes[0].set(xscale="log", yscale="log", xlabel="CG iterations", ylabel="relative residual (median over draws)",
                title=f"the solve (damping {result['config']['damping']:g})")
    axes[1].set(xscale="log", xlabel="CG iterations", ylabel="||g_k - g_ref|| / ||g_ref|| (one step)",
                title="one step's error from truncation\n(dotted: one step's render noise / ||mean||)")
    axes[2].set(xscale="log", xlabel="CG iterations", ylabel="||mean g_k - mean g_ref|| / ||mean g_ref||",
                title="the truncation's systematic part (+- s.e.)")
    if dampings:
        axes[3].set(xscale="log", xlabel="damping (solved to convergence)",
                    ylabel="||mean g_d - mean g_ref|| / ||mean g_ref||",
                    title=f"other dampings against {own:g} (+- s.e.)")
        axes[3].sharey(axes[2])  # the truncation's and the damping's changes on one scale
    if ratio:
        for level in (0.25, 0.75):
            axes[-1].axhline(level, color="grey", ls=":", lw=1)
        axes[-1].set(xscale="log", yscale="symlog", xlabel="damping (solved)",
                     ylabel="rho = actual / predicted loss change",
                     title="the Newton step on the training loss\n(median, quartiles; dotted: Marquardt's 1/4, 3/4)")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{result['experiment']} ({result['size']}), seed {result['seed']}: the hypergradient with k CG "
                 f"iterations against {result['maxiters'][-1]} ({result['draws']} draws per psi, float32)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--experiment", default="digits-sim2real")
    p.add_argument("--size", default="cpu", choices=("cpu", "gpu"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--points", default="0,30,60,120,240", help="psi after these many steps of the experiment's run")
    p.add_argument("--draws", type=int, default=16, help="steps' renders per psi point")
    p.add_argument("--maxiters", default="3,10,30,100,300", help="CG budgets; the largest is the reference")
    p.add_argument("--dampings", default="", help="other dampings, each solved with the largest budget and compared "
                                                  "with the reference (e.g. 0.001,0.1,1)")
    p.add_argument("--newton-ratio", action="store_true",
                   help="also Levenberg-Marquardt's reduction ratio of the damped Newton step on the training loss, "
                        "per point and damping (the module's docstring)")
    p.add_argument("--tol", type=float, default=1e-7, help="cg_tol of every budget (small: each runs its budget)")
    p.add_argument("--config", action="append", default=[], metavar="KEY=VALUE",
                   help="change the experiment's AutoSimConfig (repeatable), e.g. damping=0.1")
    p.add_argument("--render-workers", type=int, default=1)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    if args.draws < 2 or len(args.maxiters.split(",")) < 2:
        p.error("--draws must be >= 2 and --maxiters must name >= 2 budgets (the largest is the reference)")
    try:
        asj.AutoSimConfig().replace(**parse_config(args.config))  # a typo fails here, not after the run
    except (ValueError, TypeError) as e:
        p.error(str(e))
    t0 = time.perf_counter()
    spec = {"experiment": args.experiment, "seed": args.seed, "size": args.size, "index": 0,
            "render_workers": args.render_workers}
    command = command_line(__file__, argv)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)

    def save(result):
        with open(args.out + ".json", "w") as f:
            json.dump({**result, "command": command}, f, indent=1)

    with job_setup(spec) as setup:
        result = measure(args, setup, t0, save)
    plot(result, args.out + ".png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
