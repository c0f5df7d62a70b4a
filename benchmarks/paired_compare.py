"""Variants of one experiment against a base, paired by seed: `autosim compare` records with the same keys.

`autosim compare EXPERIMENT --methods autosimulate --seeds N` draws every seed's start and reference
assessment, and every run's renders, from the seed alone, so two plug-ins that differ in one option
(``digits_sim2real_variants:...``) give records whose start and reference figures are equal to the
bit and whose runs differ by that option only. This pairs each variant's per-seed fresh-model metric
at every budget point (and G at the end) with the base's and reports the mean paired difference, its
standard error (ddof=1) and how many seeds are ahead / behind, for the val and test metrics, with
each run's wall time against the base's. It refuses records whose start or reference figures differ
(not the same keys: the pairing would be meaningless), unless ``--baselines-differ`` says why they
may: on a GPU a fresh model trained in another call, with other processes sharing the card, can
differ in float rounding and then in its whole training (session 59: one start model 0.304 against
0.323 val mIoU, one reference model 0.450 against 0.557, the same keys). Then the curves are still
paired seed by seed (the runs' keys are the same), each record's G is taken from its own start and
reference, and the per-seed start and reference differences are written beside the figures.

Usage (no device; reads records only)::

    R=benchmarks/results/digits-sim2real_cpu_step_epochs; P=$R/k64_decay120_gate2_for60_beta2_0.99
    python benchmarks/paired_compare.py --base "damping 0.01, CG 10=${P}_10seeds" \
        --variant "damping 0.001, CG 30=${P}_damping0.001_cg30_10seeds" --out /tmp/paired   # a second

A PATH of records joined by ``+`` pools their seeds in that order (more seeds from another call, e.g.
``results/compare_clevr-seg_gpu+SEEDS3_DIR``); pair it with a base pooled the same way.

Writes ``OUT.json`` (every figure), ``OUT.md`` (the tables) and ``OUT.png`` (paired differences by images).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys

import numpy as np
from provenance import command_line  # the record's command, quoted for a shell


ASSESSED = ("start_psi", "reference_psi")  # the assessments a record holds per seed besides its rows


def read(path: str) -> dict:
    """A compare record: ``compare.json`` itself or the directory holding it; ``A+B+...`` pools the records
    ``A``, ``B``, ... seed after seed (:func:`pool`)."""
    if "+" in path and not os.path.exists(path):
        return pool([read(part) for part in path.split("+")])
    with open(os.path.join(path, "compare.json") if os.path.isdir(path) else path) as f:
        return json.load(f)


def pool(records: list[dict]) -> dict:
    """One record of the seeds of ``records`` in turn (comparisons of other seeds, e.g. a plug-in with its seeds
    moved by 3, ``clevr_seg_variants:K256_SEEDS3``): the AutoSimulate row's seeds and the start's and reference's
    assessments concatenated; the rest is the first record's.

    Example:
      >>> a = {"seeds": 1, "rows": [{"seeds": ["s0"]}], "assessment": {k: {"seeds": ["a0"]} for k in ASSESSED}}
      >>> b = {"seeds": 2, "rows": [{"seeds": ["s3", "s4"]}],
      ...      "assessment": {k: {"seeds": ["a3", "a4"]} for k in ASSESSED}}
      >>> both = pool([a, b])
      >>> both["seeds"], both["rows"][0]["seeds"], both["assessment"]["reference_psi"]["seeds"]
      (3, ['s0', 's3', 's4'], ['a0', 'a3', 'a4'])
    """
    out = json.loads(json.dumps(records[0]))  # a deep copy
    for other in records[1:]:
        out["rows"][0]["seeds"] += other["rows"][0]["seeds"]
        for name in ASSESSED:
            out["assessment"][name]["seeds"] += other["assessment"][name]["seeds"]
    out["seeds"] = len(out["rows"][0]["seeds"])
    return out


def per_seed(record: dict, metric: str) -> dict:
    """``metric`` (``val_metric`` / ``test_metric``) of the record's AutoSimulate row, seeds x points,
    with the start's and reference's per seed, G at the end and each run's time."""
    row = record["rows"][0]
    curves = np.array([[c[metric] for c in s["assessed_curve"]] for s in row["seeds"]], float)
    start = np.array([s[metric] for s in record["assessment"]["start_psi"]["seeds"]], float)
    reference = np.array([s[metric] for s in record["assessment"]["reference_psi"]["seeds"]], float)
    return {"images": [c["images"] for c in row["seeds"][0]["assessed_curve"]], "curves": curves,
            "start": start, "reference": reference, "gap_closed": (curves[:, -1] - start) / (reference - start),
            "time": np.array([s["time"] for s in row["seeds"]], float)}


def paired(a: np.ndarray, b: np.ndarray) -> dict:
    """Mean of ``a - b`` over seeds, its standard error (ddof=1) and the seeds ahead / behind.

    Example:
      >>> out = paired(np.array([0.5, 0.6, 0.7]), np.array([0.4, 0.6, 0.5]))
      >>> round(out["mean"], 3), round(out["se"], 3), out["ahead"], out["behind"]
      (0.1, 0.058, 2, 0)
    """
    d = np.asarray(a, float) - np.asarray(b, float)
    se = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan")  # one seed: no spread, no warning
    return {"mean": float(d.mean()), "se": se,
            "ahead": int((d > 0).sum()), "behind": int((d < 0).sum())}


def compare_records(base: dict, variant: dict, baselines_differ: bool = False) -> dict:
    """Every paired figure of ``variant`` against ``base`` (both ``read`` records with the same keys).

    With ``baselines_differ`` the start and reference figures may differ (``--baselines-differ``):
    their per-seed differences (variant - base) are returned under ``"baselines"``."""
    out = {}
    for metric in ("val_metric", "test_metric"):
        b, v = per_seed(base, metric), per_seed(variant, metric)
        if b["images"] != v["images"] or len(b["start"]) != len(v["start"]):
            raise SystemExit(f"the records differ in budget points or seeds ({b['images']} / {v['images']}, "
                             f"{len(b['start'])} / {len(v['start'])} seeds): run both with the same --seeds, "
                             "--budget-images and --assess-points")
        same = np.array_equal(b["start"], v["start"]) and np.array_equal(b["reference"], v["reference"])
        if not (same or baselines_differ):
            raise SystemExit(f"the start or reference {metric} differs between the records: they were not drawn "
                             "with the same keys (same experiment size and seeds), so seeds cannot be paired; "
                             "if the keys are the same and the assessments ran in other calls on a GPU, "
                             "--baselines-differ pairs the curves and takes each record's G from its own")
        out[metric] = {
            "baselines": {"start": [float(x) for x in v["start"] - b["start"]],
                          "reference": [float(x) for x in v["reference"] - b["reference"]]},
            "points": [{"images": im, "variant": float(v["curves"][:, i].mean()),
                        "base": float(b["curves"][:, i].mean()),
                        **paired(v["curves"][:, i], b["curves"][:, i])} for i, im in enumerate(b["images"])],
            "gap_closed": {"variant": [float(x) for x in v["gap_closed"]], "base": [float(x) for x in b["gap_closed"]],
                           "variant_mean": float(v["gap_closed"].mean()),
                           "variant_std": float(v["gap_closed"].std(ddof=1)),
                           "base_mean": float(b["gap_closed"].mean()), "base_std": float(b["gap_closed"].std(ddof=1)),
                           **paired(v["gap_closed"], b["gap_closed"])}}
    ratio = v["time"] / b["time"]  # each run's wall time (the same for either metric)
    out["time_ratio_median"] = float(np.median(ratio))
    out["time_ratio_range"] = [float(ratio.min()), float(ratio.max())]
    return out


def table(label: str, base_label: str, figures: dict, metric: str) -> str:
    f = figures[metric]
    head = "| images | " + " | ".join(f"{p['images']:,}" for p in f["points"]) + " | G at the end |"
    rows = [head, "| --- " * (len(f["points"]) + 2) + "|"]
    g = f["gap_closed"]
    rows.append(f"| {label} | " + " | ".join(f"{p['variant']:.3f}" for p in f["points"])
                + f" | {g['variant_mean']:.2f} +- {g['variant_std']:.2f} |")
    rows.append(f"| {base_label} | " + " | ".join(f"{p['base']:.3f}" for p in f["points"])
                + f" | {g['base_mean']:.2f} +- {g['base_std']:.2f} |")
    cell = lambda p: f"{p['mean']:+.3f}, {p['se']:.3f} ({p['ahead']} / {p['behind']})"
    rows.append("| paired, s.e. (ahead / behind) | " + " | ".join(cell(p) for p in f["points"])
                + f" | {g['mean']:+.2f}, {g['se']:.3f} |")
    return "\n".join(rows)


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), sharey=True)
    for ax, metric in zip(axes, ("val_metric", "test_metric")):
        for k, (label, figures) in enumerate(result["variants"].items()):
            pts = figures[metric]["points"]
            x = np.array([p["images"] for p in pts], float) * (1 + 0.03 * (k - len(result["variants"]) / 2))
            ax.errorbar(x, [p["mean"] for p in pts], [p["se"] for p in pts], fmt="o-", capsize=3, label=label)
        ax.axhline(0, color="k", lw=0.8)
        ax.set(xscale="log", xlabel="images rendered", title=metric.replace("_", " "),
               ylabel="paired difference from the base (+- s.e.)")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{result['experiment']}, {result['seeds']} seeds paired by key\n"
                 f"base: {result['base']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--base", required=True, metavar="LABEL=PATH", help="the record every variant is paired with")
    p.add_argument("--variant", action="append", required=True, metavar="LABEL=PATH", help="repeatable")
    p.add_argument("--out", required=True)
    p.add_argument("--baselines-differ", action="store_true",
                   help="pair the curves although the start/reference figures differ (the same keys, assessed in "
                        "other calls on a GPU); each record's G from its own start and reference")
    args = p.parse_args(argv)
    pairs = [s.rsplit("=", 1) for s in [args.base, *args.variant]]  # a label may hold "=" ("z = 3"), a path seldom
    if any(len(x) != 2 for x in pairs):
        p.error("--base and --variant take LABEL=PATH (a compare directory or its compare.json; A+B pools seeds)")
    (base_label, base_path), variants = pairs[0], pairs[1:]
    base = read(base_path)
    result = {"benchmark": "paired_compare", "date": datetime.date.today().isoformat(),
              "command": command_line(__file__, argv),
              "experiment": base["experiment"], "seeds": base["seeds"], "base": base_label, "base_path": base_path,
              "paths": dict(variants), "variants": {}}
    for label, path in variants:
        result["variants"][label] = compare_records(base, read(path), args.baselines_differ)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump(result, f, indent=1)
    lines = [f"# {result['experiment']}: variants paired with {base_label} ({result['seeds']} seeds, {result['date']})",
             ""]
    for label, figures in result["variants"].items():
        for metric in ("val_metric", "test_metric"):
            lines += [f"## {label}, {metric.replace('_', ' ')}", "", table(label, base_label, figures, metric), ""]
        lo, hi = figures["time_ratio_range"]
        lines += [f"Wall time per run: {figures['time_ratio_median']:.2f}x the base's (median; {lo:.2f}-{hi:.2f}).", ""]
        diff = figures["val_metric"]["baselines"]
        if any(diff["start"]) or any(diff["reference"]):
            show = lambda xs: " / ".join(f"{x:+.4f}" for x in xs)
            lines += [f"The start and reference differ from the base's (val, {label} - {base_label}, per seed): start "
                      f"{show(diff['start'])}, reference {show(diff['reference'])}; each G is its own record's.", ""]
    with open(args.out + ".md", "w") as f:
        f.write("\n".join(lines))
    plot(result, args.out + ".png")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
