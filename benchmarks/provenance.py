"""What every benchmark record says about how it was made: the command that makes it again.

A record's ``"command"`` is the call as it was made, quoted for a POSIX shell (``shlex.join``),
so that it can be pasted back into one from the repository's root, or split with
``shlex.split``, even where an argument holds spaces or quotes (``--psi 'a=split.json:a b@10'``).
A script started from a folder below the root (``cd benchmarks && python reassess.py ...``, whose
relative arguments are relative to that folder) is recorded with that ``cd``. The records' other
keys (``benchmark``, ``date``, ``device``, ``jax_version``, ...) are written by each script, as
their forms differ between scripts and code reads old records by them.

Scripts import it as a sibling (``from provenance import command_line``): ``python
benchmarks/NAME.py`` puts ``benchmarks/`` on ``sys.path``, as the tests' ``load_benchmark`` and
``benchmark_script`` do.
"""

from __future__ import annotations

import os
import pathlib
import shlex
import sys
from collections.abc import Sequence

ROOT = pathlib.Path(__file__).resolve().parents[1]  # the repository's root, above benchmarks/


def command_line(script: str, argv: Sequence[str] | None, cwd: str | None = None) -> str:
    """``[cd DIR &&] python SCRIPT ARGV...`` quoted for a shell: the command that makes a record again.

    Args:
      script: the script's file (its ``__file__``).
      argv: the arguments the script's ``main`` parsed; ``None`` means the process's own
        (``sys.argv[1:]``), as for ``argparse``; an empty list is no arguments.
      cwd: the folder the script runs in (default: the current one). Inside the repository the
        command runs from its root: ``SCRIPT`` relative to ``cwd`` and, below the root, ``cd``
        to ``cwd`` first, so that relative arguments mean what they meant; outside it, ``SCRIPT``
        in full and no ``cd``.

    >>> script = str(ROOT / "benchmarks" / "pooled_gain.py")  # a script's __file__
    >>> line = command_line(script, ["--psi", "a=split.json:a b@10", "--out", "p"], cwd=str(ROOT))
    >>> line
    "python benchmarks/pooled_gain.py --psi 'a=split.json:a b@10' --out p"
    >>> shlex.split(line)[2:]
    ['--psi', 'a=split.json:a b@10', '--out', 'p']
    >>> command_line(script, ["--records", "results/x.json"], cwd=str(ROOT / "benchmarks"))
    'cd benchmarks && python pooled_gain.py --records results/x.json'
    >>> command_line(script, [], cwd=str(ROOT))
    'python benchmarks/pooled_gain.py'
    """
    args = sys.argv[1:] if argv is None else list(argv)
    here = pathlib.Path(os.getcwd() if cwd is None else cwd).resolve()
    path = pathlib.Path(script).resolve()
    try:
        below_root = here.relative_to(ROOT)
    except ValueError:  # started outside the repository: the script in full
        return shlex.join(["python", str(path), *args])
    line = shlex.join(["python", pathlib.Path(os.path.relpath(path, here)).as_posix(), *args])
    return line if below_root == pathlib.Path(".") else f"cd {shlex.quote(below_root.as_posix())} && {line}"
