"""Which 54-cell psi is a detection experiment's reference? Fresh detectors on candidate psi.

G = (m(learned) - m(start)) / (m(reference) - m(start)) needs a reference that trains clearly
better models than the start. digits-det's hand-set one (scene1, any location, low quality) does
not at 8192 images x 24 epochs (``docs/detection.md``, session 11). This script assesses named
candidates, each a dict of cell weights in :func:`~autosim_jax.renderers.clevr_det.cell_probs`'s
``fnmatch`` patterns, with the experiment's own start and reference beside them, by the fresh
detectors of :func:`~autosim_jax.make_assessor` (the same seeds, images, budget and schedule for
every candidate), and ranks them by the mean test mAP@0.5 over seeds.

Usage (one H200; every candidate x seed is one process, ``--jobs`` at once)::

    python benchmarks/detection_reference.py --experiment digits-det --size gpu \\
        --candidate 'uniform={"*": 1}' --candidate 'scene1_both={"scene1/*/*": 1}' \\
        --seeds 0,1,2 --repeats 2 --assess-images 8192 --assess-epochs 24 --jobs 6 --out OUT

Writes ``OUT.json`` (device, versions, command, date, every candidate's probabilities and every
detector's metrics) and ``OUT.png`` (test mAP@0.5 per candidate and seed). Unfinished jobs at
``--deadline`` are listed under ``failed``; the finished ones are in ``OUT.partial.jsonl`` at once.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time

import numpy as np
from provenance import command_line  # the record's command, quoted for a shell
# the same jobs as psi_learning.py: process pool, GPU, render pool, deadline
from psi_learning import job_setup, run_jobs


def parse_candidate(text: str) -> tuple[str, dict[str, float]]:
    """``'name={"pattern": weight, ...}'`` -> ``(name, weights)``, checked before any job starts."""
    from autosim_jax.renderers.clevr_det import cell_probs

    name, sep, weights = text.partition("=")
    if not sep or not name:
        raise ValueError(f"--candidate {text!r}: write NAME={{\"pattern\": weight, ...}}, e.g. 'uniform={{\"*\": 1}}'.")
    try:
        parsed = json.loads(weights)
    except json.JSONDecodeError as err:
        raise ValueError(f"--candidate {name!r}: its weights are not JSON ({err}); e.g. {{\"scene1/*/low\": 1}}.")
    if not isinstance(parsed, dict) or not all(isinstance(v, (int, float)) and v >= 0 for v in parsed.values()):
        raise ValueError(f"--candidate {name!r}: give a JSON object of non-negative weights, got {weights!r}.")
    cell_probs(parsed)  # raises for a pattern that matches no cell
    return name, {k: float(v) for k, v in parsed.items()}


def _job(spec: dict) -> dict:
    try:
        return _job_body(spec)
    except Exception as err:  # noqa: BLE001 - reported in the results, never silently dropped
        return {**{k: spec[k] for k in ("candidate", "seed", "index")},
                "error": f"{type(err).__name__}: {str(err)[:2000]}"}


def _job_body(spec: dict) -> dict:
    t0 = time.perf_counter()
    with job_setup(spec) as setup:
        return _assess_candidate(spec, setup, t0)


def _assess_candidate(spec: dict, setup, t0: float) -> dict:
    import autosim_jax as asj
    from autosim_jax.renderers.clevr_det import cell_probs

    dist = setup.simulator.distribution
    if spec["candidate"] == "start":
        psi = dist.init()
    elif spec["candidate"] == "reference":
        psi = setup.reference_psi
    else:
        psi = asj.from_schema(setup.simulator.renderer.schema, {"cell": {"probs": cell_probs(spec["weights"])}}).init()
    assess = asj.make_assessor(setup, num_images=spec["assess_images"], epochs=spec["assess_epochs"],
                                repeats=spec["repeats"])
    return {"candidate": spec["candidate"], "seed": spec["seed"], "index": spec["index"], **assess(psi, spec["seed"]),
            "seconds": time.perf_counter() - t0}


def plot(results: list[dict], order: list[str], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.2 * len(order) + 2, 3.5))
    for i, name in enumerate(order):
        vals = [r["test_metric"] for r in results if r["candidate"] == name]
        ax.scatter(np.full(len(vals), i), vals, color="k", s=12)
        if vals:
            ax.bar(i, np.mean(vals), color="tab:blue", alpha=0.5)
    ax.set_xticks(range(len(order)), order, rotation=30, ha="right")
    ax.set_ylabel("test mAP@0.5 (fresh detectors)")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--experiment", default="digits-det", choices=("digits-det", "clevr-det"))
    p.add_argument("--size", default="cpu", choices=("cpu", "gpu"))
    p.add_argument("--candidate", action="append", default=[], metavar='NAME={"pattern": weight}',
                   help="a candidate psi as cell weights (repeatable); the start and reference are always added")
    p.add_argument("--no-start-reference", action="store_true", help="assess the candidates alone")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--repeats", type=int, default=2, help="fresh detectors per psi and seed (their mean is used)")
    p.add_argument("--assess-images", type=int, default=None)
    p.add_argument("--assess-epochs", type=int, default=None)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--gpus", type=int, default=0)
    p.add_argument("--deadline", type=float, default=None, metavar="SECONDS")
    p.add_argument("--out", required=True, help="output path without extension")
    args = p.parse_args(argv)
    try:
        candidates = dict(parse_candidate(c) for c in args.candidate)
    except ValueError as err:
        p.error(str(err))
    if {"start", "reference"} & set(candidates):
        p.error("'start' and 'reference' name the experiment's own psi; call a candidate something else")
    order = ([] if args.no_start_reference else ["start", "reference"]) + list(candidates)
    if not order:
        p.error("nothing to assess: give --candidate, or drop --no-start-reference")
    seeds = [int(s) for s in args.seeds.split(",")]
    specs = [dict(experiment=args.experiment, size=args.size, candidate=c, weights=candidates.get(c), seed=s,
                  repeats=args.repeats, assess_images=args.assess_images, assess_epochs=args.assess_epochs,
                  gpus=list(range(args.gpus)) or None) for c in order for s in seeds]
    for i, spec in enumerate(specs):
        spec["index"] = i
    t0 = time.perf_counter()

    def report(r: dict, done: int) -> None:
        shown = r.get("error", "")[:300] or f"test {r['test_metric']:.3f}  val {r['val_metric']:.3f}"
        print(f"[{time.perf_counter() - t0:7.1f} s] {r['candidate']} seed {r['seed']}: {shown} ({done}/{len(specs)})",
              flush=True)

    results, unfinished = run_jobs(_job, specs, jobs=args.jobs, deadline=args.deadline,
                                   partial_path=args.out + ".partial.jsonl", report=report)
    failed = [r for r in results if "error" in r] + [
        {"candidate": s["candidate"], "seed": s["seed"], "error": f"not finished within --deadline {args.deadline:g} s"}
        for s in unfinished]
    results = [r for r in results if "error" not in r]
    table = {}
    for name in order:
        rows = sorted((r for r in results if r["candidate"] == name), key=lambda r: r["seed"])
        if rows:
            test = [r["test_metric"] for r in rows]
            table[name] = {"test_mean": float(np.mean(test)), "test_std": float(np.std(test)),
                           "val_mean": float(np.mean([r["val_metric"] for r in rows])),
                           "per_seed": test, "seeds": [r["seed"] for r in rows]}
    import jax

    import autosim_jax as asj

    device = jax.devices()[0]
    record = {
        "benchmark": "detection_reference", "date": datetime.date.today().isoformat(),
        "command": command_line(__file__, argv),
        "device": f"{device.platform}:{device.device_kind}", "host_cpus": os.cpu_count(),
        "jax_version": jax.__version__, "autosim_jax": asj.__version__, "precision": "float32, default matmul",
        "experiment": args.experiment, "size": args.size, "seeds": seeds, "repeats": args.repeats,
        "assess_images": args.assess_images, "assess_epochs": args.assess_epochs, "candidates": candidates,
        "ranking": sorted(table, key=lambda n: -table[n]["test_mean"]), "table": table,
        "wall_seconds": time.perf_counter() - t0, "failed": failed, "results": results,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump(record, f, indent=1)
    plot(results, order, args.out + ".png", f"{args.experiment} ({args.size}): candidate references")
    for name in record["ranking"]:
        row = table[name]
        print(f"{name:>14}: test mAP@0.5 {row['test_mean']:.3f} +- {row['test_std']:.3f}  "
              f"(per seed {', '.join(f'{x:.3f}' for x in row['per_seed'])})")
    for r in failed:
        print(f"FAILED {r['candidate']} seed {r['seed']}: {r['error'][:300]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
