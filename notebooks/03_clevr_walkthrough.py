# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # AutoSimulate on CLEVR-style segmentation, step by step
#
# The `clevr-seg` experiment learns the sampling distribution $q_\psi$ of a CLEVR-style
# scene renderer (lights, render quality, object count, positions, shapes, ...) so that a
# UNet trained on its renders segments spheres, cubes and cylinders well on validation
# images rendered from a hidden *target* setting. This notebook builds the experiment,
# shows renders and label maps from the deliberately poor start $\psi$ next to the
# validation images, runs AutoSimulate with the `linear` approximation, plots the validation
# mIoU and a few fields of $\psi$ as they move, and shows renders from the learned $\psi$.
# It takes about 3.5 minutes on 2 CPU cores (3 min 21 s on 2026-12-07: 40 steps of about 4.3 s;
# well under a minute at the test size, which runs two steps of 16 renders).

# %%
import os

import jax
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.patches import Patch

import autosim_jax as asj
from autosim_jax.experiments import CLEVR_START, CLEVR_TARGET
from autosim_jax.renderers import CLASS_NAMES

SMALL = os.environ.get("AUTOSIM_NOTEBOOK_SMALL") == "1"  # a few small steps only under test
STEPS = 2 if SMALL else 40  # 40 of the experiment's 160 iterations; 2: the mean time after the compiling first step
K = 16 if SMALL else None  # renders per step: the experiment's 64 (None), a quarter under test
SEED = 0

# %% [markdown]
# ## The experiment
#
# `build` renders the fixed validation and test sets (48 images each, 32 × 32, from the
# hidden target setting) and returns the simulator (start distribution + renderer), the
# UNet, the task (pixel cross-entropy, mean IoU) and the options of `make_autosimulate` at
# CPU size.

# %%
setup = asj.get_experiment("clevr-seg").build(renderer="clevr", seed=SEED)
schema = setup.simulator.renderer.schema
x_val, y_val = setup.val_data
print(f"validation images {x_val.shape}, label maps {y_val.shape}, classes {CLASS_NAMES}")
print("AutoSimulate options:", setup.config)
for field in schema.fields:
    print(f"  {field.name:<12} {field.kind:<11} shape {str(field.shape):<7} {field.doc}")

# %% [markdown]
# ## Renders from the start $\psi$ and the validation images
#
# The start is dark, rendered at 1 sample per pixel and low resolution, with objects crowded
# into a corner and nearly all spheres. The validation set comes from a setting the learner
# never sees; only its images and labels enter, through the validation loss.

# %%
LABEL_CMAP = ListedColormap(["#202020", "#e41a1c", "#377eb8", "#4daf4a"])
N_SHOW = 6


def show_batch(rows, title):
    """rows: list of (row label, images (n, h, w, 3) or label maps (n, h, w))."""
    fig, axes = plt.subplots(len(rows), N_SHOW, figsize=(1.6 * N_SHOW, 1.7 * len(rows) + 0.4), squeeze=False,
                             layout="constrained")
    for r, (label, batch) in enumerate(rows):
        for c in range(N_SHOW):
            ax = axes[r, c]
            if batch.ndim == 4:
                ax.imshow(np.clip(batch[c], 0.0, 1.0))
            else:
                ax.imshow(batch[c], cmap=LABEL_CMAP, vmin=0, vmax=len(CLASS_NAMES) - 1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r, 0].set_ylabel(label, fontsize=9)
    fig.legend(handles=[Patch(color=LABEL_CMAP(i), label=n) for i, n in enumerate(CLASS_NAMES)],
               loc="outside lower center", ncols=len(CLASS_NAMES), fontsize=8)
    fig.suptitle(title)
    plt.show()


psi0 = setup.simulator.distribution.init()
start = jax.jit(setup.simulator.simulate, static_argnums=2)(jax.random.PRNGKey(SEED), psi0, N_SHOW)
show_batch(
    [("start psi", np.asarray(start.inputs)), ("its labels", np.asarray(start.labels)),
     ("validation", x_val), ("its labels", y_val)],
    "Renders from the start psi (top) and validation images from the hidden target (bottom)",
)

# %% [markdown]
# ## AutoSimulate steps
#
# `setup.make_autosimulate(SEED, config, approximation="linear")` (`make_autosimulate` on the
# experiment's simulator, UNet, task and validation set) gives the optax-style pair `init` /
# `step`. Each step renders $K = 64$ scenes from the current $\psi$, fine-tunes a fresh UNet
# for 16 epochs on them in minibatches of 16 (the experiment's `theta_reset_every=1`), takes the
# validation gradient and updates $\psi$ by the score-function estimate, at a rate decaying as
# $0.1 / (1 + t / 30)$ (the cpu preset since session 61; `autosim run clevr-seg` runs its 160 steps,
# this notebook the first 40). The first step compiles the three jitted
# stages.

# %%
config = setup.config if K is None else setup.config.replace(dataset_size=K)
autosim = setup.make_autosimulate(SEED, config, approximation="linear")
state = autosim.init(SEED)
history = []
for _ in range(STEPS):
    state, info = autosim.step(state)
    _, test_metric = autosim.inner.measure(state.theta, *setup.test_data)
    history.append(dict(info._asdict(), test_metric=float(test_metric), psi=state.psi))
first, last = history[0], history[-1]
step_times = [h["time_render"] + h["time_train"] + h["time_outer"] for h in history]
print(f"{STEPS} steps, {int(state.images)} images rendered; first step {step_times[0]:.1f} s (compilation), "
      f"later steps {np.mean(step_times[1:]):.2f} s each")
print(f"validation mIoU {first['val_metric']:.3f} -> {last['val_metric']:.3f}; "
      f"test mIoU {first['test_metric']:.3f} -> {last['test_metric']:.3f}")
print("trace counts (no retracing between steps):", autosim.trace_counts())

# %% [markdown]
# ## The validation metric and $\psi$ in the field's units
#
# The continuous lights are logit-normal in their range: the median of `ambient` is
# $\mathrm{low} + (\mathrm{high} - \mathrm{low})\,\sigma(\mathrm{loc})$. The shape prior is the
# softmax of the `shape` logits, averaged over the four object slots. Dotted lines mark the
# hidden target's values, which the learner never sees.


# %%
def field_median(psi, name):
    field = schema[name]
    return float(field.low + (field.high - field.low) * jax.nn.sigmoid(psi[name].loc))


def shape_probs(psi):
    return np.asarray(jax.nn.softmax(psi["shape"].logits, axis=-1).mean(axis=0))


steps = np.arange(STEPS + 1)
psis = [psi0] + [h["psi"] for h in history]
fig, axes = plt.subplots(1, 3, figsize=(14, 3.8), layout="constrained")
axes[0].plot(steps[1:], [h["val_metric"] for h in history], marker=".", label="validation")
axes[0].plot(steps[1:], [h["test_metric"] for h in history], ls="--", alpha=0.7, label="test")
axes[0].set_ylabel("mIoU of the fine-tuned UNet")
axes[0].set_title("metric after each step (warm-started model)")
for name, color in (("ambient", "C0"), ("key_light", "C1"), ("back_light", "C2")):
    axes[1].plot(steps, [field_median(p, name) for p in psis], color=color, label=name)
    axes[1].axhline(CLEVR_TARGET[name]["loc"], color=color, ls=":", lw=1)
axes[1].set_ylabel("median of the light's distribution")
axes[1].set_title("lights (dotted: hidden target)")
probs = np.array([shape_probs(p) for p in psis])
for i, name in enumerate(CLASS_NAMES[1:]):
    axes[2].plot(steps, probs[:, i], color=LABEL_CMAP(i + 1), label=name)
axes[2].axhline(1 / 3, color="grey", ls=":", lw=1, label="target (1/3 each)")
axes[2].set_ylabel("probability, mean over object slots")
axes[2].set_title("shape prior")
for ax in axes:
    ax.set_xlabel("outer step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
plt.show()
print("start -> learned (target):")
for name in ("ambient", "key_light", "back_light"):
    start_value, target_value = CLEVR_START[name]["loc"], CLEVR_TARGET[name]["loc"]
    print(f"  {name:<10} {start_value:.2f} -> {field_median(state.psi, name):.2f} ({target_value})")
print(f"  shape      {np.round(shape_probs(psi0), 2)} -> {np.round(shape_probs(state.psi), 2)}")

# %% [markdown]
# The metric logged during AutoSimulate is that of each step's freshly fine-tuned model (16
# epochs on 64 renders), which at this size still predicts background everywhere (mIoU 0.238 on
# every step, 2026-12-07): it says nothing about $\psi$. The fair test of a learned $\psi$ trains
# a *fresh* model on equal budgets from the start and the learned $\psi$
# (`autosim_jax.assess_psi`, which `autosim run` does after its steps; `autosim run clevr-seg`
# reports it for this experiment). Notebook 04 shows it on the digits, as the README's quickstart does.
#
# ## Renders from the learned $\psi$
#
# Same key as the start renders above, so the differences come from $\psi$ alone.

# %%
learned = jax.jit(setup.simulator.simulate, static_argnums=2)(jax.random.PRNGKey(SEED), state.psi, N_SHOW)
show_batch(
    [("start psi", np.asarray(start.inputs)), ("learned psi", np.asarray(learned.inputs)),
     ("its labels", np.asarray(learned.labels)), ("validation", x_val)],
    f"Renders from the start and the learned psi after {STEPS} steps",
)
