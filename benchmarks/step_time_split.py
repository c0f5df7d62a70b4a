"""Where does one AutoSimulate step spend its time?

Runs an experiment for a few outer steps and splits each step into host rendering, the
callback transfer (the simulate stage minus the host render of the same scenes), fine-tuning
and the outer stage (validation gradient, curvature solve, score-function term). That split
decides what to optimise next.

With ``--render-workers N`` the simulator renders through a process pool of N workers
(:func:`autosim_jax.render_pool.make_render_pool`); the renders are bitwise those of the
serial path, so the two runs time the same computation.

Usage:
  python benchmarks/step_time_split.py clevr-seg --steps 20 [--size gpu] [--render-workers 16] [--out DIR]

Writes ``step_time_split_<experiment>_<size>_<platform>_w<workers>.json`` to ``--out``
(default ``benchmarks/results``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import jax
import numpy as np

from autosim_jax.render_pool import make_render_pool
from autosim_jax.rundir import resolve_experiment


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("experiment")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--approximation", default="exact_quadratic")
    parser.add_argument("--size", default="cpu", choices=("cpu", "gpu"))
    parser.add_argument("--render-workers", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    exp = resolve_experiment(args.experiment)  # a registered name or a plug-in's module:attr
    setup = exp.build(renderer=exp.renderers[0], seed=0, size=args.size)
    pool = None
    if args.render_workers > 1:
        pool = make_render_pool(setup.simulator.renderer, workers=args.render_workers, backend="process")
        setup = setup._replace(simulator=setup.simulator.with_pool(pool))
    autosim = setup.make_autosimulate(0, approximation=args.approximation)
    state = autosim.init(0)
    k = setup.config.dataset_size
    rows = []
    for i in range(args.steps + 1):  # step 0 compiles; it is reported apart
        # The host render of the scenes this step will draw, timed alone (same key split as step).
        _, sim_key, _ = jax.random.split(state.key, 3)
        scenes = setup.simulator.distribution.sample(jax.random.split(sim_key)[0], state.psi, k)
        scenes = jax.tree.map(np.asarray, scenes)
        t = time.perf_counter()
        setup.simulator.render_numpy(scenes, 0)
        host_render = time.perf_counter() - t
        state, step_info = autosim.step(state)
        info = step_info._asdict()
        rows.append(dict(info, time_host_render=host_render,
                         time_callback_transfer=max(0.0, info["time_render"] - host_render)))
        print(f"step {i}: render {info['time_render']:.3f}s (host {host_render:.3f}s) "
              f"train {info['time_train']:.3f}s outer {info['time_outer']:.3f}s val {info['val_metric']:.3f}",
              flush=True)
    keys = ["time_host_render", "time_callback_transfer", "time_train", "time_outer"]
    med = {key: statistics.median(r[key] for r in rows[1:]) for key in keys}
    total = sum(med.values())
    device = jax.devices()[0]
    result = {
        "benchmark": "step_time_split", "experiment": args.experiment, "approximation": args.approximation,
        "size": args.size, "render_workers": args.render_workers,
        "device": f"{device.platform}:{device.device_kind}", "jax_version": jax.__version__,
        "precision": "float32, default matmul precision", "dataset_size": k, "steps": args.steps,
        "options": autosim.config.to_dict(),
        "median_seconds": med, "fraction": {key: v / total for key, v in med.items()},
        "first_step_seconds_incl_compile": {key: rows[0][key] for key in keys}, "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    if pool is not None:
        pool.close()
    path = args.out / f"step_time_split_{args.experiment}_{args.size}_{device.platform}_w{args.render_workers}.json"
    path.write_text(json.dumps(result, indent=1))
    print(json.dumps({"median_seconds": med, "fraction": result["fraction"]}, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
