"""autosim_jax: learn a simulator's sampling distribution with AutoSimulate (Behl et al., 2020).

The public API, one name per line.
"""

import importlib.metadata

__version__ = importlib.metadata.version("autosim_jax")
