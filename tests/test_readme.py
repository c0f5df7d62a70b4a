"""The README's Python examples run as written, in order, in one namespace (a reader pastes
them one after the other), and the toy example learns: mu moves from the start (-1) toward
the validation data around 2."""

import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_examples_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) >= 2
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)  # noqa: S102 - the README's own code
    assert float(namespace["state"].psi["x"].loc) > 0.0
    assert bool(namespace["result"].converged)
