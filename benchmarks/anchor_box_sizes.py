"""How different do the nine locations of a clevr-det scene look to a detector? Box sizes per anchor (issue 14).

Issue 14 asks the learned categorical to put 70% of its mass on the target's 4 cells (scene2 at
high quality, locations centre / left / bottom / right). The runs put 75-96% on scene2 at high
quality but settle on one to three of its cells, different per seed, with the same G
(``cell_mass.py``; docs/detection.md, session 18). A fully convolutional detector sees an object
the same wherever it stands, up to its apparent size (the camera looks down at the floor, so the
far row looks smaller) and the image border; this measures that size per location: N images of
one cell per location, rendered by the numpy renderer, and the mean width and height in pixels
of their objects' boxes, with the standard error over the objects. No device is needed.

Usage::

    python benchmarks/anchor_box_sizes.py --scene scene2 --quality high --images 128 \\
        --out benchmarks/results/detection_reference/anchor_box_sizes_clevr-det_gpu

Writes ``OUT.json`` (the command, date, versions, image size, per location the boxes' mean and
standard error of width, height and area, and the object count).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os

import numpy as np
from provenance import command_line  # the record's command, quoted for a shell


def box_sizes(boxes: np.ndarray) -> dict[str, float]:
    """Mean and standard error of the valid boxes' width, height and area (pixels).

    ``boxes``: ``(n, max_objects, 6)`` rows ``(class, x0, y0, x1, y1, valid)``.

    Example:
      >>> b = np.array([[[0, 0, 0, 4, 2, 1], [0, 0, 0, 9, 9, 0]], [[1, 1, 1, 3, 5, 1], [0, 0, 0, 0, 0, 0]]], float)
      >>> s = box_sizes(b)
      >>> s["objects"], s["width"], s["height"], s["area"]
      (2, 3.0, 3.0, 8.0)
    """
    valid = boxes[..., 5] > 0.5
    w, h = (boxes[..., 3] - boxes[..., 1])[valid], (boxes[..., 4] - boxes[..., 2])[valid]
    out = {"objects": int(valid.sum())}
    for name, v in (("width", w), ("height", h), ("area", w * h)):
        out[name] = float(v.mean())
        out[name + "_stderr"] = float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else float("nan")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--scene", default="scene2")
    p.add_argument("--quality", default="high", choices=("high", "low"))
    p.add_argument("--images", type=int, default=128, help="images per location")
    p.add_argument("--image-size", type=int, default=64, help="64: the gpu size of clevr-det")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output path without extension")
    args = p.parse_args(argv)
    import jax

    import autosim_jax as asj
    from autosim_jax.renderers.clevr_det import CELLS, LOCATIONS, ClevrDetRenderer

    renderer = ClevrDetRenderer(image_size=args.image_size)
    rows = {}
    for i, location in enumerate(LOCATIONS):
        cell = f"{args.scene}/{location}/{args.quality}"
        if cell not in CELLS:
            p.error(f"no cell {cell!r}; cells are scene1-3 / {'|'.join(LOCATIONS)} / high|low")
        _, boxes = renderer.render({"cell": np.full(args.images, CELLS.index(cell))}, seed=args.seed + i)
        rows[location] = box_sizes(np.asarray(boxes))
        r = rows[location]
        print(f"{cell:>26}: {r['objects']:4d} objects, box {r['width']:.2f} x {r['height']:.2f} px "
              f"(+- {r['width_stderr']:.2f} / {r['height_stderr']:.2f}), area {r['area']:.1f} px^2", flush=True)
    result = {"benchmark": "anchor_box_sizes", "date": datetime.date.today().isoformat(),
              "command": command_line(__file__, argv),
              "jax_version": jax.__version__, "autosim_jax": asj.__version__, "renderer": "clevr-det (numpy)",
              "image_size": args.image_size, "scene": args.scene, "quality": args.quality,
              "images_per_location": args.images, "locations": rows}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
