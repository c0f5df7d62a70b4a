"""``benchmarks/provenance.py``: a record's ``command`` is quoted for a shell, so that it runs again as
written from the repository's root, and an explicit empty argument list is no arguments (not the process's)."""

import re
import shlex
import sys

from conftest import BENCHMARKS, load_benchmark

provenance = load_benchmark("provenance")
ROOT = BENCHMARKS.parent
SCRIPT = str(BENCHMARKS / "pooled_gain.py")  # a script's __file__


def test_an_argument_with_spaces_and_quotes_splits_back_as_given():
    argv = ["--psi", "a=split.json:a b@10", "--title", "it's \"quoted\"", "--out", "p"]
    line = provenance.command_line(SCRIPT, argv, cwd=str(ROOT))
    assert shlex.split(line) == ["python", "benchmarks/pooled_gain.py", *argv]


def test_an_explicit_empty_argv_stays_empty_and_none_is_the_process_own(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["pooled_gain.py", "--out", "a b"])
    assert provenance.command_line(SCRIPT, [], cwd=str(ROOT)) == "python benchmarks/pooled_gain.py"
    assert provenance.command_line(SCRIPT, None, cwd=str(ROOT)) == "python benchmarks/pooled_gain.py --out 'a b'"


def test_a_call_below_the_root_keeps_its_folder_so_relative_arguments_keep_their_meaning(tmp_path, monkeypatch):
    monkeypatch.chdir(BENCHMARKS)
    line = provenance.command_line(SCRIPT, ["--records", "results/x.json"])
    assert line == "cd benchmarks && python pooled_gain.py --records results/x.json"
    monkeypatch.chdir(tmp_path)  # outside the repository: the script in full, no cd
    assert shlex.split(provenance.command_line(SCRIPT, ["--x"])) == ["python", str(BENCHMARKS / "pooled_gain.py"),
                                                                     "--x"]


def test_no_script_joins_its_arguments_by_hand():
    """Every record's command comes from ``command_line``: a ``join(`` of ``argv`` elsewhere is the unquoted kind."""
    by_hand = [f"{p.name}:{n}" for p in sorted(BENCHMARKS.glob("*.py")) if p.name != "provenance.py"
               for n, line in enumerate(p.read_text().splitlines(), 1) if re.search(r"join\(.*argv", line)]
    assert by_hand == []
