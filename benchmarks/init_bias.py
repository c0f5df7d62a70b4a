"""Does the network's initialisation bias every step the same way? (issue 13, measured before built)

With ``theta_reset_every=1`` every step fine-tunes theta from the *same* ``theta0`` (the run's
model, initialised from its seed) on that step's renders. Whatever ``theta0`` favours then
enters every step's hypergradient alike: noise from the renders averages out over steps, a
bias of the initialisation does not. On clevr-seg at gpu size one seed's lights went the wrong
way for 40-60 steps in two calls (``docs/learning.md``, session 13); the seed sets only the
model's initialisation there (the validation and test sets are fixed).

This takes ``--inits`` initialisations (``ExperimentSetup.make_model(0, 1, ...)``) and, for each,
``--estimates`` steps' hypergradients at the start psi, each on its own renders (the same render
and minibatch keys for every initialisation) with theta fine-tuned from that ``theta0`` as a
step does. Per field it reports (sums over the field's coordinates):

* ``signal``: ``|mean over all|^2``, what every initialisation agrees on;
* ``init_bias``: the variance between the initialisations' means less the part their finite
  estimates explain (``within / estimates``), i.e. what one initialisation adds to every step;
* ``within``: one step's variance for a fixed initialisation (the render noise).

``init_bias / signal`` near or above 1 means a run's direction depends on its initialisation as
much as on psi; ``init_bias * T / within`` above 1 (printed for ``T = --travel-steps``) means the
bias outweighs T steps of averaged render noise, so that more renders per step cannot change the
direction a run takes in T steps. Also the sign of the key coordinates per initialisation (``--watch``), and how far
the library's outer optimiser (Adam with ``AutoSimConfig``'s default rate and beta2) would move
each of them in ``--travel-steps`` steps if every step's hypergradient were drawn as measured at
the start: from one initialisation throughout (a run's own theta0) or cycling through all of
them (``make_autosimulate(..., reset_models=...)``). ``--from-json`` adds that prediction to an
earlier measurement without a device.

Usage::

    python benchmarks/init_bias.py --experiment clevr-seg --size cpu --inits 8 --estimates 16 \\
        --out benchmarks/results/init_bias/clevr-seg_cpu     # 2-core CPU, 86 s
    python benchmarks/init_bias.py --experiment clevr-seg --size gpu --inits 8 --estimates 8 \\
        --render-workers 14 --out $OUT/init_bias_clevr-seg_gpu   # H200, 16 host cores
    python benchmarks/init_bias.py --experiment clevr-seg --size cpu --inits 8 --estimates 16 \\
        --config finetune_epochs=6 --out benchmarks/results/init_bias/clevr-seg_cpu_finetune6
    python benchmarks/init_bias.py --from-json benchmarks/results/init_bias/clevr-seg_gpu.json \\
        --out benchmarks/results/init_bias/clevr-seg_gpu  # seconds, no device

Writes ``OUT.json`` (device, versions, command, date, every figure) and ``OUT.png``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import time

import jax
import numpy as np
from hypergradient_quality import field_slices  # the same field order as ravel_pytree(psi)
from jax.flatten_util import ravel_pytree
from provenance import command_line  # the record's command, quoted for a shell
from psi_learning import job_setup  # the experiment's setup with a render pool of its own

import autosim_jax as asj
from autosim_jax.inner import split_model


def decompose(grads: np.ndarray) -> dict[str, np.ndarray]:
    """Per coordinate, from ``grads`` of shape ``[inits, estimates, n]``: ``signal`` (squared grand
    mean), ``init_bias`` (between-initialisation variance of the means, less ``within / estimates``,
    floored at 0) and ``within`` (the pooled variance of one estimate about its initialisation's mean).

    Example:
      >>> g = np.array([[[1.0], [3.0]], [[5.0], [7.0]]])   # 2 inits x 2 estimates x 1 coordinate
      >>> {k: float(v[0]) for k, v in decompose(g).items()}
      {'signal': 16.0, 'init_bias': 7.0, 'within': 2.0}
    """
    inits, n_est = grads.shape[:2]
    means = grads.mean(1)
    within = grads.var(1, ddof=1).mean(0)
    between = means.var(0, ddof=1) if inits > 1 else np.zeros_like(within)
    return {"signal": grads.mean((0, 1)) ** 2, "init_bias": np.maximum(between - within / n_est, 0.0),
            "within": within}


def adam_travel(means, stderrs, estimates: int, *, cycle: bool, steps: int, draws: int = 400,
                seed: int = 0) -> np.ndarray:
    """Travel of one psi coordinate under the library's outer Adam for ``steps`` steps, each step's
    hypergradient ``-N(means[i], (stderrs[i] sqrt(estimates))^2)`` (a measured mean step and the
    standard error of that mean over ``estimates`` steps); ``i`` fixed per row of the result
    (``cycle=False``: one row per initialisation) or ``i = t mod n`` (``cycle=True``: one row).
    Returns ``[rows, draws]`` travels (positive: along the measured mean step's sign convention).

    Example:
      >>> t = adam_travel([1.0, 0.01], [0.0, 0.0], 4, cycle=False, steps=10)
      >>> np.round(t.mean(1), 3).tolist()   # a steady hypergradient moves at the full rate, whatever its size
      [1.0, 1.0]
    """
    import jax.numpy as jnp
    import optax

    config = asj.AutoSimConfig()
    opt = optax.adam(config.outer_learning_rate, b2=config.outer_beta2)
    means, sds = np.asarray(means, float), np.asarray(stderrs, float) * np.sqrt(estimates)
    index = np.arange(steps) % len(means)
    rows = [index] if cycle else [np.full(steps, i) for i in range(len(means))]
    noise = np.random.default_rng(seed).standard_normal((steps, draws))

    def run(mu, sd):  # [steps] each; the draws ride along as the parameter's shape
        def step(carry, gs):
            x, state = carry
            updates, state = opt.update(-gs, state, x)  # the hypergradient; descent moves along its minus
            return (optax.apply_updates(x, updates), state), None
        x0 = jnp.zeros(draws)
        (x, _), _ = jax.lax.scan(step, (x0, opt.init(x0)), jnp.asarray(mu[:, None] + sd[:, None] * noise))
        return np.asarray(x)

    return np.stack([run(means[r], sds[r]) for r in rows])


def add_predicted_travel(result: dict, steps: int) -> dict:
    """``result["watch"][field]["adam_travel"]``: :func:`adam_travel`'s mean and std per
    initialisation and cycling through all of them, for every watched field."""
    for w in result["watch"].values():
        args = (w["loc_step_direction_per_init"], w["loc_standard_error_per_init"], result["estimates"])
        own, cycled = adam_travel(*args, cycle=False, steps=steps), adam_travel(*args, cycle=True, steps=steps)
        w["adam_travel"] = {"steps": steps, "per_init_mean": own.mean(1).tolist(), "per_init_std": own.std(1).tolist(),
                            "cycled_mean": float(cycled.mean()), "cycled_std": float(cycled.std())}
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--experiment", default="clevr-seg")
    p.add_argument("--size", default="cpu", choices=("cpu", "gpu"))
    p.add_argument("--inits", type=int, default=6, help="initialisations: the experiment's make_model(0..N-1)")
    p.add_argument("--estimates", type=int, default=12, help="steps' hypergradients per initialisation")
    p.add_argument("--watch", default="key_light,ambient,back_light",
                   help="fields whose loc's sign per initialisation is reported")
    p.add_argument("--render-workers", type=int, default=1, help="render pool processes (1: render in-process)")
    p.add_argument("--config", action="append", default=[], metavar="KEY=VALUE",
                   help="change the experiment's AutoSimConfig (repeatable), e.g. finetune_epochs=6")
    p.add_argument("--travel-steps", type=int, default=60, help="outer steps of the predicted Adam travel")
    p.add_argument("--from-json", default=None, metavar="JSON",
                   help="add the predicted travel to this earlier result instead of measuring (no device)")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    if args.inits < 2 or args.estimates < 2:
        p.error("--inits and --estimates must be >= 2 (a variance needs two)")
    try:
        asj.AutoSimConfig().replace(**parse_config(args.config))  # a typo fails here, not after the renders
    except (ValueError, TypeError) as e:
        p.error(str(e))
    command = command_line(__file__, argv)
    if args.from_json:
        with open(args.from_json) as f:
            result = json.load(f)
        result["travel_command"] = command  # "command" stays the measurement's
    else:
        t0 = time.perf_counter()
        spec = {"experiment": args.experiment, "seed": 0, "size": args.size, "index": 0,
                "render_workers": args.render_workers}
        with job_setup(spec) as setup:
            result = measure(args, setup, t0)
        result["command"] = command
    add_predicted_travel(result, args.travel_steps)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump(result, f, indent=1)
    plot(result, args.out + ".png")
    # A run fine-tunes from one initialisation every step, so over T steps its averaged direction
    # carries init_bias whole and within / T: above 1, more renders per step cannot change it.
    t = args.travel_steps
    print(f"{'field':>12}  {'signal':>9}  {'init_bias':>9}  {'within':>9}  {'bias/signal':>11}  "
          f"{f'bias x {t} / within':>18}")
    for f, v in result["fields"].items():
        print(f"{f:>12}  {v['signal']:9.3g}  {v['init_bias']:9.3g}  {v['within']:9.3g}  "
              f"{v['init_bias'] / v['signal']:11.3g}  {v['init_bias'] * t / v['within']:18.3g}")
    for f, w in result["watch"].items():
        print(f"{f} loc step per init: " + ", ".join(f"{d:+.3g} (se {s:.2g})" for d, s in
                                                     zip(w["loc_step_direction_per_init"],
                                                         w["loc_standard_error_per_init"])))
        t = w["adam_travel"]
        print(f"{f} Adam travel in {t['steps']} steps, own initialisation: "
              + ", ".join(f"{m:+.2f}" for m in t["per_init_mean"]) + f"; cycling: {t['cycled_mean']:+.2f}")
    return 0


def parse_config(items: list[str]) -> dict:
    """``["KEY=VALUE", ...]`` -> AutoSimConfig changes (VALUE read as JSON, else kept as a string).

    Example:
      >>> parse_config(["finetune_epochs=6", "approximation=linear"])
      {'finetune_epochs': 6, 'approximation': 'linear'}
    """
    changes = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--config {item!r}: write KEY=VALUE, e.g. finetune_epochs=6")
        try:
            changes[key] = json.loads(value)
        except json.JSONDecodeError:
            changes[key] = value
    return changes


def measure(args, setup, t0: float) -> dict:
    """The decomposition for ``setup`` (seed 0's experiment, rendering through its pool)."""
    config = setup.config.replace(**parse_config(args.config))  # validated before anything compiles
    auto = setup.make_autosimulate(0, config)
    psi = setup.simulator.distribution.init()
    simulate, finetune = jax.jit(auto.inner.simulate), jax.jit(auto.inner.finetune)
    grads = np.zeros((args.inits, args.estimates, ravel_pytree(psi)[0].size))
    residuals, converged = np.zeros((args.inits, args.estimates)), np.zeros((args.inits, args.estimates), bool)
    for i in range(args.inits):
        # The same architecture from another seed: only theta0 differs (one compiled program).
        _, theta0 = split_model(setup.make_model(i))
        for r in range(args.estimates):
            scenes, x, y = simulate(jax.random.PRNGKey(10_000 + r), psi)
            theta, _, _ = finetune(theta0, auto.inner.init_opt(theta0), x, y, jax.random.PRNGKey(20_000 + r))
            hyper = auto.hypergradient(psi, theta, scenes, x, y)
            grads[i, r] = np.asarray(ravel_pytree(hyper.grad_psi)[0])
            residuals[i, r], converged[i, r] = float(hyper.solve.relative_residual), bool(hyper.solve.converged)
        print(f"[{time.perf_counter() - t0:5.0f}s] initialisation {i + 1}/{args.inits}", flush=True)
    parts = decompose(grads)
    slices = field_slices(psi)
    fields = {f: {k: float(v[sl].sum()) for k, v in parts.items()} for f, sl in slices.items()}
    watch = {}
    for f in [w for w in args.watch.split(",") if w in slices]:
        loc = slices[f].start  # a NormalParams field ravels loc first (its first element, for a field with a shape)
        # descent moves psi along -grad: a positive mean raises the loc (brighter for a light)
        watch[f] = {"loc_step_direction_per_init": [float(-grads[i, :, loc].mean()) for i in range(args.inits)],
                    "loc_standard_error_per_init": [float(grads[i, :, loc].std(ddof=1) / np.sqrt(args.estimates))
                                                    for i in range(args.inits)]}
    result = {"benchmark": "init_bias", "date": datetime.date.today().isoformat(),
              "device": str(jax.devices()[0]), "jax_version": jax.__version__, "autosim_jax": asj.__version__,
              "precision": "float32, default matmul", "experiment": args.experiment, "size": args.size,
              "inits": args.inits, "estimates": args.estimates, "K": config.dataset_size,
              "config_changes": parse_config(args.config),
              "solve": {"converged": int(converged.sum()), "of": int(converged.size),
                        "relative_residual_median_per_init": np.median(residuals, 1).tolist()},
              "all": {k: float(v.sum()) for k, v in parts.items()}, "fields": fields, "watch": watch,
              "render_workers": args.render_workers, "seconds": time.perf_counter() - t0}
    return result


def plot(result: dict, path: str) -> None:
    from matplotlib.figure import Figure

    fields = list(result["fields"])
    watch = {f: w for f, w in result["watch"].items() if "adam_travel" in w}
    fig = Figure(figsize=(1.0 + 0.6 * len(fields) + (1.2 + 0.8 * len(watch) if watch else 0), 3.8))
    ax = fig.add_subplot(1, 2 if watch else 1, 1)
    width = 0.27
    for j, key in enumerate(("signal", "init_bias", "within")):
        ax.bar(np.arange(len(fields)) + j * width, [max(result["fields"][f][key], 1e-12) for f in fields], width,
               label=key)
    ax.set_yscale("log")
    ax.set_xticks(np.arange(len(fields)) + width, fields, rotation=45, ha="right")
    ax.set_ylabel("sum over the field's coordinates")
    ax.legend(fontsize=7)
    changes = "".join(f", {k}={v}" for k, v in result.get("config_changes", {}).items())
    ax.set_title(f"{result['experiment']} {result['size']}{changes}: {result['inits']} initialisations x "
                 f"{result['estimates']} steps at the start ({result['date']})", fontsize=9)
    if watch:
        ax = fig.add_subplot(1, 2, 2)
        for k, (f, w) in enumerate(watch.items()):
            t = w["adam_travel"]
            ax.scatter(np.full(len(t["per_init_mean"]), k), t["per_init_mean"], s=14, color="C0",
                       label="own initialisation (one per dot)" if k == 0 else None)
            ax.errorbar(k + 0.25, t["cycled_mean"], yerr=t["cycled_std"], fmt="s", color="C3", capsize=3,
                        label="cycling through all" if k == 0 else None)
        ax.axhline(0, color="k", lw=0.6)
        ax.set_xticks(np.arange(len(watch)), list(watch), rotation=45, ha="right")
        ax.set_ylabel(f"loc travel after {next(iter(watch.values()))['adam_travel']['steps']} Adam steps")
        ax.legend(fontsize=7)
        ax.set_title("if every step's hypergradient were the start's", fontsize=9)
    fig.savefig(path, dpi=110, bbox_inches="tight")


if __name__ == "__main__":
    raise SystemExit(main())
