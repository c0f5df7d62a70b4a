"""The docstring examples of the benchmark scripts run, as the library's do (``--doctest-modules``
covers ``autosim_jax/`` only: ``benchmarks/`` is no package and not on the test path).

Each script whose docstrings hold an example is imported with ``benchmarks/`` on ``sys.path``
(the scripts import one another, e.g. ``field_drift.read_record``) and checked with
``doctest.testmod``; a script that gains an example is picked up without a change here.
"""

import doctest
import importlib
import pathlib

import pytest

_BENCHMARKS = pathlib.Path(__file__).parents[1] / "benchmarks"
_WITH_EXAMPLES = sorted(p.stem for p in _BENCHMARKS.glob("*.py") if ">>>" in p.read_text())


def test_the_scripts_with_examples_are_found():
    assert {"psi_learning", "field_drift", "influence_features"} <= set(_WITH_EXAMPLES)


@pytest.mark.parametrize("name", _WITH_EXAMPLES)
def test_benchmark_examples(name, monkeypatch):
    monkeypatch.syspath_prepend(str(_BENCHMARKS))
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0, result
