"""clevr-seg with the psi step's noise gate on, as a plug-in experiment for ``autosim run`` and
``autosim compare`` (issue 13, session 40).

``GATE2_FOR60`` is the registered experiment (its cpu preset: K = 256 renders a step, each step's
fresh UNet fine-tuned 4 epochs) with ``outer_snr_gate=2`` on the first 60 psi updates
(``outer_snr_gate_steps=60``), digits-sim2real's cpu preset since session 39; everything else
(start, target, validation and test sets, the assessment) is the experiment's own. Run from
``benchmarks/`` so that ``module:attr`` finds this file::

    cd benchmarks
    autosim run clevr_seg_variants:GATE2_FOR60 --size cpu --iterations 40 --seed 0 --assess-models 2

Example:
  >>> GATE2_FOR60.name, GATE2_FOR60.renderers == get_experiment("clevr-seg").renderers
  ('clevr-seg-gate2-for60', True)
"""

from __future__ import annotations

from autosim_jax.experiments import Experiment, get_experiment

_BASE = get_experiment("clevr-seg")


def _gated(*, renderer=_BASE.renderers[0], seed=0, size="cpu"):
    setup = _BASE.build(renderer=renderer, seed=seed, size=size)
    return setup._replace(config=setup.config.replace(outer_snr_gate=2.0, outer_snr_gate_steps=60))


GATE2_FOR60 = Experiment("clevr-seg-gate2-for60", "clevr-seg with the noise gate (z = 2) on the first 60 psi updates",
                         _BASE.renderers, _gated)
