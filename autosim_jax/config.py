"""AutoSimulate's options as data: numbers and names, never live optax objects.

:class:`AutoSimConfig` is a frozen dataclass. It is what ``config.json`` records, what
``--resume`` compares, and what builds the optax optimisers (:meth:`AutoSimConfig.inner_optax`,
:meth:`AutoSimConfig.outer_optax`), so an optax upgrade cannot change how a run directory is
read back. A Python caller who needs a transformation the names do not cover passes it to
:func:`~autosim_jax.make_autosimulate` directly (``inner_optimizer=``, ``outer_optimizer=``).

Example:
  >>> config = AutoSimConfig(dataset_size=32, batch_size=16)
  >>> config.replace(approximation="linear").approximation
  'linear'
  >>> AutoSimConfig.from_dict(config.to_dict()) == config
  True
  >>> AutoSimConfig(damping=-1.0)
  Traceback (most recent call last):
  ...
  ValueError: AutoSimConfig.damping must be >= 0 (Levenberg damping of H + lambda I), got -1.0.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optax

# optax (and with it JAX) is imported by the two builders below, not here: the command line
# reads APPROXIMATIONS to parse its flags without importing JAX (see autosim_jax/__init__.py).

APPROXIMATIONS = ("exact_quadratic", "approx_quadratic", "linear", "no_val")
CURVATURES = ("hessian", "gauss_newton", "empirical_fisher")
ESTIMATORS = ("jvp", "per_sample")
BASELINES = ("leave_one_out", None)
INNER_OPTIMIZERS = ("adam", "sgd")
FINETUNE_SCHEDULES = ("constant", "linear_decay")  # autosim_jax.training.SCHEDULES (no JAX import here)
OUTER_OPTIMIZERS = ("adam", "sgd", "natural")
VAL_GRADIENT_POINTS = ("theta", "newton_point")
VAL_OBJECTIVES = ("loss", "metric_surrogate")  # what g_val is the gradient of (autosim_jax.inner.make_inner)
OUTER_RENDERS = ("shared", "independent")  # the renders of the outer stage (AutoSimConfig.outer_renders)

_UNKNOWN_FIELD = (
    "Unknown AutoSimulate option(s) {names}; valid options are {valid}. "
    "See autosim_jax.AutoSimConfig for what each one means."
)


def _choices(name: str, value: Any, choices) -> None:
    if value not in choices:
        raise ValueError(f"Unknown {name} {value!r}; valid choices are {list(choices)} (AutoSimConfig.{name}).")


def _positive_int(name: str, value: Any, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"AutoSimConfig.{name} must be an integer >= {minimum}, got {value!r}.")


def _positive_float(name: str, value: Any, what: str, allow_zero: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"AutoSimConfig.{name} must be {bound} ({what}), got {value!r}.")


def _psi_step_schedule(learning_rate: float, decay_steps: int, warmup_steps: int, late_from: int,
                       late_steps: int, count):
    """``learning_rate * min(1, (count + 1) / warmup_steps) / (1 + count / decay_steps)``: the
    schedules of ``outer_warmup_steps`` and ``outer_decay_steps`` (either 0: that factor is 1); from
    update ``late_from`` on (if not 0) the decay factor is ``1 / (1 + late_from / decay_steps)``
    divided by ``1 + (count - late_from) / late_steps`` (``outer_decay_late_from`` / ``_steps``)."""
    import jax.numpy as jnp

    early = 1.0 / (1.0 + count / decay_steps) if decay_steps else 1.0
    if late_from:
        at_switch = 1.0 / (1.0 + late_from / decay_steps) if decay_steps else 1.0
        late = at_switch / (1.0 + jnp.maximum(count - late_from, 0) / late_steps)
        early = jnp.where(count < late_from, early, late)
    rate = learning_rate * early
    return rate * jnp.minimum(1.0, (count + 1.0) / warmup_steps) if warmup_steps else rate


@dataclasses.dataclass(frozen=True)
class AutoSimConfig:
    """The options of one AutoSimulate run (paper Algorithm 1 and Table 1).

    Attributes:
      approximation: Table 1's row: ``"exact_quadratic"`` (CG on ``H + lambda I``, Eq. 13a),
        ``"approx_quadratic"`` (``H g_val``), ``"linear"`` (``g_val``) or ``"no_val"``.
      dataset_size: ``K``, scenes rendered per outer step.
      batch_size: fine-tuning minibatch size; must divide ``dataset_size``.
      finetune_epochs: ``epsilon`` epochs of fine-tuning per outer step.
      inner_optimizer, inner_learning_rate: optax optimiser of ``theta`` by name
        (``"adam"`` or ``"sgd"``) and its learning rate.
      inner_clip_norm: clip each minibatch gradient of ``theta`` to this global norm before
        the inner optimiser (``optax.clip_by_global_norm``); 0 turns it off. It is for one
        gradient spike that kills a model: a fresh clevr-det detector at cpu size met a
        gradient of norm 21,578 (median 7.5) in its third epoch and ended at an untrained
        detector's loss; clipped at 1 it trains like its siblings (docs/detection.md,
        session 16). It applies wherever the config's inner optimiser trains ``theta``: the
        fine-tuning of every step and the fresh models of :func:`~autosim_jax.make_assessor`.
        The ``clevr-det`` experiment sets 1 (none of 120 fresh detectors diverged since).
      outer_optimizer, outer_learning_rate: the optimiser of ``psi``: ``"adam"``, ``"sgd"``
        or ``"natural"`` (natural gradient of ``q_psi`` in a KL trust region,
        :func:`~autosim_jax.outer.natural_trust_region`), and its learning rate.
      max_kl: the trust region of ``"natural"``: nats of ``KL(q_psi || q_psi')`` per step.
      entropy_weight: an entropy bonus on ``q_psi``, relative to the hypergradient's norm
        (:func:`~autosim_jax.outer.add_entropy_bonus`); 0 turns it off.
      damping: Levenberg ``lambda`` of ``H + lambda I`` (Section 4.2), ``>= 0``.
      damping_early, damping_early_steps: the first ``damping_early_steps`` outer steps solve
        with ``damping_early`` instead of ``damping`` (:meth:`damping_at`; 0 steps, the default:
        ``damping`` throughout). Why: on digits-sim2real (cpu) a tenth of the preset's damping
        ends ahead but lets the first steps' render noise walk a weak-signal field, which the
        preset's damping and noise gate hold (``docs/learning.md``, session 48).
      curvature: ``"gauss_newton"`` (PSD), ``"hessian"`` (the paper's ``H``) or
        ``"empirical_fisher"``.
      curvature_batch_size: curvature on the first this-many of the ``K`` renders
        (``None``: all ``K``).
      cg_maxiter, cg_tol: CG iterations and relative residual tolerance of Eq. 13a.
      estimator: score-function method, ``"jvp"`` or ``"per_sample"``.
      baseline: control variate, ``"leave_one_out"`` or ``None``.
      val_batch_size: validation minibatch for ``g_val`` and the metric (``None``: the whole
        set in one batch); the result is the same, only memory changes.
      finetune_schedule: the learning rate within each outer step's fine-tuning:
        ``"constant"`` (``inner_learning_rate`` throughout) or ``"linear_decay"`` (from
        ``inner_learning_rate`` down to ``1/T`` of it at the step's last of ``T`` updates,
        restarting at every outer step, the optimiser's moments carried over), so that the
        hypergradient is taken at a ``theta`` settled on the step's renders
        (:func:`~autosim_jax.training.train_epochs`).
      outer_beta2: Adam's second-moment decay for ``psi`` (``outer_optimizer="adam"`` only):
        its memory is about ``1 / (1 - outer_beta2)`` steps (0.999: ~1000). Within that memory
        the bias-corrected second moment is close to the mean of every squared hypergradient so
        far, so the first steps set the scale of the rest: where they are much larger than later
        ones the psi step runs below ``outer_learning_rate`` for the whole run. Measured on the
        detection experiments (a warm detector whose first, untrained hypergradients are 20-50x
        the later ones): 0.1-0.3 of the rate from step 20 to 120 with 0.999 and with 0.99, about
        1 with 0.9 from step 60 (``docs/learning.md``, session 38). A run's ``StepInfo.psi_grad_norm``
        shows the cause and ``StepInfo.psi_step_rms`` over :meth:`psi_learning_rate` the effect
        (``autosim run``'s progress lines print that share).
      outer_unit_norm: each hypergradient is divided by its global norm before the optimiser
        (``optax.normalize_by_update_norm`` chained before ``"adam"`` or ``"sgd"``), so that the
        optimiser sees its direction only. Why: with Adam a few early hypergradients hundreds of
        times larger than the later ones hold the psi step far below its rate for the rest of the
        run, and a shorter ``outer_beta2`` memory does not forget a 500x norm within ~100 steps even
        at 0.9. Seen on clevr-seg at gpu size (``docs/learning.md``, session 51): seed 0's first
        eight hypergradients are 200-600x the later ones in every recorded run, and with damping
        0.001 its psi step ran at 1% of the rate from step 45 to 240 (G 0.29 against the default's
        0.85). Measured on digits-sim2real at cpu size (outliers 7-35x; 10 seeds, paired): +0.041 and
        +0.104 validation accuracy after 3,840 and 7,680 of 15,360 images (10 of 10 seeds ahead),
        level at the end, the same time per run; that preset sets it. With Adam the step's size no
        longer follows the hypergradient's size between steps (Adam's own scale-freeness then holds
        across the run); with ``"sgd"`` every step has length ``outer_learning_rate``. Off (default):
        the hypergradient as it is, until it is measured where the outliers are large.
      outer_decay_steps: the psi step's learning rate decays as ``outer_learning_rate / (1 + t /
        outer_decay_steps)`` at outer step ``t`` (a Robbins-Monro schedule; it needs no run
        length, so a resumed or extended run keeps it), for ``"adam"`` and ``"sgd"``. Why: with a
        noisy hypergradient a constant step keeps psi hovering at a distance that grows with the
        step; on clevr-seg at gpu size three times the step closed more of the gap by step 30
        than the default but lost it again by step 60 (``docs/learning.md``, session 12). With
        ``outer_learning_rate=0.3, outer_decay_steps=20`` G at 60 steps was 0.45 +- 0.17 against
        the default's 0.39 +- 0.13 (5 seeds), within the spread. 0 (default): constant.
      outer_decay_late_from, outer_decay_late_steps: from outer step ``outer_decay_late_from`` on the
        psi step's rate decays over ``outer_decay_late_steps`` instead, from the rate it has reached
        there: ``r(t) = r(F) / (1 + (t - F) / outer_decay_late_steps)`` for ``t >= F`` (``F`` the
        first option; ``outer_decay_steps``' schedule before it, constant if that is 0). Both or
        neither. Why it was tried: on clevr-seg at gpu size with 64 renders a step the rate
        decaying over 60 steps reached BO's best 4x sooner (session 59), but the lights walk off
        once psi's path passes a length of about 2.6 (the sum of the steps' ``psi_step_rms``,
        session 60); decaying over 30 from the start keeps the end and reaches it 2x sooner.
        Measured (``docs/learning.md``, session 61; 3 seeds, 2 fresh models a point): the 60-step
        decay to step 60 and then over 30 (the same whole path) was +0.033 val mIoU ahead of the
        30-step decay after 1,920 images but 0.038 behind after 30,720 (0 of 3 seeds ahead): the
        late steps, which move the resolution and the shapes, make the end. No preset uses it.
        0 (default): one schedule.
      outer_warmup_steps: the psi step's learning rate is multiplied by ``min(1, (t + 1) /
        outer_warmup_steps)`` at outer step ``t`` (a linear warm-up, with ``outer_decay_steps``
        too), for ``"adam"`` and ``"sgd"``. Why: Adam's first update moves every psi coordinate by
        its full learning rate in the sign of one noisy hypergradient (``m_hat / sqrt(v_hat) = +-1``
        at the first step). Measured on digits-sim2real at cpu size (K = 64, 5 seeds; ``docs/learning.md``,
        session 38): with 10 warm-up steps the seeds whose glyphs tilt away from upright early still
        do, the early budget points fall (-0.027 and -0.054 validation accuracy after 1,920 and 3,840
        images, paired) and G at the end is level (1.69 +- 0.45 against 1.61 +- 0.39). The early walks
        are the render noise of the first tens of steps, which Adam turns into a walk whatever the
        first step's size (session 39; ``outer_snr_gate`` is the option against them). 0 (default): none.
      outer_snr_gate: each psi coordinate's update is scaled by ``max(0, 1 - z^2 V / m^2)``, ``m``
        the hypergradient averaged over about the last 100 steps and ``V`` the variance of its
        noise from the score-function samples' own standard errors, ``z`` this value (e.g. 2;
        :func:`~autosim_jax.outer.snr_gate` with decay 0.99, chained after ``"adam"`` or
        ``"sgd"``). Why: Adam moves a coordinate whose hypergradient is pure noise in a random
        walk of about ``lr sqrt(T)`` over ``T`` steps, so fields that were right drift off (on
        clevr-seg at gpu size the colour, material, size and rotation fields start at the
        target's and leave it in every run; ``docs/learning.md``, session 12). Measured: at cpu
        size on clevr-seg it keeps every field at or nearer the reference than without it; on
        digits-sim2real at cpu size it holds back weak useful signals too and lowers G at 40
        steps (z = 2: 0.68 against 0.93; z = 1: 0.80; 5 seeds); on that experiment's K = 64 preset
        (240 steps, 5 seeds, session 39) z = 2 stops the early noise walks that cost one seed the
        first budget point (the worst seed after 1,920 images 0.248 against 0.169, above LTS on 4
        seeds of 5 against 2) but holds the glyphs' tilt, whose signal is too weak to pass, so the
        end is lower (0.490 against 0.541, G 1.33 +- 0.22 against 1.61 +- 0.39); z = 1 lets the
        worst seed's walk through (0.185); on the first 60 updates only (``outer_snr_gate_steps``,
        that preset since session 39) it keeps the early gain and the end; on the 1-D toy (z = 2) the
        linear row ends within 0.04 of the optimum on 5 of 5 seeds, against 3 of 5 without
        (``tests/test_defaults.py``). 0 (default): off.
      outer_snr_gate_per: ``"coordinate"`` (default): the gate's test per psi coordinate;
        ``"leaf"``: once per psi leaf on all its coordinates together (the vector James-Stein
        factor, :func:`~autosim_jax.outer.snr_gate`), so that a signal spread over many
        coordinates (a 54-cell categorical's logits) passes.
      outer_snr_gate_steps: the noise gate acts on the first this-many psi updates only; after them
        the optimiser's steps pass unchanged (0, the default: the whole run). Why: early in a run
        the psi step is at its full rate and Adam turns the render noise of fields with little
        signal into walks; later a decaying rate keeps such walks small, while a gate held to
        the end also holds weak real signals that the end needs (digits-sim2real at cpu size,
        ``docs/learning.md``, session 39).
      outer_snr_gate_from: the noise gate acts from this psi update on (0, the default: from the
        first), its averages gathered from there; with ``outer_snr_gate_steps`` too it acts on updates
        ``from <= t < steps``. Why: the reverse of ``outer_snr_gate_steps``, for a run whose early
        climb needs every weak signal but whose fields, once at their optimum, walk on the noise
        (on clevr-seg at gpu size Adam fed the hypergradient's direction only, ``outer_unit_norm``,
        climbs to G 0.84 by step 120 and one seed of two then walks its lights off; session 53).
        Two readings, neither a gain: on clevr-seg cpu (seed 0, ``outer_unit_norm``, z = 2 from step
        40, session 53) it stops the positions' and shapes' walk but also holds a back light far from
        the reference, G 0.59 at 120 steps against 0.70 without it and the default's 0.97; on
        clevr-seg gpu (seeds 0-2, the gpu preset, z = 2 from step 120, session 54) the lights still
        walk off, G 0.70 +- 0.12 at 240 steps against 0.66 +- 0.14 without it.
      outer_signal_test_after: from this outer step on, each psi leaf that has not yet shown
        evidence of a signal goes back to its start and is held there until it does
        (:func:`~autosim_jax.outer.signal_test`, chained after ``"adam"`` or ``"sgd"`` and after
        the noise gate): evidence is a chi-square test of the leaf's summed hypergradient against
        the score-function samples' own standard errors crossing ``outer_signal_test_alpha / (t
        (t + 1))`` at some step ``t``. Why: Adam moves a field without signal in a random walk,
        and this finds such fields from the run's own data. It does not help where measured
        (``docs/learning.md``, sessions 23-24), so it is off: on digits-sim2real (cpu size) it
        also holds fields that settle within 10-20 steps, whose evidence is then too small, and
        lowers G at 60 steps (0.88 at alpha 0.01, 1.19 at 0.1, against 1.49; 3 seeds); on
        clevr-seg at gpu size the fields whose collapse costs the gain (each object's colour and
        material) are pushed by the step's own objective, not walked by noise, so it releases
        them and holds the resolution instead (G 0.47 at 240 steps against the default's 0.57;
        colour and material frozen by hand: 0.95). 0 (default): off.
      outer_signal_test_alpha: the chance that a leaf without signal is ever released (default
        0.01).
      outer_line_search: the largest multiple ``m`` of the optimiser's psi step that a line search on
        the local model of Eq. 6 tries; 0 (default): none, every step at the optimiser's size. With
        ``m > 0`` each step's renders are split in halves, the optimiser's update is proposed from
        each half's hypergradient and valued on the other half by importance weights (no extra
        render), at scales ``(0, m/8, m/4, m/2, m)``; the update from all the renders is applied at
        the scale valued best (:func:`~autosim_jax.outer.cross_fitted_line_search`), 0 leaving psi
        where it is. ``StepInfo.psi_step_scale`` reports the choice. Why: a step that only follows
        its renders' noise is valued near zero by renders that did not propose it, and a step along
        a real slope can go further than the optimiser's rate. Needs ``dataset_size >= 4``. Measured
        (``docs/learning.md``, session 74): with ``m = 2`` on clevr-seg's gpu preset, +0.044 to +0.049 val
        mIoU over 3,840-15,360 images on 3 of 3 seeds and 0.029 behind at the end (it reaches the path
        beyond which the lights walk off sooner); on digits-sim2real's cpu preset +0.022 early and 0.023
        behind at the end (10 seeds); with ``m = 1`` behind early and level at the end. With the rate
        decaying faster (clevr-seg gpu over 20 steps, digits over 60; session 75) the end is level and
        part of the early gain stays. The search picks 0 or ``m`` on 97-99% of steps: in effect a
        held-out sign test that keeps psi or takes ``m`` times the step. Off by default.
      outer_line_search_steps: the line search acts on the first this-many outer steps only, Adam's own
        step after them (0, the default: on every step). Why: the search buys its early points with a
        longer path, and on clevr-seg the lights walk off once psi's path passes about 2.6 (session 60);
        searching only while the steps' signal is strong keeps the later steps at the preset's size.
        Measured on digits-sim2real's cpu preset (session 74, 10 seeds): with 60 of its 240 steps the
        early points are the whole-run search's and the end is lost all the same (-0.020 val accuracy).
      outer_line_search_min_ess: the line search trusts a scale only where the importance weights'
        effective sample size, over a half's size, is at least this (default 0.5): further from
        ``q_psi`` the estimate is too noisy to choose by.
      theta_reset_every: every this-many outer steps, ``theta`` and its optimiser state go
        back to their initial values before the step's fine-tuning (0: never; 1: every step
        fine-tunes a fresh model). Why: the hypergradient of a barely trained warm model points
        psi the right way where a well-trained one does not (``docs/learning.md``, session 5
        diagnosis), and a warm model that trains across all steps becomes well trained.
        The registered experiments use 1 (digits-sim2real at gpu size: G -1.70 -> +2.06);
        the default stays 0 because on the 1-D toy, whose line model needs a settled
        theta, 1 drives every row away from the optimum (``docs/defaults.md``, session 6).
      theta_reset_inits: how many initialisations the resets cycle through: reset ``j`` (at step
        ``j theta_reset_every``) starts from initialisation ``j % theta_reset_inits``, the model
        itself first and then the ``theta_reset_inits - 1`` others passed to ``make_autosimulate``
        as ``reset_models`` (for a registered experiment
        :meth:`~autosim_jax.ExperimentSetup.make_autosimulate` passes them, from
        :meth:`~autosim_jax.ExperimentSetup.other_inits`). Why: a fresh theta's initialisation
        pushes some fields one way on every step that starts from it (clevr-seg at gpu size: seed
        3's pushes the lights darker, ``benchmarks/init_bias.py``); cycling averages that push out.
        Measured on clevr-seg at gpu size (``docs/learning.md``, session 56, 5 seeds, 120 steps): 8
        initialisations close G 1.00 +- 0.20 against 0.80 +- 0.21 with one (seed 3: 1.32 against
        0.43), every seed >= 0.8, at 2-4x the render time per step (the learned psi asks for more
        samples per pixel). 1 (default): always the model's own initialisation.
      pretrain_rounds: before the first step, ``theta`` is trained for this many rounds at the
        start psi, each round the step's own render-and-fine-tune (``dataset_size`` new renders,
        ``finetune_epochs`` epochs, ``theta`` warm across rounds, psi not updated); the renders
        count in ``images``. With ``theta_reset_every``, the resets go back to this trained
        *anchor* (with a fresh optimiser state) instead of the random initialisation, so
        every step's ``theta_hat`` starts from a model that already does the task without
        adapting to psi's moves. Why: a barely trained fresh ``theta`` (on clevr-seg at gpu size
        it predicts background everywhere) makes the per-render weights of the step favour
        whatever raises the foreground (correlation 0.35 with exact quadratic, 0.78 with linear),
        and fine-tuning from a trained anchor removes most of that (0.12, 0.16;
        ``benchmarks/influence_features.py``, ``docs/learning.md``, session 10). It lowers the gap
        closed on both experiments measured: clevr-seg at gpu size 0.17 against 0.46 at 60 steps
        with 32 rounds (3 seeds, session 11), digits-sim2real at cpu size 0.20 against 0.77 at
        40 steps (3 seeds), where the barely trained theta's hypergradient is the useful one.
        ``init(seed)`` does the rounds, so a resumed run does them again before its checkpoint
        replaces the state. 0 (default): no pretraining.
      val_gradient_at: where Eq. 13 is taken. ``"theta"`` (the paper): at the fine-tuned
        ``theta_hat``, which assumes it is at the training optimum (``g_tr = 0``).
        ``"newton_point"``: at ``theta_N = theta_hat - (H + lambda I)^-1 g_tr``, where the
        Newton step on the step's renders lands (one more CG solve per step; exact quadratic
        only): ``g_val``, the curvature and the score-function term are taken there, which is
        the implicit-function-theorem derivative at ``theta_N``. For a model whose training
        loss is quadratic in ``theta`` (and ``lambda -> 0``) ``theta_N`` is the optimum for
        ``q_psi``, so the step is the true hypergradient whatever ``theta_hat`` is, e.g. for a
        fresh ``theta`` per step (``theta_reset_every=1``). Measured (``docs/defaults.md``,
        ``docs/learning.md``, session 8): it brings the toy's fresh-theta exact row to the
        optimum, but on digits-sim2real at cpu size, where its first solve stops at half its
        residual, it closed less of the gap than ``"theta"`` (G -0.01 against +0.77, 3 seeds).
      val_objective: what ``g_val`` of Eq. 13 is the gradient of. ``"loss"`` (the paper): the
        task's mean training loss on the validation set. ``"metric_surrogate"``: the task's
        smooth stand-in for the metric it is judged by (``Task.surrogate_loss``; for
        segmentation ``1 -`` the soft mean IoU, for classification ``1 -`` the mean probability
        of the right class, for detection ``1 -`` the soft centre IoU times the mean box IoU,
        :func:`~autosim_jax.detection.soft_detection_loss`), so that the step values renders by
        what the assessment measures.
        Measured on clevr-seg at gpu size (``docs/learning.md``, session 19): from a theta
        that segments (2048 renders x 8 epochs) at the start psi, the soft mean IoU's gradient
        stops the step's preference for low-resolution renders that the loss's has (paired
        shift of the partial correlation t 2.0) and rewards more samples per pixel; from a
        barely trained theta the two gradients are parallel (cosine 0.9999), so it changes
        little there. With 32 fine-tuning epochs per step it closed less of the gap at 60 steps
        than the experiment's config (G 0.32 +- 0.18 against 0.52 +- 0.24, 3 seeds), so it is
        off by default.
      outer_renders: which renders the outer stage (the curvature of Eq. 13 and the
        score-function term of Eq. 8) uses. ``"shared"`` (the paper's Algorithm 1): the same
        ``dataset_size`` renders ``theta_hat`` was fine-tuned on. ``"independent"``: a second
        batch of ``dataset_size`` renders drawn from ``q_psi`` with its own key, so that the
        estimate is not correlated with the fit (a ``theta_hat`` that fits its renders closely
        makes their per-sample gradients small and biased); every step then renders, and
        counts in ``images``, twice as many. Measured on digits-sim2real at cpu size
        (``docs/learning.md``, session 34; 3 seeds, 60 steps): with shared renders more
        fine-tuning per step loses the gain (G 1.58 at the preset's 3 epochs, 0.72 at 6, -0.61
        at 12), with independent ones it is kept (1.37, 1.42, 1.45) and the fresh-model curve
        rises sooner (6 and 12 epochs ahead of LTS from 3,840 images); at the experiment's
        15,360 images, i.e. 30 steps, it ends below the preset (G 0.9-1.1), and with half the
        renders each (K = 128 twice, the preset's images and steps) at G 1.22-1.29, so the
        default stays ``"shared"``.
      trainable: freezing layers (Table 5): a regular expression searched (``re.search``) in
        each parameter's path (``jax.tree_util.keystr`` of ``theta``'s leaves, e.g.
        ``"['up2']['conv']['kernel'].value"``); only the matching parameters are fine-tuned,
        and ``g_val``, the curvature and its solve, and the score-function term act on them
        alone (:mod:`autosim_jax.trainable`). ``None`` (default): all parameters.
      psi_trainable: the fields of ``q_psi`` to learn: a regular expression searched in each
        leaf's path of ``psi`` (e.g. ``"position"``, or ``"\\['position'\\]\\.loc"`` for the means
        alone); the other leaves keep their start values (their hypergradient is zeroed before
        the outer optimiser, and the step never moves them). For fields a researcher already
        knows, and for studying one field at a time. ``None`` (default): every field.

    The defaults (K = 256 renders in minibatches of 32, 4 epochs of Adam 3e-2 on ``theta``,
    Adam 0.1 on ``psi``, exact quadratic with damping 1e-2) were measured on the 1-D toy of
    ``tests/test_autosimulate.py`` (``docs/defaults.md``, ``tests/test_defaults.py``): from a
    fresh model, the exact quadratic row ends within 0.1 of the optimum on 5 of 5 seeds in 400
    steps (worst 0.034); linear on 3 of 5 (worst 0.22), approximate quadratic on none (worst
    0.48). No setting of these options measured brings all three rows there, nor do
    ``finetune_schedule`` and ``outer_beta2`` (2026-11-30, session 5): ``outer_beta2`` 0.98-0.99
    brings the exact row to a worst 0.011 but leaves linear at 1-2 of 5 seeds and the
    approximate row at 0-2 of 5. Every registered
    experiment sets K, the batch, the epochs and both learning rates itself, so these defaults
    do not change them. For a deep network start from a smaller ``inner_learning_rate`` (the
    experiments use 3e-3).
    """

    approximation: str = "exact_quadratic"
    dataset_size: int = 256
    batch_size: int = 32
    finetune_epochs: int = 4
    inner_optimizer: str = "adam"
    inner_learning_rate: float = 3e-2
    inner_clip_norm: float = 0.0
    outer_optimizer: str = "adam"
    outer_learning_rate: float = 0.1
    max_kl: float = 0.05
    entropy_weight: float = 0.0
    damping: float = 1e-2
    damping_early: float | None = None
    damping_early_steps: int = 0
    curvature: str = "gauss_newton"
    curvature_batch_size: int | None = None
    cg_maxiter: int = 10
    cg_tol: float = 1e-3
    estimator: str = "jvp"
    baseline: str | None = "leave_one_out"
    val_batch_size: int | None = None
    finetune_schedule: str = "constant"
    outer_beta2: float = 0.999
    outer_unit_norm: bool = False
    outer_decay_steps: int = 0
    outer_decay_late_from: int = 0
    outer_decay_late_steps: int = 0
    outer_warmup_steps: int = 0
    outer_snr_gate: float = 0.0
    outer_snr_gate_per: str = "coordinate"
    outer_snr_gate_steps: int = 0
    outer_snr_gate_from: int = 0
    outer_signal_test_after: int = 0
    outer_signal_test_alpha: float = 0.01
    outer_line_search: float = 0.0
    outer_line_search_steps: int = 0
    outer_line_search_min_ess: float = 0.5
    trainable: str | None = None
    psi_trainable: str | None = None
    theta_reset_every: int = 0
    theta_reset_inits: int = 1
    pretrain_rounds: int = 0
    val_gradient_at: str = "theta"
    val_objective: str = "loss"
    outer_renders: str = "shared"

    def __post_init__(self):
        _choices("approximation", self.approximation, APPROXIMATIONS)
        _choices("curvature", self.curvature, CURVATURES)
        _choices("estimator", self.estimator, ESTIMATORS)
        _choices("baseline", self.baseline, BASELINES)
        _choices("inner_optimizer", self.inner_optimizer, INNER_OPTIMIZERS)
        _choices("outer_optimizer", self.outer_optimizer, OUTER_OPTIMIZERS)
        _choices("finetune_schedule", self.finetune_schedule, FINETUNE_SCHEDULES)
        for name in ("dataset_size", "batch_size", "finetune_epochs", "cg_maxiter"):
            _positive_int(name, getattr(self, name))
        _positive_int("theta_reset_every", self.theta_reset_every, minimum=0)
        _positive_int("theta_reset_inits", self.theta_reset_inits)
        if self.theta_reset_inits > 1 and not self.theta_reset_every:
            raise ValueError(f"AutoSimConfig.theta_reset_inits={self.theta_reset_inits} are the initialisations that "
                             "the resets cycle through, but theta_reset_every=0 never resets theta. Set "
                             "theta_reset_every=N > 0 (1: a fresh theta every step), or theta_reset_inits=1.")
        if self.theta_reset_inits > 1 and self.pretrain_rounds:
            raise ValueError(f"AutoSimConfig.theta_reset_inits={self.theta_reset_inits} and pretrain_rounds="
                             f"{self.pretrain_rounds} both say where a reset goes (one of several initialisations, "
                             "or the pretrained anchor). Set one of them: theta_reset_inits=1 or pretrain_rounds=0.")
        _positive_int("outer_decay_steps", self.outer_decay_steps, minimum=0)
        _positive_int("outer_decay_late_from", self.outer_decay_late_from, minimum=0)
        _positive_int("outer_decay_late_steps", self.outer_decay_late_steps, minimum=0)
        if bool(self.outer_decay_late_from) != bool(self.outer_decay_late_steps):
            raise ValueError(
                f"AutoSimConfig.outer_decay_late_from={self.outer_decay_late_from} and outer_decay_late_steps="
                f"{self.outer_decay_late_steps} come together: from update outer_decay_late_from on the psi step's "
                "rate decays over outer_decay_late_steps. Set both (e.g. outer_decay_late_from=60, "
                "outer_decay_late_steps=30) or neither.")
        _positive_int("outer_warmup_steps", self.outer_warmup_steps, minimum=0)
        _positive_float("outer_snr_gate", self.outer_snr_gate, "standard errors", allow_zero=True)
        _choices("outer_snr_gate_per", self.outer_snr_gate_per, ("coordinate", "leaf"))
        _positive_int("outer_snr_gate_steps", self.outer_snr_gate_steps, minimum=0)
        if self.outer_snr_gate_steps and not self.outer_snr_gate:
            raise ValueError(f"AutoSimConfig.outer_snr_gate_steps={self.outer_snr_gate_steps} ends the noise gate, but "
                             "outer_snr_gate=0 has none; set outer_snr_gate (e.g. 2) or outer_snr_gate_steps=0.")
        _positive_int("outer_snr_gate_from", self.outer_snr_gate_from, minimum=0)
        if self.outer_snr_gate_from and not self.outer_snr_gate:
            raise ValueError(f"AutoSimConfig.outer_snr_gate_from={self.outer_snr_gate_from} starts the noise gate, but "
                             "outer_snr_gate=0 has none; set outer_snr_gate (e.g. 2) or outer_snr_gate_from=0.")
        if self.outer_snr_gate_steps and self.outer_snr_gate_from >= self.outer_snr_gate_steps:
            raise ValueError(f"AutoSimConfig.outer_snr_gate_from={self.outer_snr_gate_from} is not before "
                             f"outer_snr_gate_steps={self.outer_snr_gate_steps}, so the noise gate would never act; "
                             "give outer_snr_gate_from < outer_snr_gate_steps, or outer_snr_gate_steps=0 (to the end).")
        if self.outer_snr_gate and self.outer_optimizer == "natural":
            raise ValueError(
                "AutoSimConfig.outer_snr_gate gates the steps of outer_optimizer='adam' or 'sgd'; 'natural' "
                "already scales its step by the Fisher of q_psi. Set outer_snr_gate=0 or another outer_optimizer.")
        _positive_int("outer_signal_test_after", self.outer_signal_test_after, minimum=0)
        if not 0 < self.outer_signal_test_alpha < 1:
            raise ValueError(f"AutoSimConfig.outer_signal_test_alpha must be in (0, 1) (the test's level, e.g. 0.01), "
                             f"got {self.outer_signal_test_alpha!r}.")
        if self.outer_signal_test_after and self.outer_optimizer == "natural":
            raise ValueError(
                "AutoSimConfig.outer_signal_test_after holds the steps of outer_optimizer='adam' or 'sgd' (it is "
                "chained after them); set outer_signal_test_after=0 or another outer_optimizer.")
        _positive_float("outer_line_search", self.outer_line_search, "the largest multiple of the psi step tried "
                        "(0: no line search)", allow_zero=True)
        _positive_float("outer_line_search_min_ess", self.outer_line_search_min_ess, "a share of a half's renders")
        if self.outer_line_search_min_ess > 1:
            raise ValueError(f"AutoSimConfig.outer_line_search_min_ess must be in (0, 1] (an effective sample size "
                             f"over a half's renders, e.g. 0.5), got {self.outer_line_search_min_ess!r}.")
        _positive_int("outer_line_search_steps", self.outer_line_search_steps, minimum=0)
        if self.outer_line_search_steps and not self.outer_line_search:
            raise ValueError(f"AutoSimConfig.outer_line_search_steps={self.outer_line_search_steps} ends the line search, "
                             "but outer_line_search=0 has none; set outer_line_search (e.g. 2) or "
                             "outer_line_search_steps=0.")
        if self.outer_line_search and self.dataset_size < 4:
            raise ValueError(f"AutoSimConfig.outer_line_search values each half of a step's renders on the other half, "
                             f"which needs dataset_size >= 4 (two renders a half); got dataset_size="
                             f"{self.dataset_size}. Raise dataset_size or set outer_line_search=0.")
        if self.outer_line_search and self.outer_optimizer == "natural":
            raise ValueError("AutoSimConfig.outer_line_search scales the steps of outer_optimizer='adam' or 'sgd'; "
                             "'natural' sizes its step by max_kl already. Set outer_line_search=0 or another "
                             "outer_optimizer.")
        if not isinstance(self.outer_unit_norm, bool):
            raise ValueError(f"AutoSimConfig.outer_unit_norm must be True or False, got {self.outer_unit_norm!r}.")
        if self.outer_unit_norm and self.outer_optimizer == "natural":
            raise ValueError("AutoSimConfig.outer_unit_norm normalises the hypergradient for outer_optimizer='adam' "
                             "or 'sgd'; 'natural' takes steps of max_kl nats already. Set outer_unit_norm=False "
                             "or another outer_optimizer.")
        for name in ("outer_decay_steps", "outer_decay_late_from", "outer_warmup_steps"):
            if getattr(self, name) and self.outer_optimizer == "natural":
                raise ValueError(
                    f"AutoSimConfig.{name} schedules the learning rate of outer_optimizer='adam' or 'sgd'; "
                    f"'natural' takes steps of max_kl nats instead. Set {name}=0 or another outer_optimizer.")
        _positive_int("pretrain_rounds", self.pretrain_rounds, minimum=0)
        _choices("val_gradient_at", self.val_gradient_at, VAL_GRADIENT_POINTS)
        _choices("val_objective", self.val_objective, VAL_OBJECTIVES)
        _choices("outer_renders", self.outer_renders, OUTER_RENDERS)
        if self.val_gradient_at == "newton_point" and (self.approximation != "exact_quadratic" or self.trainable):
            raise ValueError(
                "AutoSimConfig.val_gradient_at='newton_point' needs approximation='exact_quadratic' (the Newton "
                f"point is its step) and all parameters trainable; got approximation={self.approximation!r}, "
                f"trainable={self.trainable!r}. Use val_gradient_at='theta' otherwise.")
        if self.dataset_size % self.batch_size:
            raise ValueError(
                f"AutoSimConfig.dataset_size ({self.dataset_size}) must be a multiple of batch_size "
                f"({self.batch_size}) so that every rendered image is trained on; e.g. batch_size="
                f"{math.gcd(self.dataset_size, self.batch_size)}."
            )
        for name in ("curvature_batch_size", "val_batch_size"):
            if getattr(self, name) is not None:
                _positive_int(name, getattr(self, name))
        if self.curvature_batch_size is not None and self.curvature_batch_size > self.dataset_size:
            raise ValueError(
                f"AutoSimConfig.curvature_batch_size ({self.curvature_batch_size}) must be <= dataset_size "
                f"({self.dataset_size}); it selects the first renders of a step."
            )
        _positive_float("inner_learning_rate", self.inner_learning_rate, "a learning rate")
        _positive_float("inner_clip_norm", self.inner_clip_norm, "a gradient norm (0: no clipping)",
                        allow_zero=True)
        _positive_float("outer_learning_rate", self.outer_learning_rate, "a learning rate")
        _positive_float("max_kl", self.max_kl, "nats of KL per step")
        _positive_float("entropy_weight", self.entropy_weight, "relative entropy bonus", allow_zero=True)
        _positive_float("damping", self.damping, "Levenberg damping of H + lambda I", allow_zero=True)
        _positive_int("damping_early_steps", self.damping_early_steps, minimum=0)
        if (self.damping_early is None) != (self.damping_early_steps == 0):
            raise ValueError(
                f"AutoSimConfig.damping_early={self.damping_early!r} and "
                f"damping_early_steps={self.damping_early_steps} "
                "come together: the first damping_early_steps steps solve with damping_early. Set both (e.g. "
                "damping_early=0.01, damping_early_steps=60) or neither.")
        if self.damping_early is not None:
            _positive_float("damping_early", self.damping_early, "Levenberg damping of the first steps",
                            allow_zero=True)
        _positive_float("cg_tol", self.cg_tol, "a relative residual", allow_zero=True)
        _positive_float("outer_beta2", self.outer_beta2, "Adam's second-moment decay, in (0, 1)")
        if self.outer_beta2 >= 1:
            raise ValueError(f"AutoSimConfig.outer_beta2 must be < 1 (Adam's second-moment decay, in (0, 1)), "
                             f"got {self.outer_beta2!r}.")
        for name, what in (("trainable", "parameter"), ("psi_trainable", "psi leaf")):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise ValueError(f"AutoSimConfig.{name} must be None (all of them) or a regular expression matched "
                                 f"against {what} paths, got {value!r}.")

    def replace(self, **changes: Any) -> AutoSimConfig:
        """A copy with ``changes`` applied (validated; unknown names raise ``ValueError``)."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ValueError(_UNKNOWN_FIELD.format(names=unknown, valid=[f.name for f in dataclasses.fields(self)]))
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every option."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AutoSimConfig:
        """The inverse of :meth:`to_dict`; unknown keys raise ``ValueError``."""
        return cls().replace(**d)

    def inner_optax(self) -> optax.GradientTransformation:
        """The fine-tuning optimiser of ``theta`` this config names."""
        import optax

        opt = {"adam": optax.adam, "sgd": optax.sgd}[self.inner_optimizer](self.inner_learning_rate)
        return optax.chain(optax.clip_by_global_norm(self.inner_clip_norm), opt) if self.inner_clip_norm else opt

    def psi_learning_rate(self, count: int) -> float:
        """The psi step's learning rate at its ``count``-th update (0 first; ``outer_decay_steps``,
        ``outer_decay_late_from`` / ``_steps`` and ``outer_warmup_steps`` applied): what :meth:`outer_optax`
        uses for ``"adam"`` and ``"sgd"``. With Adam every coordinate of psi moves by about this much while its
        hypergradient keeps its sign (its full rate); ``StepInfo.psi_step_rms`` over it says what share of that a
        step took.

        Example:
          >>> AutoSimConfig(outer_learning_rate=0.1, outer_decay_steps=120).psi_learning_rate(120)
          0.05
        """
        if self.outer_optimizer == "natural":
            raise ValueError("AutoSimConfig.psi_learning_rate: outer_optimizer='natural' takes steps in KL units "
                             "(max_kl), not at a learning rate; use 'adam' or 'sgd'.")
        return float(self._psi_schedule()(count))

    def damping_at(self, step: int) -> float:
        """The Levenberg damping of outer step ``step`` (0 first): ``damping_early`` for the first
        ``damping_early_steps`` steps, ``damping`` after them.

        Example:
          >>> config = AutoSimConfig(damping=1e-3, damping_early=1e-2, damping_early_steps=60)
          >>> config.damping_at(59), config.damping_at(60)
          (0.01, 0.001)
        """
        return self.damping_early if step < self.damping_early_steps else self.damping

    def _psi_schedule(self):
        return functools.partial(_psi_step_schedule, self.outer_learning_rate, self.outer_decay_steps,
                                 self.outer_warmup_steps, self.outer_decay_late_from, self.outer_decay_late_steps)

    def outer_optax(self) -> optax.GradientTransformation:
        """The optimiser of ``psi`` this config names."""
        import optax

        from .outer import natural_trust_region, signal_test, snr_gate

        if self.outer_optimizer == "natural":
            return natural_trust_region(self.outer_learning_rate, self.max_kl)
        lr = self.outer_learning_rate
        # optax counts the updates applied: t = 0 first
        if self.outer_decay_steps or self.outer_decay_late_from or self.outer_warmup_steps:
            lr = self._psi_schedule()
        base = optax.adam(lr, b2=self.outer_beta2) if self.outer_optimizer == "adam" else optax.sgd(lr)
        if self.outer_unit_norm:  # the direction only: early outsized hypergradients do not set Adam's scale
            base = optax.chain(optax.normalize_by_update_norm(), base)
        # the gate and the test need the hypergradient and its standard error (extra args)
        if self.outer_snr_gate:
            gate = snr_gate(self.outer_snr_gate, decay=0.99, per=self.outer_snr_gate_per)
            first, end = self.outer_snr_gate_from, self.outer_snr_gate_steps
            if first or end:  # the gate acts on updates first <= t < end only; Adam's steps pass outside
                gate = optax.conditionally_transform(
                    gate, lambda count: (count >= first) & ((end == 0) | (count < end)))
            base = optax.chain(base, gate)
        if self.outer_signal_test_after:
            base = optax.chain(base, signal_test(self.outer_signal_test_after, self.outer_signal_test_alpha))
        return base
