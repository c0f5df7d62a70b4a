"""The gap closed by groups of ``autosim run`` directories: one row per run, mean +- std per group.

Each run directory's ``assessed.json`` holds the fresh-model test metrics of the start psi (key
``"0"``), of the learned psi (key: the final step) and of the reference (``"reference"``). The gap
closed is ``G = (m(learned) - m(start)) / (m(reference) - m(start))`` on the test metric
(:func:`autosim_jax.gap_closed`). No device is needed.

A run cut before its reference was assessed (a deadline) borrows the reference of another listed
run (or of one of ``--reference-runs``) of the same experiment and seed whose start assessment is
the same to the last bit: the assessment is a function of (seed, psi, protocol), so an identical
start confirms the protocol,
and the borrowed reference is named in the row (``reference_from``). A run with no such twin is
listed with ``G`` None and left out of its group's figures.

Usage::

    python benchmarks/cli_runs_gap.py \\
        --group "2 epochs=benchmarks/results/clevr-seg_cpu_cli_epochs/e2_40steps_seed*" \\
        --group "4 epochs=benchmarks/results/clevr-seg_cpu_cli_epochs/e4_40steps_seed*" \\
        --out benchmarks/results/clevr-seg_cpu_cli_epochs/gap_40steps

``benchmarks/`` must be on ``PYTHONPATH`` (the group summary is ``detection_tables.mean_std``).
Writes ``OUT.json`` (every row; per group n, mean, std, min, max and the seeds) and ``OUT.png``
(each seed's G per group, with the group's mean +- std).
"""

from __future__ import annotations

import argparse
import datetime
import glob
import json
import os
import sys

import numpy as np
from provenance import command_line  # the record's command, quoted for a shell


def read_run(path: str) -> dict:
    """One run directory as a row: experiment, seed, the three assessments' test metrics and G.

    Raises ``ValueError`` naming the directory when it has no ``assessed.json`` or ``config.json``
    (not an ``autosim run`` directory) or no assessment of its start or learned psi.
    """
    files = {name: os.path.join(path, f"{name}.json") for name in ("assessed", "config")}
    for name, file in files.items():
        if not os.path.isfile(file):
            raise ValueError(f"{path}: no {name}.json; pass the directories of `autosim run --out`")
    with open(files["assessed"]) as f:
        assessed = json.load(f)
    with open(files["config"]) as f:
        config = json.load(f)
    results = assessed["results"]
    steps = [int(k) for k in results if k.isdigit() and k != "0"]
    if "0" not in results or not steps:
        raise ValueError(f"{path}: assessed.json has no start (\"0\") or learned psi assessment yet")
    final = str(max(steps))
    protocol = {k: assessed.get(k) for k in ("images", "epochs", "models", "seed")}
    row = {"run": path, "experiment": config.get("experiment"), "size": config.get("size"),
           "device": config.get("device"),
           "protocol": protocol, "step": int(final), "start": results["0"]["test_metric"],
           "start_models": results["0"]["test_metrics"], "learned": results[final]["test_metric"],
           "learned_models": results[final]["test_metrics"], "reference": None, "reference_from": None}
    if "reference" in results:
        row["reference"], row["reference_from"] = results["reference"]["test_metric"], path
    return row


def borrow_references(rows: list[dict]) -> None:
    """Gives each row without a reference that of a row of the same experiment, size and protocol
    whose start models' test metrics are identical (in place; ``reference_from`` names it)."""
    def key(r):
        return (r["experiment"], r["size"], json.dumps(r["protocol"], sort_keys=True), tuple(r["start_models"]))

    known = {key(r): r for r in rows if r["reference"] is not None}
    for r in rows:
        twin = known.get(key(r)) if r["reference"] is None else None
        if twin is not None:
            r["reference"], r["reference_from"] = twin["reference"], twin["run"]


def summarise(values: list[float]) -> dict:
    """``detection_tables.mean_std`` of ``values`` (mean, sample std, per seed) with n, min and max."""
    from detection_tables import mean_std

    return {**mean_std(values), "n": len(values), "min": float(min(values)), "max": float(max(values))}


def table(groups: dict[str, list[str]], donors: list[str] = ()) -> dict:
    """``{label: [run dir, ...]}`` -> the rows with G and each group's summary (JSON-ready).

    ``donors``: more run directories whose references a cut run may borrow (not tabulated)."""
    from autosim_jax import gap_closed

    rows = {label: [read_run(p) for p in paths] for label, paths in groups.items()}
    borrow_references([r for group in rows.values() for r in group] + [read_run(p) for p in donors])
    out = {}
    for label, group in rows.items():
        for r in group:
            r["G"] = (None if r["reference"] is None else
                      float(gap_closed(r["start"], r["learned"], r["reference"])))
        done = [r for r in group if r["G"] is not None]
        out[label] = {"rows": group, "seeds": [r["protocol"]["seed"] for r in done],
                      "G": summarise([r["G"] for r in done]) if done else None,
                      "incomplete": [r["run"] for r in group if r["G"] is None]}
    return out


def plot(result: dict, path: str, title: str) -> None:
    """Each seed's G per group (labelled by seed) with the group's mean +- std."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(result), 3.6))
    for i, (label, group) in enumerate(result.items()):
        done = [r for r in group["rows"] if r["G"] is not None]
        xs = i + np.linspace(-0.15, 0.15, len(done)) if len(done) > 1 else [i]
        ax.scatter(xs, [r["G"] for r in done], s=18, color="C0", zorder=3)
        for x, r in zip(xs, done):
            ax.annotate(str(r["protocol"]["seed"]), (x, r["G"]), fontsize=6, xytext=(3, 0),
                        textcoords="offset points", va="center")
        if group["G"]:
            ax.errorbar(i + 0.3, group["G"]["mean"], yerr=group["G"]["std"], fmt="s", color="C3", capsize=3)
    ax.axhline(0.0, color="0.6", lw=0.8)
    ax.axhline(1.0, color="0.6", lw=0.8, ls="--")
    ax.set_xticks(range(len(result)), list(result), fontsize=8)
    ax.set_ylabel("gap closed G (test, fresh models)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def parse_group(text: str) -> tuple[str, list[str]]:
    """``"LABEL=GLOB[,GLOB...]"`` -> (label, sorted run directories); raises ``ValueError`` when a
    glob matches no directory."""
    label, sep, globs = text.partition("=")
    if not sep or not label or not globs:
        raise ValueError(f"--group {text!r}: write LABEL=GLOB[,GLOB...], e.g. '4 epochs=runs/e4_seed*'")
    paths = []
    for pattern in globs.split(","):
        found = sorted(p for p in glob.glob(pattern) if os.path.isdir(p))
        if not found:
            raise ValueError(f"--group {label!r}: {pattern!r} matches no directory")
        paths += found
    return label, paths


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--group", action="append", required=True, metavar="LABEL=GLOB[,GLOB...]",
                   help="a group of `autosim run` directories (repeat for each group)")
    p.add_argument("--reference-runs", default="", metavar="GLOB[,GLOB...]",
                   help="more run directories whose reference a cut run may borrow (not tabulated)")
    p.add_argument("--title", default="", help="the plot's title")
    p.add_argument("--out", required=True, help="output path without extension")
    args = p.parse_args(argv)
    try:
        groups = dict(parse_group(g) for g in args.group)
        donors = parse_group(f"donors={args.reference_runs}")[1] if args.reference_runs else []
        result = table(groups, donors)
    except ValueError as e:
        p.error(str(e))
    doc = {"benchmark": "cli_runs_gap", "date": datetime.date.today().isoformat(),
           "command": command_line(__file__, argv),
           "groups": result}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump(doc, f, indent=1)
    plot(result, args.out + ".png", args.title)
    for label, group in result.items():
        g = group["G"]
        line = " ".join(f"{r['G']:+.2f}" if r["G"] is not None else "cut" for r in group["rows"])
        figures = f"{g['mean']:.2f} +- {g['std']:.2f} over {g['n']}" if g else "no complete run"
        print(f"{label:>24}: {figures}  (seeds {group['seeds']}: {line})")
    print(f"wrote {args.out}.json and {args.out}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
