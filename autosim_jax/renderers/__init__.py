"""Host renderers (numpy in, numpy out; no JAX) and the scene schema they declare."""

from .schema import Field as Field
from .schema import OutputSpec as OutputSpec
from .schema import Renderer as Renderer
from .schema import SceneSchema as SceneSchema
