"""Would another control variate give the psi step more signal? (issue 13, measured before built)

The score-function term of Eq. 11-13b is ``(1/K) sum_k (c_k - b_k) grad_psi log q(s_k)`` with
``c_k = dl_k/dtheta . u`` (``u`` Table 1's vector). The library subtracts the leave-one-out mean
``b_k = mean_{j != k} c_j``. The variance-optimal baseline of each coordinate ``i`` weighs the
rewards by their squared scores, ``b_i = E[c s_i^2] / E[s_i^2]`` (Greensmith, Bartlett and Baxter,
JMLR 2004); estimated leave-one-out from the same step's samples it stays unbiased. Whether it
lowers the variance depends on whether ``c`` differs between samples of large and small score.

This draws ``--estimates`` independent steps' samples at one ``(psi, theta)`` (the start psi and
the theta of the experiment's first step), reads every ``c_k`` and per-sample score, and forms
from the same samples (paired):

* ``none``: no baseline; ``leave_one_out``: the library's (checked first against
  ``AutoSimulate.hypergradient`` to 1e-4 relative);
* ``optimal_loo``: the per-coordinate optimal baseline, leave-one-out;
* ``optimal_scalar_loo``: one weighted baseline ``sum_j c_j |s_j|^2 / sum_j |s_j|^2`` for all
  coordinates, leave-one-out.

It reports each estimator's variance over the estimates, summed per field, as a ratio to the
leave-one-out one (below 1: more signal per step for the same renders). ``c_k`` is read through
the public :class:`~autosim_jax.Distribution` contract: the experiment's distribution is wrapped
so that sample ``k``'s log-density gains a parameter ``tag[k]`` (zero), whose hypergradient is
then ``-c_k / K`` with no baseline.

Usage::

    python benchmarks/baseline_variance.py --experiment clevr-seg --size cpu --estimates 48 \\
        --out benchmarks/results/baseline_variance/clevr-seg_cpu          # 2-core CPU, 1 min
    python benchmarks/baseline_variance.py --experiment clevr-seg --size gpu --estimates 32 \\
        --render-workers 8 --out $OUT/clevr-seg_gpu                        # H200

Writes ``OUT.json`` (device, versions, command, date, every ratio) and ``OUT.png``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from hypergradient_quality import field_slices  # the same field order as ravel_pytree(psi)
from jax.flatten_util import ravel_pytree
from provenance import command_line  # the record's command, quoted for a shell
from psi_learning import job_setup  # the experiment's setup with a render pool of its own

import autosim_jax as asj

ESTIMATORS = ("none", "leave_one_out", "optimal_loo", "optimal_scalar_loo")


def tagged(distribution: asj.Distribution, k: int) -> asj.Distribution:
    """``distribution`` with psi ``{"psi": psi, "tag": [K] zeros}`` and ``log q(s_k) + tag[k]``."""
    return asj.Distribution(
        init=lambda: {"psi": distribution.init(), "tag": jnp.zeros((k,), jnp.float32)},
        sample=lambda key, p, n: distribution.sample(key, p["psi"], n),
        log_prob=lambda p, scenes: distribution.log_prob(p["psi"], scenes) + p["tag"])


def estimates(c: np.ndarray, scores: np.ndarray) -> dict[str, np.ndarray]:
    """Each estimator of ``(1/K) sum_k (c_k - b_k) s_k`` (``scores``: ``[K, n]``).

    Example:
      >>> c, s = np.array([1.0, 2.0, 3.0]), np.array([[1.0], [0.0], [-1.0]])
      >>> {k: float(v[0]) for k, v in estimates(c, s).items()}["leave_one_out"]
      -1.0
    """
    k = len(c)
    loo_mean = (c.sum() - c) / (k - 1)
    s2 = scores ** 2
    num, den = (c[:, None] * s2).sum(0)[None] - c[:, None] * s2, s2.sum(0)[None] - s2
    per_coord = np.where(den > 0, num / np.where(den > 0, den, 1.0), loo_mean[:, None])
    n2 = s2.sum(1)
    scalar = np.where(n2.sum() - n2 > 0, ((c * n2).sum() - c * n2) / np.maximum(n2.sum() - n2, 1e-30), loo_mean)
    return {"none": (c[:, None] * scores).mean(0),
            "leave_one_out": ((c - loo_mean)[:, None] * scores).mean(0),
            "optimal_loo": ((c[:, None] - per_coord) * scores).mean(0),
            "optimal_scalar_loo": ((c - scalar)[:, None] * scores).mean(0)}


def reward_reader(setup, seed: int):
    """``(plain, state, psi, read)``: the experiment's AutoSimulate, its state after the first
    step, the start psi, and ``read(scenes, x, y, theta)`` -> ``(c [K], scores [K, n])``, every
    sample's reward ``c_k`` (through :func:`tagged`) and score at that psi, in float64."""
    cfg = setup.config
    k = cfg.dataset_size
    dist = setup.simulator.distribution
    plain = setup.make_autosimulate(seed, cfg)
    probe = setup.make_autosimulate(seed, cfg.replace(baseline=None),
                                    simulator=asj.Simulator(tagged(dist, k), setup.simulator.renderer,
                                                            pool=setup.simulator.pool))
    state, _ = plain.step(plain.init(seed))  # theta of the first step, as the run has it
    psi = dist.init()
    psi_tagged = {"psi": psi, "tag": jnp.zeros((k,), jnp.float32)}
    flat_scores = jax.jit(jax.vmap(
        lambda s: ravel_pytree(jax.grad(lambda q: dist.log_prob(q, jax.tree.map(lambda x: x[None], s))[0])(psi))[0]))

    def read(scenes, x, y, theta):
        c = -k * np.asarray(probe.hypergradient(psi_tagged, theta, scenes, x, y).grad_psi["tag"], np.float64)
        return c, np.asarray(flat_scores(scenes), np.float64)

    return plain, state, psi, read


def sample_estimates(setup, seed: int, n: int, t0: float, theta_per_step: bool = False
                     ) -> tuple[dict, float, dict, int]:
    """``n`` independent steps' samples at the start psi: every estimator of :data:`ESTIMATORS`
    on each, and the largest relative difference between the reconstructed leave-one-out
    estimate and the library's. theta is the first step's for every estimate, or with
    ``theta_per_step`` a fresh one per estimate, fine-tuned on that estimate's renders from
    ``theta0`` (a step of ``theta_reset_every=1``), so that the estimates vary as steps do."""
    plain, state, psi, read = reward_reader(setup, seed)
    k = setup.config.dataset_size
    simulate = jax.jit(plain.inner.simulate)
    rows = {name: [] for name in ESTIMATORS}
    worst = 0.0
    finetune = jax.jit(plain.inner.finetune)
    for i in range(n):
        scenes, x, y = simulate(jax.random.PRNGKey(10_000 + i), psi)
        if theta_per_step:
            theta0 = plain.inner.theta0
            theta, _, _ = finetune(theta0, plain.inner.init_opt(theta0), x, y, jax.random.PRNGKey(20_000 + i))
            state = state._replace(theta=theta)
        c, scores = read(scenes, x, y, state.theta)
        est = estimates(c, scores)
        library = -np.asarray(ravel_pytree(plain.hypergradient(psi, state.theta, scenes, x, y).grad_psi)[0])
        worst = max(worst, float(np.abs(est["leave_one_out"] - library).max() / np.abs(library).max()))
        for name in ESTIMATORS:
            rows[name].append(est[name])
        print(f"[{time.perf_counter() - t0:5.0f}s] estimate {i + 1}/{n}", flush=True)
    return rows, worst, psi, k


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--experiment", default="clevr-seg")
    p.add_argument("--size", default="cpu", choices=("cpu", "gpu"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--estimates", type=int, default=24)
    p.add_argument("--render-workers", type=int, default=1, help="render pool processes (1: render in-process)")
    p.add_argument("--theta", default="first_step", choices=("first_step", "per_step"),
                   help="the first step's theta for every estimate, or a fresh one fine-tuned on each "
                        "estimate's renders (as every step of theta_reset_every=1 has)")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    # Full float32 dots: the check below compares two programs, which TF32 (the GPU default)
    # would make differ by ~1e-3; the variances do not need the speed.
    jax.config.update("jax_default_matmul_precision", "highest")
    t0 = time.perf_counter()
    spec = {"experiment": args.experiment, "seed": args.seed, "size": args.size, "index": 0,
            "render_workers": args.render_workers}
    with job_setup(spec) as setup:
        rows, worst, psi, k = sample_estimates(setup, args.seed, args.estimates, t0, args.theta == "per_step")
    if worst > 1e-4:
        raise AssertionError(f"the reconstructed leave-one-out estimate differs from the library's by {worst:.2e}")
    slices = field_slices(psi)
    var = {name: np.stack(r).var(0, ddof=1) for name, r in rows.items()}
    mean = np.stack(rows["leave_one_out"]).mean(0)
    fields = {}
    for field, sl in slices.items():
        base = var["leave_one_out"][sl].sum()
        fields[field] = {"variance_leave_one_out": float(base),
                         "snr_leave_one_out": float((mean[sl] ** 2).sum() / base),
                         **{f"variance_ratio_{n}": float(var[n][sl].sum() / base) for n in ESTIMATORS}}
    total = {n: float(var[n].sum() / var["leave_one_out"].sum()) for n in ESTIMATORS}
    result = {"benchmark": "baseline_variance", "date": datetime.date.today().isoformat(),
              "command": command_line(__file__, argv), "device": str(jax.devices()[0]),
              "jax_version": jax.__version__,
              "precision": "float32 estimates (matmul precision highest), ratios in float64",
              "experiment": args.experiment, "size": args.size, "seed": args.seed, "K": k, "theta": args.theta,
              "estimates": args.estimates, "check_max_relative_error_leave_one_out": worst,
              "variance_leave_one_out_all": float(var["leave_one_out"].sum()),
              "snr_leave_one_out_all": float((mean ** 2).sum() / var["leave_one_out"].sum()),
              "variance_ratio_all": total, "fields": fields, "seconds": time.perf_counter() - t0}
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump(result, f, indent=1)
    plot(result, args.out + ".png")
    print("variance / leave-one-out's, all of psi:", {n: round(v, 3) for n, v in total.items()})
    return 0


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fields = list(result["fields"])
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * len(fields), 3.8))
    width = 0.8 / len(ESTIMATORS)
    for j, name in enumerate(ESTIMATORS):
        ax.bar(np.arange(len(fields)) + j * width, [result["fields"][f][f"variance_ratio_{name}"] for f in fields],
               width, label=f"{name} (all: {result['variance_ratio_all'][name]:.2f})")
    ax.axhline(1, color="k", lw=0.6)
    ax.set_yscale("log")
    ax.set_xticks(np.arange(len(fields)) + 0.4, fields, rotation=45, ha="right")
    ax.set_ylabel("variance / leave-one-out's")
    ax.set_title(f"{result['experiment']} {result['size']}, K = {result['K']}, {result['estimates']} estimates "
                 f"at the start ({result['date']})", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    raise SystemExit(main())
