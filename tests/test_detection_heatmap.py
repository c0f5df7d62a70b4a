"""The 54-cell categorical as a 3 x 9 x 2 heat map (cells.png of autosim run / compare).

The end-to-end check that ``autosim run clevr-det`` writes cells.png is an assertion of
tests/test_detection_experiments.py (its tiny run already writes the plots)."""

import types

import numpy as np

from autosim_jax import compare
from autosim_jax.distributions import describe_psi, from_schema
from autosim_jax.renderers import clevr
from autosim_jax.renderers.clevr_det import (
    CELLS,
    LOCATIONS,
    QUALITIES,
    SCENES,
    cell_probs,
    detection_schema,
)
from autosim_jax.renderers.glyphs_det import DigitCanvasRenderer
from autosim_jax.rundir import psi_record
from autosim_jax.schema import Field


def test_cell_grid_is_read_from_the_field_not_the_experiment():
    assert compare.cell_grid(detection_schema()["cell"]) == (tuple(SCENES), LOCATIONS, QUALITIES)
    assert [len(a) for a in compare.cell_grid(DigitCanvasRenderer(image_size=16).schema["cell"])] == [3, 9, 2]
    assert all(compare.cell_grid(f) is None for f in clevr.clevr_schema(2).fields)
    assert compare.cell_grid(Field.categorical("c", CELLS[:-1])) is None  # not the full product
    assert compare.cell_grid(Field.categorical("c", CELLS[1::2] + CELLS[::2])) is None  # not row-major
    assert compare.cell_grid(Field.categorical("c", CELLS, shape=(2,))) is None
    assert compare.cell_grid(Field.categorical("c", ("a/b", "a/c"))) is None
    assert compare.cell_grid(Field.categorical("c", ("a/x/lo", "a/x/hi", "b/x/lo", "b/x/hi"))) == (
        ("a", "b"), ("x",), ("lo", "hi"))


def test_cell_image_puts_each_cell_where_its_anchor_appears():
    """Block row = scene, block column = quality, 3 x 3 inside a block as the anchors appear
    in the image (row-major from top-left), one NaN row / column between blocks."""
    probs = np.arange(54.0)
    img, bh, bw = compare._cell_image(probs, (3, 9, 2))
    assert img.shape == (11, 7) and (bh, bw) == (3, 3)
    for i, name in enumerate(CELLS):
        s, loc, q = name.split("/")
        s, loc, q = list(SCENES).index(s), LOCATIONS.index(loc), QUALITIES.index(q)
        assert img[4 * s + loc // 3, 4 * q + loc % 3] == probs[i]
    assert np.isnan(img[3]).all() and np.isnan(img[:, 3]).all()
    assert np.isfinite(img).sum() == 54


def test_compare_writes_cells_png_for_a_cell_field_only(tmp_path, monkeypatch):
    """compare's cells.png from run records (start, each method's final psi averaged over
    seeds, target); nothing for a schema without a scene/location/quality field."""
    schema = detection_schema()
    dist = from_schema(schema, {"cell": {"probs": cell_probs({"scene1/*/low": 1.0})}})
    psi0 = dist.init()
    target = from_schema(schema, {"cell": {"probs": cell_probs({"scene2/centre/high": 1.0})}}).init()
    setup = types.SimpleNamespace(simulator=types.SimpleNamespace(renderer=types.SimpleNamespace(schema=schema)))
    rows = [{"label": "AutoSimulate", "method": "autosimulate", "approximation": "linear",
             "seeds": [{"seed": 0}, {"seed": 1}]}]
    records_of = {("autosimulate", "linear", s): [{"psi": psi_record(p)}] for s, p in ((0, psi0), (1, target))}
    seen = []
    real = compare.write_cell_maps
    monkeypatch.setattr(compare, "write_cell_maps", lambda out, sch, panels, **kw: seen.append(panels) or real(
        out, sch, panels, **kw))
    path = compare._plot_cells(str(tmp_path), setup, psi0, target, rows, records_of)
    assert path == str(tmp_path / compare.CELLS_PNG)
    assert (tmp_path / compare.CELLS_PNG).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Panels: start, the method's final psi (the mean of its seeds' probabilities), target.
    (panels,) = seen
    p0, p1 = (np.asarray(describe_psi(schema, q)["cell"]["probs"]) for q in (psi0, target))
    assert [name.split(" ")[0] for name, _ in panels] == ["start", "AutoSimulate", "target"]
    np.testing.assert_allclose(panels[0][1]["cell"]["probs"], p0, rtol=1e-6)
    np.testing.assert_allclose(panels[1][1]["cell"]["probs"], (p0 + p1) / 2, rtol=1e-6)
    np.testing.assert_allclose(panels[2][1]["cell"]["probs"], p1, rtol=1e-6)

    other = types.SimpleNamespace(simulator=types.SimpleNamespace(
        renderer=types.SimpleNamespace(schema=clevr.clevr_schema(2))))
    assert compare._plot_cells(str(tmp_path / "none"), other, psi0, None, [], {}) is None
    assert compare.write_cell_maps(str(tmp_path / "none"), clevr.clevr_schema(2), [("a", {})]) is None
    assert not (tmp_path / "none").exists()
