"""Is the corner-ward position signal a short-horizon effect? (issue 13, clevr-seg)

With the object positions as 6-bin histograms (``from_schema`` override ``{"bins": 6}``) every
clevr-seg run moves mass *into* the start's corner bin, with a warm or a fresh theta
(``docs/learning.md``, session 7), while the target spreads the objects over the floor and a
model trained on the target's positions is better. One reading: the one-step lookahead of
Eq. 13 scores a psi by a model fine-tuned for a few epochs, and concentrated scenes are
easier to fit in a few epochs. If so, the sign should flip when theta is fine-tuned longer.

This measures exactly a ``theta_reset_every=1`` step at the start psi, for fine-tuning
lengths ``--epochs`` (E): each estimate renders K fresh scenes, fine-tunes a fresh theta on
them for E epochs, and takes the hypergradient there (``AutoSimulate.hypergradient``). Per
estimate it records the change of the corner bins' probability along the descent direction
(``d p_corner = p_c (u_c - sum_j p_j u_j)`` for ``u = -grad`` of the position logits, averaged
over the histogram rows, i.e. objects x axes) and reports its mean, standard error and t
statistic over ``--estimates`` (positive: the step moves mass into the corner).

With ``--psi-from JSON:VARIANT:SEED --psi-steps 0,20,40`` the same is measured at the psi a
``psi_learning.py`` histogram run held after those steps (the corner stays the start's most
likely bin), to follow the signal along a run.

Usage (H200, 16 host cores):
  python benchmarks/position_signal.py --size gpu --epochs 2,8,32 --estimates 16 --render-workers 14 --out $OUT/ps
  python benchmarks/position_signal.py --size gpu --epochs 2 --estimates 16 --render-workers 14 --psi-steps 0,20,40,60 \
      --psi-from benchmarks/results/psi_learning/clevr-seg_gpu_bins6_reset1.json:bins6_reset1:0 --out $OUT/ps_run
  python benchmarks/position_signal.py --size cpu --epochs 1,2 --estimates 2 --out /tmp/ps   # smoke

Writes ``OUT.json`` (device, versions, command, date, every estimate) and ``OUT.png``.
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

import autosim_jax as asj
from autosim_jax.render_pool import make_render_pool
from field_drift import read_record  # psi_learning.py's records, compressed or not
from provenance import command_line  # the record's command, quoted for a shell


def corner_mass_change(logits: np.ndarray, grad: np.ndarray, bins: int, corner: np.ndarray | None = None) -> float:
    """Mean over histogram rows of ``d p_c`` along ``-grad``; ``c``: row ``r``'s bin ``corner[r]``
    (default: each row's most likely bin).

    Example:
      >>> corner_mass_change(np.array([0.0, 2.0]), np.array([0.0, -1.0]), 2) > 0  # descent raises bin 1
      True
    """
    p = row_probabilities(logits, bins)
    u = -grad.reshape(-1, bins)
    dp = p * (u - (p * u).sum(1, keepdims=True))
    c = p.argmax(1) if corner is None else np.asarray(corner)
    return float(dp[np.arange(len(c)), c].mean())


def row_probabilities(logits: np.ndarray, bins: int) -> np.ndarray:
    """Each histogram row's bin probabilities (softmax of its ``bins`` logits)."""
    z = np.asarray(logits).reshape(-1, bins)
    p = np.exp(z - z.max(1, keepdims=True))
    return p / p.sum(1, keepdims=True)


def psi_from_run(path: str, variant: str, seed: int, step: int, like):
    """The psi a ``psi_learning.py`` run held after ``step`` outer steps (0: ``like``, the start).

    ``like`` is a psi of the same family (its structure and shapes); the run stores each leaf
    flattened under its ``jax.tree_util.keystr`` path.
    """
    if step == 0:
        return like
    runs = [r for r in read_record(path)["runs"] if r["variant"] == variant and r["seed"] == seed]
    if not runs:
        raise SystemExit(f"{path} has no run of variant {variant!r}, seed {seed}.")
    flat = runs[0]["psi"][step - 1]
    return jax.tree_util.tree_map_with_path(
        lambda p, leaf: jnp.asarray(flat[jax.tree_util.keystr(p)], leaf.dtype).reshape(leaf.shape), like)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", default="cpu", choices=("cpu", "gpu"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bins", type=int, default=6)
    p.add_argument("--epochs", default="2,8,32", help="fine-tuning epochs of the fresh theta (comma list)")
    p.add_argument("--estimates", type=int, default=16)
    p.add_argument("--approximations", default="exact_quadratic,linear")
    p.add_argument("--render-workers", type=int, default=1)
    p.add_argument("--psi-from", default=None, metavar="JSON:VARIANT:SEED",
                   help="take psi from this psi_learning.py run (a histogram variant with --bins bins) "
                        "at each of --psi-steps instead of the start")
    p.add_argument("--psi-steps", default="0", help="outer steps of that run (0: the start)")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    t0 = time.perf_counter()

    exp = asj.get_experiment("clevr-seg")
    setup = exp.build(renderer="clevr", seed=args.seed, size=args.size)
    start = dict(asj.experiments.CLEVR_START)
    start["position"] = {**start["position"], "bins": args.bins}
    pool = (make_render_pool(setup.simulator.renderer, workers=args.render_workers, backend="process")
            if args.render_workers > 1 else None)
    sim = asj.Simulator(asj.from_schema(setup.simulator.renderer.schema, start), setup.simulator.renderer, pool=pool)
    start_psi = sim.distribution.init()
    logits = np.asarray(start_psi["position"].logits)
    corner = logits.reshape(-1, args.bins).argmax(1)  # the start's corner bins, at every psi
    source = args.psi_from.rsplit(":", 2) if args.psi_from else None
    rows, built = {}, {}
    for step in [int(t) for t in args.psi_steps.split(",")]:
        psi = (psi_from_run(source[0], source[1], int(source[2]), step, start_psi) if source else start_psi)
        for epochs in [int(e) for e in args.epochs.split(",")]:
            cfg = setup.config.replace(finetune_epochs=epochs)
            for approx in args.approximations.split(","):
                if (epochs, approx) not in built:  # built once, compiled once, for every step's psi
                    autosim = setup.make_autosimulate(args.seed, cfg, simulator=sim, approximation=approx)
                    built[epochs, approx] = autosim, jax.jit(autosim.inner.simulate), jax.jit(autosim.inner.finetune)
                autosim, simulate, finetune = built[epochs, approx]
                inner = autosim.inner
                values, val_metrics = [], []
                for i in range(args.estimates):
                    scenes, x, y = simulate(jax.random.PRNGKey(10_000 + i), psi)
                    theta, _, _ = finetune(inner.theta0, inner.init_opt(inner.theta0), x, y, jax.random.PRNGKey(i))
                    hg = autosim.hypergradient(psi, theta, scenes, x, y)
                    values.append(corner_mass_change(np.asarray(psi["position"].logits),
                                                     np.asarray(hg.grad_psi["position"].logits), args.bins, corner))
                    val_metrics.append(float(hg.val_metric))
                v = np.asarray(values)
                se = float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else float("nan")
                p_corner = float(row_probabilities(psi["position"].logits, args.bins)[np.arange(len(corner)),
                                                                                      corner].mean())
                key = f"e{epochs}/{approx}" if source is None else f"step{step}/e{epochs}/{approx}"
                rows[key] = {"step": step, "epochs": epochs, "approximation": approx, "mean": float(v.mean()),
                             "stderr": se, "t": float(v.mean() / se) if se > 0 else float("nan"),
                             "corner_probability": p_corner, "values": values,
                             "val_metric_of_theta": float(np.mean(val_metrics))}
                r = rows[key]
                print(f"[{time.perf_counter() - t0:6.0f}s] step {step}, {epochs} epochs, {approx}: p_corner "
                      f"{p_corner:.2f}, d p_corner {r['mean']:+.2e} +- {r['stderr']:.1e} (t {r['t']:+.1f}), "
                      f"val metric of theta {r['val_metric_of_theta']:.3f}", flush=True)
                write(args, setup, logits, rows, t0)  # after every row: a run cut short keeps what it measured
    if pool is not None:
        pool.close()
    plot(write(args, setup, logits, rows, t0), args.out + ".png")
    return 0


def write(args, setup, logits, rows: dict, t0: float) -> dict:
    result = {"benchmark": "position_signal", "date": datetime.date.today().isoformat(),
              "command": command_line(__file__, None), "device": str(jax.devices()[0]),
              "jax_version": jax.__version__, "precision": str(jnp.zeros(()).dtype), "size": args.size,
              "seed": args.seed, "bins": args.bins, "estimates": args.estimates, "psi_from": args.psi_from,
              "start_corner_probability": float(jax.nn.softmax(logits.reshape(-1, args.bins)).max(1).mean()),
              "config": setup.config.to_dict(), "rows": rows, "seconds": time.perf_counter() - t0}
    with open(args.out + ".json", "w") as f:
        json.dump(result, f, indent=1)
    return result


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    rows = list(result["rows"].values())
    by_step = len({r.get("step", 0) for r in rows}) > 1  # along a run: x is the step, a line per (E, approx)
    lines = sorted({(r["epochs"], r["approximation"]) if by_step else r["approximation"] for r in rows}, key=str)
    for j, line in enumerate(lines):
        rs = [r for r in rows if ((r["epochs"], r["approximation"]) if by_step else r["approximation"]) == line]
        x = [r["step"] + 0.5 * j if by_step else r["epochs"] * (1 + 0.06 * j) for r in rs]
        ax.errorbar(x, [r["mean"] for r in rs], yerr=[2 * r["stderr"] for r in rs], marker="o", capsize=3,
                    label=f"E={line[0]}, {line[1]}" if by_step else line)
    ax.axhline(0, color="k", lw=0.5)
    if by_step:
        src, variant, seed = result["psi_from"].rsplit(":", 2)
        ax.set_xlabel(f"outer step of {os.path.basename(src)}, {variant}, seed {seed}")
    else:
        ax.set_xscale("log")
        ax.set_xlabel("fine-tuning epochs of the fresh theta")
    ax.set_ylabel("d p(corner bin) along the step (+-2 s.e.)")
    ax.set_title(f"clevr-seg {result['size']}: does the step push positions into the corner?", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    raise SystemExit(main())
