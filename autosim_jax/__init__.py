"""autosim_jax: learn a simulator's sampling distribution with AutoSimulate (Behl et al., 2020).

The public API, one name per line.
"""

import importlib.metadata

from .autosimulate import AutoSimState as AutoSimState
from .autosimulate import AutoSimulateWarning as AutoSimulateWarning
from .autosimulate import AutoSimulate as AutoSimulate
from .autosimulate import Hypergradient as Hypergradient
from .autosimulate import IndefiniteCurvatureWarning as IndefiniteCurvatureWarning
from .autosimulate import NonFiniteStateError as NonFiniteStateError
from .autosimulate import StepInfo as StepInfo
from .autosimulate import UnconvergedSolveWarning as UnconvergedSolveWarning
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
from .distributions import NormalParams as NormalParams
from .distributions import bounded as bounded
from .distributions import categorical as categorical
from .distributions import describe_psi as describe_psi
from .distributions import from_schema as from_schema
from .distributions import gaussian as gaussian
from .distributions import product as product
from .estimators import apply_baseline as apply_baseline
from .estimators import directional_derivatives as directional_derivatives
from .estimators import reinforce_gradient as reinforce_gradient
from .estimators import score_function_term as score_function_term
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
from .outer import entropy as entropy
from .outer import kl_divergence as kl_divergence
from .outer import natural_trust_region as natural_trust_region
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

try:
    __version__ = importlib.metadata.version("autosim_jax")
except importlib.metadata.PackageNotFoundError:  # a source tree on PYTHONPATH, not installed
    __version__ = "0+source"
