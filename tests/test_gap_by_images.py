"""``benchmarks/gap_by_images.py``: G of psi_learning.py runs with different renders a step, on one axis of
images rendered, with reassess.py's pooled G where a psi was assessed again (session 58)."""

import json

import pytest


@pytest.fixture()
def gbi(benchmark_script):
    return benchmark_script("gap_by_images")


def _record(path, variant, k, tests_by_seed, *, overrides=True):
    """A psi_learning record: start 0.2, reference 0.6, the variant's runs assessed at the given steps."""
    m = lambda x: {"test_metric": x, "val_metric": x}  # noqa: E731
    runs = [{"variant": "_baseline", "seed": s, "start": m(0.2), "reference": m(0.6)} for s in tests_by_seed]
    runs += [{"variant": variant, "seed": s, "experiment_config": {"dataset_size": 256},
              "assessed": {str(t): m(v) for t, v in steps.items()}} for s, steps in tests_by_seed.items()]
    record = {"variants": {variant: {"overrides": {"dataset_size": k} if overrides else {}}}, "runs": runs}
    path.write_text(json.dumps(record))
    return str(path)


def test_images_and_pairing_and_reassessed_steps(gbi, tmp_path):
    preset = _record(tmp_path / "preset.json", "inits8", 256, {0: {60: 0.4}, 1: {60: 0.3}}, overrides=False)
    k128 = _record(tmp_path / "k128.json", "k128", 128, {0: {60: 0.3, 120: 0.5}, 1: {60: 0.25, 120: 0.4}})
    # a reassess.py record that pooled more models on k128's step 120 of seed 1 (named as reassess.py names it)
    reassess = tmp_path / "reassess.json"
    reassess.write_text(json.dumps({"rows": [{"file": "k128.json", "variant": "k128", "seed": 1, "step": 120,
                                              "G_test_metric": {"pooled": 0.9}}]}))
    out = tmp_path / "out"
    assert gbi.main(["--seeds", "0,1", "--record", f"preset={preset}:inits8", "--record", f"k128={k128}:k128",
                     "--reassess", str(reassess), "--out", str(out)]) == 0
    result = json.loads((tmp_path / "out.json").read_text())
    assert result["k"] == {"preset": 256, "k128": 128}
    assert [(q["images"], q["step"]) for q in result["labels"]["k128"]] == [(7680, 60), (15360, 120)]
    last = result["labels"]["k128"][1]
    assert last["per_seed"] == pytest.approx([0.75, 0.9]) and last["source"] == ["record", "reassess"]
    # preset's step 60 (15,360 images) against k128's step 120: +0.25 and +0.65 in G
    (pair,) = result["paired_with_first"]["k128"]
    assert pair["images"] == 15360 and pair["ahead"] == 2 and pair["mean"] == pytest.approx(0.45)
    assert (tmp_path / "out.png").stat().st_size > 0 and "15,360" in (tmp_path / "out.md").read_text()


def test_a_step_in_two_records_of_one_label_is_refused(gbi, tmp_path):
    a = _record(tmp_path / "a.json", "k64", 64, {0: {40: 0.3}})
    b = _record(tmp_path / "b.json", "k64", 64, {0: {40: 0.4, 80: 0.5}})
    with pytest.raises(SystemExit, match="step 40 of seed 0 is in two records"):
        gbi.main(["--seeds", "0", "--record", f"k64={a}:k64", "--record", f"k64={b}:k64", "--out", str(tmp_path / "o")])
