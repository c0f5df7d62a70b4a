"""Re-read the images-to-reach table (paper Table 2's ratios) of recorded comparisons with the current
``autosim_jax.compare.reach_table``, from each ``compare.json``'s per-seed curves alone (no run
directory, no assessment): what a change to the table does to every recorded ratio (session 40:
each psi charged the images it cost, ``images_rendered``, instead of the grid point).

    python benchmarks/reach_from_records.py benchmarks/results/compare_*/compare.json

Example:
  >>> import pathlib
  >>> record = pathlib.Path(__file__).parent / "results" / "compare_digits-sim2real_gpu" / "compare.json"
  >>> tables = reach_tables([str(record)])
  >>> [(e["baseline"], e["baseline_images"], e["images"], e["ratio"]) for e in tables[0][2]][0]
  ('lts', 12288, 3072, 4.0)
"""

from __future__ import annotations

import argparse
import json

from autosim_jax.compare import _aggregate_curve, _reach_markdown, reach_table


def reach_tables(paths: list[str]) -> list[tuple[str, str, list[dict]]]:
    """``(path, metric, reach table)`` of each ``compare.json`` that has assessed curves."""
    out = []
    for path in paths:
        with open(path) as f:
            record = json.load(f)
        assessment = record.get("assessment")
        rows = [r for r in record["rows"] if r.get("table2") and "assessed_curve" in r["seeds"][0]]
        if not assessment or not rows:
            continue
        for r in rows:
            r["aggregate"]["assessed_curve"] = _aggregate_curve([s["assessed_curve"] for s in r["seeds"]])
        out.append((path, record["metric"], reach_table(rows, assessment["start_psi"]["val"]["mean"], record["higher_is_better"])))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", help="compare.json files")
    args = parser.parse_args(argv)
    for path, metric, table in reach_tables(args.paths):
        print(f"== {path}\n{_reach_markdown(table, metric)}")


if __name__ == "__main__":
    main()
