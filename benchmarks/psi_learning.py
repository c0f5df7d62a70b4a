"""Does the learned psi train good fresh models? The gap-closed ablation of issue 13.

For each variant (a set of AutoSimConfig overrides) and seed, one AutoSimulate run of
``--steps`` outer steps records psi after every step; fresh models (the experiment's
assessment budget: the same model, initialisation, images and epochs for every psi) are then
trained on the psi held after each of ``--assess-steps``, on the average of the psi iterates
over the second half of the run (unless ``--no-assess-average``: those models double a run's
fresh models with one assessed point, for a return value that session 46 found no better than
the final psi), with ``--assess-trajectory`` on the mixture of every step's psi (the data the
run rendered), and on the start and reference psi of the same seed. The measure is the gap closed,

    G = (m(learned) - m(start)) / (m(reference) - m(start))

of the fresh models' test metric (validation too), reported per seed and as mean and std.
Runs are independent processes (rendering is host work; ``--jobs`` of them at once, spread
round-robin over the visible GPUs), each rendering through ``--render-workers`` processes of
its own (the same renders as serial; on the 16-core H200 host, jobs x workers <= 16).

Usage (H200 host, 2 GPUs, 32 cores)::

    python benchmarks/psi_learning.py --experiment clevr-seg --size gpu --steps 60 \\
        --seeds 0,1,2 --jobs 28 --out benchmarks/results/psi_learning_clevr-seg_gpu

Writes ``OUT.json`` (device, versions, precision, command, date, every figure and the psi
trajectories) and ``OUT.png`` (G against steps per variant, mean and spread over seeds).
Each finished job is also appended to ``OUT.partial.jsonl`` at once. On a device with a time
limit give ``--deadline SECONDS``: the jobs still running then are stopped and the summary of
the finished ones is written (the unfinished are listed under ``failed``, each with the psi trajectory and step
information it had reached at its last progress line, ``steps_done``, and no assessment). Each job writes a progress
line to stderr every eighth of its psi steps and after each fresh model (``[ 312.4 s] VARIANT seed S:
psi step 60/120``), so the log of a stopped job says how far it got. ``--baselines-from
OUT.json`` reuses an earlier call's start and reference assessments (same experiment, size,
assessment budget and baseline repeats) instead of training them again: a device call then
spends its time on the runs; the G of such a call is not paired with its baselines in one call.
``--merge A.json B.json --out OUT`` runs nothing: it joins records (one comparison's device calls)
into ``OUT.json.gz`` and ``OUT.png``, each run once, the summaries computed again.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gzip
import hashlib
import json
import os
import re
import shutil
import sys
import time

import numpy as np

from field_drift import flatten, read_record  # this script's records (compressed or not) and their psi
from provenance import command_line  # the record's command, quoted for a shell


def all_but(*fields: str) -> str:
    """A ``psi_trainable`` pattern that learns every psi field except ``fields`` (held at the start).

    >>> bool(re.search(all_but("color", "material"), "['material'].logits"))
    False
    >>> bool(re.search(all_but("color", "material"), "['key_light'].loc"))
    True
    """
    return r"^(?!\[(" + "|".join(re.escape(repr(f)) for f in fields) + r")\])"


# The gate variants gate the whole run under any preset (digits-sim2real's cpu preset gates its first
# 60 updates since session 39, AutoSimConfig.outer_snr_gate_steps).
_WHOLE_RUN = {"outer_snr_gate_steps": 0}

# name -> (AutoSimConfig overrides, what the variant tests). The overrides apply to the experiment's preset
# of the day, which each record's runs keep as `experiment_config`: clevr-seg's gpu preset was K = 256
# (dataset 256, minibatch 32, 2 epochs, decay 60, 120 steps) until session 60 and is K = 64 since (dataset
# 64, minibatch 16, 4 epochs, decay 30, 480 steps), so that `k128` and `k64` meant K = 256's options before.
VARIANTS = {
    "default": ({}, "the experiment's config: exact quadratic, Gauss-Newton CG, Adam on psi"),
    "linear": ({"approximation": "linear"}, "Table 1's linear row (no curvature)"),
    "natural": ({"outer_optimizer": "natural", "outer_learning_rate": 1e3, "max_kl": 0.2},
                "natural gradient of q_psi in a KL trust region of 0.2 nats per step"),
    "natural_lr0.03": ({"outer_optimizer": "natural", "outer_learning_rate": 0.03, "max_kl": 0.2},
                       "the natural gradient below its trust region (0.004-0.045 nats per step at the cpu starts), "
                       "so that a step follows the hypergradient's size in KL units, not its sign as Adam does: "
                       "does a small push stop walking, and does digits keep its gain?"),
    "linear_natural": ({"approximation": "linear", "outer_optimizer": "natural", "outer_learning_rate": 1e3,
                        "max_kl": 0.2}, "the linear row with the natural-gradient trust region"),
    "entropy0.3": ({"entropy_weight": 0.3}, "an entropy bonus of 0.3 times the hypergradient's norm"),
    "entropy1": ({"entropy_weight": 1.0}, "an entropy bonus as strong as the hypergradient"),
    "step_wide64": ({"step_base_channels": 64},
                    "the step's detector twice as wide (64 base channels; the fresh detectors keep the experiment's "
                    "32): digits-det's gain stops at +0.12-0.14 whatever the psi step does (sessions 35-68); does "
                    "a stronger step model ask for a psi that trains the fresh detectors better?"),
    "metric_surrogate": ({"val_objective": "metric_surrogate"},
                         "g_val the gradient of the task's smooth stand-in for its metric (detection: 1 - soft "
                         "centre IoU x box IoU, for mAP@0.5) instead of its loss: every psi-side and step-model "
                         "change ends digits-det at +0.11-0.14 (sessions 35-69); is the loss the wrong target?"),
    "linear_entropy0.3": ({"approximation": "linear", "entropy_weight": 0.3}, "the linear row with the bonus"),
    "adam_lr0.03": ({"outer_learning_rate": 0.03}, "a third of the psi step: is the drift step noise?"),
    "adam_lr0.3": ({"outer_learning_rate": 0.3}, "three times the psi step: does a still-rising G get there sooner?"),
    "lr0.3_decay20": ({"outer_learning_rate": 0.3, "outer_decay_steps": 20},
                      "three times the psi step, decaying as 1 / (1 + t / 20) (0.075 by step 60): the early "
                      "gain of Adam 0.3 without its hovering later?"),
    "snr_gate1": ({"outer_snr_gate": 1.0, **_WHOLE_RUN},
                  "the gate at one standard error: more of the weak signals pass, and more noise"),
    "lr0.3_snr_gate2": ({"outer_learning_rate": 0.3, "outer_snr_gate": 2.0, **_WHOLE_RUN},
                        "three times the psi step with the gate: the gate stops the noise that made the larger step "
                        "wander, the larger step makes up for the gate's slower signals?"),
    "snr_gate2_leaf": ({"outer_snr_gate": 2.0, "outer_snr_gate_per": "leaf", **_WHOLE_RUN},
                       "the gate tested once per psi leaf on all its coordinates (vector James-Stein): does a "
                       "signal spread over many coordinates pass?"),
    "linear_snr_gate2": ({"approximation": "linear", "outer_snr_gate": 2.0, **_WHOLE_RUN},
                         "the linear row with the gate: the linear row finds the lights and the count in 30 steps "
                         "(gpu, session 15), then the start-right fields drift; does the gate keep them?"),
    "snr_gate2": ({"outer_snr_gate": 2.0, **_WHOLE_RUN},
                  "each psi coordinate's Adam step scaled by max(0, 1 - 4 V / m^2) (outer.snr_gate): do fields whose "
                  "hypergradient is noise stop drifting, and does G rise?"),
    "newton_point": ({"val_gradient_at": "newton_point"},
                     "Eq. 13 at the Newton point of the fresh theta (one more CG solve per step)"),
    "k128": ({"dataset_size": 128, "batch_size": 16},
             "half the renders per step, the same number of fine-tuning steps: twice the psi steps per image "
             "(digits-sim2real at cpu size, session 37: does it reach LTS's 1,920-image accuracy?)"),
    "k128_e8": ({"dataset_size": 128, "batch_size": 16, "finetune_epochs": 8},
                "clevr-seg cpu: half the renders per step with the preset's 64 fine-tuning steps per psi step, "
                "twice the psi steps per image: are the early points (BO's 3x) faster at equal images?"),
    "k64": ({"dataset_size": 64, "batch_size": 16, "finetune_epochs": 4},
            "clevr-seg gpu: a quarter of the preset's renders per step with its 16 fine-tuning steps, four psi "
            "steps per image: k128 closed 0.89 at 15,360 images (session 58), does k64 reach BO's best by 5,120?"),
    "k64_e16": ({"dataset_size": 64, "batch_size": 16, "finetune_epochs": 16},
                "clevr-seg cpu: a quarter of the renders per step with the preset's 64 fine-tuning steps per psi "
                "step, four psi steps per image: does k64's lead at gpu size (session 58) hold at cpu size?"),
    "k1024": ({"dataset_size": 1024, "batch_size": 128},
              "4x the renders per step, the same number of fine-tuning steps: is the signal too weak?"),
    "linear_k1024": ({"approximation": "linear", "dataset_size": 1024, "batch_size": 128},
                     "the linear row with 4x the renders: without the Newton vector's initialisation push, the "
                     "positions and the resolution are limited by sampling noise (init_bias.py), which K lowers"),
    "pos_only": ({"start_from_reference_but": "position", "psi_trainable": r"\['position'\]"},
                 "the reference with the start's positions, positions learned alone: can the position signal do it?"),
    "pos_only_linear": ({"start_from_reference_but": "position", "psi_trainable": r"\['position'\]",
                         "approximation": "linear"}, "the same with Table 1's linear row"),
    "pos_only_k1024": ({"start_from_reference_but": "position", "psi_trainable": r"\['position'\]",
                        "dataset_size": 1024, "batch_size": 128}, "positions alone with 4x the renders per step"),
    # which wrong field turns the positions away? (session 12: the full run's positions move away
    # from the target, positions alone move towards it); every field learned, trajectories only
    "ref_but_pos": ({"start_from_reference_but": ["position"]},
                    "the reference with the start's positions, every field learned"),
    "ref_but_pos_lights": ({"start_from_reference_but": ["position", "key_light", "ambient", "back_light"]},
                           "the reference with the start's positions and lights, every field learned"),
    "ref_but_pos_count": ({"start_from_reference_but": ["position", "num_objects"]},
                          "the reference with the start's positions and object count, every field learned"),
    "ref_but_pos_shape": ({"start_from_reference_but": ["position", "shape"]},
                          "the reference with the start's positions and shapes, every field learned"),
    "beta2_0.99": ({"outer_beta2": 0.99}, "Adam on psi with a 100-step memory of the squared hypergradient: "
                   "do the early steps' large hypergradients stall the later ones?"),
    "beta2_0.9": ({"outer_beta2": 0.9}, "Adam on psi with a 10-step memory: the first steps' hypergradients "
                  "(digits-det's warm detector: norms 650-2200, 30-50 from step 20) leave Adam's second moment "
                  "within ~30 steps, which 0.99's does not within 120 (session 38): is the stall Adam's memory?"),
    "raw_adam": ({"outer_unit_norm": False, "outer_decay_steps": 0},
                 "Adam on the raw hypergradient at a constant rate: clevr-seg gpu's preset until session 54 (which "
                 "feeds Adam the direction only, decaying as 1 / (1 + t / 60)), there with the preset's "
                 "theta_reset_inits since session 56; on digits-sim2real cpu it also drops the preset's decay"),
    "unit_norm": ({"outer_unit_norm": True},
                  "each hypergradient divided by its global norm before Adam: seed 0's first eight "
                  "hypergradients, 200-600x the later ones, hold its psi step at 1-5% of the rate (session 51); "
                  "does the early climb speed up where they do, and the other seeds stay level?"),
    "damp0.001_cg50_unit_norm": ({"damping": 1e-3, "cg_maxiter": 50, "outer_unit_norm": True},
                                 "damp0.001_cg50 with unit_norm: its seed-0 run stalled at 1% of Adam's rate "
                                 "after first hypergradients 579x the later ones (session 51)"),
    "unit_norm_decay60": ({"outer_unit_norm": True, "outer_decay_steps": 60},
                          "unit_norm with the psi step decaying as 0.1 / (1 + t / 60): unit_norm keeps Adam's step "
                          "at a third of the rate when the hypergradient is noise, and seed 0's run with damping "
                          "0.001 walked its lights and positions away after step 60 (G 0.91 -> 0.56 at 240; "
                          "session 52): does the decay keep the early climb and stop the walk?"),
    "unit_norm_decay60_gate120": ({"outer_unit_norm": True, "outer_decay_steps": 60, "outer_snr_gate": 2.0,
                                   "outer_snr_gate_from": 120},
                                  "unit_norm_decay60 with the noise gate (z = 2) from update 120 on: it climbed to "
                                  "G 0.84 by step 120 on seeds 0-1, then seed 1 walked its lights off (key light KL "
                                  "2.9 -> 25.5, G 0.85 -> 0.59 at 240; session 53): does the gate hold fields whose "
                                  "averaged hypergradient has gone to noise, and keep the climb's gain?"),
    "unit_norm_gate40": ({"outer_unit_norm": True, "outer_snr_gate": 2.0, "outer_snr_gate_from": 40},
                         "unit_norm with the noise gate (z = 2) from update 40 on, for clevr-seg's cpu preset (a "
                         "constant rate, 40 steps): on seed 0 over 120 steps unit_norm closed 0.52 -> 0.70 while its "
                         "positions, resolution and shapes walked, the default 0.51 -> 0.97 (session 53): does the "
                         "gate stop the walk and keep the slow real signals?"),
    "staged50": ({"stages": [[50, r"^\['(?!position')"], [None, None]]},
                 "every field but the positions for 50 steps, then all of them: do the positions move once the "
                 "rest is right (as they do alone, variant pos_only)?"),
    "staged25": ({"stages": [[25, r"^\['(?!position')"], [None, None]]},
                 "the same with 25 steps for the rest: do the positions get there within 60 steps?"),
    "staged25_lr0.3": ({"stages": [[25, r"^\['(?!position')"], [None, None]], "outer_learning_rate": 0.3},
                       "the two best 60-step means together: positions held back for 25 steps, three times the "
                       "psi step"),
    "anchor32": ({"pretrain_rounds": 32, "theta_reset_inits": 1},
                 "each step's fresh theta fine-tuned from a model first trained for 32 rounds at the start psi: "
                 "without the untrained theta's preference for foreground, do the positions move from the start?"),
    "linear_anchor32": ({"approximation": "linear", "pretrain_rounds": 32, "theta_reset_inits": 1},
                        "the linear row from the anchor (its foreground preference fell most: 0.78 -> 0.16)"),
    "finetune6": ({"finetune_epochs": 6}, "theta closer to theta*(psi): is it co-adaptation?"),
    "linear_finetune6": ({"approximation": "linear", "finetune_epochs": 6},
                         "the linear row with the longer fine-tune: at cpu size init_bias.py found the Newton vector, "
                         "not the validation gradient, turning the lights darker from some initialisations then"),
    "inner_lr1e-3": ({"inner_learning_rate": 1e-3},
                     "a third of the fine-tuning step: on clevr-det the warm detector of seed 1 collapsed at step 72 "
                     "of 120 (train loss 160 -> 540, validation mAP 0 for the rest; session 15); does a smaller "
                     "step keep it alive?"),
    "quality_by_hand": ({"start_with_reference": ["resolution", "spp"],
                         "psi_trainable": all_but("resolution", "spp")},
                        "the render quality (resolution, samples per pixel) set by hand to the reference's and "
                        "frozen, every other field learned from the start: the step sees the resolution's value only "
                        "once the scene is right (session 19); what does a user who sets it gain?"),
    "shape_by_hand": ({"start_with_reference": ["shape"], "psi_trainable": all_but("shape")},
                      "the object shapes (the segmentation's classes) set by hand to the reference's uniform mix and "
                      "frozen, every other field learned from the start: at the reference with the start's shapes the "
                      "step stops rewarding high resolution (influence_features.py, session 20); does the resolution "
                      "then follow within 60 steps?"),
    "colour_material_frozen": ({"psi_trainable": all_but("color", "material")},
                               "each object's colour and material frozen at the start's uniform mix (the "
                               "reference's too), every other field learned: at gpu size the step pushes them to "
                               "one-hot-like by step 240 on the seeds that lose G (sessions 22, 24); do the runs then "
                               "keep their gain?"),
    "position_floor0.1": ({"spread_floor": {"fields": ["position"], "fraction": 0.1}},
                          "after every step each object's position keeps a spread of at least 10% of the floor's "
                          "width (0.6 world units; spread_floor): does seed 4's walk of object 0 to the near corner "
                          "still cost it (session 28)? Session 29: it walks on; G +0.04 on seed 4"),
    "reset_check60_colour_material": ({"reset_check": {"every": 60, "fields": ["color", "material"], "models": 2}},
                                      ("every 60 steps, fresh models judge psi against psi with each object's "
                                       "colour and material set back to the start, by the validation metric; if the "
                                       "reset wins, the run goes on from it with those fields frozen: the hold of "
                                       "colour_material_frozen decided by validation, not by hand (session 24)")),
    "signal_test60": ({"outer_signal_test_after": 60},
                      "from step 60 on, each psi leaf whose summed hypergradient has not yet stood out of its "
                      "noise (outer.signal_test, level 0.01 over the whole run) goes back to its start and is held: "
                      "colour and material held from the run's own data instead of by hand "
                      "(colour_material_frozen, session 23)?"),
    "signal_test30": ({"outer_signal_test_after": 30},
                      "the same from step 30: less of the walk before the first hold, less time for the weak "
                      "signals (the count, the shapes) to show"),
    "signal_test30_alpha0.1": ({"outer_signal_test_after": 30, "outer_signal_test_alpha": 0.1},
                               "signal_test30 with ten times the chance of releasing a leaf without signal: does "
                               "a field that reaches its optimum within a few steps (digits' stroke and contrast) "
                               "show evidence before its signal fades?"),
    "count_lights_fast": ({"fast_fields": {"fields": ["num_objects", "key_light", "ambient", "back_light"],
                                           "learning_rate": 0.3}},
                          "Adam 0.3 on the object count and the lights, 0.1 on the rest: the resolution moves only "
                          "once the count and lights are right (session 19), and Adam 0.3 on every field overshoots "
                          "the others; does bringing the scene sooner let the resolution follow within 60 steps?"),
    "finetune32": ({"finetune_epochs": 32},
                   "16x the fine-tuning of each step's fresh theta (256 Adam steps at gpu size): the exact "
                   "quadratic's step stops rewarding low-resolution renders at E = 32 (influence_features.py, "
                   "session 18); does the resolution then leave 32 px?"),
    "finetune32_surrogate": ({"finetune_epochs": 32, "val_objective": "metric_surrogate"},
                             "finetune32 (a step model that segments) with g_val the gradient of 1 - soft mIoU, "
                             "the assessment's metric smoothed: from such a theta it stops rewarding low-resolution "
                             "renders (influence_features.py, session 19); does the resolution leave 32 px?"),
    "inner_lr1e-2": ({"inner_learning_rate": 1e-2},
                     "3x the fine-tuning step of each step's fresh theta (clevr-seg gpu: 3e-3): the same 16 Adam "
                     "steps, a cheaper way than finetune32 to a step model that segments more than the background?"),
    "k2048_e8": ({"dataset_size": 2048, "finetune_epochs": 8},
                 "each step's fresh theta trained like the assessment's fresh models (2048 renders x 8 epochs, "
                 "32x the fine-tuning): from such a theta 8 influence estimates see no rubber preference "
                 "(influence_features.py, session 25); does the run keep colour and material, and reach G >= 0.8 "
                 "within 60 steps? (session 26: no; the material walks as before, G 0.28 at 60)"),
    "finetune32_independent": ({"finetune_epochs": 32, "outer_renders": "independent"},
                               "finetune32 with the outer stage on K renders other than the fine-tuning's (2K a "
                               "step): on digits-sim2real at cpu size a step model fine-tuned 12 epochs lost the "
                               "gain with shared renders (G -0.61) and kept it with independent ones (1.45; "
                               "session 34); is the trained step model's harm on clevr-seg the same correlation? "
                               "(session 35: no; G 0.31 at 60, the material walks and the resolution goes to 32 px "
                               "as before)"),
    "k2048_e8_independent": ({"dataset_size": 2048, "finetune_epochs": 8, "outer_renders": "independent"},
                             "k2048_e8 with the outer stage on 2048 other renders: does the material still walk "
                             "once the estimate is not taken on the renders theta was fit to? (session 34; session "
                             "35: it walks, object 0 rubber 0.71-0.91 at step 30, G 0.18 at 30)"),
    "finetune1": ({"finetune_epochs": 1},
                  "half the fine-tuning of each step's fresh theta: init_bias.py found the initialisation's push "
                  "growing with the fine-tuning's length (session 14); does every seed's step point the same way?"),
    "cg30_damp0.1": ({"cg_maxiter": 30, "damping": 0.1}, "a solve that converges: is it the solve?"),
    "cg15": ({"cg_maxiter": 15}, "three times the cpu preset's CG budget: its 5 iterations leave a systematic error "
                                 "of a fifth of the mean hypergradient on clevr-seg at cpu size, 15 about 0.01 "
                                 "(solve_quality.py, session 47); does G move?"),
    "damp0.001_cg50": ({"damping": 1e-3, "cg_maxiter": 50},
                       "a tenth of the damping, solved (CG stops at cg_tol): on digits-sim2real cpu the preset so "
                       "changed ends +0.034 val accuracy ahead on 9 seeds of 10 (G +0.19, s.e. 0.04; session 48); "
                       "does clevr-seg's G move?"),
    "damp0.1": ({"damping": 0.1}, "10x the damping: between the Newton vector that digits needs and the "
                                  "gradient-like vector that keeps clevr-seg's lights one way (session 14)"),
    "damp1": ({"damping": 1.0},
              "100x the damping: init_bias.py at cpu size found the damped Newton vector, not the validation "
              "gradient, turning the lights darker for most initialisations once theta is trained longer "
              "(session 14); does every seed's step then point the same way?"),
    "warm": ({"theta_reset_every": 0, "theta_reset_inits": 1},
             "the model warm-started across all steps (the experiments' setting before 2026-12-01)"),
    "reset1": ({"theta_reset_every": 1},
               "every step fine-tunes a fresh theta: no co-adaptation, a barely trained model"),
    "reset10": ({"theta_reset_every": 10}, "theta starts again every 10 steps"),
    "linear_reset10": ({"approximation": "linear", "theta_reset_every": 10},
                       "the linear row, theta reset every 10 steps"),
    # "explore": not an AutoSimConfig option but the distribution's: from_schema(..., explore=w).
    "explore0.1": ({"explore": 0.1}, "a learned broad share (initially 10%) of every finite continuous field"),
    "linear_explore0.1": ({"approximation": "linear", "explore": 0.1}, "the linear row with the broad share"),
    # "bins": the distribution's too: the field becomes a histogram (from_schema's "bins" override).
    "bins6": ({"bins": {"position": 6}}, "positions as a histogram of 6 bins per axis (global signal)"),
    "linear_bins6": ({"approximation": "linear", "bins": {"position": 6}}, "the linear row with the histogram"),
    "bins6_reset1": ({"bins": {"position": 6}, "theta_reset_every": 1},
                     "the histogram with a fresh model per step (both session-6 findings together)"),
    "linear_bins6_reset1": ({"approximation": "linear", "bins": {"position": 6}, "theta_reset_every": 1},
                            "the linear row, histogram and a fresh model per step"),
    "inits8": ({"theta_reset_inits": 8},
               "each reset fine-tunes from one of 8 initialisations in turn, not always the run's own: does an "
               "initialisation's bias (init_bias.py) stop pushing every step the same way? (clevr-seg gpu's "
               "preset since session 56)"),
    "inits1": ({"theta_reset_inits": 1},
               "each reset fine-tunes from the run's own initialisation: clevr-seg gpu's preset of sessions "
               "54-55 (before theta_reset_inits=8)"),
}
STARTS = {"clevr-seg": "CLEVR_START", "digits-sim2real": "DIGITS_START"}  # experiments.py's start overrides


def spread_floor(psi, fields, fraction: float, schema):
    """psi with each named bounded field's pre-image ``log_scale`` raised where needed so that its spread
    in the field's units (the delta method's: ``(high - low) t (1 - t) sigma`` with ``t = sigmoid(loc)``)
    is at least ``fraction`` of the range ``high - low``: a projection onto the psi whose field never
    narrows below that, applied after each outer step (``position_floor0.1``).

    >>> from autosim_jax.distributions import NormalParams
    >>> from autosim_jax.schema import Field, SceneSchema
    >>> schema = SceneSchema((Field.continuous("x", -3.0, 3.0),))
    >>> out = spread_floor({"x": NormalParams(np.array([0.0, 3.58]), np.log([1.0, 0.3]))}, ["x"], 0.1, schema)
    >>> [round(float(v), 2) for v in np.exp(out["x"].log_scale)]   # at the middle 0.4 is enough; near the edge
    [1.0, 3.79]
    """
    import jax
    import jax.numpy as jnp

    out = dict(psi)
    for name in fields:
        field = schema[name]
        if not (np.isfinite(field.low) and np.isfinite(field.high)):
            raise ValueError(f"spread_floor: {name!r} has no finite range ({field.low}, {field.high})")
        p = psi[name]
        loc = jnp.asarray(p.loc)
        # -log(t (1 - t)) = softplus(-loc) + softplus(loc): finite where t (1 - t) underflows
        floor = jnp.log(fraction) + jax.nn.softplus(-loc) + jax.nn.softplus(loc)
        out[name] = p._replace(log_scale=jnp.maximum(jnp.asarray(p.log_scale), floor))
    return out


def _tree_np(tree):
    import jax

    return jax.tree.map(np.asarray, tree)


def _job(spec: dict) -> dict:
    """One process: a run and its assessments, or the start/reference assessments of a seed.

    A failure is returned as ``{"error": ...}`` (and reported), so one job cannot lose the others.
    """
    try:
        return _job_body(spec)
    except Exception as err:  # noqa: BLE001 - reported in the results, never silently dropped
        return {"variant": spec["variant"], "seed": spec["seed"], "field": spec.get("field"), "index": spec["index"],
                "error": f"{type(err).__name__}: {str(err)[:2000]}", "seconds": float("nan")}


@contextlib.contextmanager
def job_setup(spec: dict):
    """Inside a job's process: the experiment's setup for the spec's seed and size, on the job's
    GPU (round-robin over ``spec["gpus"]`` by ``spec["index"]``), rendering through a pool of
    ``spec["render_workers"]`` processes of its own (closed on exit)."""
    gpus = spec.get("gpus")
    if gpus:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpus[spec["index"] % len(gpus)])
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # jobs share a GPU
    from autosim_jax.cli import deterministic_gpu_ops
    from autosim_jax.render_pool import make_render_pool
    from autosim_jax.rundir import resolve_experiment

    deterministic_gpu_ops()  # a seed fixes its run on the GPU too (from session 22 on)

    exp = resolve_experiment(spec["experiment"])  # a registered name or module:attr (a plug-in)
    setup = exp.build(renderer=exp.renderers[0], seed=spec["seed"], size=spec["size"])
    with make_render_pool(setup.simulator.renderer, workers=spec.get("render_workers", 1)) as pool:
        yield setup._replace(simulator=setup.simulator.with_pool(pool))


def _job_body(spec: dict) -> dict:
    t0 = time.perf_counter()
    with job_setup(spec) as setup:
        return _measure(spec, setup, t0)


def job_progress(spec: dict, t0: float, message: str) -> None:
    """One progress line of a running job on stderr, which the call's log keeps: ``[ 312.4 s] VARIANT seed S:
    MESSAGE``, the seconds since the job started. A job that ``--deadline`` stops leaves only these lines,
    which say how far it got and so how long the next call should give it (session 67 lost a whole call)."""
    print(f"[{time.perf_counter() - t0:7.1f} s] {spec['variant']} seed {spec['seed']}: {message}", file=sys.stderr,
          flush=True)


def widened_unet(model, base_channels: int):
    """``model_seed -> UNet`` like ``model`` (the experiments' UNet segmenter or CenterNet detector: its input
    and output channels) with ``base_channels``, initialised as the experiments' ``make_model`` does
    (``nnx.Rngs(model_seed)``): the ``step_base_channels`` variants' step model.

    Example:
      >>> from flax import nnx
      >>> from autosim_jax.models import UNet
      >>> wide = widened_unet(UNet(1, 14, 8, rngs=nnx.Rngs(0)), 16)(0)
      >>> wide.enc1a.in_features, wide.enc1a.out_features, wide.head.out_features
      (1, 16, 14)
    """
    from flax import nnx

    from autosim_jax.models import UNet

    if not isinstance(model, UNet):
        raise ValueError(f"step_base_channels widens a UNet (clevr-seg, clevr-det, digits-det); this experiment's "
                         f"model is a {type(model).__name__}")
    return lambda model_seed: UNet(model.enc1a.in_features, model.head.out_features, base_channels,
                                   rngs=nnx.Rngs(model_seed))


def save_trajectory(spec: dict, psis: list, infos: list[dict]) -> None:
    """The run's psi and step information so far, rewritten at each progress line to ``spec["trajectory_to"]``
    (none: not kept). A job that ``--deadline`` stops during its last steps or its fresh models (session 67's
    six jobs were cut while assessing) thus leaves its trajectory, which :func:`unfinished_entry` puts into
    the record's ``failed`` list."""
    path = spec.get("trajectory_to")
    if path:
        with open(path + ".tmp", "w") as f:
            json.dump({"psi": [flatten(p) for p in psis], "infos": infos}, f)
        os.replace(path + ".tmp", path)  # whole or absent, even if the job is killed while writing


def unfinished_entry(spec: dict, deadline: float) -> dict:
    """The ``failed`` entry of a job that ``--deadline`` stopped: what it was, and the psi trajectory and step
    information it saved (:func:`save_trajectory`) with ``steps_done``, where it saved any."""
    entry = {**{k: spec[k] for k in ("variant", "seed", "index")}, "seconds": deadline,
             "error": f"not finished within --deadline {deadline:g} s"}
    try:
        with open(spec["trajectory_to"]) as f:
            saved = json.load(f)
    except (KeyError, OSError, ValueError):  # a baseline job, or stopped before its first progress line
        return entry
    n = len(saved["psi"])
    return {**entry, "error": f"{entry['error']} (its trajectory to step {n} of {spec['steps']} kept, no assessment)",
            "steps_done": n, **saved}


def _measure(spec: dict, setup, t0: float) -> dict:
    """The job's measurements with ``setup`` (its simulator renders through the job's pool)."""
    import jax

    import autosim_jax as asj

    assessor = asj.make_assessor(setup, num_images=spec.get("assess_images"), epochs=spec.get("assess_epochs"),
                                 repeats=spec.get("repeats", 1))

    def assess(psi, seed, what="psi"):  # the assessor, with a progress line after each fresh model
        return assessor(psi, seed, lambda r, m: job_progress(spec, t0, f"{what}: fresh model {r + 1} trained"))

    # the experiment's config as built (a variant's overrides are in the header): it changes between
    # sessions (clevr-det's inner_clip_norm since session 17), and the assessor trains with it too
    out = {"variant": spec["variant"], "seed": spec["seed"], "index": spec["index"],
           "experiment_config": setup.config.to_dict(), "assess_budget": resolved_budget(spec, setup)}
    if spec["variant"] == "_baseline":
        out["baseline_inputs"] = baseline_inputs(setup, out["assess_budget"])  # what --baselines-from checks
        if spec.get("baseline_repeats"):  # the denominator of every G of this seed: worth more fresh models
            assessor = asj.make_assessor(setup, num_images=spec.get("assess_images"), epochs=spec.get("assess_epochs"),
                                         repeats=spec["baseline_repeats"])
        out["start"] = assess(setup.simulator.distribution.init(), spec["seed"], "start")
        out["reference"] = assess(setup.reference_psi, spec["seed"], "reference")
        out["seconds"] = time.perf_counter() - t0
        return out
    if spec["variant"] == "_field":
        # Which fields carry the gap: the start with one field set to the reference's, and
        # the reference with one field set back to the start's.
        start, ref, f = setup.simulator.distribution.init(), setup.reference_psi, spec["field"]
        out["field"] = f
        out["start_plus_field"] = assess({**start, f: ref[f]}, spec["seed"], f"start + {f}")
        out["reference_minus_field"] = assess({**ref, f: start[f]}, spec["seed"], f"reference - {f}")
        out["seconds"] = time.perf_counter() - t0
        return out
    overrides = dict(VARIANTS[spec["variant"]][0])
    explore, bins = overrides.pop("explore", None), overrides.pop("bins", {})
    but = overrides.pop("start_from_reference_but", None)
    by_hand = overrides.pop("start_with_reference", None)
    new_family = bool(explore or bins)
    new_start = new_family or but is not None or by_hand is not None
    if but is not None or by_hand is not None:
        # the reference psi with some fields back at the start's (a study of those fields), or the
        # start with some fields set to the reference's (a user's hand-set fields)
        dist = setup.simulator.distribution
        if but is not None:
            start = {**setup.reference_psi, **{f: dist.init()[f] for f in ([but] if isinstance(but, str) else but)}}
        else:
            start = {**dist.init(), **{f: setup.reference_psi[f] for f in by_hand}}
        setup = setup._replace(simulator=asj.Simulator(dist._replace(init=lambda: start), setup.simulator.renderer,
                                                       pool=setup.simulator.pool))
    elif new_family:  # the same start, in another family: a learned broad share, or histograms
        start = dict(getattr(asj.experiments, STARTS[spec["experiment"]]))
        start.update({f: {**start[f], "bins": b} for f, b in bins.items()})
        dist = asj.from_schema(setup.simulator.renderer.schema, start, explore=explore)
        setup = setup._replace(simulator=asj.Simulator(dist, setup.simulator.renderer, pool=setup.simulator.pool))
        assessor = asj.make_assessor(setup, num_images=spec.get("assess_images"), epochs=spec.get("assess_epochs"),
                                     repeats=spec.get("repeats", 1))
    # stages: [[steps, psi_trainable], ...], the last one's steps None (to the end); one AutoSimulate
    # per stage, the state carried over (psi_trainable changes only which leaves the outer step moves).
    learned, stages = overrides.pop("psi_trainable", None), overrides.pop("stages", None)
    if learned is not None and stages is not None:
        raise ValueError(f"variant {spec['variant']!r}: give psi_trainable inside its stages, not beside them")
    floor = overrides.pop("spread_floor", None)
    check = overrides.pop("reset_check", None)
    if check is not None and (learned is not None or stages is not None):
        raise ValueError(f"variant {spec['variant']!r}: a reset check freezes its fields itself; no psi_trainable "
                         "or stages beside it")
    stages = stages or [[None, learned]]
    width, step_models = overrides.pop("step_base_channels", None), {}
    if width is not None:  # the step's model (and its other initialisations) wider; the assessor keeps setup.model
        make_step_model = widened_unet(setup.model, width)
        n_inits = overrides.get("theta_reset_inits", setup.config.theta_reset_inits)
        step_models = {"model": make_step_model(spec["seed"]),
                       "reset_models": [make_step_model(1000 * j + spec["seed"]) for j in range(1, n_inits)]}
    fast = overrides.pop("fast_fields", None)
    if fast is not None:  # some fields' Adam at their own rate, the rest at the config's (one optimiser state)
        import optax

        cfg = setup.config.replace(**overrides)
        psi0 = setup.simulator.distribution.init()
        labels = {f: jax.tree.map(lambda _, f=f: "fast" if f in fast["fields"] else "rest", p) for f, p in psi0.items()}
        overrides["outer_optimizer"] = optax.multi_transform(
            {"fast": cfg.replace(outer_learning_rate=fast["learning_rate"]).outer_optax(), "rest": cfg.outer_optax()},
            labels)
    # the initialisations that theta_reset_every cycles through: the run's model and theta_reset_inits - 1
    # others of the experiment's make_model from the run's seed (the variant's count, else the experiment's)
    autosims = [setup.make_autosimulate(spec["seed"], **overrides, **step_models, psi_trainable=learned)
                for _, learned in stages]
    ends = np.cumsum([n or spec["steps"] for n, _ in stages])
    state = autosims[0].init(spec["seed"])
    held = None  # with a reset check: the AutoSimulate with the checked fields frozen, once a reset won
    if check is not None:
        hold = setup.make_autosimulate(spec["seed"], **overrides, **step_models,
                                       psi_trainable=all_but(*check["fields"]))
        judge = asj.make_assessor(setup, num_images=spec.get("assess_images"), epochs=spec.get("assess_epochs"),
                                  repeats=check["models"])
        start_psi, sign = setup.simulator.distribution.init(), 1 if setup.task.higher_is_better else -1
        check_images = 2 * check["models"] * (spec.get("assess_images") or setup.assess_images)
        out["reset_checks"] = []
    psis, infos = [], []
    for t in range(spec["steps"]):
        auto = held or autosims[int(np.searchsorted(ends, t, side="right"))]
        state, info = auto.step(state)
        if floor is not None:
            state = state._replace(psi=spread_floor(state.psi, floor["fields"], floor["fraction"],
                                                    setup.simulator.renderer.schema))
        if check is not None and held is None and (t + 1) % check["every"] == 0 and t + 1 < spec["steps"]:
            # Both candidates with the same fresh-model keys (a paired comparison), keys that no
            # assessment below uses; their images count in the run's budget ("images" below).
            reset = {**state.psi, **{f: start_psi[f] for f in check["fields"]}}
            key = 7919 * (t + 1) + spec["seed"]
            as_is, candidate = judge(state.psi, key), judge(reset, key)
            won = bool(sign * candidate["val_metric"] > sign * as_is["val_metric"])
            out["reset_checks"].append({"step": t + 1, "as_is": as_is, "reset": candidate, "reset_won": won,
                                        "images": check_images})
            if won:
                state, held = state._replace(psi=reset), hold
        psis.append(_tree_np(state.psi))
        infos.append(info._asdict())
        if (t + 1) % max(1, spec["steps"] // 8) == 0 or t + 1 == spec["steps"]:
            job_progress(spec, t0, f"psi step {t + 1}/{spec['steps']}")
            save_trajectory(spec, psis, infos)
    verdicts = asj.signal_test_report(state.outer_opt_state)
    if verdicts is not None:  # which psi leaves the signal test held at the end, with their p-values
        out["signal_test"] = verdicts
    half = psis[len(psis) // 2:]
    averaged = jax.tree.map(lambda *xs: np.mean(np.stack(xs), axis=0), *half)
    out["infos"] = infos
    out["psi"] = [flatten(p) for p in psis]
    if not spec["assess_steps"]:  # --no-assess: the trajectory alone
        out["seconds"] = time.perf_counter() - t0
        return out
    out["assessed"] = {str(t): assess(psis[t - 1], spec["seed"], f"step {t}") for t in spec["assess_steps"]}
    if new_start:  # the start in the new family, or the reference but one field, before any learning
        out["assessed"]["0"] = assess(setup.simulator.distribution.init(), spec["seed"], "step 0")
    if spec.get("assess_average", True):  # records before session 67 always have it
        out["assessed"]["average_second_half"] = assess(averaged, spec["seed"], "the second half's average")
    if spec.get("assess_trajectory"):  # the "replay" product: the mixture of every step's psi
        out["assessed"]["trajectory"] = assess(psis, spec["seed"], "the trajectory's mixture")
    out["seconds"] = time.perf_counter() - t0
    return out


def _gap(start, learned, ref):
    gap = ref - start
    return (learned - start) / gap if gap != 0 else float("nan")


def summarise(results: list[dict], metric_key: str) -> dict:
    """G per variant and assessment point (mean and sample std over seeds, and each seed's);
    ``selected``: the assessed psi with the best *validation* metric (what a periodic fresh-model
    check on the validation set returns)."""
    base = {r["seed"]: r for r in results if r["variant"] == "_baseline"}
    table: dict[str, dict] = {}
    seeds: dict[str, list] = {}
    for r in sorted(results, key=lambda r: r["seed"]):  # per_seed in seed order, not the order jobs finished
        if r["variant"].startswith("_"):
            continue
        b = base.get(r["seed"])
        if b is None or "assessed" not in r:  # no baseline (--deadline, --no-assess) or no assessment: no G
            continue
        row, row_seeds = table.setdefault(r["variant"], {}), seeds.setdefault(r["variant"], {})
        points = {k: v for k, v in r["assessed"].items() if k.isdigit() and k != "0"}  # 0: before learning
        best = max(points, key=lambda k: points[k]["val_metric"])
        for point, m in [*r["assessed"].items(), ("selected_by_val", points[best])]:
            row.setdefault(point, []).append(_gap(b["start"][metric_key], m[metric_key], b["reference"][metric_key]))
            row_seeds.setdefault(point, []).append(r["seed"])
    # the sample std over seeds (ddof=1), as reassess.py and cell_mass.py give it; before session 36
    # this was the population std (ddof=0), which the records' per_seed lists let a reader redo
    return {v: {p: {"mean": float(np.mean(g)), "std": float(np.std(g, ddof=1)) if len(g) > 1 else 0.0,
                    "per_seed": g, "seeds": seeds[v][p]}
                for p, g in row.items()} for v, row in table.items()}


def field_importance(results: list[dict], metric_key: str) -> dict:
    """Per field: G of the start with that field set to the reference's, and of the reference
    with that field set back to the start's (mean and per seed)."""
    base = {r["seed"]: r for r in results if r["variant"] == "_baseline"}
    out: dict[str, dict] = {}
    for r in sorted(results, key=lambda r: r["seed"]):
        b = base.get(r["seed"])
        if r["variant"] != "_field" or b is None:
            continue
        g = lambda m: _gap(b["start"][metric_key], m[metric_key], b["reference"][metric_key])  # noqa: E731
        row = out.setdefault(r["field"], {"start_plus_field": [], "reference_minus_field": []})
        row["start_plus_field"].append(g(r["start_plus_field"]))
        row["reference_minus_field"].append(g(r["reference_minus_field"]))
    return {f: {k: {"mean": float(np.mean(v)), "per_seed": v} for k, v in row.items()} for f, row in out.items()}


def cg_stats(results: list[dict]) -> dict:
    """Per variant, means over its runs: the share of steps whose CG converged and that moved
    psi, the median relative residual and step time, the warm model's loss jumps, and the fresh
    models left out of an assessment as diverged (``make_assessor``'s ``diverged_models``)."""
    from autosim_jax import finetune_loss_jumps

    out = {}
    for r in results:
        if r["variant"].startswith("_"):
            continue
        infos = r["infos"]
        s = out.setdefault(r["variant"], {"converged": [], "updated": [], "residual": [], "step_s": [],
                                          "finetune_loss_jumps": [], "diverged_fresh_models": []})
        s["converged"].append(float(np.mean([i["cg_converged"] for i in infos])))
        s["updated"].append(float(np.mean([i["psi_updated"] for i in infos])))
        s["residual"].append(float(np.median([i["cg_relative_residual"] for i in infos])))
        s["step_s"].append(float(np.median([i["time_render"] + i["time_train"] + i["time_outer"] for i in infos[1:]])))
        if "train_loss_before" in infos[0]:  # recorded since session 15
            s["finetune_loss_jumps"].append(len(finetune_loss_jumps([i["train_loss"] for i in infos],
                                                                    [i["train_loss_before"] for i in infos])))
        if any("train_losses" in a for a in r.get("assessed", {}).values()):  # per model since session 16
            s["diverged_fresh_models"].append(sum(len(a.get("diverged_models", [])) for a in r["assessed"].values()))
    return {v: {k: float(np.mean(x)) for k, x in s.items() if x} for v, s in out.items()}


def movement(results: list[dict]) -> dict:
    """Per variant and psi leaf: the mean absolute change per step in each quarter of the run
    (mean over coordinates and seeds). A field whose steps shrink late is stalling."""
    out: dict[str, dict] = {}
    for r in results:
        if r["variant"].startswith("_") or "psi" not in r:
            continue
        for leaf in r["psi"][0]:
            steps = np.abs(np.diff(np.array([p[leaf] for p in r["psi"]]), axis=0)).mean(axis=1)
            quarters = [float(q.mean()) for q in np.array_split(steps, 4)]
            out.setdefault(r["variant"], {}).setdefault(leaf, []).append(quarters)
    return {v: {leaf: np.mean(q, axis=0).tolist() for leaf, q in row.items()} for v, row in out.items()}


def plot(summary: dict, steps: list[int], path: str, title: str) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    for name, row in summary.items():
        mean = [row[str(t)]["mean"] for t in steps]
        std = [row[str(t)]["std"] for t in steps]
        line, = ax.plot(steps, mean, marker="o", label=name)
        ax.fill_between(steps, np.subtract(mean, std), np.add(mean, std), color=line.get_color(), alpha=0.15)
        if "average_second_half" in row:
            avg = row["average_second_half"]
            ax.errorbar([steps[-1] + 2], [avg["mean"]], [avg["std"]], color=line.get_color(), marker="s", capsize=3)
        if "trajectory" in row:
            mix = row["trajectory"]
            ax.errorbar([steps[-1] + 4], [mix["mean"]], [mix["std"]], color=line.get_color(), marker="^", capsize=3)
    ax.axhline(0, color="k", lw=0.8)
    ax.axhline(1, color="k", lw=0.8, ls="--")
    ax.set_xlabel("outer steps (square: psi averaged over the second half; triangle: the run's mixture)")
    ax.set_ylabel("gap closed G (fresh models, test metric)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=120, bbox_inches="tight")


def resolved_budget(spec: dict, setup) -> list[int]:
    """``[images, epochs]`` of each fresh model: ``--assess-images`` / ``--assess-epochs``, else the
    experiment's own, which change between sessions (clevr-seg cpu: 512 images until 2026-12-03, 2,048 since)."""
    return [spec.get("assess_images") or setup.assess_images, spec.get("assess_epochs") or setup.assess_epochs]


# What make_assessor reads of setup.base_config() to train the fresh models (the inner optimiser, its
# minibatch and the validation batch): the digest covers these, so that a new AutoSimConfig field (or an
# outer-loop option) does not refuse records whose fresh models trained exactly alike.
ASSESSMENT_OPTIONS = ("inner_optimizer", "inner_learning_rate", "inner_clip_norm", "batch_size", "val_batch_size")
# Session 50's digest hashed every AutoSimConfig field; these were added after it (at defaults that leave
# the fresh models' training unchanged), so its formula leaves them out to reproduce its records' digests.
_ADDED_AFTER_SESSION_50 = ("outer_unit_norm", "outer_snr_gate_from", "theta_reset_inits", "outer_decay_late_from",
                           "outer_decay_late_steps", "outer_line_search", "outer_line_search_steps",
                           "outer_line_search_min_ess")
# The sets are compared by each image's and each label's mean, within this: two hosts' numpy renderings
# of the same set differ in the last bits (at 64 px session 50's 8-bit rounding still flipped a pixel
# between the H100 host and this CPU's), while another scene or label moves a mean by far more.
SET_TOLERANCE = 1e-3


def _digest(setup, budget: list[int], *, options: dict, sets_at_8_bits: bool) -> str:
    import jax
    from flax import nnx

    h = hashlib.sha256()

    def add(a) -> None:
        a = np.asarray(a)
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(np.ascontiguousarray(a).tobytes())

    for leaf in jax.tree.leaves((setup.simulator.distribution.init(), setup.reference_psi)):
        add(leaf)
    if sets_at_8_bits:
        for leaf in jax.tree.leaves((setup.val_data, setup.test_data)):
            a = np.asarray(leaf)
            add(np.round(a.astype(np.float64) * 255.0).astype(np.int64) if a.dtype.kind == "f" else a)
    shapes = [list(np.shape(p)) for p in jax.tree.leaves(nnx.state(setup.model, nnx.Param))]
    h.update(json.dumps([options, shapes, list(budget)], sort_keys=True).encode())
    return h.hexdigest()[:16]


def baseline_inputs(setup, budget: list[int]) -> dict:
    """What a seed's start/reference assessment depends on besides its seed, for ``--baselines-from``
    to compare, so that a record made before an experiment changed any of it is refused:
    ``"digest"``, a hash of the start and reference psi (to the bit), the options the fresh models
    train with (``ASSESSMENT_OPTIONS`` of ``setup.base_config()``), the model's parameter shapes and
    the budget; ``"sets"``, each validation and test image's mean and each label's mean (compared
    within ``SET_TOLERANCE``, not hashed: hosts render the same set to different last bits)."""
    import jax

    options = setup.base_config().to_dict()
    sets = {}
    for name, (x, y) in (("val", setup.val_data), ("test", setup.test_data)):
        for part, tree in (("images", x), ("labels", y)):  # labels may be a pytree (detection's boxes, classes)
            sets[f"{name}_{part}"] = [round(float(v), 6) for leaf in jax.tree.leaves(tree)
                                      for v in np.asarray(leaf, np.float64).reshape(len(leaf), -1).mean(axis=1)]
    return {"digest": _digest(setup, budget, options={k: options[k] for k in ASSESSMENT_OPTIONS},
                              sets_at_8_bits=False), "sets": sets}


def same_inputs(recorded, setup, budget: list[int], recorded_config: dict | None = None) -> bool:
    """Whether a record's ``baseline_inputs`` are this setup's: a dict of :func:`baseline_inputs` (its
    digest equal, every set's means within ``SET_TOLERANCE``), or session 50's string digest (every
    config field, the sets at 8 bits; exact, so it can refuse a record rendered on another host).

    Session 50's digest hashed the outer learner's options too, which do not touch the start and
    reference assessment and which presets change (clevr-seg gpu's, session 54): for a setup whose
    assessment trains with its learner's config (no ``assess_config``), those are taken from the
    run's ``recorded_config`` (its ``experiment_config``), the fresh models' options from the setup."""
    if isinstance(recorded, str):
        options = {k: v for k, v in setup.base_config().to_dict().items() if k not in _ADDED_AFTER_SESSION_50}
        if recorded_config is not None and setup.assess_config is None:
            options = {k: v if k in ASSESSMENT_OPTIONS else recorded_config.get(k, v) for k, v in options.items()}
        return recorded == _digest(setup, budget, options=options, sets_at_8_bits=True)
    now = baseline_inputs(setup, budget)
    return recorded["digest"] == now["digest"] and recorded["sets"].keys() == now["sets"].keys() and all(
        len(recorded["sets"][k]) == len(v) and np.max(np.abs(np.subtract(recorded["sets"][k], v)), initial=0.0)
        <= SET_TOLERANCE for k, v in now["sets"].items())


def load_baselines(path: str, args, seeds: list[int]) -> list[dict]:
    """The ``_baseline`` runs of an earlier ``OUT.json`` for ``seeds``, checked against this call's
    options (``--baselines-from``). Raises ``SystemExit`` naming the mismatch, before any job starts.

    The assessment budget is compared as resolved (the experiment's defaults applied): a record
    written before the jobs recorded it (``assess_budget``, session 49) is refused, since the
    experiment's defaults may have changed since (session 49 reused 512-image start and reference
    models of 2026-12-02 against 2,048-image ones without noticing). So is one whose start, reference,
    validation/test sets, training options or model differ from this call's (``baseline_inputs``,
    recorded since session 50), or that does not record them."""
    from autosim_jax.rundir import resolve_experiment

    old = read_record(path)
    want = {"experiment": args.experiment, "size": args.size, "baseline_repeats": args.baseline_repeats or args.repeats}
    have = {k: old.get(k) for k in want}
    have["baseline_repeats"] = old.get("baseline_repeats") or old.get("repeats") or 1
    wrong = {k: (have[k], v) for k, v in want.items() if have[k] != v}
    if wrong:
        diff = ", ".join(f"{k}: {a!r} there, {b!r} here" for k, (a, b) in wrong.items())
        raise SystemExit(f"--baselines-from {path}: its options differ from this call's ({diff}); "
                         "run the baselines again (drop the flag).")
    found = {r["seed"]: r for r in old["runs"] if r["variant"] == "_baseline" and "error" not in r}
    missing = [s for s in seeds if s not in found]
    if missing:
        raise SystemExit(f"--baselines-from {path}: no start/reference assessment for seeds {missing} "
                         f"(it has {sorted(found)}); give those seeds' baselines a call of their own or drop the flag.")
    exp = resolve_experiment(args.experiment)
    setup = exp.build(renderer=exp.renderers[0], seed=0, size=args.size)
    budget = resolved_budget(vars(args), setup)
    recorded = {tuple(found[s].get("assess_budget", ())) for s in seeds}
    if recorded != {tuple(budget)}:
        what = ("it does not record the assessment budget its start and reference used (written before session 49)"
                if () in recorded
                else f"its start and reference were assessed with {sorted(recorded)} (images, epochs)")
        raise SystemExit(f"--baselines-from {path}: {what}, this call assesses with {budget}; run the baselines "
                         "again (drop the flag).")
    pairs = [(found[s].get("baseline_inputs"), found[s].get("experiment_config")) for s in seeds]
    inputs = [p[0] for p in pairs]
    unique = {json.dumps(p, sort_keys=True): p for p in pairs}.values()  # one per record: the seeds share it
    if None in inputs or not all(same_inputs(r, setup, budget, config) for r, config in unique):
        what = ("it does not record what its start and reference were assessed on (written before session 50)"
                if None in inputs else "its start psi, reference psi, validation/test sets, the fresh models' "
                "options or the model differ from this call's (the experiment changed since)")
        raise SystemExit(f"--baselines-from {path}: {what}; run the baselines again (drop the flag).")
    return [{**found[s], "index": -1 - i, "reused_from": path} for i, s in enumerate(seeds)]


def run_jobs(job, specs: list[dict], *, jobs: int, deadline: float | None, partial_path: str,
             report) -> tuple[list[dict], list[dict]]:
    """``job(spec)`` for every spec, each in a spawned process of its own, ``jobs`` at once
    (``autosim_jax.processes.map_in_processes``).

    Each result is appended to ``partial_path`` (JSON lines) as it arrives, so a run cut short
    keeps what finished, and passed to ``report(result, number_done)``. At ``deadline`` seconds
    (``None``: no limit), on a job's error or on Ctrl-C, the processes still running are killed:
    no job outlives the call. A job's error is raised (``RuntimeError`` with its traceback).
    Returns ``(results, unfinished_specs)``; specs and results carry the same ``"index"``.
    """
    from autosim_jax.processes import map_in_processes

    # before any job: a missing folder would otherwise surface at the first result and lose it
    os.makedirs(os.path.dirname(os.path.abspath(partial_path)), exist_ok=True)
    results = []
    for i, ok, value in map_in_processes(job, specs, processes=jobs, deadline=deadline):
        if not ok:
            what = ", ".join(f"{k} {v}" for k, v in specs[i].items() if k in ("variant", "kind", "candidate", "seed"))
            raise RuntimeError(f"job {i} ({what}) failed; what finished is in {partial_path}:\n{value[1]}")
        results.append(value)
        with open(partial_path, "a") as f:
            f.write(json.dumps(value) + "\n")
        report(value, len(results))
    done = {r["index"] for r in results}
    return results, [spec for spec in specs if spec["index"] not in done]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--experiment", default="clevr-seg", help="a registered experiment, or module:attr naming a plug-in "
                   "(e.g. clevr_seg_variants:K256, found from benchmarks/)")
    p.add_argument("--size", default="cpu", choices=("cpu", "gpu"))
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--assess-steps", default=None, help="comma list (default: steps/3, 2 steps/3, steps)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--fields", default="", help="comma list of fields for the importance check ('all': every "
                   "field of the reference psi); empty: none")
    p.add_argument("--no-assess", action="store_true",
                   help="no fresh models (and no start/reference baselines): the psi trajectories and step "
                        "information only, e.g. to see how fast a field moves")
    p.add_argument("--assess-trajectory", action="store_true",
                   help="also assess the run's replay product: fresh models on the equal mixture of every "
                        "step's psi (what the run rendered), beside those on the final psi")
    p.add_argument("--no-assess-average", action="store_true",
                   help="no fresh models on the psi averaged over the run's second half: half a run's fresh models "
                        "when one point is assessed (that average is no better a return value than the final psi: "
                        "docs/learning.md, session 46)")
    p.add_argument("--repeats", type=int, default=1,
                   help="fresh models per assessment (their mean is used); with 2, one clevr-seg gpu seed's G moves "
                        "by a std of 0.14 between calls (docs/learning.md, session 13): 4 or more to compare variants")
    p.add_argument("--baseline-repeats", type=int, default=None,
                   help="fresh models for the start and reference psi of each seed (default: --repeats); one "
                        "clevr-seg reference model's std is 0.042 mIoU, a sixth of the gap")
    p.add_argument("--assess-images", type=int, default=None, help="images per fresh model (default: the experiment's)")
    p.add_argument("--assess-epochs", type=int, default=None, help="epochs per fresh model (default: the experiment's)")
    p.add_argument("--baselines-from", default=None, metavar="JSON",
                   help="reuse the start and reference assessments of an earlier run of this script (its OUT.json: "
                        "the same experiment, size, assessment budget as resolved and baseline repeats, the same "
                        "start, reference, validation/test sets and training options (recorded since session 50), "
                        "every seed present) instead of training them again; G is then not paired within one call")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--gpus", type=int, default=0, help="GPUs to spread the jobs over (0: leave devices alone)")
    p.add_argument("--render-workers", type=int, default=1,
                   help="render processes per job (runs and assessments; the same renders as serial)")
    p.add_argument("--deadline", type=float, default=None, metavar="SECONDS",
                   help="stop the jobs still running after this many seconds and write the summary of the "
                        "finished ones (the unfinished are listed under 'failed')")
    p.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                   help="run nothing: join these records of this script (e.g. one comparison's device calls) into "
                        "OUT.json.gz and OUT.png, the summaries computed again over the union of their runs")
    p.add_argument("--merge-note", default="", help="with --merge: how the records came about (kept in the record)")
    p.add_argument("--out", required=True, help="output path without extension")
    args = p.parse_args(argv)
    if args.merge:
        merge(args.merge, args.out, args.merge_note)
        return 0
    seeds = [int(s) for s in args.seeds.split(",")]
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variants {unknown}; valid: {list(VARIANTS)}")
    steps = ([] if args.no_assess else [int(s) for s in args.assess_steps.split(",")] if args.assess_steps
             else sorted({max(1, args.steps // 3), max(1, 2 * args.steps // 3), args.steps}))
    common = dict(experiment=args.experiment, size=args.size, steps=args.steps, assess_steps=steps,
                  repeats=args.repeats,
                  baseline_repeats=args.baseline_repeats, assess_trajectory=args.assess_trajectory,
                  assess_average=not args.no_assess_average,
                  assess_images=args.assess_images, assess_epochs=args.assess_epochs,
                  gpus=list(range(args.gpus)) or None, render_workers=args.render_workers)
    reused = [] if args.no_assess or not args.baselines_from else load_baselines(args.baselines_from, args, seeds)
    specs = [] if args.no_assess or reused else [dict(common, variant="_baseline", seed=s) for s in seeds]
    specs += [dict(common, variant=v, seed=s) for v in variants for s in seeds]
    if args.fields:
        fields = args.fields.split(",")
        if fields == ["all"]:
            from autosim_jax.rundir import resolve_experiment

            exp = resolve_experiment(args.experiment)
            fields = sorted(exp.build(renderer=exp.renderers[0], seed=0, size=args.size).reference_psi)
        specs += [dict(common, variant="_field", field=f, seed=s) for f in fields for s in seeds]
    running = os.path.abspath(args.out) + ".running"  # each run's trajectory so far, for a --deadline cut
    os.makedirs(running, exist_ok=True)
    for i, spec in enumerate(specs):
        spec["index"], spec["trajectory_to"] = i, os.path.join(running, f"{i}.json")
    t0 = time.perf_counter()

    def report(r: dict, done: int) -> None:
        if "error" in r:
            print(f"FAILED {r['variant']} seed {r['seed']}: {r['error'][:300]}", flush=True)
        print(f"[{time.perf_counter() - t0:7.1f} s] done {r['variant']} {r.get('field', '')} seed {r['seed']} "
              f"({r['seconds']:.0f} s) {done}/{len(specs)}", flush=True)

    finished, unfinished = run_jobs(_job, specs, jobs=args.jobs, deadline=args.deadline,
                                    partial_path=args.out + ".partial.jsonl", report=report)
    results = list(reused) + finished
    for spec in unfinished:
        results.append(unfinished_entry(spec, args.deadline))
        print(f"UNFINISHED {spec['variant']} seed {spec['seed']}: {results[-1]['error']}", flush=True)
    shutil.rmtree(running, ignore_errors=True)  # the finished runs are in the record, the rest in `failed`
    import jax

    import autosim_jax as asj

    failed = [r for r in results if "error" in r]
    device = jax.devices()[0]
    meta = {
        "benchmark": "psi_learning", "date": datetime.date.today().isoformat(),
        "command": command_line(__file__, argv),
        "device": f"{device.platform}:{device.device_kind}", "host_cpus": os.cpu_count(), "jobs": args.jobs,
        "jax_version": jax.__version__, "autosim_jax": asj.__version__, "precision": "float32, default matmul",
        "experiment": args.experiment, "size": args.size, "steps": args.steps, "assess_steps": steps,
        "seeds": seeds, "repeats": args.repeats, "baseline_repeats": args.baseline_repeats or args.repeats,
        "assess_images": args.assess_images, "assess_epochs": args.assess_epochs,
        "assess_average": not args.no_assess_average, "baselines_from": args.baselines_from,
        "variants": {v: {"overrides": VARIANTS[v][0], "tests": VARIANTS[v][1]} for v in variants},
        "wall_seconds": time.perf_counter() - t0,
    }
    write_record(meta, [r for r in results if "error" not in r], failed, args.out)
    return 0


def write_record(meta: dict, results: list[dict], failed: list[dict], out: str, compress: bool = False) -> dict:
    """The summaries of ``results`` (G, CG and time, field importance, step sizes) added to
    ``meta``, written to ``OUT.json`` (``OUT.json.gz`` with ``compress``, floats at 7 significant
    digits: the runs are float32) and plotted to ``OUT.png``; printed as a table. Returns the record."""
    summary = {k: summarise(results, k) for k in ("test_metric", "val_metric")}
    record = {
        **meta, "gap_closed": summary, "solve_and_time": cg_stats(results),
        "field_importance": {k: field_importance(results, k) for k in ("test_metric", "val_metric")},
        "step_per_quarter": movement(results),
        "failed": failed, "runs": sorted(results, key=lambda r: (r["variant"], r["seed"])),
    }
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    if compress:
        record["precision_note"] = "floats written with 7 significant digits (the runs are float32)"
        with gzip.GzipFile(out + ".json.gz", "wb", compresslevel=9, mtime=0) as f:
            f.write(json.dumps(_significant(record, 7), separators=(",", ":")).encode())
    else:
        with open(out + ".json", "w") as f:
            json.dump(record, f)
    seeds = sorted({r["seed"] for r in results})
    if summary["test_metric"]:
        plot(summary["test_metric"], meta["assess_steps"], out + ".png",
             f"{meta['experiment']} ({meta['size']}), {len(seeds)} seeds")
    for f, row in record["field_importance"]["test_metric"].items():
        print(f"field {f:>12}: start+field G {row['start_plus_field']['mean']:+.2f}   "
              f"reference-field G {row['reference_minus_field']['mean']:+.2f}")
    for name, row in summary["test_metric"].items():
        print(f"{name:>14}: " + "  ".join(f"{k}: {v['mean']:+.2f}±{v['std']:.2f}" for k, v in row.items()))
    print(json.dumps(record["solve_and_time"], indent=1))
    return record


def _significant(tree, digits: int):
    """``tree`` (JSON values) with every finite float rounded to ``digits`` significant digits.

    Example:
      >>> _significant({"a": [0.123456789, 2, "x"], "b": float("inf")}, 3)
      {'a': [0.123, 2, 'x'], 'b': inf}
    """
    if isinstance(tree, float):
        return float(f"{tree:.{digits}g}") if np.isfinite(tree) else tree
    if isinstance(tree, list):
        return [_significant(v, digits) for v in tree]
    if isinstance(tree, dict):
        return {k: _significant(v, digits) for k, v in tree.items()}
    return tree


# Options that must agree between the records --merge joins (the runs are then comparable), with the value
# of those that records written before the option existed held (assess_average: session 67).
_MERGE_SAME = ("experiment", "size", "steps", "assess_steps", "repeats", "baseline_repeats", "assess_images",
               "assess_epochs", "assess_average", "precision")
_MERGE_BEFORE = {"assess_average": True}


def merge(paths: list[str], out: str, note: str) -> dict:
    """One record from several of this script's records (``--merge``): e.g. the device calls of
    one comparison, each within a call's time limit. Every run is kept once: a start/reference
    (``_baseline``) found in several records must be the same assessment; any other run twice is
    refused, as are records whose options (``_MERGE_SAME``) differ. A job unfinished in one
    record and finished in another counts as finished. A merged record may be merged again (its
    per-call lists are carried over, its note kept before ``note``). Writes ``OUT.json.gz`` and
    ``OUT.png``."""
    records = [read_record(p) for p in paths]
    for key in _MERGE_SAME:
        values = {json.dumps(r.get(key, _MERGE_BEFORE.get(key))) for r in records}
        if len(values) > 1:
            raise SystemExit(f"--merge: the records differ in {key} ({', '.join(sorted(values))}); only runs of one "
                             "setting can be merged")
    runs: dict[tuple, dict] = {}
    for path, record in zip(paths, records):
        for r in record["runs"]:
            key = (r["variant"], r["seed"], r.get("field"))
            if key not in runs:
                runs[key] = r
            elif (r["variant"] != "_baseline"
                  or (r["start"], r["reference"]) != (runs[key]["start"], runs[key]["reference"])):
                raise SystemExit(f"--merge: {path} holds a second run of {key[0]} seed {key[1]}; keep one (merge "
                                 "the records without it)")
    failed = [f for rec in records for f in rec["failed"] if (f["variant"], f["seed"], f.get("field")) not in runs]
    variants = {k: v for rec in records for k, v in rec["variants"].items()}

    def each(key: str) -> list:  # one entry per call: a merged record (a list per key) is flattened
        return [v for r in records for v in (r[key] if r.get("merged_from") else [r.get(key)])]

    notes = [r["merged_from"]["note"] for r in records if r.get("merged_from")]
    meta = {**{k: records[0].get(k, _MERGE_BEFORE.get(k)) for k in ("benchmark", *_MERGE_SAME)},
            "date": max(r["date"] for r in records), "command": each("command"),
            "device": sorted(set(each("device"))), "jax_version": sorted(set(each("jax_version"))),
            "seeds": sorted({s for _, s, _ in runs}), "baselines_from": each("baselines_from"),
            "variants": variants, "wall_seconds": each("wall_seconds"),
            "merged_from": {"records": [os.path.basename(p) for p in paths],
                            "note": " | ".join([*notes, note]) if notes else note}}
    return write_record(meta, list(runs.values()), failed, out, compress=True)


if __name__ == "__main__":
    sys.exit(main())
