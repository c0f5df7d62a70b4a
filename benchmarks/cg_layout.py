"""Where does a CG iteration's time go beyond the operator product? (tanh MLPs, issue #2)

Two experiments on the tanh MLPs of ``curvature_depth.py`` (width 1024, batch 512 by
default), each timed as a marginal cost per iteration, ``(T(2k) - T(k)) / k``, with the
``k`` and ``2k`` runs paired within each repeat (the spread over the repeats is recorded):

1. **Decomposition** (the default). Per depth, for the Gauss-Newton operator, the linearised
   Hessian and a trivial diagonal operator ``D v = d * v`` (``d`` a fixed random pytree in
   ``[1, 101]``, same structure as the MLP's parameters, so CG does not converge early):

   * ``C(A)``: one iteration of :func:`autosim_jax.solve_damped` (``jax.scipy.sparse.linalg.cg``,
     damping ``1e-2``, ``tol=0``) with operator ``A``;
   * ``P(A)``: one normalised product ``w <- A w / ||A w||`` in a ``fori_loop`` (the "bare
     product" of ``curvature_depth.py``; it includes a norm and a scale, 3n floats).

   ``C(D)`` is CG's own cost with a near-free operator: its vector arithmetic, the damping,
   the diagonal product (3n floats) and the loop's trip. The hypothesis says that the
   overhead of CG over the product loop does not depend on the operator:
   ``C(A) - P(A) ~= C(D) - P(D)``, i.e. ``C(A) ~= P(A) + [C(D) - P(D)]``, and that
   ``C(D)`` is bandwidth-bound. A bandwidth probe (``y = 1.0001 * x`` over 1 GiB, bytes read
   plus written over time) measures the device's copy bandwidth in the same run.
2. **Layout** (``--layout``): CG over the parameter pytree (as the library does) against CG
   over one raveled vector (``ravel_pytree`` around the same Gauss-Newton operator), against
   the product loop. Prediction written before that run: if the overhead is per-leaf kernel
   launches, raveling brings CG iteration / product close to 1. (Result, in the JSON's
   ``layout`` rows: it does not; raveling helps shallow nets and hurts deep ones.)

Prediction for experiment 1, written before running it. Per iteration, beyond the operator
product, JAX's CG reads and writes at least 11 n floats for n parameters (p.Ap: 2n read;
the x and r updates: 4n read, 2n write; r.r: n read unless fused; the p update: 2n read,
n write), and ``solve_damped``'s damping ``A p + lambda p`` another 3n where XLA does not fuse
it: 44-56 bytes per parameter. At the ~4.3 TB/s copy bandwidth seen on this workplace's H200s
that is 10-13 us per million parameters. The product loop's own normalisation moves 3n
floats, so the predicted overhead over ``P(A)`` is 8-11 n floats, 7.5-10 us per million
parameters: with n ~= depth x 1.05 M this is ~16-21 us at depth 2 and ~130-170 us at depth
16, against products of ~130-1100 us (Gauss-Newton, earlier H200 run), so
``C(A) / P(A) ~= 1.1-1.16`` at every depth: the 10% target would be out of reach for these
MLPs by memory traffic alone, while the CNNs' few parameters (<= 0.6 M) against products of
tens of ms make it negligible there. If ``C(A) - P(A)`` comes out much larger than
``C(D) - P(D)``, the hypothesis is wrong and something else (lost fusion with the product,
copies of the loop state) is at play.

Usage:
  python benchmarks/cg_layout.py [--width 1024 --batch 512 --depths 2,4,8,12,16] [--out DIR]
  python benchmarks/cg_layout.py --layout --depths 4,8,16

Writes ``cg_layout_<platform>.json`` (rows of the experiment run; the other experiment's rows
already in the file are kept) and, for the decomposition, ``cg_layout_<platform>.png``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

sys.path.insert(0, str(Path(__file__).resolve().parent))
import autosim_jax as asj  # noqa: E402
from curvature_depth import make_problem, median_time  # noqa: E402

DAMPING = 1e-2


def marginal(f, p, b, k, repeats):
    """Per-iteration cost (T(2k) - T(k)) / k of a jitted ``f(p, b, m)``, paired per repeat."""
    for m in (k, 2 * k):  # compile + warm up both iteration counts (m is traced: one compile)
        jax.block_until_ready(f(p, b, m))
    per = []
    for _ in range(repeats):
        t = []
        for m in (k, 2 * k):
            start = time.perf_counter()
            jax.block_until_ready(f(p, b, m))
            t.append(time.perf_counter() - start)
        per.append((t[1] - t[0]) / k)
    q = statistics.quantiles(per, n=4)
    return {"median_s": statistics.median(per), "q25_s": q[0], "q75_s": q[2], "min_s": min(per), "max_s": max(per)}


def bandwidth(gib=1.0, repeats=20):
    """Copy bandwidth: bytes read plus written by ``y = 1.0001 * x`` over ``gib`` GiB, per second."""
    x = jax.random.normal(jax.random.key(0), (int(gib * 2**30) // 4,), jnp.float32)
    f = jax.jit(lambda x: x * 1.0001)
    t = median_time(f, x, repeats=repeats)
    return 2 * x.nbytes / t


def cg_fn(make):
    return jax.jit(lambda p, b, m: asj.solve_damped(make(p), b, DAMPING, tol=0.0, maxiter=m).x)


def product_fn(make):
    def run(p, b, m):
        op = make(p)
        return jax.lax.fori_loop(0, m, lambda _, w: optax.tree.scale(1.0 / optax.tree.norm(w), op.matvec(w)), b)

    return jax.jit(run)


def decomposition(a, bw):
    rows = []
    for depth in a.depths:
        predict_fn, out_loss, loss_fn, params, x, y = make_problem("mlp", depth, dict(width=a.width, batch=a.batch))
        n = int(sum(leaf.size for leaf in jax.tree.leaves(params)))
        g = jax.grad(loss_fn)(params, x, y)
        leaves, treedef = jax.tree.flatten(params)
        keys = jax.random.split(jax.random.key(7), len(leaves))
        diag = jax.tree.unflatten(treedef, [1.0 + 100.0 * jax.random.uniform(k_, l.shape)
                                            for k_, l in zip(keys, leaves)])
        makes = {
            "gauss_newton": lambda p: asj.gauss_newton_operator(predict_fn, out_loss, p, x, y),
            "hessian": lambda p: asj.hessian_operator(loss_fn, p, x, y),
            "diagonal": lambda p: asj.CurvatureOperator.from_matvec(lambda v: jax.tree.map(jnp.multiply, diag, v), p),
        }
        row = {"depth": depth, "num_params": n, "leaves": len(leaves)}
        for name, make in makes.items():
            row[f"cg_iter_{name}"] = marginal(cg_fn(make), params, g, a.k, a.repeats)
            row[f"product_{name}"] = marginal(product_fn(make), params, g, a.k, a.repeats)
        c = {name: row[f"cg_iter_{name}"]["median_s"] for name in makes}
        pr = {name: row[f"product_{name}"]["median_s"] for name in makes}
        row["cg_overhead_over_product_diagonal_s"] = c["diagonal"] - pr["diagonal"]
        for name in ("gauss_newton", "hessian"):
            row[f"cg_over_product_{name}"] = c[name] / pr[name]
            row[f"cg_overhead_over_product_{name}_s"] = c[name] - pr[name]
            row[f"predicted_cg_iter_{name}_s"] = pr[name] + c["diagonal"] - pr["diagonal"]
            row[f"predicted_cg_over_product_{name}"] = row[f"predicted_cg_iter_{name}_s"] / pr[name]
        # Bandwidth view: the bytes that the measured CG-with-D iteration would move at the
        # probe's bandwidth, per parameter (the prediction counts 4 x (11..14) + 12 for D).
        row["cg_iter_diagonal_bytes_per_param_at_probe_bw"] = c["diagonal"] * bw / n
        row["cg_overhead_over_product_bytes_per_param_at_probe_bw"] = (c["diagonal"] - pr["diagonal"]) * bw / n
        row["predicted_overhead_bandwidth_s"] = [8 * 4 * n / bw, 11 * 4 * n / bw]
        rows.append(row)
        print(
            f"depth {depth:2d} n={n / 1e6:5.2f}M | CG iter GN {c['gauss_newton'] * 1e6:7.1f} us, product "
            f"{pr['gauss_newton'] * 1e6:7.1f} (ratio {row['cg_over_product_gauss_newton']:.3f}, predicted "
            f"{row['predicted_cg_over_product_gauss_newton']:.3f}) | H {c['hessian'] * 1e6:7.1f} / "
            f"{pr['hessian'] * 1e6:7.1f} (ratio {row['cg_over_product_hessian']:.3f}, predicted "
            f"{row['predicted_cg_over_product_hessian']:.3f}) | D: CG {c['diagonal'] * 1e6:6.1f} product "
            f"{pr['diagonal'] * 1e6:6.1f} -> overhead {row['cg_overhead_over_product_diagonal_s'] * 1e6:6.1f} us "
            f"({row['cg_overhead_over_product_bytes_per_param_at_probe_bw']:.1f} B/param at probe bw)",
            flush=True,
        )
    return rows


def layout(a):
    rows = []
    for depth in a.depths:
        predict_fn, out_loss, loss_fn, params, x, y = make_problem("mlp", depth, dict(width=a.width, batch=a.batch))
        g = jax.grad(loss_fn)(params, x, y)
        make = lambda p: asj.gauss_newton_operator(predict_fn, out_loss, p, x, y)  # noqa: E731

        def flat_cg(p, b, m):
            op = make(p)
            flat_b, unravel = ravel_pytree(b)
            mv = lambda v: ravel_pytree(op.matvec(unravel(v)))[0]  # noqa: E731
            return asj.solve_damped(mv, flat_b, DAMPING, tol=0.0, maxiter=m).x

        row = {"depth": depth, "leaves": len(jax.tree.leaves(params))}
        for name, f in (("tree_cg", cg_fn(make)), ("flat_cg", jax.jit(flat_cg)), ("product", product_fn(make))):
            row[f"t_{name}"] = marginal(f, params, g, a.k, a.repeats)["median_s"]
        row["tree_cg_over_product"] = row["t_tree_cg"] / row["t_product"]
        row["flat_cg_over_product"] = row["t_flat_cg"] / row["t_product"]
        rows.append(row)
        print(row, flush=True)
    return rows


def plot(result, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["decomposition"]
    depths = [r["depth"] for r in rows]
    fig, (ax_t, ax_r) = plt.subplots(1, 2, figsize=(13, 4.5))
    for name, colour in (("gauss_newton", "C0"), ("hessian", "C1")):
        ax_t.plot(depths, [r[f"cg_iter_{name}"]["median_s"] * 1e6 for r in rows], "-o", color=colour,
                  label=f"CG iter, {name}")
        ax_t.plot(depths, [r[f"product_{name}"]["median_s"] * 1e6 for r in rows], "--o", color=colour,
                  label=f"product, {name}")
        ax_t.plot(depths, [r[f"predicted_cg_iter_{name}_s"] * 1e6 for r in rows], ":x", color=colour,
                  label=f"predicted CG iter = product + [C(D) - P(D)], {name}")
        ax_r.plot(depths, [r[f"cg_over_product_{name}"] for r in rows], "-o", color=colour, label=f"measured, {name}")
        ax_r.plot(depths, [r[f"predicted_cg_over_product_{name}"] for r in rows], ":x", color=colour,
                  label=f"predicted, {name}")
    ax_t.plot(depths, [r["cg_iter_diagonal"]["median_s"] * 1e6 for r in rows], "-s", color="C2",
              label="CG iter, diagonal D")
    ax_t.plot(depths, [r["product_diagonal"]["median_s"] * 1e6 for r in rows], "--s", color="C2",
              label="product, diagonal D")
    ax_t.plot(depths, [r["predicted_overhead_bandwidth_s"][1] * 1e6 for r in rows], ":", color="k",
              label="11n floats at probe bandwidth")
    ax_r.axhline(1.1, color="k", ls="--", lw=0.8, label="target 1.1")
    ax_t.set(xlabel="depth", ylabel="us per iteration", title="per-iteration time (marginal, median)")
    ax_r.set(xlabel="depth", ylabel="CG iteration / product", title="CG overhead over the product loop")
    for ax in (ax_t, ax_r):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"{result['device']} | JAX {result['jax_version']} | MLP width {result['width']}, "
                 f"batch {result['batch']} "
                 f"| probe bandwidth {result['probe_bandwidth_bytes_per_s'] / 1e12:.2f} TB/s")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--width", type=int, default=1024)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--depths", type=lambda s: [int(d) for d in s.split(",")], default=[2, 4, 8, 12, 16])
    p.add_argument("--k", type=int, default=20, help="k; per-iteration cost is (T(2k) - T(k)) / k")
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--layout", action="store_true", help="run the pytree-vs-raveled experiment instead")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    a = p.parse_args(argv)
    dev = jax.devices()[0]
    path = a.out / f"cg_layout_{dev.platform}.json"
    result = json.loads(path.read_text()) if path.exists() else {}
    if "rows" in result:  # the first version of this file held only the layout experiment
        result["layout"] = {"k": 10, "repeats": 20, "rows": result.pop("rows"),
                            "note": "first run (k=10, medians of T(k) and T(2k) taken separately)"}
    result.update({"benchmark": "cg_layout", "device": f"{dev.platform}:{dev.device_kind}",
                   "jax_version": jax.__version__,
                   "precision": "float32, default matmul precision", "width": a.width, "batch": a.batch,
                   "damping": DAMPING})
    if a.layout:
        result["layout"] = {"k": a.k, "repeats": a.repeats, "rows": layout(a)}
    else:
        bw = bandwidth()
        print(f"probe bandwidth {bw / 1e12:.2f} TB/s", flush=True)
        result["probe_bandwidth_bytes_per_s"] = bw
        result["decomposition_settings"] = {"k": a.k, "repeats": a.repeats, "depths": a.depths}
        result["decomposition"] = rows = decomposition(a, bw)
        result["summary"] = {
            f"{key}_{name}": [round(r[f"{key}_{name}"], 3) for r in rows]
            for name in ("gauss_newton", "hessian")
            for key in ("cg_over_product", "predicted_cg_over_product")
        }
        result["summary"]["depths"] = a.depths
    a.out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    print(f"wrote {path}")
    if not a.layout:
        try:
            plot(result, path.with_suffix(".png"))
            print(f"wrote {path.with_suffix('.png')}")
        except ImportError:
            print("matplotlib is not installed: skipped the plot", file=sys.stderr)


if __name__ == "__main__":
    main()
