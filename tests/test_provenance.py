"""``benchmarks/provenance.py``: a record's ``command`` is quoted for a shell, so that it runs again as
written, and an explicit empty argument list is no arguments (not the process's)."""

import re
import shlex
import sys

from conftest import BENCHMARKS, load_benchmark

provenance = load_benchmark("provenance")
SCRIPT = str(BENCHMARKS / "pooled_gain.py")  # a script's __file__


def test_an_argument_with_spaces_and_quotes_splits_back_as_given():
    argv = ["--psi", "a=split.json:a b@10", "--title", "it's \"quoted\"", "--out", "p"]
    line = provenance.command_line(SCRIPT, argv)
    assert shlex.split(line) == ["python", "benchmarks/pooled_gain.py", *argv]


def test_an_explicit_empty_argv_stays_empty_and_none_is_the_process_own(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["pooled_gain.py", "--out", "a b"])
    assert provenance.command_line(SCRIPT, []) == "python benchmarks/pooled_gain.py"
    assert provenance.command_line(SCRIPT, None) == "python benchmarks/pooled_gain.py --out 'a b'"


def test_the_script_is_named_from_the_repository_root_wherever_it_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert provenance.command_line(SCRIPT, ["--x"]) == "python benchmarks/pooled_gain.py --x"
    outside = str(tmp_path / "elsewhere.py")
    assert shlex.split(provenance.command_line(outside, []))[1] == outside


def test_no_script_joins_its_arguments_by_hand():
    """Every record's command comes from ``command_line``: a ``join(`` of ``argv`` elsewhere is the unquoted kind."""
    by_hand = [f"{p.name}:{n}" for p in sorted(BENCHMARKS.glob("*.py")) if p.name != "provenance.py"
               for n, line in enumerate(p.read_text().splitlines(), 1) if re.search(r"join\(.*argv", line)]
    assert by_hand == []
