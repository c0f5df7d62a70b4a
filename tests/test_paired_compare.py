"""benchmarks/paired_compare.py: seeds paired by key, and records that are not refused."""

import pathlib
import sys

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).parents[1] / "benchmarks"))
import paired_compare  # noqa: E402


def _record(curves, start, reference, times):
    seeds = [{"assessed_curve": [{"images": im, "val_metric": v, "test_metric": v} for im, v in zip((960, 1920), c)],
              "time": t} for c, t in zip(curves, times)]
    return {"experiment": "x", "seeds": len(curves), "rows": [{"seeds": seeds}],
            "assessment": {"start_psi": {"seeds": [{"val_metric": s, "test_metric": s} for s in start]},
                           "reference_psi": {"seeds": [{"val_metric": r, "test_metric": r} for r in reference]}}}


def test_pairs_each_seed_with_its_own_and_gives_g_at_the_end():
    start, reference = [0.2, 0.3, 0.25], [0.6, 0.5, 0.45]
    base = _record([[0.3, 0.4], [0.3, 0.4], [0.3, 0.35]], start, reference, [10, 10, 10])
    variant = _record([[0.35, 0.5], [0.3, 0.5], [0.3, 0.35]], start, reference, [20, 30, 20])
    out = paired_compare.compare_records(base, variant)["val_metric"]
    end = out["points"][1]
    assert (end["ahead"], end["behind"]) == (2, 0)
    assert end["mean"] == pytest.approx(0.2 / 3)
    g_variant = (np.array([0.5, 0.5, 0.35]) - start) / (np.array(reference) - start)
    assert out["gap_closed"]["variant_mean"] == pytest.approx(g_variant.mean())
    assert paired_compare.compare_records(base, variant)["time_ratio_median"] == pytest.approx(2.0)


def test_refuses_records_drawn_with_other_keys():
    base = _record([[0.3, 0.4]] * 2, [0.2, 0.3], [0.6, 0.5], [1, 1])
    other = _record([[0.3, 0.4]] * 2, [0.21, 0.3], [0.6, 0.5], [1, 1])
    with pytest.raises(SystemExit, match="same keys"):
        paired_compare.compare_records(base, other)


def test_baselines_differ_pairs_the_curves_and_keeps_each_records_own_g():
    base = _record([[0.3, 0.4]] * 2, [0.2, 0.3], [0.6, 0.5], [1, 1])
    other = _record([[0.35, 0.45], [0.3, 0.5]], [0.21, 0.3], [0.6, 0.55], [1, 1])
    out = paired_compare.compare_records(base, other, baselines_differ=True)["val_metric"]
    assert out["points"][1]["mean"] == pytest.approx(0.075)
    assert out["baselines"]["start"] == pytest.approx([0.01, 0.0])
    assert out["baselines"]["reference"] == pytest.approx([0.0, 0.05])
    assert out["gap_closed"]["variant"] == pytest.approx([(0.45 - 0.21) / (0.6 - 0.21), (0.5 - 0.3) / (0.55 - 0.3)])


def test_records_joined_by_plus_pool_their_seeds_in_order(tmp_path):
    """``A+B`` (more seeds from another call) pairs like one record of A's seeds then B's."""
    import json

    start, reference = [0.2, 0.3, 0.25], [0.6, 0.5, 0.45]
    base = _record([[0.3, 0.4], [0.3, 0.4], [0.3, 0.35]], start, reference, [10, 10, 10])
    variant = _record([[0.35, 0.5], [0.3, 0.5], [0.3, 0.35]], start, reference, [20, 30, 20])
    paths = {}
    for name, record, seeds in (("b01", base, [0, 1]), ("b2", base, [2]),
                                ("v01", variant, [0, 1]), ("v2", variant, [2])):
        part = {**record, "seeds": len(seeds), "rows": [{"seeds": [record["rows"][0]["seeds"][i] for i in seeds]}],
                "assessment": {k: {"seeds": [record["assessment"][k]["seeds"][i] for i in seeds]}
                               for k in ("start_psi", "reference_psi")}}
        (tmp_path / name).mkdir()
        (tmp_path / name / "compare.json").write_text(json.dumps(part))
        paths[name] = str(tmp_path / name)
    pooled_base = paired_compare.read(paths["b01"] + "+" + paths["b2"])
    assert pooled_base["seeds"] == 3
    pooled = paired_compare.compare_records(pooled_base, paired_compare.read(paths["v01"] + "+" + paths["v2"]))
    assert pooled == paired_compare.compare_records(base, variant)
