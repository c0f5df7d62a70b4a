"""Step time of AutoSimulate data parallel over 1 and N local devices (issue 17, part 3).

For each model size, builds clevr-seg and runs ``make_autosimulate(..., devices=D)`` for each
D of ``--devices``: first one step from ``init(0)`` for every D, whose psi, theta and StepInfo
must equal the 1-device step within ``--rtol`` (the check; it is also the compiling step),
then ``--steps`` timed steps. Every stage of a step is blocked on (``jax.block_until_ready``
inside ``AutoSimulate.step``), and StepInfo splits it into the host render (the same work for
every D), fine-tuning and the outer stage (validation gradient, curvature CG, score-function
term). The device time is train + outer; the figures that travel are the ratios
``time(1 device) / time(D devices)`` of the device time and of the whole step.

Sizes: ``gpu`` is clevr-seg at ``size="gpu"`` (64 px, UNet of 32 base channels, K = 256,
curvature on 64 renders, 256 validation images); ``large`` is the same with a UNet of 64 base
channels (about 4x the convolution work), where the device work dominates the step.
``--tiny`` runs clevr-seg at ``size="cpu"`` (32 px, UNet of 8, K = 32) to check the script on a
CPU with forced host devices.

Usage (the 2-GPU machine):
  python benchmarks/data_parallel.py --sizes gpu,large --devices 1,2 --steps 8 --render-workers 16
CPU check (2 forced host devices):
  XLA_FLAGS=--xla_force_host_platform_device_count=2 python benchmarks/data_parallel.py --tiny --steps 2

Writes ``data_parallel.json`` and ``data_parallel.png`` to ``--out`` (default ``$OUT`` when
set, else ``benchmarks/results/data_parallel``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import warnings
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from autosim_jax.autosimulate import AutoSimulateWarning
from autosim_jax.experiments import get_experiment
from autosim_jax.models import UNet
from autosim_jax.render_pool import make_render_pool

STAGES = ("time_render", "time_train", "time_outer")
SIZES = {  # name: (experiment size, UNet base channels or None for the experiment's own)
    "gpu": ("gpu", None),
    "large": ("gpu", 64),
    "tiny": ("cpu", None),
}


def _setup(size: str, pool_workers: int):
    exp_size, channels = SIZES[size]
    setup = get_experiment("clevr-seg").build(renderer="clevr", seed=0, size=exp_size)
    if channels is not None:
        def make_model(model_seed: int) -> UNet:  # the other initialisations too (theta_reset_inits)
            return UNet(in_channels=3, num_classes=4, base_channels=channels, rngs=nnx.Rngs(model_seed))

        setup = setup._replace(model=make_model(0), make_model=make_model)
    pool = None
    if pool_workers > 1:
        pool = make_render_pool(setup.simulator.renderer, workers=pool_workers, backend="process")
        setup = setup._replace(simulator=setup.simulator.with_pool(pool))
    return setup, pool


def _max_rel_diff(a, b) -> float:
    worst = 0.0
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        worst = max(worst, float(np.max(np.abs(x - y)) / (np.max(np.abs(x)) + 1e-30)) if x.size else 0.0)
    return worst


def run_size(size: str, devices: list[int], steps: int, rtol: float, render_workers: int) -> dict:
    setup, pool = _setup(size, render_workers)
    try:
        params = sum(x.size for x in jax.tree.leaves(nnx.state(setup.model, nnx.Param)))
        built, first = {}, {}
        for d in devices:  # the check first: one step from init(0) on every device count
            autosim = setup.make_autosimulate(0, devices=d if d > 1 else None)
            state = autosim.init(0)
            t = time.perf_counter()
            state, info = autosim.step(state)
            built[d] = (autosim, state)
            first[d] = {"state": state, "info": info._asdict(), "seconds_incl_compile": time.perf_counter() - t}
        ref = first[devices[0]]
        check = {}
        for d in devices[1:]:
            # Checked: the fine-tuned theta and the validation / training figures. Recorded only: psi
            # and its gradient, which pass through the CG solve; an unconverged CG on an
            # ill-conditioned system (clevr-seg cpu: relative residual ~1 after 5 iterations)
            # amplifies float32 rounding of the curvature products (equal to 3e-7 there) to a
            # few percent, on one device as between devices.
            diff_state = _max_rel_diff(ref["state"].theta, first[d]["state"].theta)
            info_keys = ("val_loss", "val_metric", "train_loss")
            diff_info = max(abs(first[d]["info"][k] - ref["info"][k]) / (abs(ref["info"][k]) + 1e-6) for k in info_keys)
            check[str(d)] = {"max_rel_diff_theta": diff_state, "max_rel_diff_val_train": diff_info,
                             "max_rel_diff_psi": _max_rel_diff(ref["state"].psi, first[d]["state"].psi),
                             "psi_grad_norm": [ref["info"]["psi_grad_norm"], first[d]["info"]["psi_grad_norm"]],
                             "cg_relative_residual": [ref["info"]["cg_relative_residual"],
                                                      first[d]["info"]["cg_relative_residual"]]}
            ok = diff_state <= rtol and diff_info <= rtol
            print(f"[{size}] check {d} devices vs {devices[0]}: theta rel diff {diff_state:.2e}, val/train "
                  f"{diff_info:.2e} (rtol {rtol:g}): {'ok' if ok else 'FAILED'}; recorded: {check[str(d)]}",
                  flush=True)
            if not ok:
                raise SystemExit(f"{d}-device step differs from the {devices[0]}-device one beyond rtol {rtol}")
        per_device = {}
        for d in devices:
            autosim, state = built[d]
            rows = []
            for i in range(steps):
                state, info = autosim.step(state)
                rows.append({k: getattr(info, k) for k in STAGES})
                print(f"[{size}] {d} device(s) step {i + 1}: render {info.time_render:.3f} s, train "
                      f"{info.time_train:.3f} s, outer {info.time_outer:.3f} s", flush=True)
            med = {k: statistics.median(r[k] for r in rows) for k in STAGES}
            med["time_device"] = statistics.median(r["time_train"] + r["time_outer"] for r in rows)
            med["time_step"] = statistics.median(sum(r[k] for k in STAGES) for r in rows)
            per_device[str(d)] = {"median_seconds": med, "rows": rows,
                                  "first_step_seconds_incl_compile": first[d]["seconds_incl_compile"]}
        base = per_device[str(devices[0])]["median_seconds"]
        ratios = {str(d): {k: base[k] / per_device[str(d)]["median_seconds"][k]
                           for k in ("time_train", "time_outer", "time_device", "time_step")} for d in devices[1:]}
        return {"size": size, "experiment": "clevr-seg", "experiment_size": SIZES[size][0],
                "unet_base_channels": SIZES[size][1] or ("8" if SIZES[size][0] == "cpu" else 32),
                "model_parameters": int(params), "options": setup.config.to_dict(), "check": check,
                "per_device_count": per_device, "speedup_vs_first": ratios}
    finally:
        if pool is not None:
            pool.close()


def _plot(results: list[dict], devices: list[int], path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.5 * len(results), 3.8), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(results), squeeze=False)).ravel()
    colors = {"time_render": "#bbbbbb", "time_train": "#1f77b4", "time_outer": "#ff7f0e"}
    for ax, res in zip(axes, results):
        labels = [f"{d} dev" for d in devices]
        bottom = np.zeros(len(devices))
        for stage in STAGES:
            vals = np.array([res["per_device_count"][str(d)]["median_seconds"][stage] for d in devices])
            ax.bar(labels, vals, bottom=bottom, color=colors[stage], label=stage.replace("time_", ""))
            bottom += vals
        for i, d in enumerate(devices[1:], start=1):
            r = res["speedup_vs_first"][str(d)]
            ax.text(i, bottom[i], f"device {r['time_device']:.2f}x\nstep {r['time_step']:.2f}x", ha="center",
                    va="bottom", fontsize=8)
        ax.set_title(f"clevr-seg, {res['size']} (UNet {res['unet_base_channels']} ch, K "
                     f"{res['options']['dataset_size']})", fontsize=9)
        ax.set_ylabel("median seconds per step")
        ax.legend(fontsize=7)
    fig.suptitle("AutoSimulate step data parallel over devices (ratios: 1 device / N devices)", fontsize=10)
    fig.savefig(path, dpi=110)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="gpu,large", help="comma-separated of gpu, large (default both)")
    parser.add_argument("--devices", default="1,2", help="comma-separated device counts, the first the reference")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per device count after the check step")
    parser.add_argument("--render-workers", type=int, default=1, help="render pool workers (the same for every D)")
    parser.add_argument("--rtol", type=float, default=1e-2,
                        help="relative tolerance of the check (default 1e-2: a GPU's default float32 matmul "
                             "precision may use TF32, whose rounding the different summation order exposes)")
    parser.add_argument("--tiny", action="store_true", help="clevr-seg at cpu size only (a CPU check of the script)")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or
                                                          Path(__file__).parent / "results" / "data_parallel"))
    args = parser.parse_args(argv)
    sizes = ["tiny"] if args.tiny else args.sizes.split(",")
    devices = [int(d) for d in args.devices.split(",")]
    if max(devices) > jax.device_count():
        raise SystemExit(f"--devices {args.devices}: JAX sees {jax.device_count()} device(s): {jax.devices()}")
    warnings.simplefilter("ignore", AutoSimulateWarning)  # StepInfo reports every solve; the check compares them
    results = [run_size(s, devices, args.steps, args.rtol, args.render_workers) for s in sizes]
    result = {
        "benchmark": "data_parallel", "devices": [str(d) for d in jax.devices()],
        "device_kind": jax.devices()[0].device_kind, "platform": jax.devices()[0].platform,
        "jax_version": jax.__version__,
        "precision": f"float32, matmul precision {jax.config.jax_default_matmul_precision or 'default'}",
        "device_counts": devices, "steps": args.steps, "render_workers": args.render_workers, "rtol": args.rtol,
        "xla_flags": os.environ.get("XLA_FLAGS", ""), "date": time.strftime("%Y-%m-%d"), "results": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "data_parallel.json").write_text(json.dumps(result, indent=2))
    _plot(results, devices, args.out / "data_parallel.png")
    for res in results:
        for d, r in res["speedup_vs_first"].items():
            print(f"{res['size']}: {devices[0]} -> {d} devices: device time {r['time_device']:.2f}x, "
                  f"train {r['time_train']:.2f}x, outer {r['time_outer']:.2f}x, whole step {r['time_step']:.2f}x")
    print(f"wrote {args.out / 'data_parallel.json'} and .png")


if __name__ == "__main__":
    main()
