"""What the cross-fitted line search chose along runs (``AutoSimConfig.outer_line_search``).

For every AutoSimulate run of one or more ``autosim compare`` directories this reads the steps'
``psi_step_scale`` (the multiple of the optimiser's update the line search applied; 1 without it) and
``psi_step_rms`` from ``metrics.jsonl``, and gives per quarter of the run the mean scale, the mean
squared scale (how much the search multiplies the noise of a step: a scale of 0 or 2 with even odds
has mean 1 and mean square 2), the share of steps it kept psi (scale 0) and the path psi travelled
(the sum of ``psi_step_rms``). A run without the line search reads scale 1 throughout, so a preset's
directory gives the path to compare with. No device is needed.

Usage (from ``benchmarks/``)::

    python line_search_scales.py --compare "preset=DIR_A" --compare "line search=DIR_B" --out OUT

Writes ``OUT.json`` (per label and seed: the quarters' figures, the counts of each scale, the whole
path) and prints a line per run.

Example:
  >>> records = [{"psi_step_scale": s, "psi_step_rms": 0.1 * s} for s in (0.0, 2.0, 2.0, 0.0, 1.0, 2.0, 0.0, 2.0)]
  >>> q = quarters(records, 4)
  >>> [r["mean_scale"] for r in q], [r["mean_squared_scale"] for r in q], [r["kept"] for r in q]
  ([1.0, 1.0, 1.5, 1.0], [2.0, 2.0, 2.5, 2.0], [0.5, 0.5, 0.0, 0.5])
  >>> round(sum(r["path"] for r in q), 6), scale_counts(records)
  (0.9, {'0': 3, '1': 1, '2': 4})
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


def quarters(records: list[dict], parts: int = 4) -> list[dict]:
    """Per consecutive part of the run: mean scale, mean squared scale, share kept (scale 0), path."""
    rows = []
    for part in np.array_split(np.arange(len(records)), parts):
        scale = np.array([records[i].get("psi_step_scale", 1.0) for i in part], np.float64)
        rms = np.array([records[i]["psi_step_rms"] for i in part], np.float64)
        rows.append({"steps": [int(part[0]) + 1, int(part[-1]) + 1], "mean_scale": round(float(scale.mean()), 4),
                     "mean_squared_scale": round(float((scale**2).mean()), 4),
                     "kept": round(float((scale == 0).mean()), 4), "path": round(float(rms.sum()), 6)})
    return rows


def scale_counts(records: list[dict]) -> dict[str, int]:
    """How many steps took each scale (keys as ``%g``)."""
    values, counts = np.unique([r.get("psi_step_scale", 1.0) for r in records], return_counts=True)
    return {f"{v:g}": int(c) for v, c in zip(values, counts)}


def read_runs(directory: str) -> dict[int, list[dict]]:
    """seed -> the step records of the AutoSimulate runs of one compare directory."""
    runs = {}
    for path in sorted(glob.glob(os.path.join(directory, "autosimulate-*", "seed*", "metrics.jsonl"))):
        seed = int(os.path.basename(os.path.dirname(path))[len("seed"):])
        with open(path) as f:
            runs[seed] = [json.loads(line) for line in f if line.strip()]
    if not runs:
        raise SystemExit(f"line_search_scales.py: no autosimulate-*/seed*/metrics.jsonl under {directory}")
    return runs


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--compare", action="append", required=True, metavar="LABEL=DIR",
                   help="an autosim compare directory (repeatable)")
    p.add_argument("--parts", type=int, default=4, help="how many consecutive parts of a run (default 4: quarters)")
    p.add_argument("--out", required=True, help="output path without extension")
    args = p.parse_args(argv)
    record = {"command": command_line(__file__, argv), "date": datetime.date.today().isoformat(), "runs": {}}
    for item in args.compare:
        label, _, directory = item.partition("=")
        if not directory:
            p.error(f"--compare takes LABEL=DIR, got {item!r}")
        record["runs"][label] = {}
        for seed, records in read_runs(directory).items():
            q = quarters(records, args.parts)
            record["runs"][label][str(seed)] = {"steps": len(records), "parts": q, "scales": scale_counts(records),
                                                "path": round(sum(r["path"] for r in q), 6)}
            cells = {key: " / ".join(f"{r[key]:.2f}" for r in q) for key in ("mean_scale", "kept", "path")}
            print(f"{label}, seed {seed}: mean scale {cells['mean_scale']}, kept {cells['kept']}, path {cells['path']}")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump(record, f, indent=1)
    print(f"wrote {args.out}.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
