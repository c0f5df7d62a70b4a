"""Images per second of the render pools against the number of workers (issue 17).

For each renderer (``clevr`` at 64 px with scenes from the clevr-seg target setting
``experiments.CLEVR_TARGET``, ``glyphs`` with scenes from ``experiments.DIGITS_REFERENCE``,
optionally ``mitsuba``) one fixed batch of scenes is drawn through ``from_schema`` and
rendered:

* serially in this process (``make_render_pool(renderer)``, what a Simulator without a pool
  does), the reference;
* by a process pool and by a Ray pool (local instance started by the pool) of each worker
  count of ``--workers``.

Each pool is built once (its start-up time is recorded), then its first batch is checked
against the serial render bitwise (the run stops if one differs) and doubles as the warm-up;
then ``--repeats`` batches are timed and the median is kept (min and max recorded too).
BLAS/OpenMP pools are pinned to one thread (set before numpy is imported, inherited by the
workers), so that a worker is one core. Speed-ups are images/s over the serial images/s,
measured in the same run: those ratios travel between machines, absolute figures hold only
for the CPU named in the JSON. On a machine of C cores expect at most ~C x, less the
scheduling of the last chunks (``chunk_size`` = 8 scenes per task).

Run:    python benchmarks/render_pool.py --workers 1,2,4,8,16            (a 16-core host)
        python benchmarks/render_pool.py --workers 1,2,4 --clevr-images 32 --tag cpu  (2 cores)
Writes: benchmarks/results/render_pool_<tag>.json and .png
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"  # before numpy; the workers inherit it: one core per worker

import argparse  # noqa: E402
import importlib.metadata  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

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


def version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def renderer_and_scenes(name: str, n: int, image_size: int):
    """The renderer and n scenes drawn from the experiment's target distribution (key 0)."""
    import jax

    from autosim_jax import experiments
    from autosim_jax.distributions import from_schema
    from autosim_jax.renderers import get_renderer

    if name == "glyphs":
        renderer, params = get_renderer("glyphs"), getattr(experiments, "DIGITS_REFERENCE", {})
    else:
        renderer, params = get_renderer(name, image_size=image_size), experiments.CLEVR_TARGET
    dist = from_schema(renderer.schema, params)
    scenes = dist.sample(jax.random.key(0), dist.init(), n)
    return renderer, {k: np.asarray(v) for k, v in scenes.items()}


def time_batches(pool, scenes, seed: int, repeats: int) -> list[float]:
    times = []
    for r in range(repeats):
        start = time.perf_counter()
        pool.render(scenes, seed + 1 + r)  # numpy out: nothing left to wait for
        times.append(time.perf_counter() - start)
    return times


def assert_bitwise(got, want, what: str) -> None:
    for g, w, part in zip(got, want, ("inputs", "labels")):
        if g.dtype != w.dtype or g.shape != w.shape or not np.array_equal(g, w):
            raise SystemExit(f"{what}: {part} differ from the serial render; not timing it.")


def bench_renderer(name, n, args, backends) -> dict:
    from autosim_jax.render_pool import make_render_pool

    renderer, scenes = renderer_and_scenes(name, n, args.image_size)
    seed = 12345
    serial = make_render_pool(renderer)
    want = serial.render(scenes, seed)  # warm-up and the reference
    serial_times = time_batches(serial, scenes, seed, args.repeats)
    serial_ips = n / statistics.median(serial_times)
    print(f"{name}: {n} images, serial {serial_ips:.1f} img/s", flush=True)
    rows = []
    for backend in backends:
        for workers in args.workers:
            start = time.perf_counter()
            with make_render_pool(renderer, workers=workers, backend=backend) as pool:
                startup = time.perf_counter() - start
                start = time.perf_counter()
                got = pool.render(scenes, seed)  # the check doubles as the warm-up
                first = time.perf_counter() - start
                assert_bitwise(got, want, f"{name} {backend} x{workers}")
                times = time_batches(pool, scenes, seed, args.repeats)
            ips = n / statistics.median(times)
            rows.append({
                "backend": backend, "workers": workers, "images_per_s": ips,
                "speedup_vs_serial": ips / serial_ips,
                "best_images_per_s": n / min(times),
                "best_speedup_vs_best_serial": min(serial_times) / min(times),
                "batch_s_median": statistics.median(times),
                "batch_s_min": min(times), "batch_s_max": max(times), "first_batch_s": first,
                "startup_s": startup, "bitwise_equal_to_serial": True,
            })
            print(f"  {backend:7s} x{workers:<3d} {ips:8.1f} img/s  {ips / serial_ips:5.2f}x serial"
                  f"  (start-up {startup:.1f} s)", flush=True)
    process = {r["workers"]: r["images_per_s"] for r in rows if r["backend"] == "process"}
    for row in rows:  # Ray against the process pool at equal workers
        if row["backend"] == "ray" and row["workers"] in process:
            row["vs_process_pool"] = row["images_per_s"] / process[row["workers"]]
    return {
        "renderer": name, "images": n, "image_size": args.image_size if name != "glyphs" else 8,
        "scene_distribution": "CLEVR_TARGET" if name != "glyphs" else "DIGITS_REFERENCE",
        "serial_images_per_s": serial_ips, "serial_best_images_per_s": n / min(serial_times),
        "serial_batch_s": serial_times, "pools": rows,
    }


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = result["renderers"]
    fig, axes = plt.subplots(1, len(runs), figsize=(5.2 * len(runs), 4.2), squeeze=False)
    for ax, run in zip(axes[0], runs):
        serial = run["serial_images_per_s"]
        workers = sorted({r["workers"] for r in run["pools"]})
        for backend, style in (("process", "o-"), ("ray", "s--")):
            rows = sorted((r for r in run["pools"] if r["backend"] == backend),
                          key=lambda r: r["workers"])
            if rows:
                ax.plot([r["workers"] for r in rows], [r["images_per_s"] for r in rows], style,
                        label=f"{backend} pool")
        ax.axhline(serial, color="grey", lw=1, label="serial (no pool)")
        ideal = [w for w in workers if w <= result["host"]["cpus_usable"]]
        ax.plot(ideal, [serial * w for w in ideal], ":", color="k", lw=1,
                label="serial x workers (ideal)")
        ax.set_xscale("log", base=2)
        ax.set_xticks(workers, [str(w) for w in workers])
        ax.set_xlabel("workers")
        ax.set_ylabel("images / s")
        ax.set_title(f"{run['renderer']} ({run['image_size']} px, {run['images']} images / batch)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    host = result["host"]
    fig.suptitle(f"Render pools on {host['cpu']} ({host['cpus_usable']} usable cores)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> None:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    default_workers = ",".join(str(2**i) for i in range(5) if 2**i <= max(cpus, 1))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", default=default_workers,
                        help=f"comma-separated worker counts (default: powers of 2 up to the "
                             f"{cpus} usable cores: {default_workers})")
    parser.add_argument("--backends", default="process,ray")
    parser.add_argument("--renderers", default="clevr,glyphs", help="clevr, glyphs, mitsuba")
    parser.add_argument("--clevr-images", type=int, default=256,
                        help="scenes per batch for clevr and mitsuba")
    parser.add_argument("--glyphs-images", type=int, default=2048)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tag", default="cpu", help="results file: render_pool_<tag>.json/.png")
    args = parser.parse_args(argv)
    args.workers = [int(w) for w in args.workers.split(",")]
    backends = [b for b in args.backends.split(",") if b]
    if "ray" in backends and version("ray") is None:
        print("ray is not installed: timing the process pool only", flush=True)
        backends.remove("ray")

    import jax
    from provenance import command_line  # a sibling: the record's command

    from autosim_jax.render_pool import DEFAULT_CHUNK_SIZE

    result = {
        "benchmark": "render_pool",
        "host": {"cpu": cpu_name(), "cpus_usable": cpus, "cpu_count": os.cpu_count(),
                 "platform": platform.platform(), "load_average_before": os.getloadavg()},
        "versions": {"python": platform.python_version(), "numpy": np.__version__,
                     "jax": jax.__version__, "ray": version("ray"),
                     "autosim_jax": version("autosim_jax")},
        "settings": {"workers": args.workers, "backends": backends, "repeats": args.repeats,
                     "chunk_size": DEFAULT_CHUNK_SIZE, "blas_threads_per_worker": 1,
                     "timing": "median wall-clock of `repeats` batches after a checked warm-up",
                     "command": command_line(__file__, argv)},
        "renderers": [],
    }
    if "ray" in backends:  # one local Ray instance for every Ray pool (each one's actors
        import ray  # are killed when it closes); a pool would otherwise start its own

        start = time.perf_counter()
        ray.init(num_cpus=max(max(args.workers), cpus), include_dashboard=False)
        result["settings"]["ray_init_s"] = time.perf_counter() - start
    try:
        for name in args.renderers.split(","):
            n = args.glyphs_images if name == "glyphs" else args.clevr_images
            result["renderers"].append(bench_renderer(name, n, args, backends))
    finally:
        if "ray" in backends:
            ray.shutdown()
    result["host"]["load_average_after"] = os.getloadavg()
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, f"render_pool_{args.tag}")
    with open(path + ".json", "w") as f:
        json.dump(result, f, indent=1)
    plot(result, path + ".png")
    print(f"wrote {path}.json and {path}.png")


if __name__ == "__main__":
    main()
