"""Would mirrored (antithetic) scenes give the psi step more signal? (issue 13, measured before built)

The score-function term of Eq. 11-13b, ``(1/K) sum_k (c_k - b_k) grad_psi log q(s_k)``, draws the
K scenes independently. On clevr-seg most of its variance sits on fields whose per-step SNR is
far below 1 (positions 0.017 at gpu size, ``baseline_variance.py``), and no control variate
helps, because the variance lives in ``c_k s_k`` itself. Mirrored sampling is the other classic
remedy (antithetic variates; mirrored sampling in evolution strategies): draw K/2 scenes and
pair each with its mirror image, ``u' = 2 loc - u`` in the pre-image of every mirrored normal
field (the same law, so the estimate stays unbiased), every other field shared within the pair.
For a ``loc`` coordinate the pair's term is then ``(c_k - c_k') s_k``: whatever the pair
shares, every categorical field included, cancels out of it.

This draws ``--estimates`` independent steps' samples at one ``(psi, theta)`` (the start psi and
the first step's theta), each twice: K independent scenes with the library's leave-one-out
baseline, and K/2 mirrored pairs with a leave-one-pair-out baseline (the pair partner is not
independent of the sample). Both designs are rendered with the same render seeds; it reports the
variance of the two estimates over the estimates, summed per field, as a ratio (below 1: the
mirrored design has more signal per step for the same K renders).

Usage (2-core CPU, about 2 min each)::

    python benchmarks/antithetic_variance.py --experiment clevr-seg --size cpu --estimates 48 \\
        --out benchmarks/results/baseline_variance/antithetic_clevr-seg_cpu
    python benchmarks/antithetic_variance.py --experiment clevr-seg --size cpu --estimates 48 --mirror position \\
        --out benchmarks/results/baseline_variance/antithetic_position_clevr-seg_cpu

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
from baseline_variance import (
    reward_reader,  # every c_k and score, read through the Distribution contract
)
from hypergradient_quality import field_slices  # the same field order as ravel_pytree(psi)
from provenance import command_line  # the record's command, quoted for a shell
from psi_learning import job_setup  # the experiment's setup with a render pool of its own

import autosim_jax as asj


def mirror(scenes: dict, psi: dict, ranges: dict, fields) -> dict:
    """Each scene of ``scenes`` with the pre-image normal of every field in ``fields`` reflected
    about its ``loc`` (``bounded``'s logit map for a finite range, the identity otherwise).

    Example:
      >>> psi = {"a": asj.NormalParams(jnp.array(0.0), jnp.array(0.0))}
      >>> m = mirror({"a": jnp.array([0.5, 0.9])}, psi, {"a": (0.0, 1.0)}, ["a"])
      >>> [round(float(v), 3) for v in m["a"]]
      [0.5, 0.1]
    """
    out = dict(scenes)
    for name in fields:
        lo, hi = ranges[name]
        s, loc = scenes[name], psi[name].loc
        if np.isfinite(lo) and np.isfinite(hi):
            t = jnp.clip((s - lo) / (hi - lo), 1e-7, 1 - 1e-7)
            u = jnp.log(t) - jnp.log1p(-t)
            out[name] = lo + (hi - lo) * jnp.clip(jax.nn.sigmoid(2 * loc - u), 1e-7, 1 - 1e-7)
        elif not (np.isfinite(lo) or np.isfinite(hi)):
            out[name] = 2 * loc - s
        else:
            raise ValueError(f"field {name!r}: half-line ranges are not mirrored here")
    return out


def pair_estimate(c: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """``(1/K) sum_k (c_k - b_k) s_k`` for K/2 pairs stored adjacently, ``b_k`` the mean reward
    of the other pairs (leave one pair out: unbiased, since the pairs are independent).

    Example:
      >>> pair_estimate(np.array([1.0, 3.0, 5.0, 7.0]), np.array([[1.0], [-1.0], [1.0], [-1.0]])).tolist()
      [-1.0]
    """
    k = len(c)
    pair_sum = c.reshape(-1, 2).sum(1)
    baseline = np.repeat((pair_sum.sum() - pair_sum) / (k - 2), 2)
    return ((c - baseline)[:, None] * scores).mean(0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--experiment", default="clevr-seg")
    p.add_argument("--size", default="cpu", choices=("cpu", "gpu"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--estimates", type=int, default=48)
    p.add_argument("--mirror", default=None, help="comma list of normal fields to mirror (default: all of them)")
    p.add_argument("--render-workers", type=int, default=1)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    jax.config.update("jax_default_matmul_precision", "highest")
    t0 = time.perf_counter()
    spec = {"experiment": args.experiment, "seed": args.seed, "size": args.size, "index": 0,
            "render_workers": args.render_workers}
    with job_setup(spec) as setup:
        dist, sim, k = setup.simulator.distribution, setup.simulator, setup.config.dataset_size
        if k % 2:
            p.error(f"K = {k} is odd; mirrored pairs need an even K")
        psi = dist.init()
        normal = [f for f, v in psi.items() if isinstance(v, asj.NormalParams)]
        fields = normal if args.mirror is None else args.mirror.split(",")
        if set(fields) - set(normal):
            p.error(f"--mirror {sorted(set(fields) - set(normal))}: not normal fields of psi ({normal})")
        ranges = {f.name: (f.low, f.high) for f in sim.renderer.schema.fields}
        _, state, _, read = reward_reader(setup, args.seed)  # the first step's theta, as the run has it
        rows = {"independent": [], "mirrored": []}
        for i in range(args.estimates):
            iid = dist.sample(jax.random.PRNGKey(10_000 + i), psi, k)
            half = jax.tree.map(lambda x: x[: k // 2], iid)
            twin = mirror(half, psi, ranges, fields)
            pairs = jax.tree.map(lambda a, b: jnp.stack([a, b], 1).reshape((k, *a.shape[1:])), half, twin)
            for design, scenes in (("independent", iid), ("mirrored", pairs)):
                x, y = sim.render(scenes, jnp.uint32(50_000 + i))
                c, s = read(scenes, x, y, state.theta)
                if design == "independent":
                    rows[design].append(((c - (c.sum() - c) / (k - 1))[:, None] * s).mean(0))
                else:
                    rows[design].append(pair_estimate(c, s))
            print(f"[{time.perf_counter() - t0:5.0f}s] estimate {i + 1}/{args.estimates}", flush=True)
    var = {d: np.stack(r).var(0, ddof=1) for d, r in rows.items()}
    mean = {d: np.stack(r).mean(0) for d, r in rows.items()}
    per_field = {}
    for field, sl in field_slices(psi).items():
        per_field[field] = {"variance_ratio_mirrored": float(var["mirrored"][sl].sum() / var["independent"][sl].sum()),
                            **{f"snr_{d}": float((mean[d][sl] ** 2).sum() / var[d][sl].sum()) for d in rows}}
    result = {"benchmark": "antithetic_variance", "date": datetime.date.today().isoformat(),
              "command": command_line(__file__, argv),
              "device": str(jax.devices()[0]), "jax_version": jax.__version__,
              "precision": "float32 estimates (matmul precision highest), ratios in float64",
              "experiment": args.experiment, "size": args.size, "seed": args.seed, "K": k,
              "estimates": args.estimates, "mirrored_fields": fields,
              "variance_ratio_mirrored_all": float(var["mirrored"].sum() / var["independent"].sum()),
              "fields": per_field, "seconds": time.perf_counter() - t0}
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump(result, f, indent=1)
    plot(result, args.out + ".png")
    for field, r in per_field.items():
        print(f"{field:>12}: variance mirrored / independent {r['variance_ratio_mirrored']:.2f}")
    print(f"all of psi: {result['variance_ratio_mirrored_all']:.2f}")
    return 0


def plot(result: dict, path: str) -> None:
    from matplotlib.figure import Figure

    fields = list(result["fields"])
    fig = Figure(figsize=(1.0 + 0.55 * len(fields), 3.6))
    ax = fig.add_subplot(1, 1, 1)
    ratios = [result["fields"][f]["variance_ratio_mirrored"] for f in fields]
    ax.bar(range(len(fields)), ratios, color=["tab:green" if r < 1 else "tab:red" for r in ratios])
    ax.axhline(1, color="k", lw=0.8)
    ax.set_yscale("log")
    ax.set_xticks(range(len(fields)), fields, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("variance, mirrored / independent")
    ax.set_title(f"{result['experiment']} ({result['size']}, K = {result['K']}, {result['estimates']} estimates): "
                 f"mirrored {', '.join(result['mirrored_fields'])}", fontsize=8)
    fig.savefig(path, dpi=110, bbox_inches="tight")


if __name__ == "__main__":
    raise SystemExit(main())
