"""What every benchmark record says about how it was made: the command that makes it again.

A record's ``"command"`` is ``python benchmarks/NAME.py ARGS``, quoted for a POSIX shell
(``shlex.join``), so that it can be pasted back into one, or split with ``shlex.split``, even
where an argument holds spaces or quotes (``--psi 'a=split.json:a b@10'``). The script's path is
given from the repository's root, wherever the script was started from. The records' other keys
(``benchmark``, ``date``, ``device``, ``jax_version``, ...) are written by each script, as their
forms differ between scripts and code reads old records by them.

Scripts import it as a sibling (``from provenance import command_line``): ``python
benchmarks/NAME.py`` puts ``benchmarks/`` on ``sys.path``, as the tests' ``benchmark_script``
fixture does.
"""

from __future__ import annotations

import pathlib
import shlex
import sys
from collections.abc import Sequence

ROOT = pathlib.Path(__file__).resolve().parents[1]  # the repository's root, above benchmarks/


def command_line(script: str, argv: Sequence[str] | None) -> str:
    """``python SCRIPT ARGV...`` quoted for a shell: the command that makes a record again.

    Args:
      script: the script's file (its ``__file__``), given in the command relative to the
        repository's root (as it is when run from there), or in full if outside it.
      argv: the arguments the script's ``main`` parsed; ``None`` means the process's own
        (``sys.argv[1:]``), as for ``argparse``; an empty list is no arguments.

    >>> script = str(ROOT / "benchmarks" / "pooled_gain.py")  # a script's __file__
    >>> line = command_line(script, ["--psi", "a=split.json:a b@10", "--out", "p"])
    >>> line
    "python benchmarks/pooled_gain.py --psi 'a=split.json:a b@10' --out p"
    >>> shlex.split(line)[2:]
    ['--psi', 'a=split.json:a b@10', '--out', 'p']
    >>> command_line(script, [])
    'python benchmarks/pooled_gain.py'
    """
    path = pathlib.Path(script).resolve()
    try:
        path = path.relative_to(ROOT)
    except ValueError:  # a script outside the repository: its full path
        pass
    return shlex.join(["python", path.as_posix(), *(sys.argv[1:] if argv is None else argv)])
