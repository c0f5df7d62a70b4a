"""Image grids of the renderers, for a person to look at.

Writes, under docs/images/:

* ``clevr_grid.png``: random CLEVR scenes from the numpy renderer, image above label map,
  and one scene across the quality fields (resolution, spp, bounces);
* ``mitsuba_grid.png``: the same scenes rendered by Mitsuba 3 (scalar_rgb);
* ``glyphs_grid.png``: synthetic glyphs of every digit next to real digits of the
  validation half.

Run:  python benchmarks/render_grids.py
"""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402

from autosim_jax.renderers import ClevrRenderer, GlyphRenderer, MitsubaRenderer, load_real_digits  # noqa: E402
from autosim_jax.renderers import clevr  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "docs", "images")
SIZE = 128  # display size; training uses 64
N = 6
# background, sphere, cube, cylinder
LABEL_CMAP = ListedColormap(["#303030", "#e6550d", "#31a354", "#3182bd"])
# One scene across quality settings: (resolution, spp, bounces).
QUALITY = ((32, 1, 0), (48, 2, 0), (64, 4, 1), (96, 8, 2), (128, 16, 3))


def scenes_for_grid() -> dict[str, np.ndarray]:
    """N random scenes at the best quality, and the first of them at each QUALITY setting."""
    schema = clevr.clevr_schema(4)
    base = clevr.example_clevr_scenes(schema, N, seed=2024, resolution=4, spp=4, bounces=2)
    base["num_objects"] = np.array([3, 2, 1, 3, 0, 2])  # 4, 3, 2, 4, 1, 3 objects
    base["material"][0] = [1, 0, 1, 0]  # metal and rubber side by side
    one = {k: np.repeat(v[:1], len(QUALITY), axis=0) for k, v in base.items()}
    one["resolution"] = np.array([clevr.RESOLUTION_CHOICES.index(q[0]) for q in QUALITY])
    one["spp"] = np.array([clevr.SPP_CHOICES.index(q[1]) for q in QUALITY])
    one["bounces"] = np.array([clevr.BOUNCE_CHOICES.index(q[2]) for q in QUALITY])
    return base, one


def clevr_grid(renderer, title: str, path: str) -> None:
    base, one = scenes_for_grid()
    images, labels = renderer.render(base, seed=0)
    q_images, q_labels = renderer.render(one, seed=0)
    fig, axes = plt.subplots(4, N, figsize=(2.1 * N, 8.8))
    for i in range(N):
        axes[0, i].imshow(images[i])
        axes[0, i].set_title(f"{int(base['num_objects'][i]) + 1} objects", fontsize=8)
        axes[1, i].imshow(labels[i], cmap=LABEL_CMAP, vmin=0, vmax=3, interpolation="nearest")
    for j, (res, spp, bounces) in enumerate(QUALITY):
        axes[2, j].imshow(q_images[j])
        axes[2, j].set_title(f"{res} px, {spp} spp, {bounces} bounces", fontsize=8)
        axes[3, j].imshow(q_labels[j], cmap=LABEL_CMAP, vmin=0, vmax=3, interpolation="nearest")
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    for j in range(len(QUALITY), N):
        axes[2, j].axis("off")
        axes[3, j].axis("off")
    handles = [plt.Rectangle((0, 0), 1, 1, color=LABEL_CMAP(c)) for c in range(4)]
    fig.legend(handles, clevr.CLASS_NAMES, loc="lower right", ncol=4, fontsize=8)
    fig.suptitle(title + f"\nrows 1-2: random scenes (128 px, 16 spp, 2 bounces) and labels; "
                 "rows 3-4: scene 1 across quality settings, resampled to 128 px", fontsize=9)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, dpi=90)
    plt.close(fig)


def glyphs_grid(path: str) -> None:
    renderer = GlyphRenderer()
    scenes = renderer.example_scenes(30, seed=7)
    scenes["digit"] = np.tile(np.arange(10), 3)
    synth, _ = renderer.render(scenes, seed=0)
    real, real_y = load_real_digits("validation")
    picks = np.concatenate([np.flatnonzero(real_y == d)[:3] for d in range(10)])
    picks = picks.reshape(10, 3).T.ravel()
    fig, axes = plt.subplots(6, 10, figsize=(10, 6.6))
    for k in range(30):
        r, c = divmod(k, 10)
        axes[r, c].imshow(synth[k, ..., 0], cmap="gray_r", vmin=0, vmax=16)
        axes[r, c].set_title(f"{glyph_font(scenes, k)}", fontsize=6)
        axes[3 + r, c].imshow(real[picks[k], ..., 0], cmap="gray_r", vmin=0, vmax=16)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0, 0].set_ylabel("synthetic", fontsize=8)
    axes[3, 0].set_ylabel("real", fontsize=8)
    fig.suptitle("Rows 1-3: GlyphRenderer, example configuration (font above each); "
                 "rows 4-6: real digits (load_digits, validation half). 8 x 8, 0..16", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def glyph_font(scenes, k) -> str:
    from autosim_jax.renderers.glyphs import FONTS

    return FONTS[int(scenes["font"][k])]


def main() -> None:
    os.makedirs(OUT, exist_ok=True)
    clevr_grid(ClevrRenderer(image_size=SIZE), "ClevrRenderer (numpy ray tracer)",
               os.path.join(OUT, "clevr_grid.png"))
    clevr_grid(MitsubaRenderer(image_size=SIZE), "MitsubaRenderer (Mitsuba 3 scalar_rgb, path tracer)",
               os.path.join(OUT, "mitsuba_grid.png"))
    glyphs_grid(os.path.join(OUT, "glyphs_grid.png"))
    print("wrote", sorted(os.listdir(OUT)))


if __name__ == "__main__":
    main()
