"""What does the noise gate (``autosim_jax.outer.snr_gate``) do to noise and to a weak signal?

A simulated psi of three coordinates, each step's hypergradient ``truth + N(0, 1)`` with a known
standard error of 1: a coordinate of pure noise (truth 0) and two with a quarter and half a
standard error of signal per step. Adam 0.1 moves them for ``--steps`` steps, plain or followed by
the gate at several ``(threshold, decay)``; over ``--draws`` noise draws (fixed keys) it reports the
noise coordinate's rms travel and each signal coordinate's mean travel. No device; seconds.

Usage::

    python benchmarks/snr_gate_sim.py --steps 40,200 --out benchmarks/results/snr_gate_sim

Writes ``OUT.json`` (versions, command, date, every figure) and ``OUT.png`` (travel per setting).
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
from provenance import command_line  # the record's command, quoted for a shell

import autosim_jax as asj

TRUTH = (0.0, 0.25, 0.5)
SETTINGS = ((None, None), (1.0, 0.9), (2.0, 0.9), (1.0, 0.99), (1.5, 0.99), (2.0, 0.99), (3.0, 0.99))


def travel(threshold: float | None, decay: float | None, noise: jax.Array) -> np.ndarray:
    """|psi_T| per coordinate after Adam 0.1 (gated when ``threshold``) on ``TRUTH + noise``."""
    opt = optax.adam(0.1) if threshold is None else optax.chain(optax.adam(0.1), asj.snr_gate(threshold, decay))
    truth, se = jnp.asarray(TRUTH), {"a": jnp.ones(len(TRUTH))}

    def step(carry, n):
        params, state = carry
        g = {"a": truth + n}
        extra = {} if threshold is None else {"hypergradient": g, "hypergradient_stderr": se}
        updates, state = opt.update(g, state, params, **extra)
        return (optax.apply_updates(params, updates), state), None

    params = {"a": jnp.zeros(len(TRUTH))}
    (params, _), _ = jax.lax.scan(step, (params, opt.init(params)), noise)
    return np.abs(np.asarray(params["a"]))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", default="40,200")
    p.add_argument("--draws", type=int, default=40)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    rows = []
    for steps in (int(s) for s in args.steps.split(",")):
        noises = [jax.random.normal(jax.random.key(k), (steps, len(TRUTH))) for k in range(args.draws)]
        for threshold, decay in SETTINGS:
            t = np.array([travel(threshold, decay, n) for n in noises])
            rows.append({"steps": steps, "threshold": threshold, "decay": decay,
                         "noise_rms_travel": float(np.sqrt(np.mean(t[:, 0] ** 2))),
                         "signal_0.25_mean_travel": float(t[:, 1].mean()),
                         "signal_0.5_mean_travel": float(t[:, 2].mean())})
            r = rows[-1]
            name = "plain Adam" if threshold is None else f"gate {threshold:g} / {decay:g}"
            print(f"{steps:4d} steps  {name:>16}: noise rms {r['noise_rms_travel']:.3f}  signal 0.25 "
                  f"{r['signal_0.25_mean_travel']:.2f}  signal 0.5 {r['signal_0.5_mean_travel']:.2f}")
    with open(args.out + ".json", "w") as f:
        json.dump({"benchmark": "snr_gate_sim", "date": datetime.date.today().isoformat(),
                   "command": command_line(__file__, argv),
                   "jax_version": jax.__version__, "autosim_jax": asj.__version__, "precision": "float32",
                   "device": str(jax.devices()[0].platform), "truth": TRUTH, "draws": args.draws, "rows": rows},
                  f, indent=1)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.5))
    for i, key in enumerate(("noise_rms_travel", "signal_0.25_mean_travel", "signal_0.5_mean_travel")):
        ax = fig.add_subplot(1, 3, i + 1)
        for steps in sorted({r["steps"] for r in rows}):
            sel = [r for r in rows if r["steps"] == steps]
            ax.plot(range(len(sel)), [r[key] for r in sel], marker="o", label=f"{steps} steps")
        ax.set_xticks(range(len(SETTINGS)), ["plain" if t is None else f"{t:g}/{d:g}" for t, d in SETTINGS],
                      rotation=45, fontsize=7)
        ax.set_title(key.replace("_", " "), fontsize=9)
    ax.legend(fontsize=7)
    fig.suptitle("Adam 0.1 on simulated hypergradients: plain and gated (threshold / decay)", fontsize=9)
    fig.savefig(args.out + ".png", dpi=120, bbox_inches="tight")
    return 0


if __name__ == "__main__":
    sys.exit(main())
