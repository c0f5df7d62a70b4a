"""benchmarks/walk_onset.py: the path length and the fields' KL along every step of an ``autosim
compare`` run, on a real comparison of the CLI tests' toy with a reference psi (as
tests/test_field_drift.py)."""

import json

import jax
import numpy as np
import pytest
from toy_reference import SPEC as TOY_REF

from autosim_jax.cli import main
from autosim_jax.outer import kl_divergence
from autosim_jax.rundir import psi_from_record, read_metrics


@pytest.fixture()
def walk_onset(benchmark_script):
    return benchmark_script("walk_onset")


def test_every_step_gets_the_path_so_far_and_the_fields_kl(walk_onset, toy_path, tmp_path):
    import toy_reference

    out = tmp_path / "c"
    assert main(["compare", TOY_REF, "--methods", "autosimulate,random", "--seeds", "1", "--budget-images", "64",
                 "--assess-images", "0", "--out", str(out)]) == 0
    setup = toy_reference.build()
    reference, start = setup.reference_psi, setup.simulator.distribution.init()
    fields = sorted(reference)
    runs = walk_onset.compare_runs(str(out), reference, start, fields)
    assert list(runs) == ["autosimulate-exact_quadratic/seed0"]  # random search records no psi step
    records, _ = read_metrics(str(out / "autosimulate-exact_quadratic" / "seed0" / "metrics.jsonl"))
    rows = runs["autosimulate-exact_quadratic/seed0"]["rows"]
    assert [r["step"] for r in rows] == [r["step"] for r in records] and len(rows) > 1
    path = 0.0
    for row, record in zip(rows, records):
        path += record["psi_step_rms"] if record["psi_updated"] else 0.0
        psi = psi_from_record(start, record["psi"])
        kl = sum(float(kl_divergence({f: reference[f]}, {f: psi[f]})) for f in fields)
        assert row["path"] == pytest.approx(path) and row["kl"] == pytest.approx(kl, rel=1e-6, abs=1e-9)
    assert rows[-1]["path"] > 0
    summary = walk_onset.summarize(rows)
    assert summary["smallest"]["kl"] == min(r["kl"] for r in rows) and summary["end_kl"] == rows[-1]["kl"]
    # each field's own path: one span per step gives each step's RMS over the field's coordinates,
    # whose coordinate-weighted mean square over the fields is the record's psi_step_rms squared
    one_span_a_step = walk_onset.compare_runs(str(out), reference, start, fields, parts=len(records))
    paths = one_span_a_step["autosimulate-exact_quadratic/seed0"]["fields"]
    sizes = {f: sum(np.size(leaf) for leaf in jax.tree.leaves(start[f])) for f in paths}
    for i, record in enumerate(records):
        square = sum(sizes[f] * spans[i]["path"] ** 2 for f, spans in paths.items()) / sum(sizes.values())
        assert np.sqrt(square) == pytest.approx(record["psi_step_rms"] if record["psi_updated"] else 0.0, rel=1e-4)
    quarters = runs["autosimulate-exact_quadratic/seed0"]
    for f, spans in quarters["fields"].items():
        assert sum(span["path"] for span in spans) == pytest.approx(sum(span["path"] for span in paths[f]))
        last = psi_from_record(start, records[spans[-1]["steps"][1] - 1]["psi"])
        assert spans[-1]["kl"] == pytest.approx(float(kl_divergence({f: reference[f]}, {f: last[f]})), rel=1e-6)
        assert quarters["start_kl"][f] == pytest.approx(float(kl_divergence({f: reference[f]}, {f: start[f]})))
        assert all(0 <= span["displacement"] <= span["path"] + 1e-7 for span in spans)  # the triangle inequality
    # the record main() writes: the same per-field spans, and pure noise's ratio for their length
    assert walk_onset.main(["--experiment", TOY_REF, "--size", "cpu", "--fields", ",".join(fields),
                            "--compare", f"toy={out}", "--out", str(tmp_path / "walk")]) == 0
    written = json.loads((tmp_path / "walk.json").read_text())
    run = written["runs"]["toy"]["autosimulate-exact_quadratic/seed0"]
    # the same numbers: JSON keeps a float's shortest repr, so a round trip is exact
    assert run["fields"] == json.loads(json.dumps(quarters["fields"]))
    assert run["start_kl"] == json.loads(json.dumps(quarters["start_kl"]))
    lengths = {b - a + 1 for a, b in (span["steps"] for span in run["fields"]["x"])}
    assert set(written["null_displacement_ratio"]) == {str(n) for n in lengths}
    assert (tmp_path / "walk.png").stat().st_size > 0 and (tmp_path / "walk_fields.png").stat().st_size > 0
    with pytest.raises(ValueError, match="not fields of the reference"):
        walk_onset.compare_runs(str(out), reference, start, ["no_such_field"])
    with pytest.raises(ValueError, match="holds no AutoSimulate run"):
        walk_onset.compare_runs(str(tmp_path / "empty"), reference, start, fields)
