"""How much do Hessian-vector products and CG iterations cost against network depth?

For tanh MLPs and CNNs of increasing depth, in one run: loss, gradient, HVP in each mode,
the linearised Hessian operator's product, the Gauss-Newton and empirical-Fisher products,
and CG iterations with a fresh HVP, the linearised Hessian, Gauss-Newton, the empirical
Fisher, and Hessian and Gauss-Newton on a curvature sub-batch (whose products are also timed
alone, to see how much of the batch's cost a sub-batch removes).
Every time is divided by one jitted gradient of the same net in the same run: that ratio is
the figure that travels between machines. Also reports compiled memory and the bytes the
linearised operators keep alive.

Correctness is checked before anything is timed; every timed call is blocked on.

Usage:
  python benchmarks/curvature_depth.py                 # CPU sizes, a few minutes
  python benchmarks/curvature_depth.py --size gpu      # the H200 sizes of the issue
  python benchmarks/curvature_depth.py --size gpu --torch   # + PyTorch HVPs at equal precision

Writes ``curvature_depth_<device>.json`` and ``.png`` to ``--out`` (default
``benchmarks/results``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import optax
from flax import nnx

import autosim_jax as asj

SIZES = {
    # family: (width or channels, batch, spatial size); depth list shared.
    "cpu": {"mlp": dict(width=128, batch=64), "cnn": dict(channels=8, batch=16, spatial=8), "depths": [1, 2, 4, 6, 8]},
    "gpu": {"mlp": dict(width=1024, batch=512), "cnn": dict(channels=64, batch=64, spatial=64),
            "depths": [2, 4, 8, 12, 16]},
}
# "cnn_nchw" is the same CNN written in PyTorch's layout (channels first), not a default family.
for _size in SIZES.values():
    _size["cnn_nchw"] = _size["cnn"]
NUM_CLASSES = 10
# Operators whose bare product is timed (in a loop) beside their CG iteration.
PRODUCTS = ("hessian", "gauss_newton", "empirical_fisher", "hessian_sub_batch", "gauss_newton_sub_batch")


class MLP(nnx.Module):
    def __init__(self, depth, width, rngs):
        self.layers = nnx.List([nnx.Linear(width, width, rngs=rngs) for _ in range(depth)])
        self.head = nnx.Linear(width, NUM_CLASSES, rngs=rngs)

    def __call__(self, x):
        for layer in self.layers:
            x = jnp.tanh(layer(x))
        return self.head(x)


class CNN(nnx.Module):
    def __init__(self, depth, channels, rngs):
        self.convs = nnx.List(
            [nnx.Conv(3 if i == 0 else channels, channels, (3, 3), rngs=rngs) for i in range(depth)]
        )
        self.head = nnx.Linear(channels, NUM_CLASSES, rngs=rngs)

    def __call__(self, x):
        for conv in self.convs:
            x = jnp.tanh(conv(x))
        return self.head(x.mean(axis=(1, 2)))


class CNNChannelsFirst(nnx.Module):
    """``CNN`` with NCHW activations and OIHW kernels, as PyTorch lays them out."""

    def __init__(self, depth, channels, rngs):
        init = nnx.initializers.lecun_normal(in_axis=1, out_axis=0)
        self.kernels = nnx.List(
            [nnx.Param(init(rngs.params(), (channels, 3 if i == 0 else channels, 3, 3))) for i in range(depth)]
        )
        self.biases = nnx.List([nnx.Param(jnp.zeros((channels,))) for _ in range(depth)])
        self.head = nnx.Linear(channels, NUM_CLASSES, rngs=rngs)

    def __call__(self, x):
        for w, b in zip(self.kernels, self.biases):
            x = jax.lax.conv_general_dilated(x, w[...], (1, 1), "SAME", dimension_numbers=("NCHW", "OIHW", "NCHW"))
            x = jnp.tanh(x + b[...][None, :, None, None])
        return self.head(x.mean(axis=(2, 3)))


def make_problem(family, depth, cfg, seed=0):
    """Returns (predict_fn, output_loss_fn, loss_fn, params, x, y) for one net."""
    rngs = nnx.Rngs(seed)
    if family == "mlp":
        model = MLP(depth, cfg["width"], rngs)
        x = jax.random.normal(jax.random.key(1), (cfg["batch"], cfg["width"]))
    elif family == "cnn":
        model = CNN(depth, cfg["channels"], rngs)
        x = jax.random.normal(jax.random.key(1), (cfg["batch"], cfg["spatial"], cfg["spatial"], 3))
    else:
        model = CNNChannelsFirst(depth, cfg["channels"], rngs)
        x = jax.random.normal(jax.random.key(1), (cfg["batch"], 3, cfg["spatial"], cfg["spatial"]))
    y = jax.random.randint(jax.random.key(2), (cfg["batch"],), 0, NUM_CLASSES)
    graphdef, params = nnx.split(model, nnx.Param)

    def predict_fn(p, x):
        return nnx.merge(graphdef, p)(x)

    def output_loss_fn(logits, y):
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    def loss_fn(p, x, y):
        return output_loss_fn(predict_fn(p, x), y)

    return predict_fn, output_loss_fn, loss_fn, params, x, y


def median_time(fn, *args, repeats):
    """Median wall time of ``fn(*args)`` after compilation and one warm-up, blocking on each call."""
    jax.block_until_ready(fn(*args))
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def compiled_bytes(fn, *args):
    """Peak-memory estimate of a jitted function from XLA: arguments + outputs + temporaries."""
    stats = fn.lower(*args).compile().memory_analysis()
    if stats is None:
        return None
    return int(stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes
               - stats.alias_size_in_bytes)


def cosine(a, b):
    return float(optax.tree.vdot(a, b) / (optax.tree.norm(a) * optax.tree.norm(b)))


def bench_one(family, depth, cfg, args):
    predict_fn, output_loss_fn, loss_fn, params, x, y = make_problem(family, depth, cfg)
    sub = max(1, int(round(cfg["batch"] * args.sub_batch)))
    lam, k = args.damping, args.cg_iters
    per_example = lambda p, x, y: optax.softmax_cross_entropy_with_integer_labels(predict_fn(p, x), y)  # noqa: E731
    v = jax.tree.map(lambda a: jax.random.normal(jax.random.key(3), a.shape, a.dtype), params)

    operators = {
        "fresh_hvp": lambda p: asj.CurvatureOperator.from_matvec(lambda u: asj.hvp(loss_fn, p, u, x, y), p),
        "hessian": lambda p: asj.hessian_operator(loss_fn, p, x, y),
        "gauss_newton": lambda p: asj.gauss_newton_operator(predict_fn, output_loss_fn, p, x, y),
        "empirical_fisher": lambda p: asj.empirical_fisher_operator(per_example, p, x, y),
        "hessian_sub_batch": lambda p: asj.hessian_operator(loss_fn, p, x[:sub], y[:sub]),
        "gauss_newton_sub_batch": lambda p: asj.gauss_newton_operator(predict_fn, output_loss_fn, p, x[:sub], y[:sub]),
    }
    loss_j = jax.jit(loss_fn)
    grad_j = jax.jit(jax.grad(loss_fn))
    hvp_j = {m: jax.jit(lambda p, u, m=m: asj.hvp(loss_fn, p, u, x, y, mode=m)) for m in asj.curvature.HVP_MODES}

    def repeated_products(make_op):
        # Normalised power iteration: m products of one operator built once, m traced.
        def run(p, u, m):
            op = make_op(p)
            return jax.lax.fori_loop(0, m, lambda _, w: optax.tree.scale(1.0 / optax.tree.norm(w), op.matvec(w)), u)
        return jax.jit(run)

    def cg(make_op):
        return jax.jit(lambda p, b, m: asj.solve_damped(make_op(p), b, lam, tol=0.0, maxiter=m).x)

    # --- correctness first -------------------------------------------------------------
    g = grad_j(params, x, y)
    ref = hvp_j["fwd_rev"](params, v)
    check = {m: cosine(hvp_j[m](params, v), ref) for m in ("rev_rev", "rev_fwd")}
    check["linearised_vs_hvp"] = cosine(jax.jit(lambda p, u: operators["hessian"](p).matvec(u))(params, v), ref)
    # The empirical Fisher on 8 examples against the mean of g_i (g_i . v) from per-example gradients.
    x8, y8 = x[:8], y[:8]
    per_grads = jax.vmap(lambda xi, yi: jax.grad(lambda p: per_example(p, xi[None], yi[None])[0])(params))(x8, y8)
    dots = jax.vmap(lambda g: optax.tree.vdot(g, v))(per_grads)
    fv_ref = jax.tree.map(lambda gl: jnp.tensordot(dots, gl, axes=1) / 8, per_grads)
    check["empirical_fisher_vs_per_example"] = cosine(
        asj.empirical_fisher_operator(per_example, params, x8, y8).matvec(v), fv_ref)
    for name, c in check.items():
        if c < 0.999:
            raise AssertionError(f"{family} depth {depth}: {name} disagrees with fwd_rev (cosine {c:.6f})")
    solves = {
        name: jax.jit(lambda p, b, make=make: asj.solve_damped(make(p), b, lam, tol=1e-3, maxiter=10 * k))(params, g)
        for name, make in operators.items()
    }
    full = solves["hessian"].x

    # --- timings ----------------------------------------------------------------------
    r = args.repeats
    t_grad = median_time(grad_j, params, x, y, repeats=r)
    row = {
        "family": family, "depth": depth, "num_params": int(sum(a.size for a in jax.tree.leaves(params))),
        "t_loss": median_time(loss_j, params, x, y, repeats=r), "t_grad": t_grad,
    }
    for m, f in hvp_j.items():
        row[f"t_hvp_{m}"] = median_time(f, params, v, repeats=r)
    for name in PRODUCTS:
        f = repeated_products(operators[name])
        t1, t2 = (median_time(f, params, v, m, repeats=r) for m in (k, 2 * k))
        row[f"t_matvec_{name}"] = (t2 - t1) / k
    for name, make in operators.items():
        f = cg(make)
        t1, t2 = (median_time(f, params, g, m, repeats=r) for m in (k, 2 * k))
        row[f"t_cg_iter_{name}"] = (t2 - t1) / k
        row[f"t_cg_solve_{name}"] = t1
        row[f"bytes_cg_solve_{name}"] = compiled_bytes(f, params, g, k)
        row[f"cg_residual_{name}"] = float(solves[name].relative_residual)
        row[f"cg_converged_{name}"] = bool(solves[name].converged)
    row["bytes_grad"] = compiled_bytes(grad_j, params, x, y)
    row["bytes_hvp_fwd_rev"] = compiled_bytes(hvp_j["fwd_rev"], params, v)
    for name in ("hessian", "gauss_newton", "empirical_fisher"):
        row[f"stored_bytes_{name}"] = jax.eval_shape(
            lambda p, name=name: jnp.zeros(operators[name](p).stored_bytes(), jnp.int8), params
        ).shape[0]
    row["sub_batch"] = sub
    # The Hessian of a net at initialisation is indefinite: with small damping its solves
    # may not converge (the flags say so), which makes their cosine meaningless; the
    # Gauss-Newton solves are positive definite and converge, so compare those as well.
    row["cosine_sub_batch_vs_full_hessian"] = cosine(solves["hessian_sub_batch"].x, full)
    row["cosine_sub_batch_vs_full_gauss_newton"] = cosine(solves["gauss_newton_sub_batch"].x, solves["gauss_newton"].x)
    row["cosine_gauss_newton_vs_hessian"] = cosine(solves["gauss_newton"].x, full)
    # Ratios to one gradient (the figures that travel between machines).
    for key in list(row):
        if key.startswith("t_") and key != "t_grad":
            row["ratio_" + key[2:]] = row[key] / t_grad
    for name in PRODUCTS:
        row[f"cg_iter_over_matvec_{name}"] = row[f"t_cg_iter_{name}"] / row[f"t_matvec_{name}"]
    # What a sub-batch of `sub` examples saves: its product's and CG iteration's share of the
    # full batch's (a share equal to sub / batch is "in proportion").
    for name in ("hessian", "gauss_newton"):
        row[f"sub_batch_share_matvec_{name}"] = row[f"t_matvec_{name}_sub_batch"] / row[f"t_matvec_{name}"]
        row[f"sub_batch_share_cg_iter_{name}"] = row[f"t_cg_iter_{name}_sub_batch"] / row[f"t_cg_iter_{name}"]
    return row


def torch_rows(family, depth, cfg, args):
    """PyTorch's HVPs on the same architecture and sizes, TF32 off (equal precision to JAX 'highest')."""
    fns, params, v, timed = _torch_setup(family, depth, cfg, args.repeats)
    out = {"t_grad": timed(fns["grad"], params), "t_hvp_jvp_of_grad": timed(fns["jvp_of_grad"], params, v),
           "t_hvp_double_backward": timed(fns["double_backward"], params, v)}
    try:
        out["t_hvp_compiled"] = timed(fns["compiled"], params, v)
    except Exception as e:  # torch.compile needs a working compiler toolchain; say why it is absent
        out["compile_error"] = f"{type(e).__name__}: {e}"[:300]
    out["t_hvp_best"] = min(t for n, t in out.items() if n.startswith("t_hvp"))
    return out


def _torch_setup(family, depth, cfg, repeats):
    """The PyTorch twin of ``make_problem`` with TF32 off: ({name: fn}, params, v, timed).

    ``timed(fn, *args, repeats=...)`` is the median wall time after 3 warm-up calls, with a
    CUDA synchronisation after every call.
    """
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    if family == "mlp":
        layers = []
        for _ in range(depth):
            layers += [torch.nn.Linear(cfg["width"], cfg["width"]), torch.nn.Tanh()]
        model = torch.nn.Sequential(*layers, torch.nn.Linear(cfg["width"], NUM_CLASSES)).to(device)
        x = torch.randn(cfg["batch"], cfg["width"], device=device)
    else:
        layers = []
        for i in range(depth):
            layers += [torch.nn.Conv2d(3 if i == 0 else cfg["channels"], cfg["channels"], 3, padding=1),
                       torch.nn.Tanh()]
        model = torch.nn.Sequential(
            *layers, torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(cfg["channels"], NUM_CLASSES)
        ).to(device)
        x = torch.randn(cfg["batch"], 3, cfg["spatial"], cfg["spatial"], device=device)
    y = torch.randint(0, NUM_CLASSES, (cfg["batch"],), device=device)
    names = [n for n, _ in model.named_parameters()]
    params = {n: p.detach() for n, p in model.named_parameters()}
    v = {n: torch.randn_like(p) for n, p in params.items()}

    def loss(p):
        out = torch.func.functional_call(model, p, (x,))
        return torch.nn.functional.cross_entropy(out, y)

    def jvp_of_grad(p, v):
        return torch.func.jvp(torch.func.grad(loss), (p,), (v,))[1]

    def double_backward(p, v):
        ps = [p[n].clone().requires_grad_(True) for n in names]
        grads = torch.autograd.grad(loss(dict(zip(names, ps))), ps, create_graph=True)
        return torch.autograd.grad(grads, ps, grad_outputs=[v[n] for n in names])

    def grad_only(p):
        return torch.func.grad(loss)(p)

    def timed(fn, *a, repeats=repeats, warmup=3):
        for _ in range(warmup):
            fn(*a)
        sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
        sync()
        ts = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn(*a)
            sync()
            ts.append(time.perf_counter() - t)
        return statistics.median(ts)

    fns = {"grad": grad_only, "jvp_of_grad": jvp_of_grad, "double_backward": double_backward,
           "compiled": torch.compile(jvp_of_grad)}
    return fns, params, v, timed


def equal_precision_spread(family, depth, cfg, args):
    """JAX's HVPs against PyTorch's at equal precision, in ``args.rounds`` alternating rounds.

    Each round takes the median of ``args.repeats`` calls of each of JAX's three jitted HVP
    modes at 'highest' precision, then of PyTorch's ``torch.compile``d jvp-of-grad (the
    fastest PyTorch HVP at every depth of the first H200 run) with TF32 off; ratios are
    formed per round, so their spread over the rounds says how much of a few-percent
    difference is noise. PyTorch's two eager HVPs are timed once (5 calls) to confirm which
    is fastest. The library's best mode is the one with the lowest median over the rounds,
    chosen as PyTorch's best is (the fastest of its three); ``fwd_rev`` is the default.
    """
    with jax.default_matmul_precision("highest"):
        _, _, loss_fn, params, x, y = make_problem(family, depth, cfg)
        v = jax.tree.map(lambda a: jax.random.normal(jax.random.key(3), a.shape, a.dtype), params)
        hvps = {m: jax.jit(lambda p, u, m=m: asj.hvp(loss_fn, p, u, x, y, mode=m)).lower(params, v).compile(
                    compiler_options=compiler_options(args)) for m in asj.curvature.HVP_MODES}
    fns, tparams, tv, timed = _torch_setup(family, depth, cfg, args.repeats)
    out = {"family": family, "depth": depth, "repeats_per_round": args.repeats, "rounds": []}
    out["torch_eager_once"] = {f"t_hvp_{n}": timed(fns[n], tparams, tv, repeats=5, warmup=1)
                               for n in ("jvp_of_grad", "double_backward")}
    timed(fns["compiled"], tparams, tv, repeats=1, warmup=3)  # torch.compile, before any round
    for _ in range(args.rounds):
        rnd = {f"t_jax_hvp_{m}": median_time(f, params, v, repeats=args.repeats) for m, f in hvps.items()}
        rnd["t_torch_hvp_compiled"] = timed(fns["compiled"], tparams, tv)
        out["rounds"].append(rnd)
    for key in out["rounds"][0]:
        ts = [r[key] for r in out["rounds"]]
        out[key] = {"median_s": statistics.median(ts), "min_s": min(ts), "max_s": max(ts),
                    "relative_spread": (max(ts) - min(ts)) / statistics.median(ts)}
    t_compiled = out["t_torch_hvp_compiled"]["median_s"]
    out["torch_compiled_is_fastest"] = all(t >= t_compiled for t in out["torch_eager_once"].values())
    out["jax_best_mode"] = min(hvps, key=lambda m: out[f"t_jax_hvp_{m}"]["median_s"])
    for label, mode in (("fwd_rev", "fwd_rev"), ("best", out["jax_best_mode"])):
        ratios = [r[f"t_jax_hvp_{mode}"] / r["t_torch_hvp_compiled"] for r in out["rounds"]]
        out[f"ratio_jax_{label}_over_torch"] = {"median": statistics.median(ratios), "min": min(ratios),
                                                "max": max(ratios)}
    return out


def compiler_options(args):
    """XLA options for the equal-precision HVPs: ``--force-conv-nchw`` keeps convolutions channels-first.

    At float32 'highest' precision on the H200, XLA's default layout makes cuDNN convert
    NHWC <-> NCHW around its kernels (`benchmarks/hvp_kernels.py`: 11-12% of the HVP's device
    time); per compilation, this option removes the conversions. At default precision it is
    1.5x slower (it rules out the tensor-core NHWC kernels), so it is not the default.
    """
    return {"xla_gpu_force_conv_nchw": True} if args.force_conv_nchw else None


def jax_highest_rows(family, depth, cfg, args):
    """The library's HVP and gradient with float32 matmuls at 'highest' precision (no TF32-like shortcuts)."""
    with jax.default_matmul_precision("highest"):
        _, _, loss_fn, params, x, y = make_problem(family, depth, cfg)
        v = jax.tree.map(jnp.ones_like, params)
        hvp = jax.jit(lambda p, u: asj.hvp(loss_fn, p, u, x, y))
        grad = jax.jit(jax.grad(loss_fn))
        return {"t_grad": median_time(grad, params, x, y, repeats=args.repeats),
                "t_hvp_fwd_rev": median_time(hvp, params, v, repeats=args.repeats)}


def plot(result, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    series = [
        ("ratio_hvp_fwd_rev", "HVP fwd_rev"), ("ratio_hvp_rev_rev", "HVP rev_rev"),
        ("ratio_hvp_rev_fwd", "HVP rev_fwd"),
        ("ratio_cg_iter_fresh_hvp", "CG iter, fresh HVP"), ("ratio_cg_iter_hessian", "CG iter, linearised H"),
        ("ratio_cg_iter_gauss_newton", "CG iter, Gauss-Newton"),
        ("ratio_cg_iter_empirical_fisher", "CG iter, empirical Fisher"),
        ("ratio_cg_iter_hessian_sub_batch", "CG iter, H on sub-batch"),
        ("ratio_cg_iter_gauss_newton_sub_batch", "CG iter, GN on sub-batch"),
    ]
    for ax, family in zip(axes[:2], ("mlp", "cnn")):
        fam = [r for r in rows if r["family"] == family]
        if not fam:
            continue
        depths = [r["depth"] for r in fam]
        for key, label in series:
            ax.plot(depths, [r[key] for r in fam], marker="o", label=label)
        ax.axhline(1.8, color="k", ls="--", lw=0.8)
        ax.axhline(1.2, color="k", ls=":", lw=0.8)
        ax.set(title=f"{family.upper()}: time / gradient time", xlabel="depth (layers)", ylabel="ratio")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    ax = axes[2]
    for family, marker in (("mlp", "o"), ("cnn", "s")):
        fam = [r for r in rows if r["family"] == family]
        depths = [r["depth"] for r in fam]
        ax.plot(depths, [r["stored_bytes_hessian"] / 2**20 for r in fam], marker=marker,
                label=f"{family}: linearised H")
        ax.plot(depths, [r["stored_bytes_gauss_newton"] / 2**20 for r in fam], marker=marker, ls="--",
                label=f"{family}: Gauss-Newton")
        ax.plot(depths, [r["stored_bytes_empirical_fisher"] / 2**20 for r in fam], marker=marker, ls=":",
                label=f"{family}: empirical Fisher")
    ax.set(title="memory kept alive by the operator", xlabel="depth (layers)", ylabel="MiB")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.suptitle(f"{result['device']} | JAX {result['jax_version']} | {result['precision']}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="cpu")
    parser.add_argument("--depths", type=lambda s: [int(d) for d in s.split(",")], default=None)
    parser.add_argument("--families", default="mlp,cnn")
    parser.add_argument("--cg-iters", type=int, default=10, help="k; per-iteration cost is (T(2k) - T(k)) / k")
    parser.add_argument("--damping", type=float, default=1e-2)
    parser.add_argument("--sub-batch", type=float, default=0.25, help="fraction of the batch used for curvature")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--torch", action="store_true", help="also time PyTorch's HVPs at equal precision")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--equal-precision-only", action="store_true",
                        help="only JAX vs PyTorch HVPs at equal precision, in alternating rounds (needs torch)")
    parser.add_argument("--force-conv-nchw", action="store_true",
                        help="compile --equal-precision-only's JAX HVPs with xla_gpu_force_conv_nchw "
                             "(see compiler_options)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of --equal-precision-only")
    parser.add_argument("--merge", action="store_true",
                        help="keep the other families' rows of an existing result file (run families separately; "
                             "also for --equal-precision-only)")
    args = parser.parse_args(argv)
    sizes = SIZES[args.size]
    depths = args.depths or sizes["depths"]
    args.repeats = args.repeats or (20 if args.size == "gpu" else 5)
    device = jax.devices()[0]
    result = {
        "benchmark": "curvature_depth", "device": f"{device.platform}:{device.device_kind}",
        "jax_version": jax.__version__, "python": platform.python_version(), "size": args.size,
        "dtype": "float32", "precision": f"default matmul precision ({jax.config.jax_default_matmul_precision})",
        "config": {k: v for k, v in sizes.items()}, "cg_iters": args.cg_iters, "damping": args.damping,
        "sub_batch_fraction": args.sub_batch, "repeats": args.repeats, "rows": [], "equal_precision": [],
    }
    families = args.families.split(",")
    if args.equal_precision_only:
        return equal_precision_main(args, sizes, depths, families, device)
    stem = f"curvature_depth_{device.platform}"
    if args.merge and (args.out / f"{stem}.json").exists():
        old = json.loads((args.out / f"{stem}.json").read_text())
        result["rows"] = [r for r in old["rows"] if r["family"] not in families]
        result["equal_precision"] = [e for e in old["equal_precision"] if e["family"] not in families]
        result["torch_version"] = old.get("torch_version")
        kept = sorted({r["family"] for r in result["rows"]})
        result["note"] = (f"rows of {', '.join(kept)} come from an earlier invocation kept by --merge "
                          f"(benchmarks/results/logs/ has each invocation's log)")
    progress = [(f, d) for f in families for d in depths]
    for i, (family, depth) in enumerate(progress):
        start = time.perf_counter()
        row = bench_one(family, depth, sizes[family], args)
        result["rows"].append(row)
        print(
            f"[{i + 1}/{len(progress)}] {family} depth {depth:2d}: hvp/grad {row['ratio_hvp_fwd_rev']:.2f}  "
            f"CG iter/grad: fresh {row['ratio_cg_iter_fresh_hvp']:.2f} lin {row['ratio_cg_iter_hessian']:.2f} "
            f"GN {row['ratio_cg_iter_gauss_newton']:.2f} GN-sub {row['ratio_cg_iter_gauss_newton_sub_batch']:.2f} "
            f"(cos to full {row['cosine_sub_batch_vs_full_gauss_newton']:.2f})  [{time.perf_counter() - start:.0f}s]",
            flush=True,
        )
        if args.torch:
            eq = {"family": family, "depth": depth, "jax_highest": jax_highest_rows(family, depth, sizes[family], args)}
            eq["torch"] = torch_rows(family, depth, sizes[family], args)
            eq["jax_hvp_over_torch_best"] = eq["jax_highest"]["t_hvp_fwd_rev"] / eq["torch"]["t_hvp_best"]
            result["equal_precision"].append(eq)
            print(f"    equal precision: JAX hvp / torch best = {eq['jax_hvp_over_torch_best']:.2f}", flush=True)
    if args.torch:
        import torch

        result["torch_version"] = torch.__version__
    rows = result["rows"]
    families = sorted({r["family"] for r in rows})
    result["summary"] = {
        f"{fam}_max_{key}": max(r[key] for r in rows if r["family"] == fam)
        for fam in families
        for key in ("ratio_hvp_fwd_rev", "ratio_cg_iter_hessian", "ratio_cg_iter_gauss_newton",
                    "ratio_cg_iter_empirical_fisher", *(f"cg_iter_over_matvec_{n}" for n in PRODUCTS),
                    "sub_batch_share_matvec_gauss_newton", "sub_batch_share_cg_iter_gauss_newton")
    }
    result["summary"].update({
        f"{fam}_min_cosine_sub_batch_vs_full_gauss_newton": min(
            r["cosine_sub_batch_vs_full_gauss_newton"] for r in rows if r["family"] == fam) for fam in families})
    if result["equal_precision"]:
        result["summary"]["max_jax_hvp_over_torch_best"] = max(e["jax_hvp_over_torch_best"]
                                                               for e in result["equal_precision"])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=1))
    try:
        plot(result, args.out / f"{stem}.png")
    except ImportError:
        print("matplotlib is not installed: skipped the plot (pip install 'autosim_jax[experiments]')", file=sys.stderr)
    print(json.dumps(result["summary"], indent=1))
    print(f"wrote {args.out / stem}.json/.png")


def equal_precision_main(args, sizes, depths, families, device):
    """Writes ``curvature_depth_equal_precision_<platform>[_<families>].json``."""
    import torch

    result = {
        "benchmark": "curvature_depth_equal_precision", "device": f"{device.platform}:{device.device_kind}",
        "jax_version": jax.__version__, "torch_version": torch.__version__, "size": args.size,
        "dtype": "float32", "precision": "JAX: default_matmul_precision('highest'); PyTorch: TF32 off (matmul, cuDNN)",
        "config": {f: sizes[f] for f in families}, "repeats_per_round": args.repeats, "rounds": args.rounds,
        "xla_flags": os.environ.get("XLA_FLAGS", ""), "compiler_options": compiler_options(args), "rows": [],
    }
    for family in families:
        for depth in depths:
            start = time.perf_counter()
            row = equal_precision_spread(family, depth, sizes[family], args)
            result["rows"].append(row)
            r, b = row["ratio_jax_fwd_rev_over_torch"], row["ratio_jax_best_over_torch"]
            modes = "  ".join(f"{m} {row[f't_jax_hvp_{m}']['median_s'] * 1e3:.3f}" for m in asj.curvature.HVP_MODES)
            print(f"{family} depth {depth:2d}: JAX ms {modes}; torch compiled "
                  f"{row['t_torch_hvp_compiled']['median_s'] * 1e3:.3f} ms; JAX/torch: fwd_rev {r['median']:.3f} "
                  f"[{r['min']:.3f}, {r['max']:.3f}], best ({row['jax_best_mode']}) {b['median']:.3f} "
                  f"[{b['min']:.3f}, {b['max']:.3f}]  eager {row['torch_eager_once']}  "
                  f"[{time.perf_counter() - start:.0f}s]", flush=True)
    suffix = "_force_conv_nchw" if args.force_conv_nchw else ""
    path = args.out / f"curvature_depth_equal_precision_{device.platform}{suffix}.json"
    if args.merge and path.exists():
        result["rows"] = ([r for r in json.loads(path.read_text())["rows"] if r["family"] not in families]
                          + result["rows"])
        result["config"] = {**json.loads(path.read_text())["config"], **result["config"]}
    result["summary"] = {
        f"{r['family']}_{r['depth']}": {
            "best_mode": r["jax_best_mode"],
            **{f"{label}_ratio_{q}": round(r[f"ratio_jax_{label}_over_torch"][q], 4)
               for label in ("fwd_rev", "best") for q in ("median", "min", "max")},
            "torch_spread": round(r["t_torch_hvp_compiled"]["relative_spread"], 4),
            "torch_compiled_is_fastest": r["torch_compiled_is_fastest"],
        }
        for r in result["rows"]
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    print(json.dumps(result["summary"], indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
