"""Black-box baselines of AutoSimulate's Section 5: LTS (REINFORCE), random search, BO.

All three see the generate-train-validate pipeline as a black box and evaluate it through
one shared :func:`make_objective` (render ``K`` images from ``psi``, fine-tune as
AutoSimulate does, measure on the validation set), which is where images, evaluations and
training steps are counted. Each is a factory returning ``BlackBox(init, step, ...)`` with a
:class:`BlackBoxState` of arrays, like :func:`~autosim_jax.make_autosimulate`.

Example:
  >>> from autosim_jax import baselines
  >>> sorted(baselines.BASELINES)
  ['bo', 'lts', 'random']
"""

from .bayesopt import make_bayesopt as make_bayesopt
from .common import BlackBox as BlackBox
from .common import BlackBoxState as BlackBoxState
from .lts import make_lts as make_lts
from .objective import Evaluation as Evaluation
from .objective import Objective as Objective
from .objective import make_objective as make_objective
from .random_search import make_random_search as make_random_search
from .space import SearchSpace as SearchSpace
from .space import make_search_space as make_search_space

BASELINES = {"lts": make_lts, "random": make_random_search, "bo": make_bayesopt}
