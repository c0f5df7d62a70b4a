"""benchmarks/field_drift.py's ``--compare``: the fields of the psi each method of an ``autosim
compare`` run held at its assessed points (session 55), on a real comparison of the CLI tests' toy
with a reference psi. Imported with ``benchmarks/`` on ``sys.path``, as tests/test_reassess.py does.
"""

import json

import pytest
from toy_reference import SPEC as TOY_REF

from autosim_jax.cli import main
from autosim_jax.outer import kl_divergence
from autosim_jax.rundir import psi_from_record, read_metrics


@pytest.fixture()
def field_drift(benchmark_script):
    return benchmark_script("field_drift")


@pytest.fixture(scope="module")
def compared(toy_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("field_drift") / "c"
    assert main(["compare", TOY_REF, "--methods", "autosimulate,random", "--seeds", "1", "--budget-images", "64",
                 "--assess-points", "2", "--out", str(out)]) == 0
    return out


def test_compare_gives_the_kl_of_the_psi_each_assessment_trained_on(field_drift, compared):
    import toy_reference

    setup = toy_reference.build()
    reference, start = setup.reference_psi, setup.simulator.distribution.init()
    summary = json.loads((compared / "compare.json").read_text())
    table, points = field_drift.compare_table(str(compared), reference, start, summary["experiment"], summary["size"])
    assert points == [0, 32, 64] and sorted(table) == ["autosimulate-exact_quadratic", "random"]
    for method, fields in table.items():
        for seed in (0,):
            run = compared / method / f"seed{seed}"
            records, _ = read_metrics(str(run / "metrics.jsonl"))
            # The steps the comparison itself assessed (assessed.json's keys): each point's psi is
            # that record's, or the start before the method's first update.
            assessed = sorted(int(k) for k in json.loads((run / "assessed.json").read_text())["results"])
            by_step = {r["step"]: psi_from_record(start, r["psi"]) for r in records}
            held = [by_step[s] for s in assessed]
            psis = [start] * (len(points) - len(held)) + held
            for t, psi in zip(points, psis):
                for field in reference:
                    expected = float(kl_divergence({field: reference[field]}, {field: psi[field]}))
                    assert fields[field][str(t)]["per_seed"][str(seed)] == pytest.approx(expected, rel=1e-6, abs=1e-9)
    # The start is the start for every method, and the learner moved away from it by the budget.
    for field in reference:
        assert len({table[m][field]["0"]["per_seed"]["0"] for m in table}) == 1
    final = table["autosimulate-exact_quadratic"]
    assert any(final[f]["64"]["per_seed"]["0"] != final[f]["0"]["per_seed"]["0"] for f in reference)


def test_compare_refuses_what_is_not_a_comparison_of_this_experiment(field_drift, compared, tmp_path):
    import toy_reference

    setup = toy_reference.build()
    args = (setup.reference_psi, setup.simulator.distribution.init())
    summary = json.loads((compared / "compare.json").read_text())
    with pytest.raises(ValueError, match="holds no compare.json"):
        field_drift.compare_table(str(tmp_path), *args, summary["experiment"], summary["size"])
    with pytest.raises(ValueError, match="not clevr-seg at gpu size"):
        field_drift.compare_table(str(compared), *args, "clevr-seg", "gpu")
    unassessed = json.loads((compared / "compare.json").read_text())
    unassessed.pop("assessment")
    (tmp_path / "compare.json").write_text(json.dumps(unassessed))
    with pytest.raises(ValueError, match="assessed no points"):
        field_drift.compare_table(str(tmp_path), *args, summary["experiment"], summary["size"])
