"""Time per image of the host renderers against render resolution and samples per pixel.

Renders the same CLEVR scenes with the numpy ray tracer (``ClevrRenderer``) and with
Mitsuba 3 ``scalar_rgb`` (``MitsubaRenderer``), and times the glyph renderer, on one CPU
thread each: the BLAS / OpenMP thread pools are pinned to one thread by environment
variables set before numpy is imported, and Mitsuba's pool by ``drjit.set_thread_count(1)``.
Every figure is the median of several timed repeats after a warm-up, for wall-clock and
process (CPU) time; the process time is robust to other jobs sharing the machine.

Three Mitsuba figures are kept apart:

* ``mitsuba_render``: ``mi.render`` of the RGB pass of an already loaded scene (what one
  usually quotes for a renderer);
* ``mitsuba_full``: ``MitsubaRenderer.render``: scene loading, the RGB pass, the label pass
  and resampling, i.e. the same work as ``ClevrRenderer.render``;
* ``numpy_full``: ``ClevrRenderer.render``: RGB pass, label pass and resampling.

The head-to-head figure is ``numpy_full / mitsuba_render`` at 64 x 64 pixels and 4 spp (the
strictest comparison: our full pass against Mitsuba's RGB pass alone). Ratios from one run
travel between machines; absolute times hold only for the CPU named in the JSON.

Run:  python benchmarks/renderer_speed.py [--quick]
Writes benchmarks/results/renderer_speed.json and benchmarks/results/renderer_speed.png.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"  # before numpy: one thread for a fair single-core comparison

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from autosim_jax.renderers import ClevrRenderer, GlyphRenderer, MitsubaRenderer  # noqa: E402
from autosim_jax.renderers import clevr, mitsuba_backend  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def timed(fn, repeats: int) -> dict:
    """Median wall and process seconds of ``fn()`` over ``repeats`` runs, after one warm-up."""
    fn()
    wall, cpu = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        fn()
        cpu.append(time.process_time() - c)
        wall.append(time.perf_counter() - w)
    return {"wall_s": statistics.median(wall), "cpu_s": statistics.median(cpu),
            "wall_all_s": wall, "cpu_all_s": cpu}


def per_image(t: dict, n: int) -> dict:
    return {"wall_ms": 1e3 * t["wall_s"] / n, "cpu_ms": 1e3 * t["cpu_s"] / n}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer scenes and repeats (smoke run)")
    parser.add_argument("--scenes", type=int, default=16, help="CLEVR scenes per timed batch")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--size", type=int, default=64, help="training image size")
    args = parser.parse_args()
    load_at_start = list(os.getloadavg())  # other jobs on the machine inflate wall times
    n, repeats = (4, 2) if args.quick else (args.scenes, args.repeats)

    import drjit as dr
    import mitsuba as mi

    dr.set_thread_count(1)
    numpy_r = ClevrRenderer(image_size=args.size)
    mitsuba_r = MitsubaRenderer(image_size=args.size)
    mi.set_variant(mitsuba_r.variant)
    base = numpy_r.example_scenes(n, seed=0)  # the same scenes for both renderers

    def config(res: int, spp: int) -> dict:
        return dict(base, resolution=np.full(n, clevr.RESOLUTION_CHOICES.index(res)),
                    spp=np.full(n, clevr.SPP_CHOICES.index(spp)))

    def mitsuba_render_only(scenes):
        loaded = [mi.load_dict(mitsuba_backend.scene_dict(scenes, i), optimize=False) for i in range(n)]
        return lambda: [mi.render(s, seed=i) for i, s in enumerate(loaded)]

    rows = []
    grid = [(r, 4) for r in clevr.RESOLUTION_CHOICES] + [(64, s) for s in clevr.SPP_CHOICES if s != 4]
    for res, spp in grid:
        scenes = config(res, spp)
        row = {"resolution": res, "spp": spp, "scenes": n,
               "numpy_full": per_image(timed(lambda: numpy_r.render(scenes, seed=0), repeats), n),
               "mitsuba_render": per_image(timed(mitsuba_render_only(scenes), repeats), n),
               "mitsuba_full": per_image(timed(lambda: mitsuba_r.render(scenes, seed=0), repeats), n)}
        row["ratio_numpy_over_mitsuba_render"] = {
            k: row["numpy_full"][k] / row["mitsuba_render"][k] for k in ("wall_ms", "cpu_ms")}
        rows.append(row)
        print(f"res {res:3d} spp {spp:2d}: numpy {row['numpy_full']['cpu_ms']:7.2f} ms  "
              f"mitsuba render {row['mitsuba_render']['cpu_ms']:7.2f} ms  "
              f"mitsuba full {row['mitsuba_full']['cpu_ms']:7.2f} ms (cpu, per image)", flush=True)

    # One scene per call: the numpy renderer's per-call overhead, unamortised.
    one = {k: v[:1] for k, v in config(64, 4).items()}
    numpy_single = per_image(timed(lambda: numpy_r.render(one, seed=0), 3 * repeats), 1)

    # Labels of both backends on the benchmark scenes (a correctness check beside the times).
    y_np = numpy_r.render(base, seed=0)[1]
    y_mi = mitsuba_r.render(base, seed=0)[1]
    agreement = float((y_np == y_mi).mean())

    glyph_r = GlyphRenderer()
    g_n = 64 if args.quick else 512
    g_scenes = glyph_r.example_scenes(g_n, seed=0)
    glyph = per_image(timed(lambda: glyph_r.render(g_scenes, seed=0), repeats), g_n)

    head = next(r for r in rows if r["resolution"] == 64 and r["spp"] == 4)
    import PIL

    result = {
        "benchmark": "renderer_speed",
        "machine": {"cpu": cpu_name(), "logical_cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": sys.version.split()[0], "load_average_1_5_15_at_start": load_at_start},
        "versions": {"numpy": np.__version__, "mitsuba": mi.__version__, "drjit": dr.__version__,
                     "pillow": PIL.__version__},
        "threads": {"numpy": "OMP/OPENBLAS/MKL/NUMEXPR_NUM_THREADS=1 (numpy ufuncs are single-threaded)",
                    "mitsuba": f"drjit.set_thread_count(1) -> {dr.thread_count()}",
                    "mitsuba_variant": mitsuba_r.variant},
        "method": f"median of {repeats} repeats after a warm-up; batches of {n} scenes "
                  f"(example_scenes seed 0: 1-4 objects, 1 bounce); training size {args.size}",
        "clevr": rows,
        "numpy_single_scene_64px_4spp": numpy_single,
        "label_agreement_numpy_vs_mitsuba": agreement,
        "glyphs": {"images": g_n, **glyph},
        "head_to_head_64px_4spp": {
            "numpy_full_cpu_ms": head["numpy_full"]["cpu_ms"],
            "mitsuba_render_cpu_ms": head["mitsuba_render"]["cpu_ms"],
            "mitsuba_full_cpu_ms": head["mitsuba_full"]["cpu_ms"],
            "ratio_numpy_full_over_mitsuba_render_cpu": head["ratio_numpy_over_mitsuba_render"]["cpu_ms"],
            "ratio_numpy_full_over_mitsuba_render_wall": head["ratio_numpy_over_mitsuba_render"]["wall_ms"],
            "ratio_numpy_full_over_mitsuba_full_cpu": head["numpy_full"]["cpu_ms"] / head["mitsuba_full"]["cpu_ms"],
        },
    }
    result["machine"]["load_average_at_end"] = list(os.getloadavg())
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "renderer_speed.json"), "w") as f:
        json.dump(result, f, indent=2)
    plot(result, os.path.join(RESULTS, "renderer_speed.png"))
    h = result["head_to_head_64px_4spp"]
    print(f"64 px / 4 spp: numpy {h['numpy_full_cpu_ms']:.2f} ms, mitsuba render "
          f"{h['mitsuba_render_cpu_ms']:.2f} ms, ratio {h['ratio_numpy_full_over_mitsuba_render_cpu']:.2f}; "
          f"glyphs {glyph['cpu_ms']:.3f} ms; label agreement {agreement:.5f}")


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["clevr"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    series = (("numpy_full", "numpy (render + labels)", "C0", "o-"),
              ("mitsuba_render", "Mitsuba scalar_rgb (RGB pass)", "C1", "s-"),
              ("mitsuba_full", "Mitsuba (load + RGB + labels)", "C1", "s--"))
    for ax, (key, fixed, value, label) in zip(
            axes, (("resolution", "spp", 4, "render resolution (px)"), ("spp", "resolution", 64, "samples per pixel"))):
        sel = sorted((r for r in rows if r[fixed] == value), key=lambda r: r[key])
        xs = [r[key] for r in sel]
        for name, legend, color, style in series:
            ax.plot(xs, [r[name]["cpu_ms"] for r in sel], style, color=color, label=legend)
        ax.axhline(result["glyphs"]["cpu_ms"], color="C2", ls=":", label="glyphs (8x8 digits)")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.set_xlabel(label + f" ({fixed} = {value})")
        ax.set_ylabel("CPU ms per image (1 thread)")
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=8)
    h = result["head_to_head_64px_4spp"]
    fig.suptitle(f"CLEVR scenes, {result['machine']['cpu']}: numpy / Mitsuba at 64 px, 4 spp = "
                 f"{h['ratio_numpy_full_over_mitsuba_render_cpu']:.2f}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
