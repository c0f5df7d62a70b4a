"""Which renders does one AutoSimulate step favour? (issue 13, clevr-seg)

The step raises ``q_psi`` where the per-sample weight of Eq. 13,

    c_k = u . d l(r(s_k), theta_hat) / d theta,     u = (H + lambda I)^-1 g_val (Table 1's vector),

is large: ``-c_k`` is render ``k``'s first-order share of the validation-loss change of the
Newton step on the step's renders. On clevr-seg the learned count of objects overshoots (0.97
of the mass on four objects where the target spreads it over two to four) and the first
object moves towards the camera early in a run (``docs/learning.md``, sessions 8 and 9). One
reading: with a fresh, barely trained theta per step (it predicts background everywhere), any
render with more foreground pixels teaches more, whatever its positions. If so, ``c_k``
correlates with the render's foreground fraction, and position signal is what is left over.

This measures exactly a ``theta_reset_every=1`` step at the experiment's start psi: each
estimate renders K scenes, fine-tunes a fresh theta on them for E epochs, computes ``u`` as the
step does, and the K weights ``c_k`` (:func:`autosim_jax.estimators.directional_derivatives`).
Per estimate it reports the Pearson correlation of ``c_k`` with each render's foreground
fraction, its object count, its objects' mean floor distance to the camera, its resolution and
its samples per pixel (the same with the foreground fraction's linear effect removed: the
partial correlation), then the mean and standard error of each over ``--estimates``. The
resolution is there because the linear row keeps it at 32 px or takes it further there (0.51-0.99
of the mass after 60 steps in the 26 runs on record without an entropy bonus, 0.93-0.98 with
K = 1024), although the reference's 64-96 px is worth about a fifth of the gap
(``docs/learning.md``, sessions 16-17).

``--anchor-epochs A`` asks whether the correlation is the untrained theta's: each estimate then
fine-tunes from an *anchor* instead of the random initialisation, a model trained for A epochs
on each of ``--anchor-draws`` draws of K renders of the same start psi (a segmenter that already
finds objects; its validation metric is reported). If the weights favour foreground because a
barely trained theta predicts background everywhere, r(c, foreground) falls towards 0 there.

Usage:
  python benchmarks/influence_features.py --size gpu --epochs 2,8 --estimates 8 \
      --out benchmarks/results/influence_features_clevr-seg_gpu
  python benchmarks/influence_features.py --size gpu --epochs 2 --anchor-epochs 8 --estimates 8 --out ...
  python benchmarks/influence_features.py --size gpu --epochs 8 --dataset-size 2048 --estimates 12 \
      --val-objectives loss,metric_surrogate --out ...
  python benchmarks/influence_features.py --size gpu --epochs 8 --dataset-size 2048 --psi reference \
      --fields-from-start resolution --val-objectives loss,metric_surrogate --out ...
  python benchmarks/influence_features.py --size gpu --epochs 8 --dataset-size 2048 \
      --psi-from benchmarks/results/psi_learning/clevr-seg_gpu_inits8_s012.json:default:1:60 --out ...
  python benchmarks/influence_features.py --size cpu --epochs 2 --estimates 2 --out /tmp/if   # smoke

Writes ``OUT.json`` (device, versions, command, date, every estimate) and ``OUT.png`` (the
weights against the foreground fraction, standardised per estimate).
"""

from __future__ import annotations

import argparse
import datetime
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from position_signal import psi_from_run  # a psi_learning.py run's psi at one of its steps
from provenance import command_line  # the record's command, quoted for a shell

import autosim_jax as asj
from autosim_jax.estimators import directional_derivatives
from autosim_jax.render_pool import make_render_pool
from autosim_jax.renderers.clevr import CAMERA_ORIGIN, MATERIALS, RESOLUTION_CHOICES, SPP_CHOICES
from autosim_jax.table1 import approximation_vector, curvature_operator

FEATURES = ("foreground", "objects", "camera_distance", "resolution", "spp", "metal")


def features(scenes: dict, labels: np.ndarray) -> dict[str, np.ndarray]:
    """Per render: foreground pixel fraction, number of objects, the present objects' mean
    floor distance to the camera, the render's resolution (pixels, before the resampling
    to the training size) and samples per pixel, and the fraction of its objects that are metal.

    Example:
      >>> scenes = {"num_objects": np.array([0, 1]), "position": np.zeros((2, 4, 2)),
      ...           "resolution": np.array([0, 2]), "spp": np.array([1, 0]),
      ...           "material": np.array([[1, 0, 1, 1], [1, 0, 1, 1]])}
      >>> f = features(scenes, np.array([[[0, 1], [0, 0]], [[2, 2], [0, 3]]]))
      >>> f["foreground"].tolist(), f["objects"].tolist(), f["resolution"].tolist(), f["metal"].tolist()
      ([0.25, 0.75], [1.0, 2.0], [32.0, 64.0], [1.0, 0.5])
    """
    n = np.asarray(scenes["num_objects"]) + 1  # index 0: one object (the first slots are drawn)
    pos = np.asarray(scenes["position"])
    dist = np.linalg.norm(pos - CAMERA_ORIGIN[:2], axis=-1)  # (K, slots)
    present = np.arange(pos.shape[1])[None, :] < n[:, None]
    return {"foreground": (np.asarray(labels) != 0).reshape(len(n), -1).mean(1),
            "objects": n.astype(float),
            "camera_distance": (dist * present).sum(1) / n,
            # categorical fields hold category indices; the pixels and samples they stand for
            "resolution": np.asarray(RESOLUTION_CHOICES, float)[np.asarray(scenes["resolution"])],
            "spp": np.asarray(SPP_CHOICES, float)[np.asarray(scenes["spp"])],
            # session 24: the step pushes the first object to rubber at gpu size (docs/learning.md)
            "metal": ((np.asarray(scenes["material"]) == MATERIALS.index("metal")) * present).sum(1) / n}


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denom) if denom > 0 else float("nan")


def partial_correlation(a: np.ndarray, b: np.ndarray, control: np.ndarray) -> float:
    """Correlation of ``a`` and ``b`` after removing each one's least-squares line in ``control``."""
    design = np.stack([np.ones_like(control), control], 1)
    resid = lambda v: v - design @ np.linalg.lstsq(design, v, rcond=None)[0]  # noqa: E731
    return correlation(resid(a), resid(b))


def at_psi(start: dict, reference: dict, which: str, fields_from_start: str) -> dict:
    """The psi the steps are taken at: ``start``, or ``reference`` with the comma-separated
    ``fields_from_start`` as the start has them.

    Example:
      >>> at_psi({"a": 0, "b": 1}, {"a": 5, "b": 6}, "reference", "b")
      {'a': 5, 'b': 1}
    """
    fields = [f for f in fields_from_start.split(",") if f]
    if which == "start":
        if fields:
            raise SystemExit("--fields-from-start needs --psi reference (the start has them already).")
        return start
    unknown = sorted(set(fields) - set(start))
    if unknown:
        raise SystemExit(f"--fields-from-start: no field(s) {unknown} in psi; its fields: {sorted(start)}")
    return {name: (start[name] if name in fields else value) for name, value in reference.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", default="cpu", choices=("cpu", "gpu"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", default="2", help="fine-tuning epochs of the fresh theta (comma list)")
    p.add_argument("--estimates", type=int, default=8)
    p.add_argument("--psi", default="start", choices=("start", "reference"),
                   help="where the step is taken: the experiment's start psi or its reference (hidden target)")
    p.add_argument("--fields-from-start", default="", metavar="FIELD,...",
                   help="with --psi reference: these fields as the start has them (e.g. resolution: the reference "
                        "at the start's resolution, where 32 px costs fresh models 0.18 of the gap)")
    p.add_argument("--psi-from", default=None, metavar="JSON:VARIANT:SEED:STEP",
                   help="the psi a psi_learning.py run held after STEP outer steps (e.g. where its lights have risen)")
    p.add_argument("--dataset-size", type=int, default=0,
                   help="K, the renders of each estimate (0: the experiment's); --dataset-size 2048 --epochs 8 is "
                        "the training recipe of the fresh models that assess a psi at gpu size")
    p.add_argument("--val-objectives", default="loss",
                   help="what g_val is the gradient of (comma list of AutoSimConfig.val_objective values): 'loss' (the "
                        "paper's: the mean loss on the validation set) or 'metric_surrogate' (1 - soft mean IoU)")
    p.add_argument("--approximations", default="exact_quadratic,linear")
    p.add_argument("--render-workers", type=int, default=1)
    p.add_argument("--anchor-epochs", type=int, default=0, help="fine-tune each estimate's theta from a model "
                   "trained this many epochs per draw on the start psi's renders (0: from the random init)")
    p.add_argument("--anchor-draws", type=int, default=4, help="draws of K start renders the anchor trains on")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    setup = asj.get_experiment("clevr-seg").build(renderer="clevr", seed=args.seed, size=args.size)
    pool = make_render_pool(setup.simulator.renderer, workers=args.render_workers) if args.render_workers > 1 else None
    sim = setup.simulator.with_pool(pool) if pool is not None else setup.simulator
    psi = at_psi(sim.distribution.init(), setup.reference_psi, args.psi, args.fields_from_start)
    if args.psi_from:  # a run's psi after STEP outer steps (psi_learning.py's record)
        if args.psi != "start" or args.fields_from_start:
            raise SystemExit("--psi-from gives the psi itself; leave out --psi and --fields-from-start.")
        path, variant, seed, step = args.psi_from.rsplit(":", 3)
        psi = psi_from_run(path, variant, int(seed), int(step), psi)
    x_val, y_val = (jnp.asarray(a) for a in setup.val_data)
    anchor, anchor_info = anchor_model(args, setup, sim, psi, x_val, y_val)
    rows = {}
    for epochs in [int(e) for e in args.epochs.split(",")]:
        cfg = setup.config.replace(finetune_epochs=epochs, dataset_size=args.dataset_size or setup.config.dataset_size)
        inner = setup.make_autosimulate(args.seed, cfg, simulator=sim).inner
        measure_and_grad = {o: setup.make_autosimulate(args.seed, cfg.replace(val_objective=o),
                                                       simulator=sim).inner.measure_and_grad
                            for o in args.val_objectives.split(",")}
        simulate, finetune = jax.jit(inner.simulate), jax.jit(inner.finetune)
        theta0 = inner.theta0 if anchor is None else anchor
        curv_n = cfg.curvature_batch_size or cfg.dataset_size

        def weights(theta, x, y, approximation, objective):
            (_, metric), g_val = measure_and_grad[objective](theta, x_val, y_val)
            op = lambda: curvature_operator(cfg.curvature, inner.predict,  # noqa: E731
                                            setup.task.per_sample_loss, theta, x[:curv_n], y[:curv_n])
            u, report = approximation_vector(approximation, g_val, op, damping=cfg.damping, cg_tol=cfg.cg_tol,
                                             cg_maxiter=cfg.cg_maxiter)
            return directional_derivatives(inner.per_sample_loss, theta, u, x, y), metric, report.relative_residual

        weights = jax.jit(weights, static_argnums=(3, 4))
        rowkeys = [(a, o) for o in args.val_objectives.split(",") for a in args.approximations.split(",")]
        estimates = {key: [] for key in rowkeys}
        for i in range(args.estimates):
            # One render and one fine-tune per estimate, shared by the approximations (they differ
            # only in the vector u), so that their weights are compared on the same renders.
            scenes, x, y = simulate(jax.random.PRNGKey(20_000 + i), psi)
            theta, _, _ = finetune(theta0, inner.init_opt(theta0), x, y, jax.random.PRNGKey(i))
            f = features(jax.tree.map(np.asarray, scenes), np.asarray(y))
            for approximation, objective in rowkeys:
                c, metric, residual = jax.block_until_ready(weights(theta, x, y, approximation, objective))
                c = np.asarray(c, np.float64)
                est = {"r": {k: correlation(c, v) for k, v in f.items()},
                       "r_given_foreground": {k: partial_correlation(c, v, f["foreground"])
                                              for k, v in f.items() if k != "foreground"},
                       "val_metric_of_theta": float(metric), "relative_residual": float(residual),
                       # 5 significant digits: at K = 2048 the full floats made 2 MB per call compressed
                       "weights": _digits(c), **{k: _digits(v) for k, v in f.items()}}
                estimates[approximation, objective].append(est)
                name = approximation if objective == "loss" else f"{approximation}/{objective}"
                print(f"[{time.perf_counter() - t0:6.0f}s] K={cfg.dataset_size} E={epochs} {name} #{i}: "
                      f"r(c, foreground) {est['r']['foreground']:+.2f}, r(c, objects) {est['r']['objects']:+.2f}, "
                      f"r(c, camera distance) {est['r']['camera_distance']:+.2f} (given foreground "
                      f"{est['r_given_foreground']['camera_distance']:+.2f}), r(c, resolution | foreground) "
                      f"{est['r_given_foreground']['resolution']:+.2f}, r(c, metal | foreground) "
                      f"{est['r_given_foreground']['metal']:+.2f}; theta's val metric {float(metric):.3f}",
                      flush=True)
                rows[f"e{epochs}/{name}"] = {"epochs": epochs, "dataset_size": cfg.dataset_size,
                                             "approximation": approximation, "val_objective": objective,
                                             **anchor_info, "summary": summarise(estimates[approximation, objective]),
                                             "estimates": estimates[approximation, objective]}
            write(args, setup, rows, t0)  # after every estimate: a run cut short keeps what it measured
    if pool is not None:
        pool.close()
    result = write(args, setup, rows, t0)
    plot(result, args.out + ".png")
    for key, row in rows.items():
        print(key, json.dumps(row["summary"]))
    return 0


def anchor_model(args, setup, sim, psi, x_val, y_val):
    """``(theta, info)``: the anchor of ``--anchor-epochs`` (``(None, {})`` without one)."""
    if not args.anchor_epochs:
        return None, {}
    cfg = setup.config.replace(finetune_epochs=args.anchor_epochs,
                               dataset_size=args.dataset_size or setup.config.dataset_size)
    inner = setup.make_autosimulate(args.seed, cfg, simulator=sim).inner
    simulate, finetune = jax.jit(inner.simulate), jax.jit(inner.finetune)
    theta, opt_state = inner.theta0, inner.init_opt(inner.theta0)
    for d in range(args.anchor_draws):  # keys apart from the estimates' (20_000 + i)
        _, x, y = simulate(jax.random.PRNGKey(10_000 + d), psi)
        theta, opt_state, _ = finetune(theta, opt_state, x, y, jax.random.PRNGKey(10_000 + d))
    _, metric = jax.block_until_ready(inner.measure(theta, x_val, y_val))
    print(f"anchor: {args.anchor_epochs} epochs on each of {args.anchor_draws} draws of {cfg.dataset_size} start "
          f"renders; validation metric {float(metric):.3f}", flush=True)
    return theta, {"anchor_epochs": args.anchor_epochs, "anchor_draws": args.anchor_draws,
                   "anchor_val_metric": float(metric)}


def _digits(values: np.ndarray) -> list[float]:
    return [float(f"{v:.5g}") for v in np.asarray(values, np.float64)]


def summarise(estimates: list[dict]) -> dict:
    """Mean, standard error and t of each correlation over the estimates."""
    out = {}
    for group in ("r", "r_given_foreground"):
        for k in estimates[0][group]:
            v = np.array([e[group][k] for e in estimates])
            se = float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else float("nan")
            out[f"{group}/{k}"] = {"mean": float(v.mean()), "stderr": se,
                                   "t": float(v.mean() / se) if se > 0 else float("nan")}
    return out


def write(args, setup, rows: dict, t0: float) -> dict:
    result = {"benchmark": "influence_features", "date": datetime.date.today().isoformat(),
              "command": command_line(__file__, None), "device": str(jax.devices()[0]),
              "jax_version": jax.__version__, "precision": str(jnp.zeros(()).dtype), "size": args.size,
              "seed": args.seed, "estimates": args.estimates, "dataset_size": args.dataset_size, "psi": args.psi,
              "fields_from_start": args.fields_from_start, "psi_from": args.psi_from,
              "anchor_epochs": args.anchor_epochs,
              "config": setup.config.to_dict(), "rows": rows, "seconds": time.perf_counter() - t0}
    with open(args.out + ".json", "w") as f:
        json.dump(result, f)
    return result


def plot(result: dict, path: str) -> None:
    from matplotlib.figure import Figure

    rows = list(result["rows"].items())
    fig = Figure(figsize=(4 * len(rows), 3.6))
    for j, (key, row) in enumerate(rows):
        ax = fig.add_subplot(1, len(rows), j + 1)
        for est in row["estimates"]:
            c, fg = np.asarray(est["weights"]), np.asarray(est["foreground"])
            ax.scatter(fg, (c - c.mean()) / (c.std() or 1.0), s=4, alpha=0.4)
        r = row["summary"]["r/foreground"]
        ax.set_title(f"{key}: r = {r['mean']:+.2f} +- {r['stderr']:.2f}", fontsize=9)
        ax.set_xlabel("foreground fraction of the render")
        ax.set_ylabel("weight c_k (standardised per estimate)" if j == 0 else "")
    fig.suptitle(f"clevr-seg {result['size']}: which renders does one step favour?", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    raise SystemExit(main())
