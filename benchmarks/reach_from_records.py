"""Re-read the images-to-reach table (paper Table 2's ratios) of recorded comparisons with the current
``autosim_jax.compare.reach_table``, from each ``compare.json``'s per-seed curves alone (no run
directory, no assessment): what a change to the table does to every recorded ratio (session 40:
each psi charged the images it cost, ``images_rendered``, instead of the grid point).

    python benchmarks/reach_from_records.py benchmarks/results/compare_*/compare.json

``--autosimulate-of VARIANT/compare.json`` reads a head to head's table with AutoSimulate's rows taken
from a variant's record of the same keys (``autosim compare PLUGIN --methods autosimulate``).

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


def with_autosimulate_of(record: dict, variant: dict) -> dict:
    """``record`` (a head to head) with its AutoSimulate rows replaced by ``variant``'s: a record of
    ``autosim compare PLUGIN --methods autosimulate`` drawn with the same keys (the start's assessment
    equal to the bit), so that the variant's images-to-reach can be read against the baselines' runs.

    Example:
      >>> start = {"start_psi": {"val": {"mean": 0.3}}}
      >>> head = {"rows": [{"method": "autosimulate", "label": "a"}, {"method": "bo", "label": "bo"}],
      ...         "assessment": start}
      >>> [r["label"] for r in with_autosimulate_of(head, {"rows": [{"method": "autosimulate", "label": "v"}],
      ...                                                  "assessment": start})["rows"]]
      ['v', 'bo']
    """
    if record["assessment"]["start_psi"]["val"] != variant["assessment"]["start_psi"]["val"]:
        raise SystemExit("the variant's start psi was assessed differently from the head to head's: not drawn with "
                         "the same keys (experiment, size, seeds), so its curve cannot be read against those baselines")
    own = [r for r in variant["rows"] if r.get("method") == "autosimulate"]
    return {**record, "rows": own + [r for r in record["rows"] if r.get("method") != "autosimulate"]}


def reach_tables(paths: list[str], autosimulate_of: str | None = None) -> list[tuple[str, str, list[dict]]]:
    """``(path, metric, reach table)`` of each ``compare.json`` that has assessed curves (with the
    AutoSimulate rows of the record ``autosimulate_of``, if given: :func:`with_autosimulate_of`)."""
    variant = None
    if autosimulate_of:
        with open(autosimulate_of) as f:
            variant = json.load(f)
    out = []
    for path in paths:
        with open(path) as f:
            record = json.load(f)
        if variant is not None:
            record = with_autosimulate_of(record, variant)
        assessment = record.get("assessment")
        rows = [r for r in record["rows"] if r.get("table2") and "assessed_curve" in r["seeds"][0]]
        if not assessment or not rows:
            continue
        for r in rows:
            r["aggregate"]["assessed_curve"] = _aggregate_curve([s["assessed_curve"] for s in r["seeds"]])
        out.append((path, record["metric"],
                    reach_table(rows, assessment["start_psi"]["val"]["mean"], record["higher_is_better"])))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", help="compare.json files")
    parser.add_argument("--autosimulate-of", metavar="COMPARE_JSON",
                        help="read AutoSimulate's rows from this record (a variant drawn with the same keys)")
    args = parser.parse_args(argv)
    for path, metric, table in reach_tables(args.paths, args.autosimulate_of):
        print(f"== {path}\n{_reach_markdown(table, metric)}")


if __name__ == "__main__":
    main()
