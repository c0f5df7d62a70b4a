r"""Step control for psi: natural gradients and a KL trust region in distribution space, and a noise gate.

AutoSimulate's psi are the parameters of ``q_psi`` (logits, pre-image means and
log-scales). An optimiser that steps in those raw coordinates (Adam: about
``learning_rate`` per coordinate per step, whatever the signal) moves a narrow Gaussian by
many standard deviations, or a categorical onto one category, as easily as it makes a small
change. :func:`natural_trust_region` measures the step by what it does to the
distribution instead: it preconditions the (averaged) hypergradient with the inverse Fisher
information of ``q_psi``, which has a closed form for every family of
:mod:`autosim_jax.distributions`, and scales the step so that the quadratic model of
``KL(q_psi || q_psi')`` is at most ``max_kl``.

Fisher information per family (``psi`` leaves as built by :mod:`autosim_jax.distributions`):

* :class:`~autosim_jax.NormalParams` ``(loc, log_scale)`` of a Gaussian or of the normal
  pre-image of a bounded field (the Fisher is invariant under the bijection):
  ``diag(1 / sigma^2, 2)`` per element;
* :class:`~autosim_jax.CategoricalParams` ``logits``: ``diag(p) - p p^T`` per categorical,
  whose pseudo-inverse applied to a gradient ``g`` with ``sum g = 0`` (every score-function
  gradient of a softmax has it) is ``g / p`` centred to mean zero. A
  :func:`~autosim_jax.histogram` field has these parameters too and the same Fisher, KL and
  (up to a constant) entropy: its within-bin law does not depend on psi.

:func:`snr_gate` is the other kind of step control: it moves a coordinate only as far as its
averaged hypergradient stands above the noise the score-function samples themselves measure.
:func:`signal_test` makes the same comparison over the whole run and holds a leaf that has shown
no evidence at its start. :func:`cross_fitted_line_search` chooses how far to take a proposed step
by the local model's value there, estimated by importance weights on the step's own renders.

References:
  Amari (1998), natural gradient; Kakade (2002), natural policy gradient; Schulman et al.
  (2015), trust regions in KL for score-function (policy) gradients.

Example:
  >>> import jax.numpy as jnp
  >>> from autosim_jax import NormalParams
  >>> psi = {"x": NormalParams(jnp.array(0.0), jnp.log(jnp.array(2.0)))}
  >>> grad = {"x": NormalParams(jnp.array(1.0), jnp.array(0.0))}
  >>> nat, sq = natural_gradient(psi, grad)
  >>> float(nat["x"].loc), float(sq)          # sigma^2 * g, and g^T F^-1 g
  (4.0, 4.0)
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from .distributions import CategoricalParams, NormalParams

PyTree = Any

# Probabilities are floored here in F^-1 (a category of mass 1e-6 would otherwise take a
# step of 1e6 times its gradient before the trust region could see it).
_MIN_PROB = 1e-4

_NOT_A_FAMILY = (
    "{what}: psi leaf at {path} is a {kind}, not NormalParams or CategoricalParams; "
    "the closed form is known only for the plain families of autosim_jax.distributions (not for "
    "with_exploration's mixtures, from_schema(..., explore=...)). Use a plain optax optimiser "
    "(outer_optimizer='adam') and entropy_weight=0 for other parameterisations."
)


def _is_family(x: Any) -> bool:
    return isinstance(x, (NormalParams, CategoricalParams))


def check_families(psi: PyTree, what: str) -> None:
    """Raises a ValueError naming ``what`` and the leaf when ``psi`` is not made of the plain families."""
    for path, leaf in jax.tree_util.tree_flatten_with_path(psi, is_leaf=_is_family)[0]:
        if not _is_family(leaf):
            raise ValueError(_NOT_A_FAMILY.format(what=what, path=jax.tree_util.keystr(path),
                                                  kind=type(leaf).__name__))


def natural_gradient(psi: PyTree, grad: PyTree) -> tuple[PyTree, jax.Array]:
    """``F(psi)^+ grad`` for a ``psi`` of :mod:`~autosim_jax.distributions` families, and ``grad . F^+ grad``.

    Args:
      psi: the distribution's parameters (a pytree of ``NormalParams`` / ``CategoricalParams``).
      grad: a gradient shaped like ``psi``.

    Returns:
      ``(natural gradient like psi, scalar g^T F^+ g)``; half the latter times a step size
      squared is the KL that step costs to second order (categories' probabilities are
      floored at 1e-4 in ``F^+``).

    Raises:
      ValueError: for a leaf of another family.
    """
    check_families(psi, "natural_gradient")

    def one(p, g):
        if isinstance(p, NormalParams):
            return NormalParams(jnp.exp(2 * p.log_scale) * g.loc, g.log_scale / 2.0)
        prob = jnp.maximum(jax.nn.softmax(p.logits, axis=-1), _MIN_PROB)
        d = g.logits / prob
        return CategoricalParams(d - jnp.mean(d, axis=-1, keepdims=True))

    nat = jax.tree.map(one, psi, grad, is_leaf=_is_family)
    return nat, optax.tree.vdot(grad, nat)


def kl_divergence(psi: PyTree, other: PyTree) -> jax.Array:
    """``KL(q_psi || q_other)`` in closed form, summed over the fields of a product.

    Normal (or a bounded field's normal pre-image; KL is invariant under the bijection):
    ``log(s2/s1) + (s1^2 + (m1-m2)^2) / (2 s2^2) - 1/2``; categorical: ``sum p log(p/q)``.

    Example:
      >>> import jax.numpy as jnp
      >>> from autosim_jax import CategoricalParams
      >>> a, b = CategoricalParams(jnp.log(jnp.array([0.5, 0.5]))), CategoricalParams(jnp.log(jnp.array([0.9, 0.1])))
      >>> round(float(kl_divergence({"c": a}, {"c": b})), 4)   # 0.5 log(0.5/0.9) + 0.5 log(0.5/0.1)
      0.5108
    """
    check_families(psi, "kl_divergence")

    def one(p, q):
        if isinstance(p, NormalParams):
            var_p, var_q = jnp.exp(2 * p.log_scale), jnp.exp(2 * q.log_scale)
            return jnp.sum(q.log_scale - p.log_scale + (var_p + (p.loc - q.loc) ** 2) / (2 * var_q) - 0.5)
        lp, lq = jax.nn.log_softmax(p.logits, axis=-1), jax.nn.log_softmax(q.logits, axis=-1)
        return jnp.sum(jnp.exp(lp) * (lp - lq))

    return sum(jax.tree.leaves(jax.tree.map(one, psi, other, is_leaf=_is_family)), jnp.zeros(()))


def entropy(psi: PyTree) -> jax.Array:
    """Entropy of ``q_psi`` in closed form (nats), summed over fields; bounded fields count
    their normal pre-image's (a monotone function of its scale).

    Example:
      >>> import jax.numpy as jnp
      >>> from autosim_jax import CategoricalParams
      >>> round(float(entropy({"c": CategoricalParams(jnp.zeros(4))})), 4)   # log 4
      1.3863
    """
    check_families(psi, "entropy")

    def one(p):
        if isinstance(p, NormalParams):
            return jnp.sum(p.log_scale + 0.5 * jnp.log(2 * jnp.pi * jnp.e))
        logp = jax.nn.log_softmax(p.logits, axis=-1)
        return -jnp.sum(jnp.exp(logp) * logp)

    return sum(jax.tree.leaves(jax.tree.map(one, psi, is_leaf=_is_family)), jnp.zeros(()))


def add_entropy_bonus(psi: PyTree, grad: PyTree, weight: float) -> PyTree:
    r"""``grad - weight * ||grad|| * dH/dpsi / ||dH/dpsi||``: descend the hypergradient while
    ascending the entropy of ``q_psi``, at ``weight`` times the hypergradient's own norm.

    The hypergradient's scale is arbitrary (``u`` of Table 1 is ``g_val``, ``H g_val`` or
    ``(H + lambda I)^-1 g_val``), so the bonus is relative to it: ``weight`` is the ratio of
    the two pushes and means the same for every approximation.

    Example:
      >>> import jax.numpy as jnp
      >>> from autosim_jax import NormalParams
      >>> psi = {"x": NormalParams(jnp.array(0.0), jnp.array(0.0))}
      >>> g = add_entropy_bonus(psi, {"x": NormalParams(jnp.array(2.0), jnp.array(0.0))}, 0.5)
      >>> float(g["x"].loc), float(g["x"].log_scale)   # widen by half the gradient's norm
      (2.0, -1.0)
    """
    dh = jax.grad(entropy)(psi)
    scale = weight * optax.tree.norm(grad) / jnp.maximum(optax.tree.norm(dh), 1e-30)
    return jax.tree.map(lambda g, d: g - scale * d, grad, dh)


class NaturalTrustRegionState(NamedTuple):
    """State of :func:`natural_trust_region`."""

    momentum: PyTree  # EMA of the raw hypergradients, like psi
    count: jax.Array  # int32[], updates done (for the EMA's bias correction)
    last_kl: jax.Array  # f32[], the exact KL of the last step


def natural_trust_region(learning_rate: float, max_kl: float, momentum: float = 0.9) -> optax.GradientTransformation:
    r"""Natural-gradient descent on psi with a KL trust region, as an optax transformation.

    .. math::
        m_t = \beta m_{t-1} + (1 - \beta) g_t,\quad d_t = F^+ \hat m_t,\quad
        \Delta\psi = -\min\Big(\eta, \sqrt{2\,\delta / (\hat m_t^\top d_t)}\Big)\, d_t

    with ``hat m`` the bias-corrected average, ``eta = learning_rate`` and ``delta =
    max_kl``: a step never costs more than ``max_kl`` nats of KL between consecutive
    ``q_psi`` (to second order), and small, consistent gradients still move psi at the
    natural-gradient rate ``eta``. The step is then halved until the exact KL
    (:func:`kl_divergence`) is within ``max_kl`` as well, since the quadratic model is blind
    to large logit moves of nearly empty categories. The update needs ``params`` (the Fisher
    depends on psi).

    Args:
      learning_rate: ``eta``, the natural-gradient step size (``> 0``).
      max_kl: ``delta``, the trust region in nats per step (``> 0``).
      momentum: ``beta`` in ``[0, 1)``, averaging of the noisy score-function estimates.

    Returns:
      An ``optax.GradientTransformation``; ``state.last_kl`` reports the step's KL.

    Raises:
      ValueError: for a non-positive ``learning_rate`` / ``max_kl`` or ``momentum`` outside
        ``[0, 1)``.

    Example:
      >>> import jax.numpy as jnp, optax
      >>> from autosim_jax import CategoricalParams
      >>> psi = {"c": CategoricalParams(jnp.zeros(3))}
      >>> opt = natural_trust_region(learning_rate=10.0, max_kl=0.01, momentum=0.0)
      >>> grad = {"c": CategoricalParams(jnp.array([1.0, -0.5, -0.5]))}
      >>> updates, state = opt.update(grad, opt.init(psi), psi)
      >>> bool(0.005 < float(state.last_kl) <= 0.01001)        # capped by the trust region
      True
    """
    if not learning_rate > 0 or not max_kl > 0:
        raise ValueError(f"natural_trust_region: learning_rate and max_kl must be > 0, got {learning_rate}, {max_kl}.")
    if not 0 <= momentum < 1:
        raise ValueError(f"natural_trust_region: momentum must be in [0, 1), got {momentum}.")

    def init(params):
        return NaturalTrustRegionState(optax.tree.zeros_like(params), jnp.zeros((), jnp.int32),
                                       jnp.zeros((), jnp.float32))

    def update(grads, state, params=None):
        if params is None:
            raise ValueError("natural_trust_region needs params (the Fisher of q_psi depends on psi).")
        m = jax.tree.map(lambda a, g: momentum * a + (1 - momentum) * g, state.momentum, grads)
        count = state.count + 1
        m_hat = jax.tree.map(lambda a: a / (1 - momentum ** count.astype(a.dtype)), m)
        nat, sq = natural_gradient(params, m_hat)
        sq = jnp.maximum(sq, 0.0)
        step = jnp.minimum(learning_rate, jnp.sqrt(2 * max_kl / jnp.maximum(sq, 1e-30)))

        # The second-order model of the KL underestimates it far from psi (a logit of a
        # nearly empty category can jump by thousands at little modelled cost): halve the
        # step until the exact KL is inside the trust region too (at most 30 halvings).
        def kl_of(eta):
            return kl_divergence(params, jax.tree.map(lambda x, d: x - eta * d, params, nat))

        def shrink(carry):
            eta, _ = carry
            return eta / 2, kl_of(eta / 2)

        def too_far(carry):
            eta, kl = carry
            return (kl > max_kl * (1 + 1e-3)) & (eta > step * 2.0**-30)

        step, kl = jax.lax.while_loop(too_far, shrink, (step, kl_of(step)))
        updates = jax.tree.map(lambda d: -step * d, nat)
        return updates, NaturalTrustRegionState(m, count, kl.astype(jnp.float32))

    return optax.GradientTransformation(init, update)


class SnrGateState(NamedTuple):
    """:func:`snr_gate`'s state: the average hypergradient and the variance of its noise."""

    mean: PyTree  # m_t = decay m_{t-1} + (1 - decay) g_t
    noise_var: PyTree  # Var[m_t] if each step's noise were independent with variance se_t^2


def snr_gate(threshold: float = 2.0, decay: float = 0.99,
             per: str = "coordinate") -> optax.GradientTransformationExtraArgs:
    r"""Scales each coordinate's psi update by how far its averaged hypergradient stands above noise.

    Adam divides each coordinate's step by the root of its recent squared gradients, so a
    coordinate whose hypergradient is pure noise (a field that does not change the validation
    loss, or the position of an object that is rarely rendered) still steps by about the
    learning rate, in a random direction: over ``T`` steps it wanders ``~ lr sqrt(T)`` away,
    and a field that was right drifts off (``docs/learning.md``, session 12). The score-function
    estimate knows its own noise: every step's ``K`` samples give each coordinate's standard
    error ``se_t`` (:func:`~autosim_jax.estimators.reinforce_gradient` with
    ``return_stderr=True``). This transformation, chained *after* the optimiser, keeps

    .. math::

        m_t = d\, m_{t-1} + (1 - d)\, g_t, \qquad
        V_t = d^2 V_{t-1} + (1 - d)^2 se_t^2 \quad (m_0 = V_0 = 0),

    the average hypergradient and the variance its noise would have if the steps' noise were
    independent, and multiplies the update by the positive-part James-Stein factor

    .. math:: w_t = \max\big(0,\ 1 - \text{threshold}^2\, V_t / m_t^2\big),

    0 when the averaged signal is within ``threshold`` standard errors of zero, near 1 when it
    is many standard errors away. Both ``m`` and ``V`` start at 0 with the same weights, so
    their ratio needs no bias correction; for ``t << 1 / (1 - d)`` steps ``|m| / sqrt(V)`` is the
    t-statistic of the plain mean, so a weak but consistent signal passes once it has gathered
    (half a standard error per step: ``threshold`` 2 after 16 steps, factor 0.5 after 32).

    A noise coordinate passes only when its average strays beyond ``threshold`` standard
    errors. Simulated with Adam 0.1 over 200 steps (``benchmarks/snr_gate_sim.py``, 30 noise
    draws; a coordinate of pure noise, and one with half a standard error of signal per step),
    the noise coordinate's rms travel and the signal coordinate's mean travel, against plain
    Adam's 1.37 and 8.5: threshold 1 / decay 0.9: 0.72 and 6.3; 2 / 0.9: 0.17 and 2.7; 2 / 0.99
    (the default): 0.19 and 6.1. Over 40 steps the default keeps 0.67 of that signal's 1.79:
    a weak signal is slowed with the noise.

    With ``per="leaf"`` the test is made once per psi leaf (e.g. a field's ``loc``, or all the
    logits of a categorical) on its ``n`` coordinates together, the vector James-Stein factor

    .. math:: w_t = \max\big(0,\ 1 - \text{threshold}^2\, n \big/ \textstyle\sum_i m_i^2 / V_i\big),

    the same for every coordinate of the leaf (the per-coordinate factor when ``n = 1``): a
    signal spread thinly over many coordinates, each within its noise, passes together. Why: on
    clevr-det's 54-cell categorical at cpu size every logit is within two standard errors while
    together they point the right way (``docs/detection.md``, session 12).

    Args:
      threshold: standard errors below which a coordinate does not move (``> 0``).
      decay: ``d``, the memory of the average (``0 <= d < 1``).
      per: ``"coordinate"`` (default) or ``"leaf"`` (above).

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose ``update`` takes the keyword
      arguments ``hypergradient`` and ``hypergradient_stderr`` (pytrees like psi).

    Example:
      >>> import jax.numpy as jnp, optax
      >>> opt = optax.chain(optax.sgd(1.0), snr_gate(threshold=1.0, decay=0.9))
      >>> psi = {"a": jnp.zeros(2)}
      >>> g, se = {"a": jnp.array([1.0, 0.1])}, {"a": jnp.array([0.1, 1.0])}
      >>> state = opt.init(psi)
      >>> updates, state = opt.update(g, state, psi, hypergradient=g, hypergradient_stderr=se)
      >>> [round(float(u), 3) for u in updates["a"]]  # 10 standard errors: kept; 0.1: stopped
      [-0.99, -0.0]
    """
    if not threshold > 0:
        raise ValueError(f"snr_gate: threshold must be > 0 (standard errors), got {threshold!r}.")
    if not 0 <= decay < 1:
        raise ValueError(f"snr_gate: decay must be in [0, 1), got {decay!r}.")
    if per not in ("coordinate", "leaf"):
        raise ValueError(f"snr_gate: per must be 'coordinate' or 'leaf', got {per!r}.")

    def init(params):
        return SnrGateState(optax.tree.zeros_like(params), optax.tree.zeros_like(params))

    def update(updates, state, params=None, *, hypergradient, hypergradient_stderr, **_):
        del params
        mean = jax.tree.map(lambda m, g: decay * m + (1 - decay) * g, state.mean, hypergradient)
        var = jax.tree.map(lambda v, se: decay**2 * v + (1 - decay) ** 2 * se**2, state.noise_var,
                           hypergradient_stderr)

        def gate(u, m, v):
            if per == "leaf":  # n / sum(m^2 / V); a coordinate without noise (V = 0) counts as signal
                t2 = jnp.sum(jnp.where(v > 0, m * m / jnp.where(v > 0, v, 1.0), jnp.where(m != 0, jnp.inf, 0.0)))
                ratio = jnp.where(t2 > 0, threshold**2 * m.size / jnp.where(t2 > 0, t2, 1.0), jnp.inf)
            else:
                ratio = jnp.where(m != 0, threshold**2 * v / jnp.where(m != 0, m * m, 1.0), jnp.inf)
            return u * jnp.maximum(0.0, 1.0 - ratio)

        return jax.tree.map(gate, updates, mean, var), SnrGateState(mean, var)

    return optax.GradientTransformationExtraArgs(init, update)


class SignalTestState(NamedTuple):
    """:func:`signal_test`'s state: the run's summed hypergradient and noise, and each leaf's verdict."""

    count: jax.Array  # int32[], steps seen
    grad_sum: PyTree  # sum_t g_t, like psi
    var_sum: PyTree  # sum_t se_t^2, like psi
    start: PyTree  # psi at init: where a leaf without evidence goes back to
    evidence: PyTree  # bool[] per psi leaf: its test has crossed the boundary at some step (for good)
    held: PyTree  # bool[] per psi leaf: held at its start (no evidence by now, after hold_after steps)
    p_value: PyTree  # f32[] per psi leaf: the test of the sums so far (1 before the first step)


def chi2_sf(x: jax.Array, dof: jax.Array | int) -> jax.Array:
    """``P(X > x)`` for ``X ~ chi^2(dof)``: the regularised upper incomplete gamma ``Q(dof / 2, x / 2)``.

    Example:
      >>> import jax.numpy as jnp
      >>> round(float(chi2_sf(jnp.array(2.0), 2)), 6)   # exp(-x / 2) for two degrees of freedom
      0.367879
    """
    return jax.scipy.special.gammaincc(jnp.asarray(dof, jnp.float32) / 2, jnp.asarray(x, jnp.float32) / 2)


def categorical_classes(psi: PyTree) -> PyTree:
    """Like ``psi``, with each leaf replaced by its categorical's number of classes (the last axis of a
    :class:`~autosim_jax.CategoricalParams` ``logits``) and 0 for every other leaf."""
    def classes(x):
        if isinstance(x, CategoricalParams):
            return CategoricalParams(int(x.logits.shape[-1]))
        return jax.tree.map(lambda _: 0, x)

    return jax.tree.map(classes, psi, is_leaf=lambda x: isinstance(x, CategoricalParams))


def leaf_signal(grad_sum: jax.Array, var_sum: jax.Array, classes: int = 0) -> tuple[jax.Array, jax.Array, jax.Array]:
    r"""The chi-square test of "no signal" for one psi leaf from its summed hypergradient and noise.

    With ``z_i = grad_sum_i / sqrt(var_sum_i)`` (each a standard normal without signal, when the
    summed steps' noise is independent with the given variances) the statistic is ``sum_i z_i^2``
    with the leaf's ``n`` coordinates as degrees of freedom. A categorical's logits (``classes = C
    >= 2``) are the exception: every score-function gradient of a softmax sums to zero over a row,
    so a row of ``C`` coordinates holds ``C - 1`` independent directions and, for a uniform row,
    ``sum_i z_i^2 = C / (C - 1) chi^2_{C-1}``. The statistic is then scaled by ``(C - 1) / C``
    with ``n (C - 1) / C`` degrees of freedom: exact for a uniform row, close for a spread one
    (without it the test would pass noise too often: at level 0.01, 4 rows of 2 classes 4% of the
    time). A coordinate without noise (``var_sum = 0``) counts as infinite evidence if it moved.

    Returns:
      ``(statistic, degrees_of_freedom, p_value)``, float32 scalars.

    Example:
      >>> import jax.numpy as jnp
      >>> stat, dof, p = leaf_signal(jnp.array([2.0, -2.0]), jnp.array([1.0, 1.0]), classes=2)
      >>> float(stat), float(dof), round(float(p), 4)   # one z of 2 counted once: P(chi^2_1 > 4)
      (4.0, 1.0, 0.0455)
    """
    z2 = jnp.where(var_sum > 0, grad_sum**2 / jnp.where(var_sum > 0, var_sum, 1.0),
                   jnp.where(grad_sum != 0, jnp.inf, 0.0))
    keep = (classes - 1) / classes if classes >= 2 else 1.0
    stat, dof = jnp.sum(z2) * keep, jnp.asarray(grad_sum.size * keep, jnp.float32)
    return stat, dof, chi2_sf(stat, dof)


def signal_test(hold_after: int, alpha: float = 0.01) -> optax.GradientTransformationExtraArgs:
    r"""Holds each psi leaf at its start unless the run has shown evidence that its hypergradient is not zero.

    Adam normalises each coordinate's step, so a field whose hypergradient is pure noise (it
    does not change the validation loss) still moves by about the learning rate per step: a
    random walk of ``~ lr sqrt(T)``. On clevr-seg at gpu size each object's colour and material
    (start = target = uniform) walk to one-hot-like by step 240 on two seeds of three and cost
    them most of their gain; frozen at the start, the same seeds close 1.0 at 240
    (``docs/learning.md``, session 23). This transformation, chained *after* the optimiser, decides
    from the data which leaves those are. It sums over the run, per coordinate, the hypergradient
    ``g_t`` and the variance of its noise ``se_t^2`` (the score-function samples' own standard
    error, which matches the spread between steps: ``benchmarks/hypergradient_signal.py``), and
    after every step ``t`` tests each leaf (a field's ``loc``, ``log_scale`` or ``logits``) with
    its ``n`` coordinates ``i``:

    .. math::

        z_i = \frac{\sum_{s \le t} g_{s,i}}{\sqrt{\sum_{s \le t} se_{s,i}^2}}, \qquad
        \chi^2 = \sum_i z_i^2, \qquad p_t = P(\chi^2_n > \chi^2)

    (:func:`leaf_signal`, which corrects the degrees of freedom of a categorical's logits). A leaf
    has *evidence* from the first step with ``p_t <= alpha / (t (t + 1))``, and keeps it: those
    levels sum to ``alpha`` over any number of steps, so a leaf without signal (each ``z_i`` a
    standard normal at every ``t``, whatever psi did) gains evidence by chance with probability at
    most ``alpha``, however long the run. Why at any step and for good: a field with a strong
    signal can reach its optimum within a few steps, after which its hypergradient averages zero
    and its summed ``z`` fades back towards noise (a test at fixed steps held digits-sim2real's
    stroke width and contrast that way). From step ``hold_after`` on, a leaf without evidence
    goes back to its start (the user's setting, which the data did not contradict) and is held
    there until it gains evidence (the sums go on); a leaf with evidence is left to the optimiser.

    Args:
      hold_after: steps before the first hold (``>= 1``): until then every leaf moves.
      alpha: the probability that a leaf without signal is ever released (``0 < alpha < 1``).

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose ``update`` needs ``params`` (psi) and the
      keyword arguments ``hypergradient`` and ``hypergradient_stderr`` (pytrees like psi). Read
      its verdicts with :func:`signal_test_report`.

    Example:
      >>> import jax.numpy as jnp, optax
      >>> opt = optax.chain(optax.sgd(1.0), signal_test(hold_after=2, alpha=0.05))
      >>> psi = {"lit": jnp.zeros(2), "dull": jnp.zeros(2)}
      >>> state = opt.init(psi)
      >>> for g_dull in (jnp.array([0.3, -0.2]), jnp.array([-0.1, 0.4])):   # noise of se 1
      ...     g = {"lit": jnp.array([5.0, -4.0]), "dull": g_dull}
      ...     se = {"lit": jnp.ones(2), "dull": jnp.ones(2)}
      ...     updates, state = opt.update(g, state, psi, hypergradient=g, hypergradient_stderr=se)
      ...     psi = optax.apply_updates(psi, updates)
      >>> psi["lit"].tolist(), psi["dull"].tolist()   # the dull leaf is back at its start
      ([-10.0, 8.0], [0.0, 0.0])
      >>> {k: v["held"] for k, v in signal_test_report(state[1]).items()}
      {"['dull']": True, "['lit']": False}
    """
    if not (isinstance(hold_after, int) and hold_after >= 1):
        raise ValueError(f"signal_test: hold_after must be an int >= 1 (steps before the first hold), got "
                         f"{hold_after!r}.")
    if not 0 < alpha < 1:
        raise ValueError(f"signal_test: alpha must be in (0, 1) (the chance that a leaf without signal is ever "
                         f"released), got {alpha!r}.")

    def init(params):
        no = jax.tree.map(lambda _: jnp.zeros([], bool), params)
        return SignalTestState(jnp.zeros([], jnp.int32), optax.tree.zeros_like(params),
                               optax.tree.zeros_like(params), params, no, no,
                               jax.tree.map(lambda _: jnp.ones([], jnp.float32), params))

    def update(updates, state, params=None, *, hypergradient, hypergradient_stderr, **_):
        if params is None:
            raise ValueError("signal_test: update needs params (psi): a leaf without evidence goes back to its start.")
        count = state.count + 1
        grad_sum = jax.tree.map(jnp.add, state.grad_sum, hypergradient)
        var_sum = jax.tree.map(lambda v, se: v + se**2, state.var_sum, hypergradient_stderr)
        p_value = jax.tree.map(lambda g, v, c: leaf_signal(g, v, c)[2], grad_sum, var_sum, categorical_classes(params))
        level = alpha / (count * (count + 1.0))
        evidence = jax.tree.map(lambda e, p: e | (p <= level), state.evidence, p_value)
        held = jax.tree.map(lambda e: (count >= hold_after) & ~e, evidence)
        # newly held: one step back to the start; held: no step; otherwise the optimiser's
        new_updates = jax.tree.map(
            lambda u, h, old, s, x: jnp.where(h, jnp.where(old, jnp.zeros_like(u), s - x), u),
            updates, held, state.held, state.start, params)
        return new_updates, SignalTestState(count, grad_sum, var_sum, state.start, evidence, held, p_value)

    return optax.GradientTransformationExtraArgs(init, update)


def find_state(outer_opt_state: Any, state_type: type) -> Any:
    """The first state of type ``state_type`` inside a (chained) optax state, or ``None``.

    The psi optimiser is an ``optax.chain`` whose states nest in tuples; this finds one
    transformation's state by its class, e.g. the :class:`SnrGateState` of :func:`snr_gate`.

    >>> import optax
    >>> opt = optax.chain(snr_gate(threshold=2.0), optax.adam(0.1))
    >>> state = opt.init({"mu": jnp.zeros(2)})
    >>> type(find_state(state, SnrGateState)).__name__, find_state(state, SignalTestState)
    ('SnrGateState', None)
    """
    found = [s for s in jax.tree.leaves(outer_opt_state, is_leaf=lambda x: isinstance(x, state_type))
             if isinstance(s, state_type)]
    return found[0] if found else None


def signal_test_report(outer_opt_state: Any) -> dict[str, dict[str, float | bool]] | None:
    """Each psi leaf's verdict from the :func:`signal_test` inside an outer optimiser state.

    Returns ``{leaf path: {"held": bool, "evidence": bool, "p_value": float}}`` (held at its start
    now; ever crossed the test's boundary; the test of the sums so far), or ``None`` when the state
    has no signal test.
    """
    state = find_state(outer_opt_state, SignalTestState)
    if state is None:
        return None
    paths = [jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_flatten_with_path(state.held)[0]]
    return {path: {"held": bool(h), "evidence": bool(e), "p_value": float(p)}
            for path, h, e, p in zip(paths, jax.tree.leaves(state.held), jax.tree.leaves(state.evidence),
                                     jax.tree.leaves(state.p_value))}


class LineSearchResult(NamedTuple):
    """What :func:`cross_fitted_line_search` found (arrays; ``values`` and ``ess`` one per scale)."""

    scale: jax.Array  # the chosen multiple of the proposed step (0: psi stays)
    values: jax.Array  # held-out estimate of E_q'[f] - E_q[f] at each scale (the two folds' mean)
    ess: jax.Array  # the smaller fold's effective sample size over its size, at each scale


def line_search_scales(largest: float) -> tuple[float, ...]:
    """The multiples of the proposed psi step that :func:`cross_fitted_line_search` tries.

    >>> line_search_scales(2.0)
    (0.0, 0.25, 0.5, 1.0, 2.0)
    """
    return (0.0, largest / 8, largest / 4, largest / 2, largest)


def importance_change(log_prob_fn, psi: PyTree, new_psi: PyTree, samples: Any,
                      objective: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Self-normalised importance estimate of ``E_{q_new}[f] - E_{q_psi}[f]`` from samples of ``q_psi``.

    .. math:: \\sum_k w_k f_k - \\frac{1}{K} \\sum_k f_k, \\qquad
              w_k \\propto q_{\\psi'}(s_k) / q_\\psi(s_k), \\quad \\sum_k w_k = 1,

    no new sample drawn; also the effective sample size ``1 / (K sum_k w_k^2)`` in ``(0, 1]``, which
    falls as ``q_new`` moves away from ``q_psi`` (the estimate's variance grows about as its inverse).

    Args:
      log_prob_fn: ``(psi, samples) -> [K]`` log-densities, e.g. ``Distribution.log_prob``.
      psi: the parameters the ``samples`` were drawn from.
      new_psi: the candidate parameters.
      samples: ``K`` samples of ``q_psi`` (leading axis ``K``).
      objective: ``[K]`` values ``f(s_k)``.

    Returns:
      ``(change, ess_fraction)``, 0-d arrays.

    Example:
      >>> from autosim_jax.distributions import gaussian
      >>> q = gaussian()
      >>> psi = q.init()                                    # N(0, 1)
      >>> s = q.sample(jax.random.key(0), psi, 20000)
      >>> new = psi._replace(loc=jnp.float32(0.3))          # E_new[x] - E[x] = 0.3
      >>> change, ess = importance_change(q.log_prob, psi, new, s, s)
      >>> round(float(change), 1), round(float(ess), 2)     # ess exp(-0.3^2) = 0.91
      (0.3, 0.91)
    """
    log_w = log_prob_fn(new_psi, samples) - log_prob_fn(psi, samples)
    w = jax.nn.softmax(log_w.astype(jnp.float32))
    f = objective.astype(jnp.float32)
    return jnp.sum(w * f) - jnp.mean(f), 1.0 / (jnp.sum(w * w) * f.shape[0])


def cross_fitted_line_search(log_prob_fn, psi: PyTree, samples: Any, objective: jax.Array,
                             update_first: PyTree, update_second: PyTree, scales: tuple[float, ...],
                             min_ess: float = 0.5) -> LineSearchResult:
    """How far to take a psi step, judged on renders that did not propose it (no extra render).

    The line search on the local model of Eq. 6 that issue 13 lists: the step's ``K`` samples
    are split in halves; ``update_first`` is the step the optimiser proposes from the first
    half's hypergradient, ``update_second`` from the second's. Each is valued on the *other*
    half, at every ``scale`` in ``scales``, by :func:`importance_change` of the objective ``f``
    whose expectation the step descends (for AutoSimulate ``f_k = -(dl_k/dtheta . u)``, Table 1,
    so that ``E_q[f]`` is the local model of ``L_val`` up to a constant). A half's own
    hypergradient agrees with its own samples by construction (its noise included); the other
    half's do not share that noise, so a step that only follows noise is valued near zero or
    worse, and one along a real slope keeps its value. The chosen scale has the lowest mean of
    the two held-out values among those whose effective sample size (the smaller fold's) is at
    least ``min_ess``; scale 0 (psi stays) is valued 0 with all its samples.

    Args:
      log_prob_fn: ``(psi, samples) -> [K]`` log-densities.
      psi: the current parameters (the samples' law).
      samples: the step's ``K >= 4`` samples (leading axis ``K``).
      objective: ``[K]`` values ``f(s_k)`` to descend.
      update_first, update_second: the optimiser's proposed updates (like ``psi``, to add) from
        samples ``[: K // 2]`` and ``[K // 2 :]``.
      scales: multiples of the update to try (:func:`line_search_scales`); 0 among them lets psi stay.
      min_ess: the smallest effective sample size, over a fold's size, at which a scale is trusted.

    Returns:
      A :class:`LineSearchResult`.

    Example:
      >>> from autosim_jax.distributions import gaussian
      >>> q = gaussian()
      >>> psi = q.init()
      >>> s = q.sample(jax.random.key(0), psi, 4096)
      >>> f = (s - 0.5) ** 2                  # E_q[f] is least at loc 0.5
      >>> up = psi._replace(loc=jnp.float32(0.25), log_scale=jnp.float32(0.0))
      >>> float(cross_fitted_line_search(q.log_prob, psi, s, f, up, up, line_search_scales(4.0)).scale)
      2.0
    """
    k = objective.shape[0]
    if k < 4:
        raise ValueError(f"The cross-fitted line search needs at least 4 samples (two per half), got K={k}.")
    half = k // 2
    first = jax.tree.map(lambda x: x[:half], samples)
    second = jax.tree.map(lambda x: x[half:], samples)

    def at(scale):  # each fold's proposal valued on the other fold
        moved_first = optax.apply_updates(psi, jax.tree.map(lambda u: scale * u, update_first))
        moved_second = optax.apply_updates(psi, jax.tree.map(lambda u: scale * u, update_second))
        value_on_second, ess_second = importance_change(log_prob_fn, psi, moved_first, second, objective[half:])
        value_on_first, ess_first = importance_change(log_prob_fn, psi, moved_second, first, objective[:half])
        return 0.5 * (value_on_first + value_on_second), jnp.minimum(ess_first, ess_second)

    scales = jnp.asarray(scales, jnp.float32)
    values, ess = jax.vmap(at)(scales)  # every scale in one pass over the samples
    pick = jnp.argmin(jnp.where(ess >= min_ess, values, jnp.inf))
    return LineSearchResult(scales[pick], values, ess)
