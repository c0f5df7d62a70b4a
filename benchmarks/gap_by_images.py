"""G against the images rendered, for ``psi_learning.py`` runs that render different numbers K a step
(issue 13, session 58): a run's psi after step t is charged t x K images (K: the run's ``dataset_size``,
its variant's overrides applied), so the preset (K = 256) and ``k128`` / ``k64`` meet on one axis.

Each (label, seed, step) takes G from the record's fresh models, or from a ``reassess.py`` record's
pooled G where one re-assessed that variant's psi at that step (``--reassess``, matched by variant, seed
and step). Records given under one label are one variant's runs of different lengths; a step assessed
twice under one label is refused.

Usage (no device; reads records only)::

    R=benchmarks/results/psi_learning
    python benchmarks/gap_by_images.py --seeds 0,1,2 \\
        --record "preset=$R/clevr-seg_gpu_inits8_120steps.json:inits8" \\
        --record "k128=$R/clevr-seg_gpu_k128_120steps_s012.json:k128" \\
        --record "k128=$R/clevr-seg_gpu_k128_240steps_s012.json:k128" \\
        --record "k64=$R/clevr-seg_gpu_k64_160steps_s012.json:k64" \\
        --reassess $R/reassess_clevr-seg_gpu_inits8_10_20_30_s012.json \\
        --reassess $R/reassess_clevr-seg_gpu_k128_120_s012.json --reassess $R/reassess_clevr-seg_gpu_k64_80_s012.json \\
        --out $R/gap_by_images_clevr-seg_gpu_s012

Writes ``OUT.json`` (every label's per-seed G at each image count, mean, sample std, where each G came
from), ``OUT.md`` (the table) and ``OUT.png`` (G against images, log scale, each seed thin).

Example:
  >>> run = lambda seed, steps: {"variant": "v", "seed": seed, "experiment_config": {"dataset_size": 256},
  ...     "assessed": {str(t): {"test_metric": 0.3 + 0.01 * t} for t in steps}}
  >>> base = {"variant": "_baseline", "seed": 0, "start": {"test_metric": 0.3}, "reference": {"test_metric": 0.5}}
  >>> record = {"variants": {"v": {"overrides": {"dataset_size": 128}}}, "runs": [base, run(0, [10, 20])]}
  >>> points = gap_points([("r.json", record)], "v", [0], [], "test_metric")
  >>> [(p["images"], round(p["per_seed"][0], 2), p["source"][0]) for p in points]
  [(1280, 0.5, 'record'), (2560, 1.0, 'record')]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os

import numpy as np
from field_drift import read_record
from paired_compare import paired

from autosim_jax import gap_closed


def _k(record: dict, run: dict, variant: str) -> int:
    """The renders a step of ``run``: its variant's ``dataset_size`` override, else the experiment's."""
    overrides = record.get("variants", {}).get(variant, {}).get("overrides", {})
    return int(overrides.get("dataset_size", run["experiment_config"]["dataset_size"]))


def _stem(path: str) -> str:
    """A record's name without folder and ``.json`` / ``.json.gz``: how a ``reassess.py`` row names it."""
    name = os.path.basename(path)
    return name.removesuffix(".gz").removesuffix(".json")


def _reassessed(reassess: list[dict], metric: str) -> dict:
    """``(record stem, variant, seed, step) -> pooled G`` of the ``reassess.py`` rows (plain re-assessments)."""
    return {(_stem(row["file"]), row["variant"], row["seed"], row["step"]): row[f"G_{metric}"]["pooled"]
            for record in reassess for row in record["rows"] if isinstance(row.get("step"), int)}


def gap_points(records: list[tuple[str, dict]], variant: str, seeds: list[int], reassess: list[dict],
               metric: str) -> list[dict]:
    """One label's points from ``(path, record)`` pairs: ``images``, ``per_seed`` G (seed order), ``mean``,
    ``std`` (ddof=1), ``source`` per seed (``record`` or ``reassess``), ``step``. Only image counts every
    seed reached are kept."""
    pooled = _reassessed(reassess, metric)
    found: dict[tuple[int, int], tuple[int, float, str]] = {}  # (images, seed) -> (step, G, source)
    for path, record in records:
        base = {r["seed"]: r for r in record["runs"] if r["variant"] == "_baseline"}
        for run in record["runs"]:
            seed = run["seed"]
            if run["variant"] != variant or seed not in seeds:
                continue
            b, k = base[seed], _k(record, run, variant)
            again = {t: g for (stem, v, s, t), g in pooled.items() if (stem, v, s) == (_stem(path), variant, seed)}
            steps = {int(t) for t in run.get("assessed", {}) if t.isdigit()} | set(again)
            for t in sorted(steps):
                if (t * k, seed) in found:
                    raise SystemExit(f"{variant}: step {t} of seed {seed} is in two records; give each step once")
                if t in again:
                    found[(t * k, seed)] = (t, again[t], "reassess")
                else:
                    g = gap_closed(b["start"][metric], run["assessed"][str(t)][metric], b["reference"][metric])
                    found[(t * k, seed)] = (t, g, "record")
    points = []
    for images in sorted({i for i, _ in found}):
        if all((images, s) in found for s in seeds):
            got = [found[(images, s)] for s in seeds]
            g = [x[1] for x in got]
            points.append({"images": images, "step": got[0][0], "per_seed": g, "mean": float(np.mean(g)),
                           "std": float(np.std(g, ddof=1)) if len(g) > 1 else 0.0, "source": [x[2] for x in got]})
    return points


def paired_with(base: list[dict], points: list[dict]) -> list[dict]:
    """Seed-paired differences ``points - base`` at the image counts both have: ``images``, ``n`` and
    ``paired_compare.paired``'s ``mean``, ``se`` (ddof=1), ``ahead`` / ``behind``.

    Example:
      >>> a = [{"images": 100, "per_seed": [0.1, 0.2, 0.3]}, {"images": 200, "per_seed": [0.5, 0.5, 0.5]}]
      >>> b = [{"images": 100, "per_seed": [0.3, 0.3, 0.2]}]
      >>> q = paired_with(a, b)[0]
      >>> q["images"], round(q["mean"], 3), round(q["se"], 3), q["ahead"], q["n"]
      (100, 0.067, 0.088, 2, 3)
    """
    by_images = {q["images"]: q["per_seed"] for q in base}
    return [{"images": q["images"], "n": len(q["per_seed"]), **paired(q["per_seed"], by_images[q["images"]])}
            for q in points if q["images"] in by_images]


def _parse_record(text: str) -> tuple[str, str, str]:
    label, rest = text.split("=", 1) if "=" in text else (None, text)
    path, variant = rest.rsplit(":", 1)
    return label or variant, path, variant


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (label, points) in enumerate(result["labels"].items()):
        x = np.array([p["images"] for p in points], float)
        g = np.array([p["per_seed"] for p in points])
        color = f"C{i}"
        ax.plot(x, g, color=color, lw=0.6, alpha=0.4)
        se = g.std(axis=1, ddof=1) / np.sqrt(g.shape[1]) if g.shape[1] > 1 else np.zeros(len(x))
        ax.errorbar(x, g.mean(axis=1), yerr=se, color=color, lw=2, marker="o", capsize=3,
                    label=f"{label} (K = {result['k'][label]})")
    ax.axhline(1, color="k", lw=0.5, ls=":")
    ax.axhline(0, color="k", lw=0.5)
    ax.set(xscale="log", xlabel="images rendered by the run", ylabel=f"G ({result['metric'].replace('_', ' ')})",
           title=f"gap closed by fresh models, seeds {result['seeds']} (mean +- s.e.; thin: each seed)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--record", action="append", required=True, metavar="[LABEL=]JSON:VARIANT",
                   help="a psi_learning.py record and the variant to read from it (repeatable; one label may "
                        "take several records of the same variant)")
    p.add_argument("--reassess", action="append", default=[], metavar="JSON", help="reassess.py records to pool")
    p.add_argument("--seeds", required=True, help="comma list: only image counts every seed reached are shown")
    p.add_argument("--metric", default="test_metric", choices=("test_metric", "val_metric"))
    p.add_argument("--out", required=True, help="output path without extension")
    args = p.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    reassess = [read_record(path) for path in args.reassess]
    by_label: dict[str, tuple[str, list[dict]]] = {}
    for text in args.record:
        label, path, variant = _parse_record(text)
        have = by_label.setdefault(label, (variant, []))
        if have[0] != variant:
            raise SystemExit(f"label {label!r} names two variants ({have[0]}, {variant}); one label, one variant")
        have[1].append((path, read_record(path)))
    labels = {label: gap_points(recs, variant, seeds, reassess, args.metric)
              for label, (variant, recs) in by_label.items()}
    ks = {label: _k(recs[0][1], next(r for r in recs[0][1]["runs"] if r["variant"] == variant), variant)
          for label, (variant, recs) in by_label.items()}
    base_label = next(iter(labels))
    paired = {label: paired_with(labels[base_label], points) for label, points in labels.items() if label != base_label}
    result = {"benchmark": "gap_by_images", "date": datetime.date.today().isoformat(), "metric": args.metric,
              "seeds": seeds, "records": args.record, "reassess": args.reassess, "k": ks, "labels": labels,
              "paired_with_first": paired}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump(result, f, indent=1)
    lines = [f"G ({args.metric}) by images rendered, seeds {seeds}: mean +- std (ddof=1) [per seed]", "",
             "| label | K | step | images | G | per seed | from |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for label, points in labels.items():
        for q in points:
            seeds_g = " / ".join(f"{g:.2f}" for g in q["per_seed"])
            lines.append(f"| {label} | {ks[label]} | {q['step']} | {q['images']:,} | {q['mean']:.2f} +- {q['std']:.2f} "
                         f"| {seeds_g} | {'/'.join(sorted(set(q['source'])))} |")
    if any(paired.values()):
        lines += ["",
                  f"Paired by seed against {base_label} at the same images (mean +- s.e., ddof=1; seeds ahead):", "",
                  "| label | images | difference in G | ahead |", "| --- | --- | --- | --- |"]
        lines += [f"| {label} | {q['images']:,} | {q['mean']:+.2f} +- {q['se']:.2f} | {q['ahead']} of {q['n']} |"
                  for label, rows in paired.items() for q in rows]
    with open(args.out + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    plot(result, args.out + ".png")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
