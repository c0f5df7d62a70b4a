"""How often does a fresh model's training diverge, why, and does clipping its gradient stop it? (issue 14)

On clevr-det at gpu size 3 of 72 fresh detectors ended their training at an untrained
detector's loss and mAP 0 (docs/detection.md, session 16). This trains ``--models`` fresh models
with :func:`~autosim_jax.make_assessor` (the experiment's own assessment: images, epochs,
optimiser) on the start and the reference psi, once per ``--clip`` value of
``AutoSimConfig.inner_clip_norm`` (0: no clipping, whatever the experiment's config says;
clevr-det's has 1 since session 17), and counts the models that
:func:`~autosim_jax.make_assessor` leaves out as diverged. Each repeat ``r`` renders and
orders its minibatches with the same keys under every clip value, so the rows are paired.

For the first diverged model of the unclipped row it then retraces that model's training step by
step (the same images, keys and optimiser as ``make_assessor``) and records every minibatch's
loss and gradient norm, which shows whether one spike or a slow drift killed it.

Usage (2-core CPU, about 15 min)::

    python benchmarks/fresh_model_divergence.py --experiment clevr-det --size cpu --models 12 --clip 0,1 \\
        --out benchmarks/results/fresh_model_divergence/clevr-det_cpu

Writes ``OUT.json`` (device, versions, command, date, every model's metrics and loss, the
trace) and ``OUT.png`` (the trace's loss and gradient norm per step).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import time
import warnings

import jax
import numpy as np
import optax
from flax import nnx
from provenance import command_line  # the record's command, quoted for a shell

import autosim_jax as asj
from autosim_jax.inner import make_inner


def trace(setup, psi, seed: int, repeat: int) -> dict:
    """Every minibatch loss and gradient norm of ``make_assessor``'s repeat ``repeat`` at ``seed``
    (the same images, key splits and optimiser as :func:`autosim_jax.training.train_epochs`)."""
    cfg = setup.config
    inner = make_inner(setup.simulator, nnx.clone(setup.model), setup.task, optimizer=cfg.inner_optax(),
                       dataset_size=setup.assess_images, batch_size=cfg.batch_size, epochs=1,
                       val_batch_size=cfg.val_batch_size)
    key_seed = seed + 2 * repeat
    _, x, y = inner.simulate(jax.random.PRNGKey(key_seed), psi)
    n, b, opt = x.shape[0], cfg.batch_size, cfg.inner_optax()

    def step(carry, batch):
        theta, state = carry
        loss, grads = jax.value_and_grad(inner.mean_loss)(theta, *batch)
        updates, state = opt.update(grads, state, theta)
        return (optax.apply_updates(theta, updates), state), (loss, optax.global_norm(grads))

    def epoch(carry, key):
        order = jax.random.permutation(key, n)[: (n // b) * b].reshape(n // b, b)
        return jax.lax.scan(step, carry, (x[order], y[order]))

    theta0 = inner.theta0
    keys = jax.random.split(jax.random.PRNGKey(key_seed + 1), setup.assess_epochs)
    (theta, _), (loss, norm) = jax.jit(lambda: jax.lax.scan(epoch, (theta0, opt.init(theta0)), keys))()
    loss, norm = np.asarray(loss).ravel(), np.asarray(norm).ravel()
    worst = int(np.argmax(norm))
    return {"repeat": repeat, "steps_per_epoch": n // b, "loss": loss.tolist(), "grad_norm": norm.tolist(),
            "largest_grad_norm": float(norm[worst]), "at_step": worst, "median_grad_norm": float(np.median(norm)),
            "last_epoch_loss": float(loss[-(n // b):].mean()),
            "test_metric": float(inner.measure(theta, *setup.test_data)[1])}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--experiment", default="clevr-det")
    p.add_argument("--size", default="cpu", choices=("cpu", "gpu"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--models", type=int, default=12, help="fresh models per psi and clip value")
    p.add_argument("--clip", default="0,1", help="comma list of inner_clip_norm values (0: none)")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    clips = [float(c) for c in args.clip.split(",")]
    if args.models < 2 or any(c < 0 for c in clips):
        p.error("--models must be >= 2 (divergence is judged against siblings) and every --clip >= 0")
    t0 = time.perf_counter()
    from autosim_jax.rundir import resolve_experiment

    exp = resolve_experiment(args.experiment)  # a registered name or a plug-in's module:attr
    base = exp.build(renderer=exp.renderers[0], seed=args.seed, size=args.size)
    psis = {"start": base.simulator.distribution.init(), "reference": base.reference_psi}
    rows = {}
    for clip in clips:
        setup = base._replace(config=base.config.replace(inner_clip_norm=clip))
        assess = asj.make_assessor(setup, repeats=args.models)
        for name, psi in psis.items():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", asj.DivergedAssessmentWarning)  # counted below instead
                a = assess(psi, args.seed)
            rows[f"clip{clip:g}_{name}"] = {"clip": clip, "psi": name, **a}
            print(f"[{time.perf_counter() - t0:6.0f} s] clip {clip:g}, {name}: test {a['test_metric']:.3f}, "
                  f"diverged {a.get('diverged_models', [])} of {args.models}", flush=True)
    first = next(((r["psi"], r["diverged_models"][0]) for r in rows.values()
                  if r["clip"] == 0 and r.get("diverged_models")), None)
    traced = None
    if first is not None:
        traced = {"psi": first[0], **trace(base, psis[first[0]], args.seed, first[1])}
        print(f"traced {first[0]} model {first[1]}: gradient norm {traced['largest_grad_norm']:.0f} at step "
              f"{traced['at_step']} (median {traced['median_grad_norm']:.1f})", flush=True)
    result = {"benchmark": "fresh_model_divergence", "date": datetime.date.today().isoformat(),
              "command": command_line(__file__, argv),
              "device": str(jax.devices()[0]), "jax_version": jax.__version__, "precision": "float32",
              "experiment": args.experiment, "size": args.size, "seed": args.seed, "models": args.models,
              "assess_images": base.assess_images, "assess_epochs": base.assess_epochs,
              "inner_learning_rate": base.config.inner_learning_rate, "rows": rows, "trace": traced,
              "seconds": time.perf_counter() - t0}
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump(result, f, indent=1)
    if traced is not None:
        plot(result, args.out + ".png")
    return 0


def plot(result: dict, path: str) -> None:
    from matplotlib.figure import Figure

    t = result["trace"]
    fig = Figure(figsize=(7.0, 4.0))
    ax = fig.add_subplot(2, 1, 1)
    ax.semilogy(t["loss"], lw=0.8)
    ax.set_ylabel("minibatch loss")
    ax.set_title(f"{result['experiment']} ({result['size']}): the diverged fresh model {t['repeat']} on the "
                 f"{t['psi']} psi, Adam {result['inner_learning_rate']:g}, no clipping", fontsize=8)
    ax = fig.add_subplot(2, 1, 2)
    ax.semilogy(t["grad_norm"], lw=0.8, color="tab:red")
    ax.set_ylabel("gradient norm")
    ax.set_xlabel(f"minibatch step ({t['steps_per_epoch']} per epoch)")
    fig.savefig(path, dpi=110, bbox_inches="tight")


if __name__ == "__main__":
    raise SystemExit(main())
