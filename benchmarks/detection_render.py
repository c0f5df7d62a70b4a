"""Render time of the detection scenes per quality (issue 14): ms per image, one process.

For each training size and quality, renders the 27 cells of that quality (3 scenes x 9
locations) twice over (54 images) after one warm-up render, and reports the median over
repeats of the whole render (tracing + boxes) and of the box labels alone. The glyph canvases
(digits-det) are timed the same way. Results: benchmarks/results/detection_render.json.

    python benchmarks/detection_render.py --sizes 32,64 --repeats 5
"""

import argparse
import datetime
import json
import os
import platform
import time

import numpy as np

from autosim_jax.renderers import clevr
from autosim_jax.renderers.clevr_det import ClevrDetRenderer, cell_index
from autosim_jax.renderers.glyphs_det import DigitCanvasRenderer


def timed(fn, repeats):
    fn()  # warm-up (caches, first allocation)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="32,64")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "detection_render.json"))
    args = p.parse_args()
    rows = []
    for size in [int(s) for s in args.sizes.split(",")]:
        for name, make in (("clevr-det", ClevrDetRenderer), ("digit-canvas", DigitCanvasRenderer)):
            r = make(image_size=size)
            for q, quality in enumerate(("low", "high")):
                cells = np.array([cell_index(s, loc, q) for s in range(3) for loc in range(9)] * 2)
                total = timed(lambda: r.render({"cell": cells}, seed=1), args.repeats)
                row = {"renderer": name, "size": size, "quality": quality, "images": len(cells),
                       "ms_per_image": 1000 * total / len(cells)}
                if name == "clevr-det":
                    scenes = r.clevr_scenes(cells, np.random.default_rng(0))["scenes"]
                    row["boxes_ms_per_image"] = 1000 * timed(lambda: clevr.object_boxes(scenes, size),
                                                             args.repeats) / len(cells)
                rows.append(row)
                print(json.dumps(row))
    info = {"date": datetime.date.today().isoformat(), "machine": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "repeats": args.repeats, "rows": rows}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(info, f, indent=1)


if __name__ == "__main__":
    main()
