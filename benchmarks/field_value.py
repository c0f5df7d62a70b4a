"""What each field of a learned psi costs: the reference with one field set where a run left it (issue 13).

On clevr-seg the runs find the lights and the object count, and leave other fields where fresh
models may or may not care: the resolution and the positions stay at the start, material and
size drift off the reference (docs/learning.md, session 15). Which of them holds G down? This
assesses, per seed of the given runs, the experiment's reference psi with *one* field replaced
by the run's value at ``--step`` (everything else as the reference), beside the start and the
reference themselves, all with the same ``--repeats`` fresh models. ``G_with`` of a field is
the gap closed by that psi, so ``1 - G_with`` is what the field alone costs (0: nothing); fields
that interact are not separated. Nothing is learned: the runs' psi are read from their JSON.

Usage (H200, 16 host cores; a job per psi)::

    python benchmarks/field_value.py --experiment clevr-seg --size gpu --step 60 --repeats 4 \\
        --runs benchmarks/results/psi_learning/clevr-seg_gpu_linear_finetune1_s012.json:linear \\
        --fields size,material,resolution,position,shape --seeds 0,1 \\
        --jobs 6 --gpus 1 --render-workers 2 --deadline 540 --out $OUT/field_value_clevr-seg_gpu
    python benchmarks/field_value.py --experiment clevr-seg --size cpu --step 40 --repeats 1 \\
        --runs benchmarks/results/psi_learning/clevr-seg_cpu_linear_snr_gate_trajectory.json:linear \\
        --fields size --seeds 0 --out /tmp/field_value   # smoke, 2-core CPU

``--cli-runs DIR`` (repeatable) takes the psi an ``autosim run`` directory returned instead (its
selected psi, else its learned one; session 28: the fields of seed 4's ``--select-reset`` pick)::

    python benchmarks/field_value.py --experiment clevr-seg --size gpu --repeats 4 \\
        --cli-runs benchmarks/results/clevr-seg_gpu_cli_select_reset_final/seed4 \\
        --fields ambient,key_light,back_light,spp,bounces,resolution,num_objects,position,shape,rotation,size \\
        --jobs 7 --gpus 1 --render-workers 2 --deadline 540 --out $OUT/field_value_seed4_pick

Writes ``OUT.json`` (device, versions, command, date, every assessment, ``G_with`` per field and
seed, mean +- std over seeds) and ``OUT.png`` (the cost ``1 - G_with`` per field).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import time

import numpy as np
from field_drift import flatten, read_runs, trajectory_runs  # psi_learning.py's records and their flat psi
from provenance import command_line  # the record's command, quoted for a shell

# fresh models on flat psi, and the psi an autosim run directory returned
from reassess import add_job_arguments, assess_jobs, cli_records, failures, job_options


def with_field(reference: dict[str, list], learned: dict[str, list], field: str) -> dict[str, list]:
    """The flat psi ``reference`` with every leaf of ``field`` taken from ``learned``.

    Example:
      >>> with_field({"['a'].loc": [0.0], "['b'].loc": [1.0]}, {"['a'].loc": [5.0], "['b'].loc": [7.0]}, "b")
      {"['a'].loc": [0.0], "['b'].loc": [7.0]}
    """
    prefix = f"[{field!r}]"
    if not any(k.startswith(prefix) for k in reference):
        raise ValueError(f"no field {field!r} in psi; its fields: {sorted({k.split(']')[0] + ']' for k in reference})}")
    return {k: (learned[k] if k.startswith(prefix) else v) for k, v in reference.items()}


def returned_psi(p: argparse.ArgumentParser, args: argparse.Namespace, setup) -> tuple[str, dict[int, dict]]:
    """``(source, {seed: flat psi})``: each seed's psi from ``--runs`` (the variant's psi after
    ``--step`` steps) or ``--cli-runs`` (the psi each run directory returned), restricted to
    ``--seeds``; checked before any job (``p.error`` on a short run, two runs of one seed, none).
    ``setup``: the experiment's (seed 0)."""
    seeds = None if args.seeds is None else {int(s) for s in args.seeds.split(",")}
    if bool(args.runs) == bool(args.cli_runs):
        p.error("give --runs FILE:VARIANT or --cli-runs DIR, not both")
    if args.cli_runs:
        source = ", ".join(args.cli_runs)
        found = [(it["seed"], it["psi"]) for it in cli_records(p, args, setup)]
    else:
        try:
            source, record, variants = read_runs(args.runs, args.experiment, args.size)
        except ValueError as err:
            p.error(str(err))
        if len(variants) != 1:
            p.error(f"--runs {args.runs!r}: name one variant")
        runs = trajectory_runs(record, variants[0])
        short = [r["seed"] for r in runs if len(r["psi"]) < args.step]
        if short:
            p.error(f"{source}: the runs of seeds {short} have fewer than {args.step} steps")
        found = [(r["seed"], r["psi"][args.step - 1]) for r in runs]
    found = [(seed, psi) for seed, psi in found if seeds is None or seed in seeds]
    twice = sorted({seed for seed, _ in found if [s for s, _ in found].count(seed) > 1})
    if twice:
        p.error(f"{source}: more than one run of seed(s) {twice}; a seed's start and reference are assessed once")
    if not found:
        p.error(f"{source} holds no run" + (f" for seeds {sorted(seeds)}" if seeds else ""))
    return source, dict(found)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--experiment", default="clevr-seg")
    p.add_argument("--size", default="gpu", choices=("cpu", "gpu"))
    p.add_argument("--runs", metavar="FILE:VARIANT", help="a psi_learning.py OUT.json and one variant")
    p.add_argument("--cli-runs", action="append", default=[], metavar="DIR",
                   help="instead of --runs: an autosim run directory, the psi it returned (selected, else "
                   "learned; repeatable)")
    p.add_argument("--step", type=int, default=60, help="the run's psi after this many steps")
    p.add_argument("--fields", required=True, help="comma list of fields, each set alone into the reference")
    p.add_argument("--seeds", default=None, help="comma list (default: every seed of the run)")
    p.add_argument("--repeats", type=int, default=4, help="fresh models per psi")
    add_job_arguments(p)
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    import autosim_jax as asj

    from autosim_jax.rundir import resolve_experiment

    exp = resolve_experiment(args.experiment)  # a registered name or module:attr (a plug-in), as the jobs read it
    setup = exp.build(renderer=exp.renderers[0], seed=0, size=args.size)
    if setup.reference_psi is None:
        p.error(f"{args.experiment} has no reference psi to set fields into")
    source, returned = returned_psi(p, args, setup)
    fields, reference = args.fields.split(","), flatten(setup.reference_psi)
    try:
        swapped = {(s, f): with_field(reference, psi, f) for s, psi in returned.items() for f in fields}
    except (ValueError, KeyError) as err:
        p.error(f"{source}: {err}")
    common = job_options(args, seed_offset=0)  # the psi_learning.py runs' assessment keys; nothing is pooled
    t0 = time.perf_counter()
    learned = [{"seed": s, "field": f, "psi": psi, "label": f"reference with {f}"} for (s, f), psi in swapped.items()]
    results, unfinished = assess_jobs(common, sorted(returned), learned, jobs=args.jobs,
                                      deadline=args.deadline, out=args.out)
    import jax

    base = {r["seed"]: r["new"] for r in results if r["kind"] == "baseline" and "error" not in r}
    rows = []
    for r in results:
        if r["kind"] != "learned" or "error" in r or r["seed"] not in base:
            continue
        b, m = base[r["seed"]], r["new"]["learned"]
        rows.append({"seed": r["seed"], "field": r["field"], "assessed": m,
                     "G_with": {k: asj.gap_closed(b["start"][k], m[k], b["reference"][k])
                                for k in ("test_metric", "val_metric")}})
    summary = {}
    for f in fields:
        g = np.asarray([row["G_with"]["test_metric"] for row in rows if row["field"] == f])
        if len(g):
            summary[f] = {"mean": float(g.mean()), "std": float(g.std(ddof=1)) if len(g) > 1 else 0.0,
                          "per_seed": g.tolist(), "seeds": [row["seed"] for row in rows if row["field"] == f]}
    device = jax.devices()[0]
    out = {"benchmark": "field_value", "date": datetime.date.today().isoformat(),
           "command": command_line(__file__, argv),
           "device": f"{device.platform}:{device.device_kind}", "jax_version": jax.__version__,
           "autosim_jax": asj.__version__, "precision": "float32, default matmul", "experiment": args.experiment,
           "size": args.size, "runs": args.runs or args.cli_runs, "step": None if args.cli_runs else args.step,
           "repeats": args.repeats,
           "assess_images": args.assess_images, "assess_epochs": args.assess_epochs,
           "baselines": {str(s): b for s, b in base.items()}, "G_with_test_metric": summary, "rows": rows,
           "wall_seconds": time.perf_counter() - t0, "failed": failures(results, unfinished)}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump(out, f, indent=1)
    if summary:
        plot(out, args.out + ".png")
    for f, s in summary.items():
        print(f"reference with {f:>12} from the run: G {s['mean']:+.2f} +- {s['std']:.2f}, "
              f"cost {1 - s['mean']:.2f} (seeds {s['seeds']})")
    return 1 if out["failed"] else 0


def _source_label(record: dict) -> str:
    """``"VARIANT, step N"`` for a psi_learning.py record, the run directories' names for ``--cli-runs``."""
    if record["step"] is None:
        return "the psi returned by " + ", ".join(os.path.basename(os.path.normpath(d)) for d in record["runs"])
    return f"{record['runs'].rpartition(':')[2]}, step {record['step']}"


def plot(record: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = record["G_with_test_metric"]
    fields = list(summary)
    fig, ax = plt.subplots(figsize=(1.2 * len(fields) + 3, 3.5))
    for i, f in enumerate(fields):
        ax.bar(i, 1 - summary[f]["mean"], yerr=summary[f]["std"], color="tab:red", alpha=0.7, capsize=4)
        ax.scatter([i] * len(summary[f]["per_seed"]), 1 - np.asarray(summary[f]["per_seed"]), color="k", s=12,
                   zorder=3)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(range(len(fields)), fields)
    ax.set_ylabel("1 - G of the reference with the field\nwhere the run left it (test metric)")
    ax.set_title(f"{record['experiment']} at {record['size']} size: what each field costs\n"
                 f"({_source_label(record)}, {record['repeats']} models per psi)",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
