"""benchmarks/walk_onset.py: the path length and the fields' KL along every step of an ``autosim
compare`` run, on a real comparison of the CLI tests' toy with a reference psi (as
tests/test_field_drift.py)."""

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
    rows = runs["autosimulate-exact_quadratic/seed0"]
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
    with pytest.raises(ValueError, match="not fields of the reference"):
        walk_onset.compare_runs(str(out), reference, start, ["no_such_field"])
    with pytest.raises(ValueError, match="holds no AutoSimulate run"):
        walk_onset.compare_runs(str(tmp_path / "empty"), reference, start, fields)
