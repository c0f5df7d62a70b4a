"""Is the CG overhead over a bare operator product due to the pytree layout?

For the tanh MLPs of ``curvature_depth.py`` (width 1024, batch 512 by default), time one CG
iteration (marginal: (T(2k) - T(k)) / k) of ``solve_damped`` on the Gauss-Newton operator
(a) over the parameter pytree, as the library does, and (b) over one raveled vector
(``ravel_pytree`` around the same operator), against one bare product in a loop.
Prediction written before running: if the overhead is per-leaf kernel launches of CG's
vector arithmetic, (b) brings CG iteration / product close to 1.

Usage:
  python benchmarks/cg_layout.py [--width 1024 --batch 512 --depths 8,16] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import jax
import optax
from jax.flatten_util import ravel_pytree

import autosim_jax as asj
from curvature_depth import make_problem, median_time


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--width", type=int, default=1024)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--depths", default="8,16")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    a = p.parse_args(argv)
    rows = []
    for depth in [int(d) for d in a.depths.split(",")]:
        predict_fn, out_loss, loss_fn, params, x, y = make_problem("mlp", depth, dict(width=a.width, batch=a.batch))
        g = jax.grad(loss_fn)(params, x, y)
        make = lambda p: asj.gauss_newton_operator(predict_fn, out_loss, p, x, y)  # noqa: E731

        def tree_cg(p, b, m):
            return asj.solve_damped(make(p), b, 1e-2, tol=0.0, maxiter=m).x

        def flat_cg(p, b, m):
            op = make(p)
            flat_b, unravel = ravel_pytree(b)
            mv = lambda v: ravel_pytree(op.matvec(unravel(v)))[0]  # noqa: E731
            return asj.solve_damped(mv, flat_b, 1e-2, tol=0.0, maxiter=m).x

        def products(p, b, m):
            op = make(p)
            return jax.lax.fori_loop(0, m, lambda _, w: optax.tree.scale(1.0 / optax.tree.norm(w), op.matvec(w)), b)

        row = {"depth": depth, "leaves": len(jax.tree.leaves(params))}
        for name, f in (("tree_cg", tree_cg), ("flat_cg", flat_cg), ("product", products)):
            f = jax.jit(f)
            t1, t2 = (median_time(f, params, g, m, repeats=a.repeats) for m in (a.k, 2 * a.k))
            row[f"t_{name}"] = (t2 - t1) / a.k
        row["tree_cg_over_product"] = row["t_tree_cg"] / row["t_product"]
        row["flat_cg_over_product"] = row["t_flat_cg"] / row["t_product"]
        rows.append(row)
        print(row, flush=True)
    dev = jax.devices()[0]
    result = {"benchmark": "cg_layout", "device": f"{dev.platform}:{dev.device_kind}", "jax_version": jax.__version__,
              "precision": "float32, default matmul precision", "width": a.width, "batch": a.batch, "rows": rows}
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / f"cg_layout_{dev.platform}.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
