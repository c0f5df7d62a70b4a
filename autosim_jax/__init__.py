"""autosim_jax: learn a simulator's sampling distribution with AutoSimulate (Behl et al., 2020).

The public API, one name per line: ``_EXPORTS`` maps each name to the module that defines it.
The names are imported lazily (PEP 562 ``__getattr__``), so ``import autosim_jax`` and the
``autosim`` command's ``--help`` do not import JAX (about 1.5 s); the first use of a name
imports its module. ``from autosim_jax import X``, ``autosim_jax.X``, ``dir(autosim_jax)`` and
``__all__`` work as with eager imports, and so does a submodule by attribute
(``autosim_jax.rundir``). The ``TYPE_CHECKING`` block below repeats the list for type checkers
and editors; ``tests/test_cli.py`` checks that the two agree.

Example:
  >>> import autosim_jax
  >>> autosim_jax.solve_damped.__module__
  'autosim_jax.solve'
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "AutoSimState": "autosimulate",
    "AutoSimulateWarning": "autosimulate",
    "AutoSimulate": "autosimulate",
    "FinetuneLossJumpWarning": "autosimulate",
    "Hypergradient": "autosimulate",
    "IndefiniteCurvatureWarning": "autosimulate",
    "NonFiniteStateError": "autosimulate",
    "StepInfo": "autosimulate",
    "UnconvergedSolveWarning": "autosimulate",
    "finetune_loss_jumps": "autosimulate",
    "make_autosimulate": "autosimulate",
    "load_checkpoint": "checkpoint",
    "save_checkpoint": "checkpoint",
    "APPROXIMATIONS": "config",
    "CURVATURES": "config",
    "AutoSimConfig": "config",
    "CurvatureOperator": "curvature",
    "empirical_fisher_operator": "curvature",
    "gauss_newton_operator": "curvature",
    "hessian_operator": "curvature",
    "hutchinson_diagonal": "curvature",
    "hvp": "curvature",
    "CategoricalParams": "distributions",
    "Distribution": "distributions",
    "ExploreParams": "distributions",
    "NormalParams": "distributions",
    "bounded": "distributions",
    "categorical": "distributions",
    "describe_psi": "distributions",
    "field_spread": "distributions",
    "from_schema": "distributions",
    "gaussian": "distributions",
    "histogram": "distributions",
    "product": "distributions",
    "with_exploration": "distributions",
    "apply_baseline": "estimators",
    "directional_derivatives": "estimators",
    "reinforce_gradient": "estimators",
    "score_function_term": "estimators",
    "DivergedAssessmentWarning": "experiments",
    "EXPERIMENTS": "experiments",
    "Experiment": "experiments",
    "ExperimentSetup": "experiments",
    "assess_psi": "experiments",
    "gap_closed": "experiments",
    "get_experiment": "experiments",
    "make_assessor": "experiments",
    "Inner": "inner",
    "make_inner": "inner",
    "SmallCNN": "models",
    "UNet": "models",
    "cross_fitted_line_search": "outer",
    "entropy": "outer",
    "kl_divergence": "outer",
    "natural_trust_region": "outer",
    "signal_test": "outer",
    "signal_test_report": "outer",
    "snr_gate": "outer",
    "RenderPool": "render_pool",
    "make_render_pool": "render_pool",
    "Field": "schema",
    "OutputSpec": "schema",
    "Renderer": "schema",
    "SceneSchema": "schema",
    "RenderError": "simulator",
    "Simulation": "simulator",
    "Simulator": "simulator",
    "reraise_render_errors": "simulator",
    "SolveResult": "solve",
    "solve_damped": "solve",
    "SolveReport": "table1",
    "approximation_vector": "table1",
    "curvature_operator": "table1",
    "Task": "tasks",
    "accuracy": "tasks",
    "classification_task": "tasks",
    "cross_entropy": "tasks",
    "mean_iou": "tasks",
    "pixel_cross_entropy": "tasks",
    "segmentation_task": "tasks",
}

__all__ = list(_EXPORTS)

if TYPE_CHECKING:
    from .autosimulate import AutoSimState as AutoSimState
    from .autosimulate import AutoSimulate as AutoSimulate
    from .autosimulate import AutoSimulateWarning as AutoSimulateWarning
    from .autosimulate import FinetuneLossJumpWarning as FinetuneLossJumpWarning
    from .autosimulate import Hypergradient as Hypergradient
    from .autosimulate import IndefiniteCurvatureWarning as IndefiniteCurvatureWarning
    from .autosimulate import NonFiniteStateError as NonFiniteStateError
    from .autosimulate import StepInfo as StepInfo
    from .autosimulate import UnconvergedSolveWarning as UnconvergedSolveWarning
    from .autosimulate import finetune_loss_jumps as finetune_loss_jumps
    from .autosimulate import make_autosimulate as make_autosimulate
    from .checkpoint import load_checkpoint as load_checkpoint
    from .checkpoint import save_checkpoint as save_checkpoint
    from .config import APPROXIMATIONS as APPROXIMATIONS
    from .config import CURVATURES as CURVATURES
    from .config import AutoSimConfig as AutoSimConfig
    from .curvature import CurvatureOperator as CurvatureOperator
    from .curvature import empirical_fisher_operator as empirical_fisher_operator
    from .curvature import gauss_newton_operator as gauss_newton_operator
    from .curvature import hessian_operator as hessian_operator
    from .curvature import hutchinson_diagonal as hutchinson_diagonal
    from .curvature import hvp as hvp
    from .distributions import CategoricalParams as CategoricalParams
    from .distributions import Distribution as Distribution
    from .distributions import ExploreParams as ExploreParams
    from .distributions import NormalParams as NormalParams
    from .distributions import bounded as bounded
    from .distributions import categorical as categorical
    from .distributions import describe_psi as describe_psi
    from .distributions import field_spread as field_spread
    from .distributions import from_schema as from_schema
    from .distributions import gaussian as gaussian
    from .distributions import histogram as histogram
    from .distributions import product as product
    from .distributions import with_exploration as with_exploration
    from .estimators import apply_baseline as apply_baseline
    from .estimators import directional_derivatives as directional_derivatives
    from .estimators import reinforce_gradient as reinforce_gradient
    from .estimators import score_function_term as score_function_term
    from .experiments import DivergedAssessmentWarning as DivergedAssessmentWarning
    from .experiments import EXPERIMENTS as EXPERIMENTS
    from .experiments import Experiment as Experiment
    from .experiments import ExperimentSetup as ExperimentSetup
    from .experiments import assess_psi as assess_psi
    from .experiments import gap_closed as gap_closed
    from .experiments import get_experiment as get_experiment
    from .experiments import make_assessor as make_assessor
    from .inner import Inner as Inner
    from .inner import make_inner as make_inner
    from .models import SmallCNN as SmallCNN
    from .models import UNet as UNet
    from .outer import cross_fitted_line_search as cross_fitted_line_search
    from .outer import entropy as entropy
    from .outer import kl_divergence as kl_divergence
    from .outer import natural_trust_region as natural_trust_region
    from .outer import signal_test as signal_test
    from .outer import signal_test_report as signal_test_report
    from .outer import snr_gate as snr_gate
    from .render_pool import RenderPool as RenderPool
    from .render_pool import make_render_pool as make_render_pool
    from .schema import Field as Field
    from .schema import OutputSpec as OutputSpec
    from .schema import Renderer as Renderer
    from .schema import SceneSchema as SceneSchema
    from .simulator import RenderError as RenderError
    from .simulator import Simulation as Simulation
    from .simulator import Simulator as Simulator
    from .simulator import reraise_render_errors as reraise_render_errors
    from .solve import SolveResult as SolveResult
    from .solve import solve_damped as solve_damped
    from .table1 import SolveReport as SolveReport
    from .table1 import approximation_vector as approximation_vector
    from .table1 import curvature_operator as curvature_operator
    from .tasks import Task as Task
    from .tasks import accuracy as accuracy
    from .tasks import classification_task as classification_task
    from .tasks import cross_entropy as cross_entropy
    from .tasks import mean_iou as mean_iou
    from .tasks import pixel_cross_entropy as pixel_cross_entropy
    from .tasks import segmentation_task as segmentation_task


def __getattr__(name: str) -> Any:
    """Imports an exported name's module, or a submodule, on first use (PEP 562)."""
    module = _EXPORTS.get(name)
    if module is not None:
        value = getattr(importlib.import_module(f".{module}", __name__), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    if not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


try:
    __version__ = importlib.metadata.version("autosim_jax")
except importlib.metadata.PackageNotFoundError:  # a source tree on PYTHONPATH, not installed
    __version__ = "0+source"
