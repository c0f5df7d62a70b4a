"""Where do JAX's and PyTorch's HVPs spend GPU time? (the CNN gap of issue #2)

At equal precision JAX's jitted HVP of the tanh CNNs of ``curvature_depth.py`` is ~1% slower
than PyTorch's ``torch.compile``d jvp-of-grad (``curvature_depth_equal_precision_gpu.json``).
This script attributes that gap to kernels. Both HVPs run in one process under
``torch.profiler``, whose CUPTI tracing records every CUDA kernel of the process, XLA's
included; each kernel is put in a category by its name (convolution, GEMM, other), and the
device time per HVP call is summed per category and framework.

Prediction, written before the first run: both frameworks spend >= 90% of the time in cuDNN
convolution kernels, and the gap lies there (different algorithm choices), not in the
elementwise and reduction kernels around them.

Result (H200, ``hvp_kernels_gpu.json``): the first half held, the second did not. Summed
device time is within 6% between the two (JAX 0.94-1.00 of PyTorch's under the profiler),
but 11-12% of JAX's is cuDNN's ``nhwcToNchw``/``nchwToNhwc`` conversions around its
convolution kernels, which are correspondingly faster than PyTorch's. Writing the JAX net
channels-first (family ``cnn_nchw``) changes nothing: XLA picks the physical layout. The XLA
option ``xla_gpu_force_conv_nchw`` removes the conversions (``hvp_kernels_gpu_force_conv_nchw.json``,
depth 8: device time 0.83 of PyTorch's); see ``curvature_depth.compiler_options``.

Usage (needs a CUDA GPU and torch):
  python benchmarks/hvp_kernels.py [--families cnn,cnn_nchw] [--depths 4,8,16] [--calls 10] [--out DIR]

Writes ``hvp_kernels_<platform>.json`` and ``.png`` (device time per HVP by kernel category)
to ``--out`` (default ``benchmarks/results``); ``--plot-only FILE`` redraws the plot of a
result file.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

import jax

import autosim_jax as asj

sys.path.insert(0, str(Path(__file__).parent))
from curvature_depth import SIZES, _torch_setup, make_problem  # noqa: E402  (the same nets)

CATEGORIES = (
    # cuDNN / CUTLASS convolution kernels: forward, data-gradient and weight-gradient.
    ("conv", re.compile(r"conv|cudnn|implicit|dgrad|wgrad|fprop|xmma|winograd|fft", re.I)),
    ("gemm", re.compile(r"gemm|cublas|cutlass|matmul", re.I)),
)


# cuDNN's layout conversions around a convolution kernel (counted in "conv" above).
LAYOUT_CONVERSION = re.compile(r"nhwcToNchw|nchwToNhwc", re.I)


def category(name: str) -> str:
    for label, pattern in CATEGORIES:
        if pattern.search(name):
            return label
    return "other"


def kernel_profile(fn, calls: int) -> dict:
    """Device time per call by kernel (name -> us) and by category, for ``calls`` calls of ``fn``."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    kernels = {}
    for e in prof.key_averages():
        t = getattr(e, "self_device_time_total", None)
        t = getattr(e, "self_cuda_time_total", 0.0) if t is None else t
        if t > 0:
            kernels[e.key] = {"us_per_call": t / calls, "launches_per_call": e.count / calls}
    by_cat = {}
    for name, k in kernels.items():
        by_cat[category(name)] = by_cat.get(category(name), 0.0) + k["us_per_call"]
    layout = sum(k["us_per_call"] for name, k in kernels.items() if LAYOUT_CONVERSION.search(name))
    return {"total_us_per_call": sum(by_cat.values()), "by_category_us": by_cat, "layout_conversion_us": layout,
            "top_kernels": dict(sorted(kernels.items(), key=lambda kv: -kv[1]["us_per_call"])[:12])}


def _category_us(profile: dict, cat: str) -> float:
    """Time of a plot category: "layout" (cuDNN's conversions) is split out of "conv"."""
    # Result files written before "layout_conversion_us" existed: the conversions among the top kernels.
    layout = profile.get("layout_conversion_us", sum(
        k["us_per_call"] for name, k in profile["top_kernels"].items() if LAYOUT_CONVERSION.search(name)))
    if cat == "layout":
        return layout
    return profile["by_category_us"].get(cat, 0.0) - (layout if cat == "conv" else 0.0)


def plot(result, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    labels = [f"{r['family']}\nd={r['depth']}" for r in rows]
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(rows)), 4.5))
    width = 0.38
    for offset, fw, hatch in ((-width / 2, "jax", ""), (width / 2, "torch", "//")):
        bottom = [0.0] * len(rows)
        for cat, colour in (("layout", "tab:red"), ("conv", "tab:blue"), ("gemm", "tab:green"),
                            ("other", "tab:orange")):
            ms = [_category_us(r[fw], cat) / 1e3 for r in rows]
            ax.bar([i + offset for i in range(len(rows))], ms, width, bottom=bottom, color=colour, hatch=hatch,
                   edgecolor="k", lw=0.3, label=f"{fw}: {cat if cat != 'layout' else 'cuDNN layout conversions'}")
            bottom = [b + m for b, m in zip(bottom, ms)]
    ax.set_xticks(range(len(rows)), labels)
    ax.set(ylabel="device time per HVP (ms, under the profiler)",
           title=f"{result['device']} | JAX {result['jax_version']} vs torch {result['torch_version']} | "
                 f"XLA_FLAGS={result.get('xla_flags') or 'none'}")
    ax.legend(fontsize=7, ncol=2, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--families", default="cnn,cnn_nchw", help="cnn (flax, NHWC) and/or cnn_nchw (channels first)")
    parser.add_argument("--depths", type=lambda s: [int(d) for d in s.split(",")], default=[4, 8, 16])
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--plot-only", type=Path, help="redraw the plot of this result file and exit")
    args = parser.parse_args(argv)
    if args.plot_only:
        plot(json.loads(args.plot_only.read_text()), args.plot_only.with_suffix(".png"))
        return
    import torch

    cfg = SIZES["gpu"]["cnn"]
    families = args.families.split(",")
    device = jax.devices()[0]
    result = {"benchmark": "hvp_kernels", "device": f"{device.platform}:{device.device_kind}",
              "jax_version": jax.__version__, "torch_version": torch.__version__, "config": cfg,
              "precision": "JAX: default_matmul_precision('highest'); PyTorch: TF32 off (matmul, cuDNN)",
              "calls": args.calls, "xla_flags": os.environ.get("XLA_FLAGS", ""), "rows": []}
    for family, depth in ((f, d) for f in families for d in args.depths):
        with jax.default_matmul_precision("highest"):
            _, _, loss_fn, params, x, y = make_problem(family, depth, cfg)
            v = jax.tree.map(lambda a: jax.random.normal(jax.random.key(3), a.shape, a.dtype), params)
            hvp = jax.jit(lambda p, u: asj.hvp(loss_fn, p, u, x, y)).lower(params, v).compile()
        fns, tparams, tv, _ = _torch_setup("cnn", depth, cfg, repeats=1)
        for _ in range(3):  # torch.compile and cuDNN's first calls, outside the profile
            fns["compiled"](tparams, tv)
        row = {"family": family, "depth": depth,
               "jax": kernel_profile(lambda: jax.block_until_ready(hvp(params, v)), args.calls),
               "torch": kernel_profile(lambda: fns["compiled"](tparams, tv), args.calls)}
        row["jax_over_torch_device_time"] = row["jax"]["total_us_per_call"] / row["torch"]["total_us_per_call"]
        row["gap_us_by_category"] = {
            c: row["jax"]["by_category_us"].get(c, 0.0) - row["torch"]["by_category_us"].get(c, 0.0)
            for c in ("conv", "gemm", "other")}
        result["rows"].append(row)
        print(f"{family} depth {depth:2d}: device time JAX/torch {row['jax_over_torch_device_time']:.4f}; "
              f"JAX {row['jax']['by_category_us']}, torch {row['torch']['by_category_us']} (us per call)", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"hvp_kernels_{device.platform}.json"
    path.write_text(json.dumps(result, indent=1))
    plot(result, path.with_suffix(".png"))
    print(f"wrote {path} and .png")


if __name__ == "__main__":
    main()
