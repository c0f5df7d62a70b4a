"""Host renderers (numpy in, numpy out; no JAX) and the scene schema they declare.

Example:
  >>> renderer = get_renderer("glyphs")
  >>> renderer.name, renderer.inputs_spec.shape
  ('glyphs', (8, 8, 1))
"""

from __future__ import annotations

from typing import Any, Callable

from ..schema import Field as Field
from ..schema import OutputSpec as OutputSpec
from ..schema import Renderer as Renderer
from ..schema import SceneSchema as SceneSchema
from .clevr import CLASS_NAMES as CLASS_NAMES
from .clevr import ClevrRenderer as ClevrRenderer
from .clevr import clevr_schema as clevr_schema
from .clevr_det import ClevrDetRenderer as ClevrDetRenderer
from .glyphs import GlyphRenderer as GlyphRenderer
from .glyphs import glyph_schema as glyph_schema
from .glyphs import load_real_digits as load_real_digits
from .glyphs_det import DigitCanvasRenderer as DigitCanvasRenderer
from .glyphs_det import real_digit_canvases as real_digit_canvases
from .mitsuba_backend import MitsubaDetRenderer as MitsubaDetRenderer
from .mitsuba_backend import MitsubaRenderer as MitsubaRenderer

# Name -> constructor. The Mitsuba backends import Mitsuba only when constructed.
RENDERERS: dict[str, Callable[..., Any]] = {
    ClevrRenderer.name: ClevrRenderer,
    MitsubaRenderer.name: MitsubaRenderer,
    GlyphRenderer.name: GlyphRenderer,
    ClevrDetRenderer.name: ClevrDetRenderer,
    MitsubaDetRenderer.name: MitsubaDetRenderer,
    DigitCanvasRenderer.name: DigitCanvasRenderer,
}


def get_renderer(name: str, **kwargs: Any) -> Renderer:
    """Builds a renderer by name: ``"clevr"``, ``"mitsuba"``, ``"glyphs"``, ``"clevr-det"``, ``"mitsuba-det"``
    or ``"digit-canvas"``.

    Args:
      name: a key of :data:`RENDERERS`.
      **kwargs: passed to the renderer's constructor (e.g. ``image_size=32``).

    Raises:
      ValueError: for an unknown name, listing the valid ones.

    Example:
      >>> get_renderer("clevr", image_size=32).labels_spec.shape
      (32, 32)
    """
    try:
        make = RENDERERS[name]
    except KeyError:
        raise ValueError(f"Unknown renderer {name!r}; valid names are {sorted(RENDERERS)}.") from None
    return make(**kwargs)
