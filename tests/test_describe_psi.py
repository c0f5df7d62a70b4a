"""describe_psi: psi in the fields' own units, against closed forms, quadrature and sampling.

The sampling checks are probabilistic with a fixed key: n = 400,000 draws of the
distribution's own ``sample``; a mean must lie within 5 standard errors (``std / sqrt(n)``)
of the reported one, a standard deviation within 5 standard errors of the sample standard
deviation (``sqrt((m4 / s^4 - 1) / (4 n)) s``, from the sample's fourth moment), a quantile's
coverage within 5 binomial standard errors of 5% / 95%. Each holds with probability
> 1 - 1e-6 when describe_psi is right; a wrong mean of a bounded field (e.g. the median,
sigmoid(loc), reported as the mean) misses by tens of standard errors at these settings.
"""

import math

import jax
import numpy as np
import pytest
from scipy import integrate, stats

from autosim_jax import Field, SceneSchema, Simulator, from_schema
from autosim_jax.distributions import CategoricalParams, NormalParams, describe_psi

N = 400_000
Z = 5.0  # standard errors


def _check_against_samples(dist, psi, name, entry, n=N):
    s = np.asarray(dist.sample(jax.random.PRNGKey(0), psi, n)[name], np.float64).reshape(n, -1)
    mean, std = np.ravel(entry["mean"]), np.ravel(entry["std"])
    for j in range(s.shape[1]):
        x = s[:, j]
        sd = x.std(ddof=1)
        assert abs(x.mean() - mean[j]) <= Z * sd / math.sqrt(n), (name, j, x.mean(), mean[j])
        m4 = np.mean((x - x.mean()) ** 4)
        se_sd = math.sqrt(max(m4 / sd**4 - 1.0, 0.0) / (4 * n)) * sd
        assert abs(sd - std[j]) <= Z * se_sd + 1e-6 * sd, (name, j, sd, std[j])
        se_q = math.sqrt(0.05 * 0.95 / n)
        assert abs(np.mean(x < np.ravel(entry["p05"])[j]) - 0.05) <= Z * se_q + 1e-4
        assert abs(np.mean(x < np.ravel(entry["p95"])[j]) - 0.95) <= Z * se_q + 1e-4
        assert abs(np.mean(x < np.ravel(entry["median"])[j]) - 0.5) <= Z * math.sqrt(0.25 / n) + 1e-4


@pytest.mark.parametrize(
    "field, override",
    [
        (Field.continuous("light", 0.0, 2.0), {"loc": 1.7, "scale": 0.2}),  # logit-normal, skewed
        (Field.continuous("angle", -45.0, 45.0), {"loc": 20.0, "scale": 30.0}),  # wide: sigma ~ 2 in u
        (Field.continuous("pos", -3.0, 3.0, shape=(2, 2)), {"loc": ((2.5, -1.0), (0.0, 1.0)), "scale": 0.5}),
        (Field.continuous("gap", 0.5, np.inf), {"loc": 1.5, "scale": 0.4}),  # shifted log-normal
        (Field.continuous("depth", -np.inf, 10.0), {"loc": 8.0, "scale": 1.0}),  # mirrored log-normal
        (Field.continuous("x"), {"loc": -1.0, "scale": 0.5}),  # unbounded: gaussian
    ],
)
def test_continuous_fields_match_sampling(field, override):
    schema = SceneSchema((field,))
    dist = from_schema(schema, {field.name: override})
    psi = dist.init()
    entry = describe_psi(schema, psi)[field.name]
    assert entry["kind"] == "continuous" and entry["shape"] == list(field.shape)
    _check_against_samples(dist, psi, field.name, entry)
    assert (entry["low"], entry["high"]) == (field.low if np.isfinite(field.low) else None,
                                             field.high if np.isfinite(field.high) else None)


def test_closed_forms_exactly():
    """Unbounded: (loc, sigma); half lines: the log-normal's moments; bounded: a quadrature reference."""
    schema = SceneSchema((Field.continuous("x"), Field.continuous("up", 1.0, np.inf),
                          Field.continuous("down", -np.inf, 0.0), Field.continuous("box", 2.0, 6.0)))
    mu, sigma = 0.3, 0.8
    params = NormalParams(np.float64(mu), np.float64(math.log(sigma)))
    d = describe_psi(schema, {name: params for name in schema.names})
    assert d["x"]["mean"] == pytest.approx(mu, abs=1e-12) and d["x"]["std"] == pytest.approx(sigma, rel=1e-12)
    lognormal = stats.lognorm(s=sigma, scale=math.exp(mu))
    assert d["up"]["mean"] == pytest.approx(1.0 + lognormal.mean(), rel=1e-12)
    assert d["up"]["std"] == pytest.approx(lognormal.std(), rel=1e-12)
    assert d["down"]["mean"] == pytest.approx(-lognormal.mean(), rel=1e-12)
    assert d["down"]["p05"] == pytest.approx(-lognormal.ppf(0.95), rel=1e-12)
    assert d["down"]["p95"] == pytest.approx(-lognormal.ppf(0.05), rel=1e-12)
    assert d["up"]["method"] == d["x"]["method"] == "closed form" and d["box"]["method"] == "quadrature"
    # The logit-normal against scipy's adaptive quadrature, to 1e-9 of the width, from narrow to very wide.
    for mu, sigma in ((0.3, 0.8), (-2.0, 0.05), (1.0, 5.0), (0.0, 20.0)):
        entry = describe_psi(schema, {n: NormalParams(np.float64(mu), np.float64(math.log(sigma)))
                                      for n in schema.names})["box"]

        def moment(k, mu=mu, sigma=sigma):
            def f(u):
                return (2.0 + 4.0 / (1.0 + math.exp(-u))) ** k * stats.norm.pdf(u, mu, sigma)

            return integrate.quad(f, mu - 12 * sigma, mu + 12 * sigma, epsabs=1e-13, epsrel=1e-13, limit=500)[0]

        m1, m2 = moment(1), moment(2)
        assert entry["mean"] == pytest.approx(m1, abs=4e-9), (mu, sigma)
        assert entry["std"] == pytest.approx(math.sqrt(m2 - m1**2), abs=4e-9), (mu, sigma)
        assert entry["median"] == pytest.approx(2.0 + 4.0 / (1.0 + math.exp(-mu)), rel=1e-12)


def test_categorical_fields_give_probabilities_with_names():
    schema = SceneSchema((Field.categorical("spp", (1, 4, 16)),
                          Field.categorical("shape", ("sphere", "cube"), shape=(3,))))
    dist = from_schema(schema, {"spp": {"probs": (0.6, 0.3, 0.1)},
                                "shape": {"probs": ((0.9, 0.1), (0.5, 0.5), (0.2, 0.8))}})
    d = describe_psi(schema, dist.init())
    assert d["spp"]["choices"] == [1, 4, 16] and d["shape"]["choices"] == ["sphere", "cube"]
    np.testing.assert_allclose(d["spp"]["probs"], (0.6, 0.3, 0.1), rtol=1e-6)
    np.testing.assert_allclose(d["shape"]["probs"], ((0.9, 0.1), (0.5, 0.5), (0.2, 0.8)), rtol=1e-6)
    # Logits are unnormalised: a shift changes nothing.
    shifted = {"spp": CategoricalParams(np.log([6.0, 3.0, 1.0]) + 7.0), "shape": dist.init()["shape"]}
    np.testing.assert_allclose(describe_psi(schema, shifted)["spp"]["probs"], (0.6, 0.3, 0.1), rtol=1e-12)


def test_sources_and_json(tmp_path):
    """A schema, a renderer or a Simulator describe alike; the result is plain JSON."""
    import json

    from autosim_jax.renderers import get_renderer

    renderer = get_renderer("glyphs")
    sim = Simulator(from_schema(renderer.schema), renderer)
    psi = sim.distribution.init()
    by_schema = describe_psi(renderer.schema, psi)
    assert describe_psi(renderer, psi) == by_schema == describe_psi(sim, psi)
    assert list(by_schema) == list(renderer.schema.names)
    assert json.loads(json.dumps(by_schema, allow_nan=False)) == by_schema
    # psi read back from JSON (lists) describes the same.
    from autosim_jax.rundir import psi_from_record, psi_record

    again = describe_psi(sim, psi_from_record(psi, json.loads(json.dumps(psi_record(psi)))))
    assert again == by_schema


def test_errors_name_the_field():
    schema = SceneSchema((Field.continuous("light", 0.0, 2.0), Field.categorical("q", (1, 2))))
    psi = from_schema(schema).init()
    with pytest.raises(ValueError, match=r"fields \['q'\]"):
        describe_psi(schema, {"light": psi["light"]})
    with pytest.raises(ValueError, match="psi\\['light'\\] is not NormalParams"):
        describe_psi(schema, {"light": {"a": 1}, "q": psi["q"]})
    with pytest.raises(ValueError, match="logits has shape"):
        describe_psi(schema, {"light": psi["light"], "q": CategoricalParams(np.zeros(3))})
    with pytest.raises(ValueError, match="SceneSchema"):
        describe_psi(object(), psi)


def test_field_spread_against_closed_forms():
    """field_spread: 1 for the uniform law over a range or the choices, 0 for one value.

    Categorical: the normalised entropy, computed here from the probabilities as given. Bounded
    continuous: a logit-normal with loc 0 and a small sigma is nearly normal with std
    ``(high - low) sigma / 4`` (the logistic's slope at 0), so spread ``sigma sqrt(12) / 4``; with a
    large sigma its mass goes to the two ends, std ``(high - low) / 2``, spread ``sqrt(3)``. An
    unbounded field has no spread (None)."""
    from autosim_jax import field_spread

    probs = np.array([[0.7, 0.2, 0.1], [1 / 3, 1 / 3, 1 / 3], [1.0, 0.0, 0.0]])
    schema = SceneSchema((Field.categorical("c", ("a", "b", "d"), shape=(3,)),
                          Field.continuous("near", 2.0, 8.0), Field.continuous("wide", 2.0, 8.0),
                          Field.continuous("free")))
    psi = {"c": CategoricalParams(np.log(np.maximum(probs, 1e-30))),
           "near": NormalParams(np.array(0.0), np.array(math.log(1e-3))),
           "wide": NormalParams(np.array(0.0), np.array(math.log(40.0))),
           "free": NormalParams(np.array(0.0), np.array(0.0))}
    d = describe_psi(schema, psi)
    entropy = -np.array([sum(p * math.log(p) for p in row if p > 0) for row in probs]) / math.log(3)
    np.testing.assert_allclose(field_spread(d["c"]), entropy, atol=1e-12)
    np.testing.assert_allclose(field_spread(d["c"])[1:], [1.0, 0.0], atol=1e-12)
    assert float(field_spread(d["near"])) == pytest.approx(1e-3 * math.sqrt(12) / 4, rel=1e-4)
    assert float(field_spread(d["wide"])) == pytest.approx(math.sqrt(3), rel=0.03)
    assert field_spread(d["free"]) is None
