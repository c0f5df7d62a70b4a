"""Does AutoSimulate's hypergradient point somewhere useful? (issue 13's diagnosis)

The runs of ``benchmarks/psi_learning.py`` close a quarter to a half of the gap and drift.
Before adding a mechanism, this measures the signal each outer step acts on. At a psi point
(the start, and the psi a default run holds after ``--run-steps`` steps) and for a theta
(``warm``: the run's own warm-started model there; ``fresh``: a model trained from scratch
on that psi with the experiment's assessment budget), it draws ``--estimates`` independent
hypergradients (each on K fresh renders, as one step does) and reports, per approximation:

* ``snr``: ||mean||^2 / E||g - mean||^2, the signal-to-noise ratio of ONE estimate (all of
  psi, and per field). Adam on psi moves each coordinate by about the learning rate per
  step whatever this is, so below ~0.1 a step is mostly noise;
* ``cos_mean`` / ``cos_single``: cosine between the descent direction (-mean, or -one
  estimate) and the straight line to the reference psi (all of psi, and per field): a proxy
  of "towards better", exact only if the metric rose along that line;
* ``fresh``: the direct check. psi moved along Adam's steady-state direction
  -mean / sqrt(mean^2 + var) by ``t`` (t = learning rate x steps), fresh models trained on
  it (``--repeats`` each), and the gap closed G against the same point's start and the
  reference.

Usage (H200, 16 host cores):
  python benchmarks/hypergradient_quality.py --size gpu --render-workers 16 --out $OUT/hg
  python benchmarks/hypergradient_quality.py --size cpu --estimates 4 --repeats 1 --run-steps 2 --out /tmp/hg  # smoke

Writes ``OUT.json`` (device, versions, command, date, every figure) after each psi point,
and ``OUT.png`` (SNR and cosines per field).
"""

from __future__ import annotations

import argparse
import datetime
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.flatten_util import ravel_pytree
from provenance import command_line  # the record's command, quoted for a shell

import autosim_jax as asj
from autosim_jax.inner import make_inner
from autosim_jax.render_pool import make_render_pool


def field_slices(psi) -> dict[str, slice]:
    """Field name -> its slice of ``ravel_pytree(psi)`` (top-level keys, in ravel order)."""
    out, start = {}, 0
    for name in sorted(psi):  # ravel_pytree flattens a dict in sorted key order
        n = ravel_pytree(psi[name])[0].size
        out[name] = slice(start, start + n)
        start += n
    return out


def _cos(a, b) -> float:
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    return float(a @ b / (na * nb)) if na > 0 and nb > 0 else float("nan")


def signal_stats(grads: np.ndarray, direction: np.ndarray, slices: dict[str, slice]) -> dict:
    """SNR and cosines of ``grads`` (n x d descent-ascent gradients) with ``direction``."""
    mean = grads.mean(0)
    def one(sl):
        g, m, d = grads[:, sl], mean[sl], direction[sl]
        noise = float(((g - m) ** 2).sum(1).mean())
        return {"snr": float(m @ m / noise) if noise > 0 else float("inf"),
                "cos_mean": _cos(-m, d),
                "cos_single": float(np.mean([_cos(-gi, d) for gi in g])),
                "cos_adam": _cos(-m / np.sqrt(m ** 2 + g.var(0) + 1e-30), d)}
    return {"all": one(slice(None)), "fields": {name: one(sl) for name, sl in slices.items()}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--experiment", default="clevr-seg")
    p.add_argument("--size", default="cpu", choices=("cpu", "gpu"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--estimates", type=int, default=24)
    p.add_argument("--run-steps", type=int, default=30)
    p.add_argument("--points", default="start,run", help="which psi points: start, run (after --run-steps)")
    p.add_argument("--approximations", default="exact_quadratic,linear")
    p.add_argument("--ts", default="1,3", help="psi moved by t along Adam's direction (t = lr x steps)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--render-workers", type=int, default=1)
    p.add_argument("--start-override", default="{}",
                   help='JSON of field overrides of the start, e.g. \'{"position": {"loc": 2.2, "scale": 1.0}}\'')
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    t_start = time.perf_counter()

    from autosim_jax.rundir import resolve_experiment

    exp = resolve_experiment(args.experiment)  # a registered name or a plug-in's module:attr
    setup = exp.build(renderer=exp.renderers[0], seed=args.seed, size=args.size)
    pool = None
    if args.render_workers > 1:
        pool = make_render_pool(setup.simulator.renderer, workers=args.render_workers, backend="process")
        setup = setup._replace(simulator=setup.simulator.with_pool(pool))
    override = json.loads(args.start_override)
    if override:  # the experiment's start with some fields changed (what a wider start would learn)
        starts = {"clevr-seg": asj.experiments.CLEVR_START, "digits-sim2real": asj.experiments.DIGITS_START}
        dist = asj.from_schema(setup.simulator.renderer.schema, {**starts[args.experiment], **override})
        setup = setup._replace(simulator=asj.Simulator(dist, setup.simulator.renderer, pool=pool))
    dist = setup.simulator.distribution
    cfg = setup.config
    assess = asj.make_assessor(setup, repeats=args.repeats)
    fresh_inner = make_inner(setup.simulator, nnx.clone(setup.model), setup.task, optimizer=cfg.inner_optax(),
                             dataset_size=setup.assess_images, batch_size=cfg.batch_size,
                             epochs=setup.assess_epochs, val_batch_size=cfg.val_batch_size)

    def fresh_theta(psi, seed):
        _, x, y = fresh_inner.simulate(jax.random.PRNGKey(seed), psi)
        theta, _, _ = fresh_inner.finetune(fresh_inner.theta0, fresh_inner.init_opt(fresh_inner.theta0), x, y,
                                           jax.random.PRNGKey(seed + 1))
        return theta

    autosims = {a: setup.make_autosimulate(args.seed, cfg, approximation=a)
                for a in args.approximations.split(",")}
    default = setup.make_autosimulate(args.seed, cfg)
    simulate = jax.jit(default.inner.simulate)
    psi_ref = setup.reference_psi
    flat_ref, _ = ravel_pytree(psi_ref)
    slices = field_slices(dist.init())

    # The psi points: the start (theta after the first step's fine-tuning) and the run's psi
    # after --run-steps steps (its warm theta).
    state = default.init(args.seed)
    state, _ = default.step(state)
    wanted = args.points.split(",")
    points = {"start": (dist.init(), state.theta)} if "start" in wanted else {}
    if "run" in wanted:
        for _ in range(args.run_steps - 1):
            state, _ = default.step(state)
        points[f"run{args.run_steps}"] = (state.psi, state.theta)

    result = {"benchmark": "hypergradient_quality", "date": datetime.date.today().isoformat(),
              "command": command_line(__file__, argv), "device": str(jax.devices()[0]),
              "jax_version": jax.__version__, "precision": str(jnp.zeros(()).dtype),
              "experiment": args.experiment, "size": args.size, "seed": args.seed, "estimates": args.estimates,
              "repeats": args.repeats, "start_override": override, "config": cfg.to_dict(), "points": {}}
    ref_assessed = assess(psi_ref, 1000)
    result["reference"] = ref_assessed
    for name, (psi, warm_theta) in points.items():
        flat_psi, unravel = ravel_pytree(psi)
        direction = np.asarray(flat_ref - flat_psi)
        here = assess(psi, 1000)
        entry = {"assessed": here, "thetas": {}}
        thetas = {"warm": warm_theta, "fresh": fresh_theta(psi, 77)}
        for theta_name, theta in thetas.items():
            for approx, autosim in autosims.items():
                grads, resid = [], []
                for i in range(args.estimates):
                    scenes, x, y = simulate(jax.random.PRNGKey(10_000 + i), psi)
                    hg = autosim.hypergradient(psi, theta, scenes, x, y)
                    grads.append(np.asarray(ravel_pytree(hg.grad_psi)[0]))
                    resid.append(float(hg.solve.relative_residual))
                grads = np.stack(grads)
                stats = signal_stats(grads, direction, slices)
                mean, var = grads.mean(0), grads.var(0)
                adam_dir = -mean / np.sqrt(mean ** 2 + var + 1e-30)
                fresh = {}
                for t in [float(s) for s in args.ts.split(",")]:
                    moved = unravel(jnp.asarray(flat_psi + t * adam_dir))
                    a = assess(moved, 1000)
                    fresh[str(t)] = {**a, "gap_closed": asj.gap_closed(here["test_metric"], a["test_metric"],
                                                                        ref_assessed["test_metric"])}
                key = f"{theta_name}/{approx}"
                entry["thetas"][key] = {**stats, "fresh": fresh, "median_cg_residual": float(np.median(resid)),
                                        "val_metric_of_theta": float(hg.val_metric)}
                print(f"[{time.perf_counter() - t_start:6.0f}s] {name} {key}: snr {stats['all']['snr']:.3f} "
                      f"cos_mean {stats['all']['cos_mean']:+.2f} cos_adam {stats['all']['cos_adam']:+.2f} "
                      f"fresh G {[round(v['gap_closed'], 2) for v in fresh.values()]}", flush=True)
        result["points"][name] = entry
        result["seconds"] = time.perf_counter() - t_start
        with open(args.out + ".json", "w") as f:
            json.dump(result, f, indent=1)
    if pool is not None:
        pool.close()
    plot(result, args.out + ".png")
    return 0


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = list(result["points"])
    fig, axes = plt.subplots(len(points), 2, figsize=(13, 3.6 * len(points)), squeeze=False)
    for row, name in enumerate(points):
        thetas = result["points"][name]["thetas"]
        fields = list(next(iter(thetas.values()))["fields"])
        width = 0.8 / len(thetas)
        for j, (key, st) in enumerate(thetas.items()):
            xs = np.arange(len(fields)) + j * width
            axes[row, 0].bar(xs, [st["fields"][f]["snr"] for f in fields], width, label=key)
            axes[row, 1].bar(xs, [st["fields"][f]["cos_mean"] for f in fields], width, label=key)
        for ax, title in zip(axes[row], ("SNR of one estimate", "cos(-mean hypergradient, to reference)")):
            ax.set_xticks(np.arange(len(fields)) + 0.4, fields, rotation=45, ha="right")
            ax.set_title(f"{name}: {title}")
        axes[row, 0].set_yscale("log")
        axes[row, 1].axhline(0, color="k", lw=0.5)
        axes[row, 0].legend(fontsize=7)
    fig.suptitle(f"{result['experiment']} {result['size']}, seed {result['seed']}, "
                 f"{result['estimates']} estimates per row ({result['date']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    raise SystemExit(main())
