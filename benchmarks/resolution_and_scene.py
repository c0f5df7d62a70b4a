"""Does the resolution move only once the scene's content is right? Over every recorded clevr-seg run (issue 13).

At the start psi the step rewards low-resolution renders, and at the reference with the start's
resolution it rewards high-resolution ones strongly (``influence_features.py``, docs/learning.md
session 19): in the start's dark one-object scenes a sharper render teaches the model little. If
that holds along the runs, the resolution should leave 32 px in the runs whose lights and object
count have come closer to the reference's, and those runs should close more of the gap.

This reads the committed ``psi_learning.py`` records of clevr-seg at gpu size (every file under
``benchmarks/results/psi_learning/`` with 60-step runs from the start psi in the experiment's
families, or the ``--runs`` given) and, per run, reads in each field's own units
(:func:`autosim_jax.describe_psi`) the mean key light and ambient light, the mass on one
object and the mass on spheres (mean over the four object slots) at step 45, the mass on 32 px
at steps 30 and 60, and the record's G at 60 (test mIoU, fresh models). It reports Spearman's
rank correlation over the runs of each scene measure with the resolution's move (mass on 32 px
at 60 minus at 30) and with G at 60, each with a permutation p-value (optimistic: runs of one
call share seeds and assessments), and how many runs moved their resolution (32 px down by 0.2
or more) among those with under 0.2 of the mass on one object at step 45 and among the rest. No
device is needed.

Usage::

    python benchmarks/resolution_and_scene.py --out benchmarks/results/psi_learning/resolution_and_scene_clevr-seg_gpu

Writes ``OUT.json`` (every run's figures, the correlations, the files read) and ``OUT.png`` (the
resolution's move and G at 60 against the key light and the mass on one object).
"""

from __future__ import annotations

import argparse
import datetime
import glob
import json
import os

import numpy as np
from field_drift import read_record, unflatten
from provenance import command_line  # the record's command, quoted for a shell

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "psi_learning")
SCENE = ("key_light", "ambient", "one_object", "spheres")  # measured at step 45
OUTCOMES = ("resolution_move", "G60")
MOVED, FEW = 0.2, 0.2  # a resolution that moved: its 32 px mass fell by MOVED; "few": under FEW on one object


def spearman(a, b) -> float:
    """Spearman's rank correlation (continuous data: no ties).

    Example:
      >>> round(spearman([1.0, 2.0, 3.0, 4.0], [10.0, 30.0, 20.0, 40.0]), 6)
      0.8
    """
    ra, rb = (np.argsort(np.argsort(np.asarray(x, float))).astype(float) for x in (a, b))
    return float(np.corrcoef(ra, rb)[0, 1])


def permutation_p(a, b, draws: int = 20_000, seed: int = 0) -> float:
    """Two-sided p-value of ``spearman(a, b)`` under random pairings of ``a`` and ``b``.

    Example:
      >>> permutation_p([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]) < 0.01
      True
    """
    rng = np.random.default_rng(seed)
    observed = abs(spearman(a, b))
    b = np.asarray(b, float)
    hits = sum(abs(spearman(a, rng.permutation(b))) >= observed - 1e-12 for _ in range(draws))
    return (hits + 1) / (draws + 1)


def run_rows(path: str, record: dict, schema, start) -> list[dict]:
    """One row per 60-step run of ``record`` from the start psi, assessed at 60."""
    import jax

    import autosim_jax as asj

    gaps = record.get("gap_closed", {}).get("test_metric", {})
    keys = {jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(start)[0]}
    rows = []
    for run in record["runs"]:
        variant = run["variant"]
        overrides = record.get("variants", {}).get(variant, {}).get("overrides", {})
        if variant == "_baseline" or len(run.get("psi", [])) < 60 or "60" not in gaps.get(variant, {}):
            continue
        if overrides.get("start_from_reference_but") or overrides.get("psi_trainable") or set(run["psi"][0]) != keys:
            continue  # another start, fields held still, or another family (position bins, mixtures)
        g = gaps[variant]["60"]
        seeds = g.get("seeds") or sorted(r["seed"] for r in record["runs"] if r["variant"] == variant)
        if run["seed"] not in seeds:
            continue
        at = {t: asj.describe_psi(schema, unflatten(run["psi"][t - 1], start)) for t in (30, 45, 60)}
        rows.append({"file": os.path.basename(path), "variant": variant, "seed": run["seed"],
                     "key_light": float(at[45]["key_light"]["mean"]), "ambient": float(at[45]["ambient"]["mean"]),
                     "one_object": float(at[45]["num_objects"]["probs"][0]),
                     "spheres": float(np.mean(np.asarray(at[45]["shape"]["probs"])[..., 0])),
                     "mass_32px_30": float(at[30]["resolution"]["probs"][0]),
                     "mass_32px_60": float(at[60]["resolution"]["probs"][0]),
                     "resolution_move": float(at[60]["resolution"]["probs"][0] - at[30]["resolution"]["probs"][0]),
                     "G60": float(g["per_seed"][seeds.index(run["seed"])])})
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", action="append", default=None, metavar="FILE",
                   help="psi_learning.py records to read (default: every clevr-seg gpu record in the results)")
    p.add_argument("--out", required=True, help="output path without extension")
    args = p.parse_args(argv)
    import jax

    import autosim_jax as asj

    setup = asj.get_experiment("clevr-seg").build(renderer="clevr", seed=0, size="gpu")
    schema, start = setup.simulator.renderer.schema, setup.simulator.distribution.init()
    reference = asj.describe_psi(schema, setup.reference_psi)
    paths = args.runs or sorted({f.removesuffix(".gz") for pattern in ("*.json", "*.json.gz")
                                 for f in glob.glob(os.path.join(RESULTS, "clevr-seg_gpu_" + pattern))})
    rows, read = [], []
    for path in paths:
        record = read_record(path)
        if (record.get("benchmark"), record.get("experiment"), record.get("size")) != ("psi_learning", "clevr-seg",
                                                                                      "gpu"):
            continue
        found = run_rows(path, record, schema, start)
        rows += found
        read += [os.path.basename(path)] if found else []
    if len(rows) < 4:
        p.error(f"{len(rows)} runs found; need at least 4 to correlate")
    corr = {f"{x} vs {y}": {"spearman": spearman([r[x] for r in rows], [r[y] for r in rows]),
                            "permutation_p": permutation_p([r[x] for r in rows], [r[y] for r in rows])}
            for x in SCENE + ("mass_32px_60",) for y in OUTCOMES if x != "mass_32px_60" or y == "G60"}
    moved = [r for r in rows if r["resolution_move"] <= -MOVED]
    split = {}
    for name, group in (("few_single_object", [r for r in rows if r["one_object"] < FEW]),
                        ("many_single_object", [r for r in rows if r["one_object"] >= FEW])):
        split[name] = {"runs": len(group), "resolution_moved": sum(r["resolution_move"] <= -MOVED for r in group),
                       "mean_G60": float(np.mean([r["G60"] for r in group])) if group else None}
    split["moved"] = {"runs": len(moved), "mean_G60": float(np.mean([r["G60"] for r in moved])) if moved else None,
                      "min_key_light": min((r["key_light"] for r in moved), default=None),
                      "max_one_object": max((r["one_object"] for r in moved), default=None)}
    by_seed = {}
    for seed in sorted({r["seed"] for r in rows}):
        group = [r for r in rows if r["seed"] == seed]
        by_seed[str(seed)] = {"runs": len(group),
                              "median_one_object": float(np.median([r["one_object"] for r in group])),
                              "resolution_moved": sum(r["resolution_move"] <= -MOVED for r in group),
                              "mean_G60": float(np.mean([r["G60"] for r in group]))}
    result = {"benchmark": "resolution_and_scene", "date": datetime.date.today().isoformat(),
              "command": command_line(__file__, argv),
              "jax_version": jax.__version__, "autosim_jax": asj.__version__, "runs_read": len(rows), "files": read,
              "reference": {"key_light": reference["key_light"]["mean"], "ambient": reference["ambient"]["mean"],
                            "one_object": reference["num_objects"]["probs"][0],
                            "mass_32px": reference["resolution"]["probs"][0]},
              "correlations": corr, "moved_threshold": MOVED, "few_single_object_threshold": FEW,
              "split": split, "by_seed": by_seed, "rows": rows}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump(result, f, indent=1)
    plot(rows, result["reference"], args.out + ".png", corr)
    print(f"{len(rows)} runs from {len(read)} files; at step 45 the scene, at 30-60 the resolution's move, G at 60")
    for key, c in corr.items():
        print(f"  Spearman {key}: {c['spearman']:+.2f} (permutation p {c['permutation_p']:.4f})")
    few, many = split["few_single_object"], split["many_single_object"]
    print(f"  resolution moved (mass on 32 px down >= {MOVED} from step 30 to 60) in {few['resolution_moved']} of "
          f"{few['runs']} runs with < {FEW} of the mass on one object at step 45, in {many['resolution_moved']} of "
          f"{many['runs']} with more; G at 60 of the {len(moved)} that moved {split['moved']['mean_G60']:.2f}")
    for seed, b in by_seed.items():
        print(f"  seed {seed}: {b['runs']} runs, median mass on one object at 45 {b['median_one_object']:.2f}, "
              f"resolution moved in {b['resolution_moved']}, mean G at 60 {b['mean_G60']:.2f}")
    return 0


def plot(rows: list[dict], reference: dict, path: str, corr: dict) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 7.5))
    labels = {"key_light": "mean key light at step 45", "one_object": "mass on one object at step 45",
              "resolution_move": "mass on 32 px: step 60 minus step 30", "G60": "G at 60 (test mIoU, fresh models)"}
    for i, y in enumerate(OUTCOMES):
        for j, x in enumerate(("key_light", "one_object")):
            ax = fig.add_subplot(2, 2, 2 * i + j + 1)
            ax.scatter([r[x] for r in rows], [r[y] for r in rows], s=12, alpha=0.6)
            ax.axvline(reference[x], color="grey", ls=":", lw=1, label="reference")
            ax.set_xlabel(labels[x], fontsize=8)
            ax.set_ylabel(labels[y], fontsize=8)
            ax.set_title(f"Spearman {corr[f'{x} vs {y}']['spearman']:+.2f}, {len(rows)} runs", fontsize=9)
            ax.legend(fontsize=7)
    fig.suptitle("clevr-seg (gpu), every recorded 60-step run: the resolution and G against the scene", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    raise SystemExit(main())
