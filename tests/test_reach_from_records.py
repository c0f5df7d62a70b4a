"""benchmarks/reach_from_records.py: a variant's AutoSimulate rows read against a head to head's baselines."""

import json
import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).parents[1] / "benchmarks"))
import reach_from_records  # noqa: E402

RESULTS = pathlib.Path(__file__).parents[1] / "benchmarks" / "results"


def test_a_variant_of_the_same_keys_is_read_against_the_committed_baselines():
    """The cpu head to head's BO best (0.3263 after 4,096 images) is reached by the first grid point
    (1,280) with `K64_DECAY30`'s curve (session 61) and at 5,120 with the committed K = 256 row."""
    head = str(RESULTS / "compare_clevr-seg_cpu" / "compare.json")
    variant = str(RESULTS / "compare_clevr-seg_cpu_k64_decay30" / "compare.json")
    (_, _, own), = reach_from_records.reach_tables([head])
    (_, _, other), = reach_from_records.reach_tables([head], autosimulate_of=variant)
    bo = lambda table: next(e for e in table if e["baseline"] == "bo")
    assert (bo(own)["images"], bo(other)["images"]) == (5120, 1280)
    assert bo(other)["baseline_best_val"] == bo(own)["baseline_best_val"]


def test_a_record_of_other_keys_is_refused(tmp_path):
    head = json.loads((RESULTS / "compare_clevr-seg_cpu" / "compare.json").read_text())
    head["assessment"]["start_psi"]["val"]["mean"] += 0.01
    path = tmp_path / "other.json"
    path.write_text(json.dumps(head))
    with pytest.raises(SystemExit, match="same keys"):
        reach_from_records.reach_tables([str(RESULTS / "compare_clevr-seg_cpu" / "compare.json")],
                                        autosimulate_of=str(path))
