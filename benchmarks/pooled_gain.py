"""Learned psi against a start and a reference judged by every fresh model any record trained on them (issue 14).

On digits-det one start detector scores anywhere from 0.04 to 0.36 test mAP@0.5, so a run's own 2 start
models make its gain over the start mostly noise; sessions 37, 66 and 68 pooled the start and reference
models of several calls (``psi_learning.py`` runs and ``reassess.py`` re-assessments of the same seeds).
This does that pooling in one place. From ``--records`` (``psi_learning.py`` and ``reassess.py`` records
of one experiment, size and assessment budget) it gathers, per seed,

* the start's and the reference's models: every ``psi_learning.py`` baseline that a record trained itself
  (a baseline reused with ``--baselines-from`` is its source's models and is counted there only), and every
  ``reassess.py`` record's new start and reference models (once per record and seed);
* each ``--psi NAME=RECORD:VARIANT@STEP``'s models: the run's own at that step in ``RECORD`` and every
  ``reassess.py`` row of the same record, variant and step (``@trajectory``: the run's replay product, the
  models ``psi_learning.py --assess-trajectory`` trained on the mixture of its steps' psi); a NAME given
  again with another record joins the seeds of runs split over records (``det_s012`` and ``det_s34``), each
  seed from the one record that has it;

and reports the pooled mean of each (weighted by the number of models; a model a record marks as diverged
is left out), each psi's gain over the pooled start and its G = gain / (reference - start) per seed, their
mean +- std over seeds (ddof=1), and each psi's paired difference from ``--base`` (mean, s.e., seeds
ahead). No device: records only.

Usage (the shape of session 68's call; ``results/psi_learning/pooled_gain_digits-det_gpu_120.json`` holds its
full command, with every record of the default's and ``lr0.3_decay20``'s detectors)::

    R=benchmarks/results/psi_learning
    python benchmarks/pooled_gain.py --metric test_metric --seeds 0,1,2 \\
        --records $R/digits-det_gpu_new_start.json.gz $R/digits-det_gpu_120steps_det_s012.json.gz \\
                  $R/reassess_digits-det_gpu_baselines.json $R/reassess_digits-det_gpu_baselines_more.json \\
                  $R/digits-det_gpu_120steps_unit_norm_decay60.json.gz $R/digits-det_gpu_120steps_entropy.json.gz \\
        --psi default=digits-det_gpu_120steps_det_s012.json:default@120 \\
        --psi entropy1=digits-det_gpu_120steps_entropy.json:entropy1@120 --base default --out /tmp/pooled

Writes ``OUT.json`` (every pooled figure with the records it came from), ``OUT.md`` (the table) and
``OUT.png`` (each psi's gain per seed against the reference's).

Example (two toy records: a run's own baselines, then a re-assessment of the same seed):
  >>> run = {"benchmark": "psi_learning", "experiment": "x", "size": "gpu", "repeats": 2, "baseline_repeats": 2,
  ...        "runs": [{"variant": "_baseline", "seed": 0, "start": {"test_metrics": [0.1, 0.3]},
  ...                  "reference": {"test_metrics": [0.5, 0.5]}},
  ...                 {"variant": "v", "seed": 0, "assessed": {"9": {"test_metrics": [0.4, 0.4]}}}]}
  >>> again = {"benchmark": "reassess", "experiment": "x", "size": "gpu", "rows": [{"file": "a.json", "variant": "v",
  ...          "seed": 0, "step": 9, "new": {"start": {"test_metrics": [0.2]}, "learned": {"test_metrics": [0.1]}}}]}
  >>> base, learned = collect({"a.json": run, "b.json": again}, "test_metric")
  >>> round(pooled(base["start"][0]), 3), round(pooled(learned[("a.json", "v", "9", 0)]), 3)
  (0.2, 0.3)
"""

from __future__ import annotations

import argparse
import datetime
import json
import os

import numpy as np
from detection_tables import mean_std  # {"mean", "std" (ddof=1), "per_seed"}
from field_drift import read_record  # a record, .json or .json.gz
from provenance import command_line  # the record's command, quoted for a shell


def record_name(path: str) -> str:
    """How ``reassess.py`` rows name a ``psi_learning.py`` record: its file name without ``.gz``."""
    name = os.path.basename(path)
    return name[:-3] if name.endswith(".gz") else name


def models(assessment: dict, metric: str, n_recorded: int) -> tuple[float, int] | None:
    """``(mean, number of models)`` of one assessment, its diverged models left out; ``None`` if none is left.
    Records before session 49 keep the mean only: then ``n_recorded`` models less the diverged."""
    diverged = set(assessment.get("diverged_models") or [])
    if f"{metric}s" in assessment:
        kept = [x for i, x in enumerate(assessment[f"{metric}s"]) if i not in diverged]
        return (float(np.mean(kept)), len(kept)) if kept else None
    n = n_recorded - len(diverged)
    return (float(assessment[metric]), n) if n > 0 else None


def collect(records: dict[str, dict], metric: str) -> tuple[dict, dict]:
    """``(baselines, learned)`` from ``{name: record}``: ``baselines[kind][seed]`` and
    ``learned[(record name, variant, step, seed)]`` are lists of ``(mean, n, source)``."""
    baselines = {"start": {}, "reference": {}}
    learned = {}

    def add(bucket, key, assessment, n_recorded, source):
        m = models(assessment, metric, n_recorded)
        if m is not None:
            bucket.setdefault(key, []).append((*m, source))

    for name, record in records.items():
        if record.get("benchmark") == "psi_learning":
            for run in record["runs"]:
                if run["variant"] == "_baseline":
                    if run.get("reused_from"):  # its source's models, counted where they were trained
                        continue
                    n = record.get("baseline_repeats") or record.get("repeats") or 1
                    for kind in baselines:
                        add(baselines[kind], run["seed"], run[kind], n, name)
                else:
                    for step, assessment in run.get("assessed", {}).items():
                        add(learned, (name, run["variant"], step, run["seed"]), assessment, record.get("repeats") or 1,
                            name)
        elif record.get("benchmark") == "reassess":
            seen = set()
            for row in record["rows"]:
                new, seed = row["new"], row["seed"]
                if "learned" in new:
                    key = (record_name(str(row.get("file"))), row["variant"], str(row["step"]), seed)
                    add(learned, key, new["learned"], record.get("repeats") or 1, name)
                if seed not in seen:  # a re-assessment trains each seed's start and reference once
                    seen.add(seed)
                    for kind in baselines:
                        if kind in new:
                            add(baselines[kind], seed, new[kind], record.get("repeats") or 1, name)
        else:
            raise ValueError(f"{name} is a {record.get('benchmark')!r} record, not psi_learning or reassess")
    return baselines, learned


def pooled(entries: list[tuple]) -> float:
    """The mean of every model in ``entries`` (``(mean, n, source)``): each mean weighted by its models."""
    n = sum(e[1] for e in entries)
    return sum(e[0] * e[1] for e in entries) / n


def check_same(records: dict[str, dict]) -> dict:
    """The experiment, size and assessment budget every record shares; ``ValueError`` naming the first
    record that differs (models trained on other budgets cannot be pooled)."""
    def budget(record):
        runs = record.get("runs") or []
        stated = {tuple(r["assess_budget"]) for r in runs if r.get("assess_budget")}
        return (record.get("experiment"), record.get("size"), record.get("assess_images"),
                record.get("assess_epochs")), stated

    first, (want, stated_all) = next(iter(records)), budget(next(iter(records.values())))
    for name, record in records.items():
        got, stated = budget(record)
        if got != want:
            raise ValueError(f"{name} is (experiment, size, assess images, epochs) {got}, {first} is {want}: "
                             "pool records of one experiment, size and assessment budget")
        stated_all |= stated
    if len(stated_all) > 1:
        raise ValueError(f"the records' runs state different assessment budgets {sorted(stated_all)}")
    return {"experiment": want[0], "size": want[1], "assess_images": want[2], "assess_epochs": want[3],
            "assess_budget_stated": sorted(stated_all)}


def parse_psi(spec: str) -> tuple[str, tuple[str, str, str]]:
    """``NAME=RECORD:VARIANT@STEP`` -> ``(NAME, (record name, VARIANT, STEP))``; STEP is a step number or
    ``trajectory``, the run's replay product (``psi_learning.py --assess-trajectory``: the mixture of every step's psi).

    Example:
      >>> parse_psi("e1=r.json.gz:entropy1@120")
      ('e1', ('r.json', 'entropy1', '120'))
      >>> parse_psi("mix=r.json:default@trajectory")
      ('mix', ('r.json', 'default', 'trajectory'))
    """
    name, _, rest = spec.partition("=")
    record, _, variant_step = rest.rpartition(":")
    variant, _, step = variant_step.rpartition("@")
    if not (name and record and variant and (step.isdigit() or step == "trajectory")):
        raise ValueError(f"--psi {spec!r}: expected NAME=RECORD:VARIANT@STEP (a step number or 'trajectory'), "
                         "e.g. entropy1=digits-det_gpu_120steps_entropy.json:entropy1@120")
    return name, (record_name(record), variant, step)


def seed_keys(name: str, keys: list[tuple], learned: dict, seeds: list[int]) -> dict[int, tuple]:
    """``{seed: (record, variant, step)}``: the one key of a ``--psi NAME``'s ``keys`` that has models of each seed;
    ``ValueError`` naming a seed that none of them has, or that two of them have (two runs are two psi)."""
    out = {}
    for s in seeds:
        holders = [k for k in keys if (*k, s) in learned]
        if len(holders) > 1:
            raise ValueError(f"--psi {name}: seed {s} has models in " + " and ".join(f"{k[0]}:{k[1]}@{k[2]}" for k in
                             holders) + ": give each seed's run once")
        if holders:
            out[s] = holders[0]
    missing = [s for s in seeds if s not in out]
    if missing:
        k = keys[0]
        raise ValueError(f"--psi {name}: no models of {k[1]}@{k[2]} in " + " or ".join(k[0] for k in keys) +
                         f" for seeds {missing} (is its record among --records?)")
    return out


def summarise(baselines: dict, learned: dict, psis: dict, seeds: list[int], base: str | None) -> dict:
    """Per seed pooled start, reference and psi; gains, G and paired differences from ``base``. ``psis`` maps each
    name to its list of ``(record, variant, step)`` keys (:func:`seed_keys`)."""
    for kind in baselines:
        missing = [s for s in seeds if s not in baselines[kind]]
        if missing:
            raise ValueError(f"no {kind} models of seeds {missing} in the records")
    out = {kind: {str(s): {"mean": pooled(baselines[kind][s]), "models": sum(e[1] for e in baselines[kind][s]),
                           "sources": sorted({e[2] for e in baselines[kind][s]})} for s in seeds}
           for kind in baselines}
    start = np.array([out["start"][str(s)]["mean"] for s in seeds])
    gap = np.array([out["reference"][str(s)]["mean"] for s in seeds]) - start
    out["reference_gain"] = mean_std(gap)
    out["psi"] = {}
    for name, keys in psis.items():
        by_seed = seed_keys(name, keys, learned, seeds)
        per = {str(s): {"mean": pooled(learned[(*k, s)]), "models": sum(e[1] for e in learned[(*k, s)]),
                        "sources": sorted({e[2] for e in learned[(*k, s)]})} for s, k in by_seed.items()}
        gain = np.array([per[str(s)]["mean"] for s in seeds]) - start
        used = [k for k in keys if k in by_seed.values()]
        step = used[0][2]
        step = int(step) if step.isdigit() else step  # a step number, or "trajectory" (the replay product)
        out["psi"][name] = {"record": " + ".join(k[0] for k in used), "variant": used[0][1], "step": step,
                            "per_seed": per, "gain": mean_std(gain), "G": mean_std(gain / gap)}
        if len(used) > 1:
            out["psi"][name]["seeds_from"] = {str(s): f"{k[0]}:{k[1]}@{k[2]}" for s, k in by_seed.items()}
    if base is not None:
        if base not in out["psi"]:
            raise ValueError(f"--base {base!r} is not one of the --psi names {sorted(out['psi'])}")
        b = np.array(out["psi"][base]["gain"]["per_seed"])
        for name, entry in out["psi"].items():
            d = np.array(entry["gain"]["per_seed"]) - b
            entry["paired_with_base"] = {**mean_std(d), "se": float(d.std(ddof=1) / np.sqrt(d.size)) if d.size > 1
                                         else 0.0, "ahead": int((d > 0).sum()), "behind": int((d < 0).sum())}
    return out


def markdown(summary: dict, seeds: list[int], metric: str) -> str:
    cols = " | ".join(f"seed {s}" for s in seeds)
    lines = [f"{metric} per seed (models pooled over the records); gain over the pooled start, G = gain / "
             "(reference - start), mean +- std over seeds (ddof=1)", "",
             f"| psi | {cols} | gain | G | paired with the base (s.e.; ahead / behind) |",
             "| --- |" + " --- |" * (len(seeds) + 3)]
    for kind in ("start", "reference"):
        cells = " | ".join(f"{summary[kind][str(s)]['mean']:.3f} ({summary[kind][str(s)]['models']})" for s in seeds)
        gain = (f"+{summary['reference_gain']['mean']:.3f} +- {summary['reference_gain']['std']:.3f}"
                if kind == "reference" else "")
        lines.append(f"| {kind} | {cells} | {gain} | {'1' if kind == 'reference' else '0'} | |")
    for name, e in summary["psi"].items():
        cells = " | ".join(f"{e['per_seed'][str(s)]['mean']:.3f} ({e['per_seed'][str(s)]['models']})" for s in seeds)
        p = e.get("paired_with_base")
        paired = f"{p['mean']:+.3f} ({p['se']:.3f}; {p['ahead']} / {p['behind']})" if p else ""
        lines.append(f"| {name} ({e['variant']}@{e['step']}) | {cells} | {e['gain']['mean']:+.3f} +- "
                     f"{e['gain']['std']:.3f} | {e['G']['mean']:.2f} +- {e['G']['std']:.2f} | {paired} |")
    return "\n".join(lines) + "\n"


def plot(summary: dict, seeds: list[int], metric: str, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.6 + 1.1 * len(summary["psi"]), 3.6))
    names = list(summary["psi"])
    for i, name in enumerate(names):
        g = summary["psi"][name]["gain"]
        ax.scatter([i] * len(seeds), g["per_seed"], color="C0", s=14, zorder=3)
        ax.errorbar([i], [g["mean"]], yerr=[g["std"]], fmt="o", color="k", capsize=4, zorder=4)
    r = summary["reference_gain"]
    ax.axhspan(r["mean"] - r["std"], r["mean"] + r["std"], color="C2", alpha=0.15)
    ax.axhline(r["mean"], color="C2", label=f"reference {r['mean']:+.3f}")
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xticks(range(len(names)), names, rotation=20)
    ax.set_ylabel(f"{metric}: gain over the pooled start")
    ax.set_title(f"seeds {seeds}: dots per seed, mean +- std", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--records", nargs="+", required=True, help="psi_learning.py and reassess.py records (.json[.gz])")
    p.add_argument("--psi", action="append", required=True, metavar="NAME=RECORD:VARIANT@STEP",
                   help="a learned psi: a psi_learning.py record's variant after STEP steps (repeatable; a NAME "
                        "given again with another record joins that record's seeds)")
    p.add_argument("--metric", default="test_metric", choices=["test_metric", "val_metric"])
    p.add_argument("--seeds", default=None, help="comma-separated seeds (default: every seed of the first --psi)")
    p.add_argument("--base", default=None, help="a --psi NAME the others are paired with, seed by seed")
    p.add_argument("--out", required=True, help="writes OUT.json, OUT.md, OUT.png")
    args = p.parse_args(argv)
    try:
        psis = {}
        for spec in args.psi:
            name, key = parse_psi(spec)
            psis.setdefault(name, []).append(key)
        records = {}
        for path in args.records:
            if record_name(path) in records:
                raise ValueError(f"--records names {record_name(path)} twice: each record's models count once")
            records[record_name(path)] = read_record(path)
        shared = check_same(records)
        baselines, learned = collect(records, args.metric)
        first = next(iter(psis.values()))
        seeds = ([int(s) for s in args.seeds.split(",")] if args.seeds
                 else sorted({s for (*k, s) in learned if tuple(k) in first}))
        if not seeds:
            raise ValueError(f"--psi {args.psi[0]}: no models of {first[0][1]}@{first[0][2]} in {first[0][0]} for "
                             "seeds (is its record among --records?)")
        summary = summarise(baselines, learned, psis, seeds, args.base)
    except (OSError, KeyError, ValueError) as err:
        p.error(str(err))
    result = {"benchmark": "pooled_gain", "date": datetime.date.today().isoformat(),
              # quoted, so that a --psi whose variant has spaces (reassess.py's twins) runs again as written
              "command": command_line(__file__, argv),
              "metric": args.metric, **shared, "records": list(records), "seeds": seeds, "base": args.base, **summary}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump(result, f, indent=1)
    table = markdown(summary, seeds, args.metric)
    with open(args.out + ".md", "w") as f:
        f.write(f"# {shared['experiment']} ({shared['size']}): learned psi against pooled baselines\n\n"
                f"`{result['command']}` ({result['date']})\n\n{table}")
    plot(summary, seeds, args.metric, args.out + ".png")
    print(table, end="")
    return result


if __name__ == "__main__":
    main()
