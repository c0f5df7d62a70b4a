"""Benchmark: the score-function term by one jvp versus by per-sample gradients.

Question: how much faster, and how much leaner in memory, is ``method="jvp"`` of
:func:`autosim_jax.estimators.score_function_term` (one forward-mode pass for the ``K``
directional derivatives ``dl_k/dtheta . v``) than ``method="per_sample"`` (the ``K x n``
per-sample gradients contracted with ``v``), as ``K`` and the model grow; and what does
``chunk_size`` (the jvp over ``chunk_size`` samples at a time) cost in time for the memory it
saves?

Models: flax nnx MLPs and a strided CNN (GELU, like the library's models: with ReLU,
``c_k`` jumps where a unit's pre-activation crosses zero, and float32 rounding that differs
between two programs flips such units, so two correct methods can disagree by ~1e-4 at large
``K``) on rendered-like images with softmax cross-entropy per sample, and the library's own
task models with their real losses (:mod:`autosim_jax.models`, :mod:`autosim_jax.tasks`):
the clevr-seg ``UNet`` (8 base channels, 4 classes, as ``experiments.build_clevr_seg``) at
32x32 and 64x64 with the per-image :func:`~autosim_jax.tasks.pixel_cross_entropy`, and the
digits ``SmallCNN`` (8x8, 10 classes) with :func:`~autosim_jax.tasks.cross_entropy`.

For each model and ``K``, the ``K`` losses alone (``forward``) are timed too: every method
must compute them, so ``per_sample / forward`` bounds the speedup that any method could
reach. Three variants are compared: ``jvp``, ``per_sample`` and
``jvp_chunk<C>`` (``method="jvp", chunk_size=C``; measured only where ``K > C``, since
otherwise it is the same program as ``jvp``). First their ``K`` directional derivatives are
computed at ``"highest"`` matmul precision and must agree to 1e-4 (TF32 rounding would hide a
real disagreement). Then each variant is timed at the default precision (TF32 dots on recent
NVIDIA GPUs), three ways:

* **device time** (the headline figure): ``R`` evaluations inside ONE jitted
  ``jax.lax.fori_loop``, each iteration on inputs shifted by ``1e-30 x carry``, the carry
  being the running sum of the estimates; every iteration thus depends on the previous one
  and XLA can neither hoist nor merge them. ``R`` is static (a known trip count) and chosen
  from the pipelined time below so that one loop runs about ``target_s`` (within
  ``[min_evals, max_evals]``); where the pipelined time is short (``unroll_below_s``),
  ``unroll`` evaluations run per trip of the loop, so that its per-trip cost (10-20 us on an
  H200, measured: ``loop_overhead``) is shared. The loop is
  warmed up; the time per evaluation is the median over repeats of (loop time / ``R``), with
  ``jax.block_until_ready``. This is the device's work with the per-call Python dispatch
  amortised away. Each iteration also pays one elementwise pass over the inputs (``K x`` the
  image, the same for every variant) and the loop's own bookkeeping: ``loop_overhead`` is the
  time per iteration of the same loop with the estimator left out (not subtracted).
* **pipelined**: calls of the single-call program dispatched back to back with one block at
  the end, time per call: ``max(dispatch, device)``, a loop-free upper bound on the device
  time.
* **call time** (the figure of the first version of this benchmark): one jitted call of
  ``score_function_term`` per timing, ``jax.block_until_ready`` on each, median of repeats.
  At small ``K`` this is dominated by dispatch and launch overhead (~0.1-0.3 ms on an H200).

The number of repeats of each timing is cut to fit ``budget_s`` (at least 3). Where the
pipelined time is device-bound, it and the device time should agree; where they do not, the
loop changed the program. Seen so far: XLA:CPU runs the per-sample method's (grouped)
convolutions 1.5-9.7x slower inside the loop than in one call, so on CPU read the pipelined
and call columns for conv models. On the H200 the two agree within 3% except for the CNN's
per-sample program, which is 10-40% slower in the loop at K >= 64.

Memory is XLA's compile-time buffer assignment of the single-call program
(``compiled.memory_analysis()``: temp, argument, output bytes); the temp bytes are what grows
with ``K`` (the jvp's activations and tangents, the per-sample method's ``K x n`` gradients)
and what ``chunk_size`` bounds.

Usage::

    python benchmarks/estimator_methods.py                      # --size cpu, writes _cpu files
    python benchmarks/estimator_methods.py --size gpu --out $OUT
    python benchmarks/estimator_methods.py --size gpu --models mlp-512,unet8-clevr-32 --tag a
    python benchmarks/estimator_methods.py --size gpu --models unet32-clevr-64,unet64-clevr-64 --tag wide
    python benchmarks/estimator_methods.py --merge a.json b.json --out benchmarks/results

Writes ``estimator_methods_<platform>[_<tag>].json`` (device, versions, precision, every
figure, speedups per_sample/jvp under both timings) and ``.png`` (time and memory vs K, one row
per model) under ``benchmarks/results/``, or ``--out DIR``; ``--merge`` joins the JSONs of
runs split by ``--models`` into one file and plot. Needs only jax, flax, optax, numpy
(matplotlib for the plot, optional).

References:
  Paper Eq. 11 and Algorithm 1 (the "gradient of expectation" term).
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import math
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
from flax import nnx

try:
    import autosim_jax  # noqa: F401
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from autosim_jax.distributions import gaussian
from autosim_jax.estimators import directional_derivatives, score_function_term
from autosim_jax.models import SmallCNN, UNet
from autosim_jax.tasks import cross_entropy, pixel_cross_entropy

RESULTS = Path(__file__).resolve().parent / "results"
KS = (16, 32, 64, 128, 256, 512, 1024)
METHODS = ("jvp", "per_sample")
CHECK_TOL = 1e-4  # relative, K directional derivatives at "highest" precision

# name -> (kind, options); kinds "mlp" and "cnn" take the size's image and classes
MODELS = {
    "mlp-64": ("mlp", {"widths": (64,)}),
    "mlp-256x256": ("mlp", {"widths": (256, 256)}),
    "cnn-16-32": ("cnn", {"widths": (16, 32)}),
    "mlp-512": ("mlp", {"widths": (512,)}),
    "mlp-2048x2048": ("mlp", {"widths": (2048, 2048)}),
    "cnn-32-64-128": ("cnn", {"widths": (32, 64, 128)}),
    "unet8-clevr-32": ("unet", {"image": (32, 32, 3), "classes": 4, "base_channels": 8}),
    "unet8-clevr-64": ("unet", {"image": (64, 64, 3), "classes": 4, "base_channels": 8}),
    # wider UNets than the experiment's (8 base channels): where the K x n matrix starts to matter
    "unet32-clevr-64": ("unet", {"image": (64, 64, 3), "classes": 4, "base_channels": 32}),
    "unet64-clevr-64": ("unet", {"image": (64, 64, 3), "classes": 4, "base_channels": 64}),
    "smallcnn-digits": ("smallcnn", {"image": (8, 8, 1), "classes": 10, "channels": 16}),
}
SIZES = {
    "cpu": {
        "image": (16, 16, 3),
        "classes": 10,
        "repeats": 5,
        "loop_repeats": 3,
        "target_s": 0.1,
        "budget_s": 1.0,
        "min_evals": 2,
        "max_evals": 200,
        "unroll": 4,
        "unroll_below_s": 0.001,
        "chunk_sizes": (64,),
        "models": ("mlp-64", "mlp-256x256", "cnn-16-32", "unet8-clevr-32", "smallcnn-digits"),
        # the UNet's per-sample gradients take seconds per evaluation on 2 cores beyond this
        "max_k": {"unet8-clevr-32": 256},
    },
    "gpu": {
        "image": (32, 32, 3),
        "classes": 10,
        "repeats": 20,
        "loop_repeats": 7,
        "target_s": 0.03,
        "budget_s": 0.3,
        "min_evals": 3,
        "max_evals": 1000,
        "unroll": 8,
        "unroll_below_s": 0.0005,
        "chunk_sizes": (64, 256),
        "models": (
            "mlp-512",
            "mlp-2048x2048",
            "cnn-32-64-128",
            "unet8-clevr-32",
            "unet8-clevr-64",
            "smallcnn-digits",
        ),
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
            x = jax.nn.gelu(layer(x))
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
            x = jax.nn.gelu(conv(x))
        return self.head(x.mean(axis=(1, 2)))


class Problem:
    """A model as ``per_sample_loss(theta, inputs, labels) -> [K]``, its ``theta``, a fixed
    random ``v`` like ``theta``, and a sampler of ``K`` rendered-like inputs and labels."""

    def __init__(self, name, size_cfg, seed=0):
        kind, opts = MODELS[name]
        rngs = nnx.Rngs(seed)
        self.kind = kind
        self.image = tuple(opts.get("image", size_cfg["image"]))
        self.classes = opts.get("classes", size_cfg["classes"])
        if kind == "mlp":
            model = MLP(int(np.prod(self.image)), opts["widths"], self.classes, rngs=rngs)
        elif kind == "cnn":
            model = CNN(self.image[-1], opts["widths"], self.classes, rngs=rngs)
        elif kind == "unet":
            model = UNet(self.image[-1], self.classes, opts["base_channels"], rngs=rngs)
        else:
            model = SmallCNN(self.image[-1], self.classes, opts["channels"], rngs=rngs)
        self.options = {k: list(x) if isinstance(x, tuple) else x for k, x in opts.items()}
        # The task's real per-sample loss: per-image mean pixel cross-entropy for the UNet.
        self.loss_name = "pixel_cross_entropy" if kind == "unet" else "cross_entropy"
        task_loss = pixel_cross_entropy if kind == "unet" else cross_entropy
        graphdef, self.theta = nnx.split(model, nnx.Param)

        def per_sample_loss(params, inputs, labels):
            return task_loss(nnx.merge(graphdef, params)(inputs), labels)  # [K]

        self.loss = per_sample_loss
        leaves, treedef = jax.tree.flatten(self.theta)
        keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
        self.v = jax.tree.unflatten(
            treedef, [jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)]
        )
        self.n_params = int(sum(x.size for x in leaves))

    def batch(self, k, seed=0):
        """K samples: scenes from a Gaussian q_psi, images, and labels (per pixel for the UNet)."""
        q = gaussian((8,))
        kq, kx, ky = jax.random.split(jax.random.key(seed), 3)
        scenes = q.sample(kq, q.init(), k)
        scale = 16.0 if self.kind == "smallcnn" else 1.0  # SmallCNN reads raw 0..16 digits
        inputs = scale * jax.random.uniform(kx, (k, *self.image), jnp.float32)
        label_shape = (k, *self.image[:2]) if self.kind == "unet" else (k,)
        labels = jax.random.randint(ky, label_shape, 0, self.classes)
        return q, scenes, inputs, labels


def _variants(k, chunk_sizes):
    """Variant name -> (method, chunk_size); chunked jvp only where it differs from one pass."""
    out = {"jvp": ("jvp", None), "per_sample": ("per_sample", None)}
    out.update({f"jvp_chunk{c}": ("jvp", c) for c in chunk_sizes if c < k})
    return out


def _rel_err(a, b):
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


def _time_calls(fn, args, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return times


def _time_pipelined(fn, args, n, repeats):
    """n calls dispatched back to back, one block at the end: per-call max(dispatch, device)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        outs = [fn(*args) for _ in range(n)]
        jax.block_until_ready(outs)
        times.append((time.perf_counter() - t0) / n)
    return times


def _repeats_within(seconds, budget_s, at_most, at_least=3):
    """How many repeats of something that takes ``seconds`` fit in ``budget_s``."""
    return int(min(max(budget_s // max(seconds, 1e-9), at_least), at_most))


def _estimate_fn(problem, q, method, chunk_size):
    if method == "forward":  # the K losses alone: what any method has to compute at least
        return lambda psi, s, theta, v, inputs, labels: problem.loss(theta, inputs, labels)
    return functools.partial(
        score_function_term,
        q.log_prob,
        per_sample_loss_fn=problem.loss,
        method=method,
        chunk_size=chunk_size,
    )


def _stats(times, prefix=""):
    return {
        f"{prefix}median_s": statistics.median(times),
        f"{prefix}min_s": min(times),
        f"{prefix}max_s": max(times),
        f"{prefix}times_s": times,
    }


def _loop(fn, r, unroll):
    """``fn`` evaluated ``r`` (static) times in one fori_loop, each on inputs shifted by the
    running sum of the previous estimates (so no iteration can be hoisted or merged);
    ``unroll`` evaluations per trip of the loop, to amortise its per-trip overhead."""

    def loop(psi, s, th, v, x, y):
        def body(_, carry):
            shifted = x + carry * 1e-30
            g = fn(psi, s, theta=th, v=v, inputs=shifted, labels=y)
            return carry + sum(jnp.sum(leaf) for leaf in jax.tree.leaves(g))

        return jax.lax.fori_loop(0, r, body, jnp.zeros((), x.dtype), unroll=unroll)

    return loop


def bench_variant(problem, q, scenes, inputs, labels, method, chunk_size, cfg, repeats):
    """Compiles, checks and times one variant three ways. Returns (figures, estimate)."""
    fn = _estimate_fn(problem, q, method, chunk_size)
    args = (q.init(), scenes, problem.theta, problem.v, inputs, labels)
    single = jax.jit(lambda psi, s, th, v, x, y: fn(psi, s, theta=th, v=v, inputs=x, labels=y))
    t0 = time.perf_counter()
    compiled = single.lower(*args).compile()
    compile_s = time.perf_counter() - t0
    out = jax.block_until_ready(compiled(*args))  # warm-up; also the estimate
    (first,) = _time_calls(compiled, args, 1)
    budget = cfg["budget_s"]
    call = _time_calls(compiled, args, _repeats_within(first, budget, repeats))
    n_pipe = _repeats_within(first, budget / 3, 64, at_least=2)
    pipe = _time_pipelined(compiled, args, n_pipe, 3)
    # The loop's length from the pipelined time (>= the device time): >= target_s / that.
    pipe_s = statistics.median(pipe)
    r = _repeats_within(pipe_s, cfg["target_s"], cfg["max_evals"], cfg["min_evals"])
    unroll = cfg["unroll"] if pipe_s < cfg["unroll_below_s"] else 1
    r = -(-r // unroll) * unroll
    t0 = time.perf_counter()
    looped = jax.jit(_loop(fn, r, unroll)).lower(*args).compile()
    loop_compile_s = time.perf_counter() - t0
    jax.block_until_ready(looped(*args))  # warm-up
    (first_loop,) = _time_calls(looped, args, 1)
    loops = _time_calls(looped, args, _repeats_within(first_loop, budget, cfg["loop_repeats"]))
    carry = float(looped(*args))
    if not math.isfinite(carry):
        raise AssertionError(f"{method}, chunk_size={chunk_size}: the loop's carry is {carry}.")
    per = [t / r for t in loops]
    return {
        "method": method,
        "chunk_size": chunk_size,
        "device": {
            **_stats(per, "per_eval_"),
            "evals_per_loop": r,
            "unroll": unroll,
            "loop_times_s": loops,
            "compile_s": loop_compile_s,
        },
        "pipelined": {**_stats(pipe, "per_call_"), "calls": n_pipe},
        "call": {**_stats(call), "compile_s": compile_s, "memory": _memory(compiled)},
    }, out


def bench_loop_overhead(inputs, cfg):
    """Per iteration of the same loop with no estimator (the input shift and the carry), with
    and without unrolling: {unroll: figures}."""
    out = {}
    for unroll in sorted({1, cfg["unroll"]}):

        def loop(x, unroll=unroll):
            def body(_, carry):
                return carry + jnp.sum(x + carry * 1e-30) * 1e-30

            zero = jnp.zeros((), x.dtype)
            return jax.lax.fori_loop(0, cfg["max_evals"], body, zero, unroll=unroll)

        compiled = jax.jit(loop).lower(inputs).compile()
        jax.block_until_ready(compiled(inputs))
        times = _time_calls(compiled, (inputs,), cfg["loop_repeats"])
        out[str(unroll)] = {**_stats([t / cfg["max_evals"] for t in times], "per_iter_")}
    return {"iterations": cfg["max_evals"], "by_unroll": out}


def run(size, out_dir, ks, models=None, chunk_sizes=None, repeats=None, tag=None):
    cfg = SIZES[size]
    models = models or cfg["models"]
    chunk_sizes = tuple(chunk_sizes or cfg["chunk_sizes"])
    repeats = repeats or cfg["repeats"]
    device = jax.devices()[0]
    result = {
        "benchmark": "estimator_methods",
        "version": 2,
        "size": size,
        "device": str(device),
        "device_kind": device.device_kind,
        "platform": device.platform,
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "x64": bool(jax.config.jax_enable_x64),
        "dtype": "float32",
        "matmul_precision": str(jax.config.jax_default_matmul_precision)
        + " (timings; the check runs at 'highest')",
        "timing": {
            "device": "per evaluation, median over loop_repeats of (one jitted fori_loop of "
            "evals_per_loop dependent evaluations) / evals_per_loop; the headline figure",
            "pipelined": "calls dispatched back to back, one block at the end, per call: "
            "max(dispatch, device)",
            "call": "one jitted call per timing incl. Python dispatch, median of repeats",
            "memory": "XLA buffer assignment of the single-call program (temp_size_in_bytes)",
        },
        "ks": list(ks),
        "chunk_sizes": list(chunk_sizes),
        "repeats": repeats,
        "loop_repeats": cfg["loop_repeats"],
        "loop_target_s": cfg["target_s"],
        "loop_evals_min_max": [cfg["min_evals"], cfg["max_evals"]],
        "loop_unroll": cfg["unroll"],
        "loop_unroll_below_pipelined_s": cfg["unroll_below_s"],
        "time_budget_per_measurement_s": cfg["budget_s"],
        "check_tolerance": CHECK_TOL,
        "models": {},
    }
    for name in models:
        problem = Problem(name, cfg)
        entry = {
            "kind": problem.kind,
            "options": problem.options,
            "image": list(problem.image),
            "classes": problem.classes,
            "loss": problem.loss_name,
            "n_params": problem.n_params,
            "by_k": {},
        }
        print(f"{name}: {problem.n_params} parameters, loss {problem.loss_name}", flush=True)
        model_ks = [k for k in ks if k <= cfg.get("max_k", {}).get(name, k)]
        entry["ks"] = model_ks
        for k in model_ks:
            q, scenes, inputs, labels = problem.batch(k)
            variants = _variants(k, chunk_sizes)

            # Correctness first, at full float32 matmul precision, in one program.
            def all_derivs(th, v, x, y, variants=variants):
                return {
                    vn: directional_derivatives(problem.loss, th, v, x, y, method=m, chunk_size=c)
                    for vn, (m, c) in variants.items()
                }

            with jax.default_matmul_precision("highest"):
                derivs = jax.jit(all_derivs)(problem.theta, problem.v, inputs, labels)
            errs = {vn: _rel_err(derivs[vn], derivs["per_sample"]) for vn in variants}
            row = {"rel_err_directional_derivatives_vs_per_sample_highest": errs}
            bad = {vn: e for vn, e in errs.items() if not e < CHECK_TOL}
            if bad:  # recorded, not timed; the run goes on to keep the device time spent
                row["check_failed"] = bad
                entry["by_k"][str(k)] = row
                print(f"  K={k:5d}  CHECK FAILED, not timed: {bad}", flush=True)
                continue
            outs = {}
            for vn, (m, c) in variants.items():
                row[vn], outs[vn] = bench_variant(
                    problem, q, scenes, inputs, labels, m, c, cfg, repeats
                )
            row["forward"], _ = bench_variant(problem, q, scenes, inputs, labels, "forward", None, cfg, repeats)
            row["loop_overhead"] = bench_loop_overhead(inputs, cfg)
            row["rel_err_estimate_vs_per_sample_default_precision"] = {
                vn: _rel_err(outs[vn], outs["per_sample"]) for vn in variants
            }
            row["speedup_per_sample_over_jvp"] = {
                "device": row["per_sample"]["device"]["per_eval_median_s"]
                / row["jvp"]["device"]["per_eval_median_s"],
                "call": row["per_sample"]["call"]["median_s"] / row["jvp"]["call"]["median_s"],
            }
            # Every method evaluates the K losses (a forward pass) at least, so no method can be
            # faster than per_sample by more than this.
            row["speedup_bound_per_sample_over_forward"] = (
                row["per_sample"]["device"]["per_eval_median_s"] / row["forward"]["device"]["per_eval_median_s"])
            for vn in variants:
                if vn.startswith("jvp_chunk"):
                    row[f"speedup_per_sample_over_{vn}"] = {
                        "device": row["per_sample"]["device"]["per_eval_median_s"]
                        / row[vn]["device"]["per_eval_median_s"],
                        "call": row["per_sample"]["call"]["median_s"] / row[vn]["call"]["median_s"],
                    }
            entry["by_k"][str(k)] = row
            print(f"  K={k:5d}  " + _row_text(row, variants), flush=True)
        entry["summary"] = _summary(entry, model_ks, chunk_sizes)
        print(f"  summary {json.dumps(entry['summary'])}", flush=True)
        result["models"][name] = entry
        result["summary"] = {name: e["summary"] for name, e in result["models"].items()}
        _write(result, out_dir, tag)  # after every model: a run cut short keeps what it did
    return result


def _row_text(row, variants):
    parts = []
    for vn in variants:
        d, c = row[vn]["device"]["per_eval_median_s"], row[vn]["call"]["median_s"]
        pp = row[vn]["pipelined"]["per_call_median_s"]
        mib = row[vn]["call"]["memory"].get("temp_size_in_bytes", np.nan) / 2**20
        parts.append(
            f"{vn} {d * 1e6:8.1f} us (pipe {pp * 1e6:7.1f}, call {c * 1e6:7.1f}) {mib:7.2f} MiB"
        )
    s = row["speedup_per_sample_over_jvp"]
    parts.append(f"forward {row['forward']['device']['per_eval_median_s'] * 1e6:8.1f} us")
    parts.append(f"speedup device {s['device']:6.1f}x (bound {row['speedup_bound_per_sample_over_forward']:6.1f}x) "
                 f"call {s['call']:5.1f}x")
    err = max(row["rel_err_directional_derivatives_vs_per_sample_highest"].values())
    parts.append(f"max rel.err {err:.1e}")
    over = row["loop_overhead"]["by_unroll"]
    parts.append(
        "loop overhead/iter "
        + ", ".join(f"unroll {u}: {f['per_iter_median_s'] * 1e6:.1f} us" for u, f in over.items())
    )
    return " | ".join(parts)


def _summary(entry, ks, chunk_sizes):
    """Speedups at K >= 64 under both timings, and the temp memory growth per extra sample."""
    by_k = entry["by_k"]
    failed = [k for k in ks if "check_failed" in by_k[str(k)]]
    ks = [k for k in ks if k not in failed]
    big = [k for k in ks if k >= 64]
    out = {"param_bytes": 4 * entry["n_params"], "ks_failed_check": failed}
    figure = {
        "device": ("device", "per_eval_median_s"),
        "pipelined": ("pipelined", "per_call_median_s"),
        "call": ("call", "median_s"),
    }
    for timing, (kind, key) in figure.items():
        sp = {k: by_k[str(k)]["per_sample"][kind][key] / by_k[str(k)]["jvp"][kind][key] for k in ks}
        out[f"speedup_{timing}_by_k"] = {str(k): round(s, 3) for k, s in sp.items()}
        if big:
            out[f"min_speedup_{timing}_k_ge_64"] = min(sp[k] for k in big)
            out[f"target_10x_k_ge_64_{timing}"] = bool(min(sp[k] for k in big) >= 10)
    bounds = {k: by_k[str(k)]["speedup_bound_per_sample_over_forward"] for k in big
              if "speedup_bound_per_sample_over_forward" in by_k[str(k)]}
    if bounds:  # runs before the forward timing existed have none
        out["min_speedup_bound_device_k_ge_64"] = min(bounds.values())
        out["jvp_time_over_forward_by_k"] = {
            str(k): round(by_k[str(k)]["jvp"]["device"]["per_eval_median_s"]
                          / by_k[str(k)]["forward"]["device"]["per_eval_median_s"], 3) for k in bounds}
    for vn in ("jvp", "per_sample", *(f"jvp_chunk{c}" for c in chunk_sizes)):
        kk = [k for k in ks if vn in by_k[str(k)]]
        temps = [by_k[str(k)][vn]["call"]["memory"].get("temp_size_in_bytes") for k in kk]
        if len(kk) > 1 and None not in temps:
            out[f"{vn}_temp_bytes_per_sample"] = (temps[-1] - temps[0]) / (kk[-1] - kk[0])
            out[f"{vn}_temp_bytes_k_min_max"] = [kk[0], temps[0], kk[-1], temps[-1]]
        if vn.startswith("jvp_chunk") and kk:
            out[f"{vn}_device_time_over_jvp_by_k"] = {
                str(k): round(
                    by_k[str(k)][vn]["device"]["per_eval_median_s"]
                    / by_k[str(k)]["jvp"]["device"]["per_eval_median_s"],
                    3,
                )
                for k in kk
            }
            out[f"min_speedup_device_per_sample_over_{vn}_k_gt_chunk"] = min(
                by_k[str(k)][f"speedup_per_sample_over_{vn}"]["device"] for k in kk
            )
    return out


def _write(result, out_dir, tag=None):
    out_dir.mkdir(parents=True, exist_ok=True)
    platform_name = result["platform"]
    suffix = "gpu" if platform_name in ("gpu", "cuda", "rocm") else platform_name
    stem = out_dir / (f"estimator_methods_{suffix}" + (f"_{tag}" if tag else ""))
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(f"wrote {stem.with_suffix('.json')}")
    _plot(result, stem.with_suffix(".png"))


def merge(paths, out_dir):
    """Joins the JSONs of runs split by --models (same device and settings) into one."""
    parts = [json.loads(Path(p).read_text()) for p in paths]
    result = dict(parts[0])
    result["models"], result["summary"] = {}, {}
    for part in parts:
        for key in ("device_kind", "jax", "ks", "chunk_sizes", "size"):
            if part[key] != result[key]:
                raise ValueError(f"{key} differs between the runs: {part[key]} vs {result[key]}")
        result["models"].update(part["models"])
    for name, entry in result["models"].items():  # recomputed: the summary may have grown since
        entry["summary"] = _summary(entry, entry.get("ks", result["ks"]), result["chunk_sizes"])
        result["summary"][name] = entry["summary"]
    result["merged_from"] = [Path(p).name for p in paths]
    _write(result, out_dir)
    return result


def _plot(result, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: skipping the plot (the JSON has every figure).")
        return
    names = list(result["models"])
    fig, axes = plt.subplots(len(names), 2, figsize=(12, 3.2 * len(names)), squeeze=False)
    styles = {"jvp": ("C0", "o"), "per_sample": ("C3", "s")}
    for c, col in zip(result["chunk_sizes"], ("C2", "C4", "C5")):
        styles[f"jvp_chunk{c}"] = (col, "^")
    for (ax_t, ax_m), name in zip(axes, names):
        entry = result["models"][name]
        for vn, (colour, marker) in styles.items():
            ks = [k for k in entry.get("ks", result["ks"]) if vn in entry["by_k"][str(k)]]
            if not ks:
                continue
            rows = [entry["by_k"][str(k)][vn] for k in ks]
            dev = [r["device"]["per_eval_median_s"] * 1e3 for r in rows]
            call = [r["call"]["median_s"] * 1e3 for r in rows]
            mem = [r["call"]["memory"].get("temp_size_in_bytes", np.nan) / 2**20 for r in rows]
            ax_t.plot(ks, dev, "-" + marker, color=colour, label=f"{vn}, device", ms=4)
            ax_t.plot(ks, call, ":" + marker, color=colour, label=f"{vn}, call", ms=3, alpha=0.5)
            ax_m.plot(ks, mem, "-" + marker, color=colour, label=vn, ms=4)
        ax_t.set_title(f"{name} ({entry['n_params']:,} params): time", fontsize=9)
        ax_m.set_title(f"{name}: XLA temp buffers", fontsize=9)
        ax_t.set_ylabel("ms per evaluation")
        ax_m.set_ylabel("MiB")
        for ax in (ax_t, ax_m):
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("K (samples)")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=6)
    fig.suptitle(
        f"score-function term: jvp vs per-sample gradients vs chunked jvp "
        f"({result['device_kind']}, jax {result['jax']}, {result['dtype']}; solid: device time "
        "in a fori_loop, dotted: single jitted call)",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.985))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"wrote {path}")


def _ints(s):
    return tuple(int(x) for x in s.split(","))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="cpu")
    parser.add_argument(
        "--out", type=Path, default=RESULTS, help="output directory (default benchmarks/results)"
    )
    parser.add_argument("--ks", type=_ints, default=KS)
    parser.add_argument(
        "--models", type=lambda s: tuple(s.split(",")), default=None, help=f"of {sorted(MODELS)}"
    )
    parser.add_argument("--chunk-sizes", type=_ints, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--tag", default=None, help="file-name suffix (for runs split by model)")
    parser.add_argument("--merge", nargs="+", type=Path, default=None, help="JSONs to join")
    args = parser.parse_args(argv)
    if args.merge:
        merge(args.merge, args.out)
        return
    unknown = set(args.models or ()) - set(MODELS)
    if unknown:
        parser.error(f"unknown models {sorted(unknown)}; choose from {sorted(MODELS)}")
    print(
        f"jax {jax.__version__} on {jax.devices()[0].device_kind} ({jax.devices()[0].platform}), "
        f"{os.cpu_count()} CPUs",
        flush=True,
    )
    run(args.size, args.out, args.ks, args.models, args.chunk_sizes, args.repeats, args.tag)


if __name__ == "__main__":
    main()
