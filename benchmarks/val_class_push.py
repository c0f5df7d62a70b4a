"""Which validation classes ask for which renders? A categorical prior field's hypergradient with
``g_val`` taken from one class's validation samples at a time (issue 13, session 73).

On digits-sim2real at gpu size the first AutoSimulate steps raise the share of the start's dominant
digit "1" (``hypergradient_signal.py``: the "1" logit's pooled z -12.5 at the start psi), which at
cpu size they lower. Table 1's exact quadratic scores each render by ``grad_theta l(render) . v``
with ``v = (H + lambda I)^-1 g_val`` (Eq. 13a); ``g_val`` is the mean over the validation samples, so
restricting it to the samples of one class asks which real class wants which renders. Per step
(the psi held, a fresh render batch, each step's theta fine-tuned from the model's initialisation as
the experiments do, ``theta_reset_every=1``), the hypergradient of the field ``--field`` is computed
with the whole validation set and with each class's part of it, on the same renders and theta.
The truncated CG is not linear in ``g_val``, so the class parts need not add up to the whole; the
record gives both.

Usage::

    python benchmarks/val_class_push.py --experiment digits-sim2real --size gpu --field digit \\
        --steps 4 --seeds 0,1,2 --out benchmarks/results/hypergradient_signal/digits-sim2real_gpu_val_class_push

Writes ``OUT.json`` (per seed and step, the field's hypergradient from the whole validation set and
from each class; the per-class mean over steps and seeds with its standard error; negative entries
raise that logit, as psi steps against the hypergradient) and prints the matrix.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import time

import numpy as np
from provenance import command_line  # the record's command, quoted for a shell


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--experiment", default="digits-sim2real")
    p.add_argument("--size", default="cpu", choices=("cpu", "gpu"))
    p.add_argument("--field", default="digit", help="a categorical field of the experiment's schema")
    p.add_argument("--steps", type=int, default=4, help="render batches per seed (>= 2)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--out", required=True, help="output path without extension")
    args = p.parse_args(argv)
    if args.steps < 2:
        p.error(f"--steps {args.steps}: give at least 2 (the standard error needs two)")
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]

    import jax

    import autosim_jax as asj
    from autosim_jax.rundir import psi_record

    def build(seed):
        return asj.get_experiment(args.experiment).build(size=args.size, seed=seed)

    setup = build(seeds[0])  # checked here, before any step; the loop's first seed uses it
    names = [f.name for f in setup.simulator.renderer.schema.fields]
    if args.field not in names:
        p.error(f"--field {args.field}: not a field of {args.experiment} ({', '.join(names)})")
    key = f"{args.field}.logits"
    x_val, y_val = (np.asarray(a) for a in setup.val_data)
    if y_val.ndim != 1:
        p.error(f"{args.experiment}: its validation labels are not one class per sample")
    classes = sorted(int(c) for c in np.unique(y_val))
    t0 = time.time()
    rows = []
    for seed in seeds:
        setup = setup if seed == seeds[0] else build(seed)
        whole = setup.make_autosimulate(seed)
        parts = {c: asj.make_autosimulate(setup.simulator, setup.model, setup.task,
                                          (x_val[y_val == c], y_val[y_val == c]), setup.config) for c in classes}
        state = whole.init(seed)
        if key not in psi_record(state.psi):
            p.error(f"--field {args.field}: not a categorical field (no {key} in psi)")
        for step in range(args.steps):
            k_render, k_train = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(seed), step))
            scenes, x, y = whole.inner.simulate(k_render, state.psi)
            theta, _, _ = whole.inner.finetune(state.theta, state.inner_opt_state, x, y, k_train)
            grad = {"all": whole.hypergradient(state.psi, theta, scenes, x, y)}
            grad.update({str(c): parts[c].hypergradient(state.psi, theta, scenes, x, y) for c in classes})
            row = {"seed": seed, "step": step,
                   **{g: np.asarray(psi_record(h.grad_psi)[key], float).ravel().tolist() for g, h in grad.items()}}
            rows.append(row)
            print(f"[{time.time() - t0:7.1f} s] seed {seed} step {step + 1}/{args.steps}", flush=True)
    groups = ["all", *map(str, classes)]
    summary = {}
    for g in groups:
        a = np.array([r[g] for r in rows])
        summary[g] = {"mean": a.mean(0).tolist(), "stderr": (a.std(0, ddof=1) / np.sqrt(len(a))).tolist()}
    psi0 = psi_record(setup.simulator.distribution.init())[key]
    device = jax.devices()[0]
    record = {"benchmark": "val_class_push", "date": datetime.date.today().isoformat(),
              "command": command_line(__file__, argv), "device": f"{device.platform}:{device.device_kind}",
              "jax_version": jax.__version__, "autosim_jax": asj.__version__, "precision": "float32, default matmul",
              "experiment": args.experiment, "size": args.size, "field": args.field, "steps": args.steps,
              "seeds": seeds, "classes": classes, "start_logits": np.asarray(psi0, float).ravel().tolist(),
              "sign": "psi steps against the hypergradient: a negative entry raises that logit",
              "summary": summary, "rows": rows, "wall_seconds": time.time() - t0}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump(record, f, indent=1)
    print(f"{args.field} logits' hypergradient, mean over {len(rows)} steps / its standard error as z "
          f"(rows: g_val from all validation samples, then from class c's alone; negative raises the logit)")
    print("g_val from " + " ".join(f"{c:>6}" for c in range(len(psi0))))
    for g in groups:
        m, s = np.array(summary[g]["mean"]), np.array(summary[g]["stderr"])
        print(f"{g:>10} " + " ".join(f"{z:6.1f}" for z in m / np.where(s > 0, s, np.inf)))
    print(f"wrote {args.out}.json ({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
