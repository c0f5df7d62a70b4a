"""Which psi leaves carry a hypergradient signal, and is its standard error the real noise? (issue 13)

With psi held fixed, each AutoSimulate step's hypergradient ``g_t`` is an independent draw
(a fresh render batch, and on the experiments a fresh theta at every step,
``theta_reset_every=1``). The noise gate (``AutoSimConfig.outer_snr_gate``,
:func:`autosim_jax.outer.snr_gate`) keeps, per psi coordinate, the average
``m_t = d m_{t-1} + (1 - d) g_t`` and its noise variance ``V_t = d^2 V_{t-1} + (1 - d)^2 se_t^2``,
``se_t`` the step's own standard error of ``g_t`` from its K renders. With the gate closed
(``outer_snr_gate=1e6``: no average is that many standard errors from zero) psi never moves but
the gate's state is still updated, so ``g_t`` and ``se_t^2`` are recovered from consecutive
states (``recover_steps``). Over ``--steps`` steps per seed, per psi leaf
(``leaf_statistics``):

1. calibration: the median over the leaf's coordinates of ``var_t(g) / mean_t(se^2)``; 1 when
   the estimator's own standard error is the step-to-step noise, above 1 when it understates it
   (the gate then lets noise through);
2. signal: the test of :func:`autosim_jax.outer.signal_test` at this psi after ``N`` steps: per
   coordinate ``z = sum_t g / sqrt(sum_t se^2)`` (a standard normal without signal when the
   standard errors are honest, which item 1 checks), per leaf the chi-square statistic of
   :func:`autosim_jax.outer.leaf_signal` (with a categorical's logits counted as ``C - 1``
   directions per row of ``C``) and its p-value, and the median ``|z|``;
3. a rough 'steps to detect': how many steps a coordinate with the leaf's median ``|z|`` per
   ``sqrt(N)`` needs to reach ``|z| = 2``, ``4 N / median|z|^2``;
4. what an optimiser makes of it: the median ``|mean_t g|`` (an SGD step's size is
   proportional to it) and ``adam_travel``, the median over coordinates of
   ``|sum_t u_t| / N`` with ``u_t`` Adam's update direction for these ``g_t``
   (``m_hat / (sqrt(v_hat) + eps)``, optax's defaults and the config's ``b2 = 0.999``): the
   share of its full rate (the learning rate per step) at which Adam would walk the coordinate
   from this psi. A bias too small for item 2 to see still walks at nearly the full rate when
   its sign holds over the first moment's memory (session 26: the material at K = 2048 x 8
   epochs). Noise alone travels ``adam_travel_null(N)`` (0.10 at N = 80), printed beside it.

Seeds are pooled by summing the chi-square statistics and their degrees of freedom (the seeds
are independent); the pooled calibration and median ``|z|`` are medians over every seed's
coordinates (``pool_statistics``).

Usage::

    python benchmarks/hypergradient_signal.py --experiment clevr-seg --size cpu --steps 80 \\
        --seeds 0,1,2 --out benchmarks/results/hypergradient_signal/clevr-seg_cpu_start
    python benchmarks/hypergradient_signal.py --size gpu --psi reference --steps 80 --seeds 0,1,2 \\
        --render-workers 14 --out $OUT/hs_gpu_reference          # H200 host, 16 cores
    python benchmarks/hypergradient_signal.py --size cpu --steps 12 --out /tmp/hs   # smoke (45 s on 2 cores)
    # each seed's own learned psi, from a psi_learning.py record: FILE:VARIANT@STEP
    python benchmarks/hypergradient_signal.py --experiment digits-det --size gpu --steps 80 --seeds 0,1,2 \\
        --psi benchmarks/results/psi_learning/digits-det_gpu_120steps_det_s012.json:default@120 --out $OUT/hs_dd
    # the same with g_val from the detection task's smooth stand-in for mAP@0.5 (paired with the run above)
    python benchmarks/hypergradient_signal.py ... --val-objective metric_surrogate --out $OUT/hs_dd_surrogate

Writes ``OUT.json`` (device, versions, precision, command, date, the options, per seed and
pooled per-leaf statistics with every coordinate's ``z`` and variance ratio) and ``OUT.png``
(per leaf: the chi-square p-value of each seed and pooled, and the calibration ratio).

Example:
  >>> import numpy as np
  >>> g, se2 = recover_steps(np.array([[0.0], [0.5], [1.75]]), np.array([[0.0], [1.0], [1.25]]), decay=0.5)
  >>> g.ravel().tolist(), se2.ravel().tolist()   # g = 1 then 3, each with se^2 = 4
  ([1.0, 3.0], [4.0, 4.0])
  >>> s = leaf_statistics(np.array([[1.0, -1.0], [3.0, 1.0], [2.0, 0.0]]), np.ones((3, 2)))
  >>> s["calibration"], round(s["chi2"], 4), round(s["p"], 5), round(s["steps_to_detect"], 6)
  (1.0, 12.0, 0.00248, 4.0)
  >>> s["mean_abs_g"], [round(t, 3) for t in s["travel"]]   # the first coordinate never turns
  (1.0, [0.953, 0.302])
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import time

import numpy as np
from provenance import command_line  # the record's command, quoted for a shell

# snr_gate's decay, as AutoSimConfig.outer_optax chains it (not an option of the config).
DECAY = 0.99
# Standard errors no average reaches: the gate's factor is 0, so psi stays at its start.
GATE_CLOSED = 1e6
# Adam on psi as AutoSimConfig.outer_optax builds it: optax's b1 and eps (b2 is the config's
# outer_beta2, 0.999 unless an experiment sets it).
ADAM_B1, ADAM_EPS = 0.9, 1e-8
# Where p-values are drawn on the log axis when smaller (erfc underflows near 1e-300 anyway).
P_FLOOR = 1e-30


def recover_steps(means: np.ndarray, noise_vars: np.ndarray, decay: float) -> tuple[np.ndarray, np.ndarray]:
    """Each step's hypergradient and squared standard error from the gate's consecutive states.

    Inverts ``m_t = d m_{t-1} + (1 - d) g_t`` and ``V_t = d^2 V_{t-1} + (1 - d)^2 se_t^2``.

    Args:
      means: ``(T + 1, n)``, the gate's ``m`` before the first step and after each of ``T``.
      noise_vars: ``(T + 1, n)``, its ``V`` at the same points.
      decay: ``d`` (``0 <= d < 1``).

    Returns:
      ``(g, se2)``, each ``(T, n)``, in float64.
    """
    m, v = np.asarray(means, np.float64), np.asarray(noise_vars, np.float64)
    g = (m[1:] - decay * m[:-1]) / (1 - decay)
    se2 = (v[1:] - decay**2 * v[:-1]) / (1 - decay) ** 2
    return g, se2


def _steps_to_detect(median_abs_z: float, steps: int) -> float | None:
    # None, not inf: JSON has no infinity, and a median |z| of 0 gives no estimate at all
    return 4 * steps / median_abs_z**2 if median_abs_z > 0 else None


def leaf_statistics(g: np.ndarray, se2: np.ndarray, classes: int = 0, b2: float = 0.999) -> dict:
    """Calibration and signal of one psi leaf over ``N`` steps at a fixed psi.

    Args:
      g: ``(N, n)``, the hypergradient of each step and coordinate (``N >= 2``).
      se2: ``(N, n)``, its squared standard error from the step's own renders.
      classes: the categorical's number of classes for a ``logits`` leaf, else 0
        (:func:`autosim_jax.outer.categorical_classes`).
      b2: Adam's second-moment decay on psi (``AutoSimConfig.outer_beta2``), for ``adam_travel``.

    Returns:
      ``n``, ``steps`` (N); ``calibration``: median of ``var_t(g) / mean_t(se2)``; ``chi2``,
      ``dof`` and ``p``: :func:`autosim_jax.outer.leaf_signal` of the sums; ``median_abs_z`` of
      ``z = sum_t g / sqrt(sum_t se2)``; ``steps_to_detect``: ``4 N / median|z|^2`` (``None``
      when that is 0); ``mean_abs_g``: median of ``|mean_t g|``; ``adam_travel``: median of
      ``travel``, each coordinate's ``|sum_t u_t| / N`` (:func:`adam_travel`); ``z``, ``ratio``,
      ``mean_g`` and ``travel``: per coordinate, as lists.
    """
    from autosim_jax.outer import leaf_signal

    g, se2 = np.asarray(g, np.float64), np.asarray(se2, np.float64)
    steps, n = g.shape
    ratio = g.var(axis=0, ddof=1) / se2.mean(axis=0)
    z = g.sum(axis=0) / np.sqrt(se2.sum(axis=0))
    chi2, dof, p = (float(x) for x in leaf_signal(g.sum(axis=0), se2.sum(axis=0), classes))
    median_z = float(np.median(np.abs(z)))
    travel = adam_travel(g, b2)
    return {"n": n, "steps": steps, "calibration": float(np.median(ratio)), "chi2": chi2, "dof": dof, "p": p,
            "median_abs_z": median_z, "steps_to_detect": _steps_to_detect(median_z, steps),
            "mean_abs_g": float(np.median(np.abs(g.mean(axis=0)))), "adam_travel": float(np.median(travel)),
            "z": z.tolist(), "ratio": ratio.tolist(), "mean_g": g.mean(axis=0).tolist(), "travel": travel.tolist()}


def adam_updates(g: np.ndarray, b2: float = 0.999) -> np.ndarray:
    """``u_t`` for every row of ``g`` (``(N, n)``): Adam's bias-corrected update direction for the
    gradients ``g_1..g_t`` (optax's ``b1``, ``eps``; ``b2`` the config's ``outer_beta2``), before
    the learning rate. The scale of ``g`` does not matter (to ``eps``)."""
    g = np.asarray(g, np.float64)
    m, v, updates = np.zeros(g.shape[1]), np.zeros(g.shape[1]), np.empty_like(g)
    for t, row in enumerate(g, start=1):
        m = ADAM_B1 * m + (1 - ADAM_B1) * row
        v = b2 * v + (1 - b2) * row**2
        updates[t - 1] = (m / (1 - ADAM_B1**t)) / (np.sqrt(v / (1 - b2**t)) + ADAM_EPS)
    return updates


def adam_travel(g: np.ndarray, b2: float = 0.999) -> np.ndarray:
    """``|sum_t u_t| / N`` per coordinate of ``g`` (``(N, n)``), ``u_t`` of :func:`adam_updates`:
    1 when every step goes the same way at the full rate, near 0 when they cancel. The scale of
    ``g`` does not matter (to ``eps``), which is the point.
    """
    return np.abs(adam_updates(g, b2).sum(0)) / len(g)


def adam_travel_null(steps: int, draws: int = 4000) -> float:
    """The mean :func:`adam_travel` of ``draws`` coordinates whose ``g_t`` are independent
    standard normal noise (a fixed seed): what a leaf without signal travels in ``steps``.

    Example:
      >>> round(adam_travel_null(80), 2)
      0.1
    """
    return float(adam_travel(np.random.default_rng(0).standard_normal((steps, draws))).mean())


def pool_statistics(per_seed: list[dict]) -> dict:
    """One leaf's :func:`leaf_statistics` of independent seeds, pooled.

    The chi-square statistics and their degrees of freedom add. The calibration and median
    ``|z|`` are medians over every seed's coordinates, not a combined ``z`` per coordinate: each
    seed's fresh theta starts from its own initialisation, whose push on psi (``init_bias.py``)
    is shared by that seed's steps only, so the seeds' means need not agree.

    Returns:
      ``dof``, ``chi2``, ``p``, ``calibration``, ``median_abs_z`` and ``steps_to_detect`` (with the
      steps of one seed, the shortest if they differ); ``mean_abs_g`` and ``adam_travel``: the
      medians over the seeds' values.
    """
    from autosim_jax.outer import chi2_sf

    chi2, dof = sum(s["chi2"] for s in per_seed), sum(s["dof"] for s in per_seed)
    median_z = float(np.median(np.abs(np.concatenate([s["z"] for s in per_seed]))))
    return {"dof": dof, "chi2": chi2, "p": float(chi2_sf(chi2, dof)),
            "calibration": float(np.median(np.concatenate([s["ratio"] for s in per_seed]))),
            "median_abs_z": median_z,
            "steps_to_detect": _steps_to_detect(median_z, min(s["steps"] for s in per_seed)),
            "mean_abs_g": float(np.median([s["mean_abs_g"] for s in per_seed])),
            "adam_travel": float(np.median([s["adam_travel"] for s in per_seed]))}


def _leaves(tree) -> dict[str, np.ndarray]:
    import jax

    return {jax.tree_util.keystr(p): np.asarray(v).ravel() for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _step_options(args) -> dict:
    """The step's K, fine-tuning epochs and validation objective where given (``--dataset-size``,
    ``--finetune-epochs``, ``--val-objective``)."""
    return {k: v for k, v in (("dataset_size", args.dataset_size), ("finetune_epochs", args.finetune_epochs),
                              ("val_objective", args.val_objective)) if v is not None}


def _model_options(args) -> dict:
    """clevr-seg's image side and UNet width where given (``--image-size``, ``--base-channels``)."""
    return {k: v for k, v in (("image_size", args.image_size), ("base_channels", args.base_channels))
            if v is not None}


def recorded_psis(p: argparse.ArgumentParser, spec: str, experiment: str, size: str, seeds: list[int]) -> dict:
    """``--psi FILE:VARIANT@STEP``: seed -> the flat psi that seed's run of VARIANT held after STEP
    in a ``psi_learning.py`` record (``field_drift.read_runs``); refused before any step runs."""
    from field_drift import read_runs, trajectory_runs

    runs, _, step = spec.rpartition("@")
    try:
        step = int(step)
        path, record, variants = read_runs(runs, experiment, size)
    except (ValueError, OSError) as err:
        p.error(f"--psi {spec!r}: {err} (write start, reference or FILE:VARIANT@STEP)")
    if len(variants) != 1:
        p.error(f"--psi {spec!r}: name one variant")
    out = {}
    for seed in seeds:
        run = next((r for r in trajectory_runs(record, variants[0]) if r["seed"] == seed), None)
        if run is None:
            p.error(f"--psi: {path} holds no run of variant {variants[0]!r} with seed {seed}")
        if not 1 <= step <= len(run["psi"]):
            p.error(f"--psi: {path}: {variants[0]} seed {seed} has steps 1-{len(run['psi'])}, not {step}")
        out[seed] = run["psi"][step - 1]
    return out


def run_seed(args, seed: int, t0: float, recorded: dict | None = None) -> dict:
    """``args.steps`` AutoSimulate steps of one seed with the gate closed; per-leaf statistics.
    ``recorded``: the flat psi to hold (``--psi FILE:VARIANT@STEP``), else ``args.psi`` names it."""
    import autosim_jax as asj
    from autosim_jax.outer import SnrGateState, categorical_classes, find_state
    from autosim_jax.render_pool import make_render_pool
    from autosim_jax.rundir import resolve_experiment

    exp = resolve_experiment(args.experiment)
    setup = exp.build(renderer=exp.renderers[0], seed=seed, size=args.size, **_model_options(args))
    sim = setup.simulator
    held = None
    if args.psi == "reference":
        if setup.reference_psi is None:
            raise SystemExit(f"--psi reference: {args.experiment} has no reference psi; use --psi start.")
        held = setup.reference_psi
    elif recorded is not None:
        from field_drift import unflatten

        like = _leaves(sim.distribution.init())
        if set(recorded) != set(like):
            raise SystemExit(f"--psi {args.psi}: the recorded psi has leaves {sorted(recorded)}, the experiment's "
                             f"family {sorted(like)}")
        held = unflatten(recorded, sim.distribution.init())
    if held is not None:
        sim = asj.Simulator(sim.distribution._replace(init=lambda: held), sim.renderer)
    start = _leaves(sim.distribution.init())
    t_seed = time.perf_counter()
    with make_render_pool(sim.renderer, workers=args.render_workers) as pool:
        config = setup.config.replace(outer_snr_gate=GATE_CLOSED, outer_snr_gate_steps=0,  # closed all run
                                      **_step_options(args))
        auto = setup.make_autosimulate(seed, config, simulator=sim.with_pool(pool))
        state = auto.init(seed)
        gates, kept = [find_state(state.outer_opt_state, SnrGateState)], []
        for t in range(1, args.steps + 1):
            state, info = auto.step(state)
            gates.append(find_state(state.outer_opt_state, SnrGateState))
            if not info.psi_updated:  # psi and the optimiser state were kept: m_t = m_{t-1}, no g_t in it
                kept.append({"step": t, "reason": info.psi_kept_reason})
            if t % 10 == 0 or t == args.steps:
                print(f"[{time.perf_counter() - t0:7.1f} s] seed {seed}: step {t}/{args.steps}", flush=True)
    moved = [k for k, v in _leaves(state.psi).items() if not np.array_equal(v, start[k])]
    if moved:
        raise RuntimeError(f"psi moved with outer_snr_gate={GATE_CLOSED:g} ({moved}): a coordinate whose standard "
                           "error is 0 passes the gate; the steps are not draws at one psi.")
    kept_steps = {k["step"] for k in kept}
    used = [t - 1 for t in range(1, args.steps + 1) if t not in kept_steps]  # rows of g: step t is row t - 1
    if len(used) < 3:
        raise SystemExit(f"seed {seed}: only {len(used)} of {args.steps} steps updated the gate ({kept}); "
                         "raise --steps.")
    means = [_leaves(gs.mean) for gs in gates]
    noise = [_leaves(gs.noise_var) for gs in gates]
    classes = {k: int(v[0]) for k, v in _leaves(categorical_classes(state.psi)).items()}
    leaves = {}
    for leaf in means[0]:
        g, se2 = recover_steps(np.stack([m[leaf] for m in means]), np.stack([v[leaf] for v in noise]), DECAY)
        leaves[leaf] = leaf_statistics(g[used], se2[used], classes[leaf], config.outer_beta2)
    return {"seed": seed, "psi_held": {k: v.tolist() for k, v in start.items()}, "steps_used": len(used),
            "kept_steps": kept, "seconds": time.perf_counter() - t_seed,
            "experiment_config": setup.config.to_dict(), "leaves": leaves}


def plot(record: dict, path: str) -> None:
    from matplotlib.figure import Figure

    leaves = list(record["pooled"])
    rows = [(f"seed {s}", record["per_seed"][str(s)]["leaves"]) for s in record["seeds"]]
    if len(rows) > 1:
        rows.append(("pooled", record["pooled"]))
    y, height = np.arange(len(leaves)), 0.8 / len(rows)
    fig = Figure(figsize=(12, 0.3 * len(leaves) * max(1, len(rows) / 2) + 1.5), layout="constrained")
    ax, bx = fig.subplots(1, 2, sharey=True)
    for i, (label, stats) in enumerate(rows):
        offset = y - 0.4 + (i + 0.5) * height
        p = np.array([max(stats[leaf]["p"], P_FLOOR) for leaf in leaves])
        ax.barh(offset, p - 1, height, left=1, label=label)  # from p = 1: the longer, the stronger the signal
        bx.barh(offset, [stats[leaf]["calibration"] for leaf in leaves], height, label=label)
    ax.set_xscale("log")
    smallest = min(max(stats[leaf]["p"], P_FLOOR) for _, stats in rows for leaf in leaves)
    ax.set_xlim(1.5, min(smallest, 1e-3) / 3)
    ax.axvline(0.05, color="k", lw=0.8, ls="--")
    ax.set_yticks(y, leaves, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(f"chi-square p-value of 'no signal' (dashed: 0.05; below {P_FLOOR:g} drawn at it)")
    ax.legend(fontsize=8)
    bx.axvline(1, color="k", lw=0.8, ls="--")
    bx.set_xlabel("calibration: median over coordinates of var_t(g) / mean_t(se^2)")
    custom = ", ".join(f"{k} {v}" for k, v in {**record["step_options"], **record["model_options"]}.items())
    fig.suptitle(f"{record['experiment']} ({record['size']}{', ' + custom if custom else ''}), psi held at the "
                 f"{record['psi']}, "
                 f"{record['steps']} steps per seed | {record['device']} | {record['date']}", fontsize=10)
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--experiment", default="clevr-seg")
    p.add_argument("--size", default="cpu", choices=("cpu", "gpu"))
    p.add_argument("--psi", default="start",
                   help="the psi held fixed: start, reference (the experiment's), or FILE:VARIANT@STEP (each "
                        "seed's run of VARIANT in a psi_learning.py record, after STEP steps)")
    p.add_argument("--steps", type=int, default=80, help="AutoSimulate steps per seed (>= 3)")
    p.add_argument("--seeds", default="0", help="comma list of seeds")
    p.add_argument("--render-workers", type=int, default=1, help="render processes (the same renders as serial)")
    p.add_argument("--dataset-size", type=int, default=None, metavar="K",
                   help="renders per step (default: the experiment's); with --finetune-epochs 8 and K = 2048 at "
                        "gpu size each step's theta is trained like the assessment's fresh models")
    p.add_argument("--finetune-epochs", type=int, default=None, metavar="E",
                   help="fine-tuning epochs of each step's fresh theta (default: the experiment's)")
    p.add_argument("--val-objective", default=None, choices=("loss", "metric_surrogate"),
                   help="what g_val is the gradient of (default: the experiment's); two runs of the same seeds, one "
                        "each, draw the same renders and thetas, so their per-coordinate mean_g pair step by step")
    p.add_argument("--image-size", type=int, default=None, metavar="PX",
                   help="clevr-seg only: the image side in pixels, even, >= 8 (default: the size's; validation, "
                        "test and renders alike), the rest of the size's setting kept; build_clevr_seg checks it "
                        "before anything renders")
    p.add_argument("--base-channels", type=int, default=None, metavar="C",
                   help="clevr-seg only: the UNet's base channels (default: the size's)")
    p.add_argument("--out", required=True, help="output path without extension")
    args = p.parse_args(argv)
    if _model_options(args) and args.experiment != "clevr-seg":
        p.error(f"--image-size / --base-channels: clevr-seg only (got --experiment {args.experiment})")
    for flag, value in (("--dataset-size", args.dataset_size), ("--finetune-epochs", args.finetune_epochs)):
        if value is not None and value < 1:
            p.error(f"{flag} {value}: give at least 1")
    if args.steps < 3:
        p.error(f"--steps {args.steps}: give at least 3; the statistics rest on a variance over the steps")
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        p.error(f"--seeds {args.seeds!r}: give a comma list of integers, e.g. 0,1,2")
    if not seeds:
        p.error("--seeds: give at least one seed, e.g. --seeds 0")
    if len(set(seeds)) < len(seeds):
        p.error(f"--seeds {args.seeds}: each seed once (pooling assumes independent seeds)")
    if args.render_workers < 1:
        p.error(f"--render-workers {args.render_workers}: give at least 1")
    # GPU memory as it is needed, not 75% of the card at the first allocation: two of these beside
    # `autosim compare` jobs left one no memory for cuBLAS (session 73), as psi_learning.py's jobs do
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    import jax

    import autosim_jax as asj
    from autosim_jax.cli import deterministic_gpu_ops
    from autosim_jax.rundir import resolve_experiment

    try:
        resolve_experiment(args.experiment)  # a registered name or a plug-in's module:attr
    except ValueError as err:
        p.error(f"--experiment: {err}")
    recorded = {} if args.psi in ("start", "reference") else recorded_psis(p, args.psi, args.experiment,
                                                                             args.size, seeds)
    deterministic_gpu_ops()  # before JAX starts its GPU backend: a seed then fixes its run on the GPU too

    t0 = time.perf_counter()
    per_seed = {seed: run_seed(args, seed, t0, recorded.get(seed)) for seed in seeds}
    device = jax.devices()[0]
    leaves = list(per_seed[seeds[0]]["leaves"])
    record = {
        "benchmark": "hypergradient_signal", "date": datetime.date.today().isoformat(),
        "command": command_line(__file__, argv),
        "device": f"{device.platform}:{device.device_kind}", "host_cpus": os.cpu_count(),
        "jax_version": jax.__version__, "autosim_jax": asj.__version__,
        "precision": "float32 steps, gate state and chi-square tail; other statistics in float64",
        "experiment": args.experiment, "size": args.size, "psi": args.psi, "steps": args.steps, "seeds": seeds,
        "render_workers": args.render_workers, "decay": DECAY, "outer_snr_gate": GATE_CLOSED,
        "step_options": _step_options(args), "model_options": _model_options(args),
        "adam_travel_null": adam_travel_null(args.steps),
        "experiment_config": per_seed[seeds[0]]["experiment_config"],
        "pooled": {leaf: pool_statistics([r["leaves"][leaf] for r in per_seed.values()]) for leaf in leaves},
        "per_seed": {str(s): {k: v for k, v in r.items() if k != "experiment_config"}
                     for s, r in per_seed.items()},
        "wall_seconds": time.perf_counter() - t0,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump(record, f, indent=1)
    plot(record, args.out + ".png")
    print(f"{'leaf':<28} {'dof':>5} {'calib':>6} {'med|z|':>7} {'chi2':>9} {'p':>9} {'steps to detect':>16} "
          f"{'|mean g|':>9} {'Adam travel':>12}")
    for leaf, s in record["pooled"].items():
        detect = "-" if s["steps_to_detect"] is None else f"{s['steps_to_detect']:.0f}"
        p = "< 1e-30" if s["p"] < 1e-30 else f"{s['p']:.2g}"  # a float32 tail underflows to 0 (as in the plot)
        print(f"{leaf:<28} {s['dof']:>5.0f} {s['calibration']:>6.2f} {s['median_abs_z']:>7.2f} {s['chi2']:>9.1f} "
              f"{p:>9} {detect:>16} {s['mean_abs_g']:>9.2g} {s['adam_travel']:>12.2f}")
    print(f"Adam travel: the share of Adam's full rate at which it would walk the leaf from this psi; noise "
          f"alone travels {record['adam_travel_null']:.2f} in {args.steps} steps")
    print(f"wrote {args.out}.json and {args.out}.png ({len(seeds)} seeds, {record['wall_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
