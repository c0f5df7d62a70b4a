"""``benchmarks/psi_learning.py``'s ``step_base_channels`` variants (``step_wide64``): AutoSimulate's step model
wider than the experiment's, while the fresh models that assess psi keep the experiment's own (issue 14's next
reading on digits-det: does a stronger step detector ask for a psi that trains the fresh detectors better?)."""

import importlib
import time

import pytest
from conftest import TOY_MODULE


class _Built(Exception):
    """Raised by the spy once the step's AutoSimulate is asked for: nothing is compiled or run."""


@pytest.fixture()
def pl(benchmark_script):
    return benchmark_script("psi_learning")


def test_the_step_model_and_its_other_initialisations_are_widened_the_assessors_is_not(pl, monkeypatch):
    from autosim_jax.experiments import build_clevr_seg

    setup = build_clevr_seg(size="cpu", image_size=16, base_channels=4)
    monkeypatch.setitem(pl.VARIANTS, "_wide6", ({"step_base_channels": 6, "theta_reset_inits": 3}, "test"))
    asked = []

    def spy(self, seed, **kwargs):
        asked.append(kwargs)
        raise _Built

    monkeypatch.setattr(type(setup), "make_autosimulate", spy)
    with pytest.raises(_Built):
        pl._measure({"variant": "_wide6", "seed": 5, "index": 0, "steps": 1, "assess_steps": [1]}, setup,
                    time.perf_counter())
    step = asked[0]
    assert [m.enc1a.out_features for m in [step["model"], *step["reset_models"]]] == [6, 6, 6]
    assert step["model"].head.out_features == setup.model.head.out_features == 4  # the segmenter's classes
    assert step["theta_reset_inits"] == 3 and setup.model.enc1a.out_features == 4  # the assessor's model as built
    # initialised as the experiment's make_model does: model seed 5, then 1005 and 2005 for the others
    again = pl.widened_unet(setup.model, 6)
    for model, model_seed in zip([step["model"], *step["reset_models"]], (5, 1005, 2005)):
        assert (model.enc1a.kernel[...] == again(model_seed).enc1a.kernel[...]).all()


def test_a_model_other_than_a_unet_is_refused_by_name(pl, toy_path, monkeypatch):
    setup = importlib.import_module(TOY_MODULE).TOY.build()
    monkeypatch.setitem(pl.VARIANTS, "_wide6", ({"step_base_channels": 6}, "test"))
    with pytest.raises(ValueError, match="step_base_channels widens a UNet .* model is a"):
        pl._measure({"variant": "_wide6", "seed": 0, "index": 0, "steps": 1, "assess_steps": []}, setup,
                    time.perf_counter())
