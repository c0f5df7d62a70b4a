"""autosim_jax: learn a simulator's sampling distribution with AutoSimulate (Behl et al., 2020).

The public API, one name per line.
"""

import importlib.metadata

from .curvature import CurvatureOperator as CurvatureOperator
from .curvature import gauss_newton_operator as gauss_newton_operator
from .curvature import hessian_operator as hessian_operator
from .curvature import hutchinson_diagonal as hutchinson_diagonal
from .curvature import hvp as hvp
from .solve import SolveResult as SolveResult
from .solve import solve_damped as solve_damped

try:
    __version__ = importlib.metadata.version("autosim_jax")
except importlib.metadata.PackageNotFoundError:  # a source tree on PYTHONPATH, not installed
    __version__ = "0+source"
