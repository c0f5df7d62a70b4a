"""Benchmark: the score-function term by one jvp versus by per-sample gradients.

Question: how much faster, and how much leaner in memory, is ``method="jvp"`` of
:func:`autosim_jax.estimators.score_function_term` (one forward-mode pass for the ``K``
directional derivatives ``dl_k/dtheta . v``) than ``method="per_sample"`` (the ``K x n``
per-sample gradients contracted with ``v``), as ``K`` and the model grow?

For each model (flax nnx MLPs and a small CNN on rendered-like images, cross-entropy per
sample) and each ``K``, both methods are jitted, checked to agree (their ``K`` directional
derivatives to 1e-4), warmed up, then timed with ``jax.block_until_ready`` on every call
(median of repeats). The agreement check runs at ``"highest"`` matmul precision, the timings
at the default one (TF32 dots on recent NVIDIA GPUs); the JSON records the disagreement at
both. Memory is XLA's compile-time buffer assignment (``compiled.memory_analysis()``: temp,
argument, output and peak bytes) and, on GPU, ``device.memory_stats()`` (its peak is
cumulative over the process).

Usage::

    python benchmarks/estimator_methods.py                      # --size cpu, writes _cpu files
    python benchmarks/estimator_methods.py --size gpu --out $OUT

Writes ``estimator_methods_<platform>.json`` (device, versions, precision, every figure,
speedups per_sample/jvp) and ``.png`` (time and memory vs K) under ``benchmarks/results/``,
or ``--out DIR``. Needs only jax, flax, optax, numpy (matplotlib for the plot, optional).

References:
  Paper Eq. 11 and Algorithm 1 (the "gradient of expectation" term).
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.flatten_util
import jax.numpy as jnp
import jaxlib
import numpy as np
import optax
from flax import nnx

try:
    import autosim_jax  # noqa: F401
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from autosim_jax.distributions import gaussian
from autosim_jax.estimators import directional_derivatives, score_function_term

RESULTS = Path(__file__).resolve().parent / "results"
KS = (16, 32, 64, 128, 256, 512, 1024)
METHODS = ("jvp", "per_sample")

# name -> (kind, widths); image shape and classes per size
SIZES = {
    "cpu": {
        "image": (16, 16, 3),
        "classes": 10,
        "repeats": 5,
        "models": {
            "mlp-64": ("mlp", (64,)),
            "mlp-256x256": ("mlp", (256, 256)),
            "cnn-16-32": ("cnn", (16, 32)),
        },
    },
    "gpu": {
        "image": (32, 32, 3),
        "classes": 10,
        "repeats": 20,
        "models": {
            "mlp-512": ("mlp", (512,)),
            "mlp-2048x2048": ("mlp", (2048, 2048)),
            "cnn-32-64-128": ("cnn", (32, 64, 128)),
        },
    },
}


def _layers(items):
    return nnx.List(items) if hasattr(nnx, "List") else items


class MLP(nnx.Module):
    def __init__(self, d_in, widths, classes, *, rngs):
        dims = (d_in, *widths)
        self.hidden = _layers([nnx.Linear(a, b, rngs=rngs) for a, b in itertools.pairwise(dims)])
        self.head = nnx.Linear(dims[-1], classes, rngs=rngs)

    def __call__(self, x):
        x = x.reshape(x.shape[0], -1)
        for layer in self.hidden:
            x = jax.nn.relu(layer(x))
        return self.head(x)


class CNN(nnx.Module):
    def __init__(self, c_in, channels, classes, *, rngs):
        dims = (c_in, *channels)
        self.convs = _layers(
            [nnx.Conv(a, b, (3, 3), strides=2, rngs=rngs) for a, b in itertools.pairwise(dims)]
        )
        self.head = nnx.Linear(dims[-1], classes, rngs=rngs)

    def __call__(self, x):
        for conv in self.convs:
            x = jax.nn.relu(conv(x))
        return self.head(x.mean(axis=(1, 2)))


def build_problem(kind, widths, image, classes, seed=0):
    """Returns (per_sample_loss_fn, theta, v): a flax model entering pure code via split/merge."""
    rngs = nnx.Rngs(seed)
    model = (
        MLP(int(np.prod(image)), widths, classes, rngs=rngs)
        if kind == "mlp"
        else CNN(image[-1], widths, classes, rngs=rngs)
    )
    graphdef, theta = nnx.split(model, nnx.Param)

    def per_sample_loss(params, inputs, labels):
        logits = nnx.merge(graphdef, params)(inputs)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels)  # [K]

    leaves, treedef = jax.tree.flatten(theta)
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    v = jax.tree.unflatten(
        treedef, [jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)]
    )
    return per_sample_loss, theta, v


def rendered_batch(k, image, classes, seed=0):
    """K rendered-like samples: scenes from a Gaussian q_psi, images in [0, 1], labels."""
    q = gaussian((8,))
    kq, kx, ky = jax.random.split(jax.random.key(seed), 3)
    scenes = q.sample(kq, q.init(), k)
    inputs = jax.random.uniform(kx, (k, *image), jnp.float32)
    labels = jax.random.randint(ky, (k,), 0, classes)
    return q, scenes, inputs, labels


def _tree_rel_err(a, b):
    fa, fb = jax.flatten_util.ravel_pytree(a)[0], jax.flatten_util.ravel_pytree(b)[0]
    return float(jnp.linalg.norm(fa - fb) / jnp.maximum(jnp.linalg.norm(fb), 1e-30))


def _memory(compiled):
    stats = compiled.memory_analysis()
    if stats is None:
        return {}
    keys = (
        "temp_size_in_bytes",
        "argument_size_in_bytes",
        "output_size_in_bytes",
        "alias_size_in_bytes",
        "generated_code_size_in_bytes",
        "peak_memory_in_bytes",
    )
    return {k: int(getattr(stats, k)) for k in keys if hasattr(stats, k)}


def _device_memory(device):
    try:
        stats = device.memory_stats()
    except Exception:  # noqa: BLE001 -- not every backend implements it
        return None
    if not stats:
        return None
    return {
        k: int(stats[k]) for k in ("bytes_in_use", "peak_bytes_in_use", "bytes_limit") if k in stats
    }


def bench_one(loss_fn, theta, v, q, scenes, inputs, labels, method, repeats):
    """Compiles, warms up and times one configuration; returns (figures, estimate)."""
    fn = jax.jit(
        functools.partial(
            score_function_term, q.log_prob, per_sample_loss_fn=loss_fn, method=method
        )
    )
    args = (q.init(), scenes)
    kwargs = {"theta": theta, "v": v, "inputs": inputs, "labels": labels}
    t0 = time.perf_counter()
    compiled = fn.lower(*args, **kwargs).compile()
    compile_s = time.perf_counter() - t0
    out = jax.block_until_ready(compiled(*args, **kwargs))  # warm-up; also the correctness output
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(*args, **kwargs))
        times.append(time.perf_counter() - t0)
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "times_s": times,
        "compile_s": compile_s,
        "memory": _memory(compiled),
        "device_memory": _device_memory(jax.devices()[0]),
    }, out


def run(size, out_dir, ks, repeats=None):
    cfg = SIZES[size]
    repeats = repeats or cfg["repeats"]
    device = jax.devices()[0]
    result = {
        "benchmark": "estimator_methods",
        "size": size,
        "device": str(device),
        "device_kind": device.device_kind,
        "platform": device.platform,
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "python": platform.python_version(),
        "x64": bool(jax.config.jax_enable_x64),
        "dtype": "float32",
        "matmul_precision": str(jax.config.jax_default_matmul_precision)
        + " (timings; the check runs at 'highest')",
        "image": cfg["image"],
        "classes": cfg["classes"],
        "ks": list(ks),
        "repeats": repeats,
        "models": {},
    }
    for name, (kind, widths) in cfg["models"].items():
        loss_fn, theta, v = build_problem(kind, widths, cfg["image"], cfg["classes"])
        n_params = int(sum(x.size for x in jax.tree.leaves(theta)))
        entry = {"kind": kind, "widths": list(widths), "n_params": n_params, "by_k": {}}
        print(f"{name}: {n_params} parameters", flush=True)
        for k in ks:
            q, scenes, inputs, labels = rendered_batch(k, cfg["image"], cfg["classes"])
            # Correctness first, at full float32 matmul precision (GPUs default to TF32 dots,
            # whose ~1e-3 rounding would hide a real disagreement). The K directional
            # derivatives must agree to 1e-4; the estimate itself, a mean of centred terms that
            # cancel, is only recorded.
            with jax.default_matmul_precision("highest"):
                derivs = {
                    m: jax.jit(functools.partial(directional_derivatives, loss_fn, method=m))(
                        theta, v, inputs, labels
                    )
                    for m in METHODS
                }
                exact = {
                    m: jax.jit(
                        functools.partial(
                            score_function_term, q.log_prob, per_sample_loss_fn=loss_fn, method=m
                        )
                    )(q.init(), scenes, theta=theta, v=v, inputs=inputs, labels=labels)
                    for m in METHODS
                }
            deriv_err = _tree_rel_err(derivs["jvp"], derivs["per_sample"])
            check_err = _tree_rel_err(exact["jvp"], exact["per_sample"])
            if not deriv_err < 1e-4:
                raise AssertionError(
                    f"{name}, K={k}: the methods' directional derivatives disagree (relative "
                    f"error {deriv_err:.2e})."
                )
            figures, outs = {}, {}
            for method in METHODS:  # timed at the default precision, what a user gets
                figures[method], outs[method] = bench_one(
                    loss_fn, theta, v, q, scenes, inputs, labels, method, repeats
                )
            rel_err = _tree_rel_err(outs["jvp"], outs["per_sample"])
            speedup = figures["per_sample"]["median_s"] / figures["jvp"]["median_s"]
            entry["by_k"][str(k)] = {
                **figures,
                "rel_err_directional_derivatives": deriv_err,
                "rel_err_estimate_highest_precision": check_err,
                "rel_err_estimate_default_precision": rel_err,
                "speedup_per_sample_over_jvp": speedup,
            }
            mib = {
                m: figures[m]["memory"].get("temp_size_in_bytes", np.nan) / 2**20 for m in METHODS
            }
            print(
                f"  K={k:5d}  jvp {figures['jvp']['median_s'] * 1e3:9.3f} ms  per_sample "
                f"{figures['per_sample']['median_s'] * 1e3:9.3f} ms  speedup {speedup:6.1f}x  "
                f"temp MiB jvp {mib['jvp']:8.2f} per_sample {mib['per_sample']:8.2f}  "
                f"rel.err c {deriv_err:.1e}, estimate {check_err:.1e} (default precision "
                f"{rel_err:.1e})",
                flush=True,
            )
        entry["summary"] = _summary(entry, ks, n_params)
        result["models"][name] = entry
    result["summary"] = {name: e["summary"] for name, e in result["models"].items()}
    out_dir.mkdir(parents=True, exist_ok=True)
    suffix = "gpu" if device.platform in ("gpu", "cuda", "rocm") else device.platform
    stem = out_dir / f"estimator_methods_{suffix}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(f"wrote {stem.with_suffix('.json')}")
    _plot(result, stem.with_suffix(".png"))
    return result


def _summary(entry, ks, n_params):
    """Speedups at K >= 64 and the memory growth per extra sample (bytes per sample)."""
    by_k = entry["by_k"]
    big = [k for k in ks if k >= 64]
    speedups = [by_k[str(k)]["speedup_per_sample_over_jvp"] for k in big]
    out = {
        "min_speedup_k_ge_64": min(speedups) if speedups else None,
        "speedup_at_max_k": by_k[str(ks[-1])]["speedup_per_sample_over_jvp"],
        "param_bytes": 4 * n_params,
    }
    for m in METHODS:
        temps = [by_k[str(k)][m]["memory"].get("temp_size_in_bytes") for k in ks]
        if None not in temps and len(ks) > 1:
            out[f"{m}_temp_bytes_per_sample"] = (temps[-1] - temps[0]) / (ks[-1] - ks[0])
            out[f"{m}_temp_bytes_k_min_max"] = [temps[0], temps[-1]]
    return out


def _plot(result, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: skipping the plot (the JSON has every figure).")
        return
    ks = result["ks"]
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(12, 4.5))
    for i, (name, entry) in enumerate(result["models"].items()):
        colour = f"C{i}"
        for method, style in (("jvp", "-o"), ("per_sample", "--s")):
            t = [entry["by_k"][str(k)][method]["median_s"] * 1e3 for k in ks]
            mem = [
                entry["by_k"][str(k)][method]["memory"].get("temp_size_in_bytes", np.nan) / 2**20
                for k in ks
            ]
            label = f"{name} ({entry['n_params']:,} params), {method}"
            ax_t.plot(ks, t, style, color=colour, label=label, markersize=4)
            ax_m.plot(ks, mem, style, color=colour, label=label, markersize=4)
    for ax, ylabel in ((ax_t, "median time per call [ms]"), (ax_m, "XLA temp buffers [MiB]")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("K (samples)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    ax_t.legend(fontsize=7)
    fig.suptitle(
        f"score-function term: jvp vs per-sample gradients ({result['device_kind']}, jax "
        f"{result['jax']}, "
        f"{result['dtype']})"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="cpu")
    parser.add_argument(
        "--out", type=Path, default=RESULTS, help="output directory (default benchmarks/results)"
    )
    parser.add_argument("--ks", type=lambda s: tuple(int(x) for x in s.split(",")), default=KS)
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args(argv)
    print(
        f"jax {jax.__version__} on {jax.devices()[0].device_kind} ({jax.devices()[0].platform}), "
        f"{os.cpu_count()} CPUs",
        flush=True,
    )
    run(args.size, args.out, args.ks, args.repeats)


if __name__ == "__main__":
    main()
