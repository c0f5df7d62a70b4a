"""What makes one seed's run go its own way: its render key or its model's initialisation, and which field (issue 13)

A run's seed sets two things: the key of every step's renders (``AutoSimulate.init(seed)``) and
the initialisation ``theta0`` that each step's fresh model is fine-tuned from
(``ExperimentSetup.make_model(seed)``). On digits-sim2real at cpu size two seeds of five lose the
first budget point of ``autosim compare`` (``docs/learning.md``, session 38). This separates the
two causes and then names the field:

* **the grid**: every pair (``make_model(i)``, ``init(k)``) for ``i, k`` in ``--ids``, run for
  ``--steps`` outer steps with the experiment's options; the ``loc`` of each ``--watch`` field is
  recorded after every step, and its spread at the last step is split into the part the key
  explains (the variance of the per-key means), the part the initialisation explains and the
  rest. Beside it: how far Adam with the library's default rate moves a coordinate whose
  hypergradient is pure noise in as many steps (``init_bias.adam_travel``), the yardstick for a
  walk that noise alone makes.
* **the swap** (``--swap A,B``): the psi of keys ``A`` and ``B`` after ``--steps`` (model
  ``make_model(ids[0])``), and each with one field taken from the other, assessed by
  ``--repeats`` fresh models each (``make_assessor``, the experiment's own budget): the fields
  whose swap moves the metric are the ones that make the difference.

Usage (2-core CPU)::

    python benchmarks/key_or_init.py --experiment digits-sim2real --size cpu --ids 0,3,1,4 \\
        --steps 30 --watch shift,rotation,noise --swap 0,4 --repeats 4 \\
        --out benchmarks/results/key_or_init/digits-sim2real_cpu      # about 6 min

Writes ``OUT.json`` (device, versions, command, date, every trajectory, the split, every
assessment) and ``OUT.png`` (the watched coordinates against the step, coloured by key; the swaps).

Example:
  >>> import numpy as np
  >>> x = np.array([[1.0, 1.2], [3.0, 3.2]])    # rows: initialisations, columns: keys
  >>> {k: round(v, 3) for k, v in split_variance(x).items()}
  {'key': 0.01, 'init': 1.0, 'rest': 0.0}
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import time

import jax
import numpy as np
from field_drift import flatten, unflatten  # psi as the records keep it
from init_bias import adam_travel  # Adam's travel on a given hypergradient distribution
from provenance import command_line  # the record's command, quoted for a shell

import autosim_jax as asj
from autosim_jax.experiments import make_assessor
from autosim_jax.rundir import resolve_experiment


def split_variance(x: np.ndarray) -> dict[str, float]:
    """Two-way split of ``x[init, key]`` (one value per cell): the variance of the key means, of the
    initialisation means, and what is left (population variances, so that they add up to ``x``'s)."""
    x = np.asarray(x, float)
    key_means, init_means = x.mean(0), x.mean(1)
    rest = x - key_means[None, :] - init_means[:, None] + x.mean()
    return {"key": float(key_means.var()), "init": float(init_means.var()), "rest": float(rest.var())}


def run_grid(setup, ids: list[int], steps: int, watch: list[str], log) -> dict:
    """Every (init, key) pair's ``loc`` trajectories of the watched fields and its final flat psi."""
    runs = {}
    for i in ids:  # one compiled learner per initialisation, every key through it
        learner = setup.make_autosimulate(i, model=setup.make_model(i))  # its other inits from model seed i too
        for k in ids:
            state, traj = learner.init(k), {f: [] for f in watch}
            for _ in range(steps):
                state, _ = learner.step(state)
                for f in watch:
                    traj[f].append(np.asarray(state.psi[f].loc).ravel().tolist())
            runs[f"init{i}_key{k}"] = {"init": i, "key": k, "loc": traj, "psi": flatten(state.psi)}
            log(f"init {i} key {k}: " + ", ".join(f"{f} loc {np.round(traj[f][-1], 2).tolist()}" for f in watch))
    return runs


def swaps(setup, psi_a: dict, psi_b: dict, repeats: int, log) -> dict:
    """Fresh-model metrics of ``psi_a``, ``psi_b`` and each with one top-level field of the other."""
    like = setup.simulator.distribution.init()
    a, b = unflatten(psi_a, like), unflatten(psi_b, like)
    assess = make_assessor(setup, repeats=repeats)
    out = {"a": assess(a, seed=100), "b": assess(b, seed=100), "a_with_b": {}, "b_with_a": {}}
    log(f"a {out['a']['val_metric']:.3f}, b {out['b']['val_metric']:.3f}")
    for f in a:
        out["a_with_b"][f] = assess({**a, f: b[f]}, seed=100)
        out["b_with_a"][f] = assess({**b, f: a[f]}, seed=100)
        log(f"{f}: a with b's {out['a_with_b'][f]['val_metric']:.3f}, "
            f"b with a's {out['b_with_a'][f]['val_metric']:.3f}")
    return out


def plot(result: dict, path: str) -> None:
    from matplotlib.figure import Figure

    watch, ids = result["watch"], result["ids"]
    coords = [(f, c) for f in watch for c in range(len(next(iter(result["runs"].values()))["loc"][f][0]))]
    fig = Figure(figsize=(3.2 * len(coords) + (4.5 if "swap" in result else 0), 3.6))
    n = len(coords) + ("swap" in result)
    for j, (f, c) in enumerate(coords):
        ax = fig.add_subplot(1, n, j + 1)
        for r in result["runs"].values():
            ax.plot(np.arange(1, result["steps"] + 1), np.asarray(r["loc"][f])[:, c], color=f"C{ids.index(r['key'])}",
                    ls=["-", "--", ":", "-."][ids.index(r["init"]) % 4], lw=1,
                    label=f"key {r['key']}" if r["init"] == ids[0] else None)
        s = result["split"][f"{f}[{c}]"]
        ax.set_title(f"{f}[{c}] loc: key {s['key']:.3g}, init {s['init']:.3g}, rest {s['rest']:.3g}", fontsize=8)
        ax.set_xlabel("outer step (line style: the initialisation)")
        ax.legend(fontsize=7)
    if "swap" in result:
        sw, ax = result["swap"], fig.add_subplot(1, n, n)
        fields = list(sw["a_with_b"])
        y = np.arange(len(fields))
        ax.barh(y - 0.2, [sw["a_with_b"][f]["val_metric"] for f in fields], 0.4,
                label=f"key {sw['keys'][0]} with key {sw['keys'][1]}'s field")
        ax.barh(y + 0.2, [sw["b_with_a"][f]["val_metric"] for f in fields], 0.4,
                label=f"key {sw['keys'][1]} with key {sw['keys'][0]}'s field")
        for k, name in ((0, "a"), (1, "b")):
            ax.axvline(sw[name]["val_metric"], color=f"C{k}", ls="--", lw=1)
        ax.set_yticks(y, fields)
        ax.set_xlabel(f"val metric ({result['repeats']} fresh models; dashed: as learned)")
        ax.legend(fontsize=7)
    fig.suptitle(f"{result['experiment']} {result['size']}: {result['steps']} steps, key x initialisation "
                 f"({result['date']})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--experiment", default="digits-sim2real")
    p.add_argument("--size", default="cpu", choices=("cpu", "gpu"))
    p.add_argument("--ids", default="0,3,1,4", help="comma list: the model seeds and the run keys of the grid")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--watch", default="shift,rotation", help="comma list of Normal fields whose loc is recorded")
    p.add_argument("--swap", default=None, metavar="A,B", help="two keys of --ids whose psi are swapped field by field")
    p.add_argument("--repeats", type=int, default=4, help="fresh models per assessed psi")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    ids, watch = [int(i) for i in args.ids.split(",")], args.watch.split(",")
    swap = [int(k) for k in args.swap.split(",")] if args.swap else None
    setup = resolve_experiment(args.experiment).build(seed=ids[0], size=args.size)
    like = setup.simulator.distribution.init()
    bad = [f for f in watch if f not in like or not hasattr(like[f], "loc")]
    if len(ids) < 2 or args.steps < 1 or bad or (swap and (len(swap) != 2 or not set(swap) <= set(ids))):
        p.error(f"need >= 2 --ids, --steps >= 1, --watch fields with a loc (not {bad}; psi has {list(like)}) "
                "and --swap as two of --ids")
    t0 = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - t0:6.0f}s] {msg}", flush=True)

    runs = run_grid(setup, ids, args.steps, watch, log)
    split = {}
    for f in watch:
        last = np.array([[np.asarray(runs[f"init{i}_key{k}"]["loc"][f][-1]) for k in ids] for i in ids])
        for c in range(last.shape[-1]):
            split[f"{f}[{c}]"] = split_variance(last[..., c])
    noise = np.abs(adam_travel([0.0], [1.0], 1, cycle=False, steps=args.steps, draws=4000)[0])
    result = {"benchmark": "key_or_init", "date": datetime.date.today().isoformat(),
              "command": command_line(__file__, argv),
              "device": str(jax.devices()[0]), "jax_version": jax.__version__, "autosim_jax": asj.__version__,
              "precision": "float32, default matmul", "experiment": args.experiment, "size": args.size,
              "ids": ids, "steps": args.steps, "watch": watch, "repeats": args.repeats,
              "split": split, "runs": runs,
              "adam_on_pure_noise": {"steps": args.steps, "lr": asj.AutoSimConfig().outer_learning_rate,
                                     "abs_travel_quantiles": dict(zip(("50", "80", "95"),
                                                                      np.quantile(noise, [0.5, 0.8, 0.95]).tolist()))}}
    for name, s in split.items():
        log(f"{name} at step {args.steps}: variance from the key {s['key']:.3g}, the init {s['init']:.3g}, "
            f"rest {s['rest']:.3g}")
    log("Adam on pure noise, |travel| quantiles 50/80/95: "
        + " / ".join(f"{v:.2f}" for v in result["adam_on_pure_noise"]["abs_travel_quantiles"].values()))
    if swap:
        psi = [runs[f"init{ids[0]}_key{k}"]["psi"] for k in swap]
        result["swap"] = {"keys": swap, "init": ids[0], **swaps(setup, *psi, args.repeats, log)}
    result["seconds"] = time.perf_counter() - t0
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump(result, f, indent=1)
    plot(result, args.out + ".png")
    log(f"wrote {args.out}.json and .png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
