"""Tests of autosim_jax.simulator: the pure_callback path against Python loops over the host
renderer, and every error path (eager, jitted, and through reraise_render_errors)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from autosim_jax.distributions import bounded, categorical, from_schema, gaussian, product
from autosim_jax.schema import Field, OutputSpec, SceneSchema
from autosim_jax.simulator import RenderError, Simulation, Simulator, reraise_render_errors

SCHEMA = SceneSchema(
    (
        Field.continuous("light", 0.0, 2.0, doc="intensity"),
        Field.continuous("pos", shape=(2,), doc="offset in pixels"),
        Field.categorical("quality", choices=(1, 4, 16), doc="samples per pixel"),
    )
)


class ToyRenderer:
    """A deterministic numpy renderer: images from the scene fields plus seeded noise."""

    name = "toy"
    schema = SCHEMA
    inputs_spec = OutputSpec((3, 4), np.float32)
    labels_spec = OutputSpec((), np.int32)

    def render(self, scenes, seed):
        n = self.schema.validate(scenes)
        rng = np.random.default_rng(seed)
        noise = (
            rng.normal(size=(n, 3, 4))
            / (1.0 + np.asarray(self.schema["quality"].choices)[scenes["quality"]])[:, None, None]
        )
        base = scenes["light"][:, None, None] + scenes["pos"].sum(1)[:, None, None] * np.linspace(
            0, 1, 4
        )
        return (base + noise).astype(np.float32), scenes["quality"].astype(np.int32)


class RaisingRenderer(ToyRenderer):
    def render(self, scenes, seed):
        raise ZeroDivisionError("light model blew up")


class WrongShapeRenderer(ToyRenderer):
    def render(self, scenes, seed):
        x, y = super().render(scenes, seed)
        return x[:, :2], y


class WrongDtypeRenderer(ToyRenderer):
    def render(self, scenes, seed):
        x, y = super().render(scenes, seed)
        return x.astype(np.float64), y


class NonFiniteRenderer(ToyRenderer):
    """Returns NaN pixels for the scenes whose light exceeds 1.5."""

    def render(self, scenes, seed):
        x, y = super().render(scenes, seed)
        x[scenes["light"] > 1.5, 1, 2] = np.nan
        return x, y


class NotAPairRenderer(ToyRenderer):
    def render(self, scenes, seed):
        return super().render(scenes, seed)[0]


def _sim(renderer=None, **overrides):
    return Simulator(from_schema(SCHEMA, overrides), renderer or ToyRenderer())


_simulate = jax.jit(Simulator.simulate, static_argnums=(0, 3))


def test_simulate_shapes_dtypes_and_determinism():
    sim = _sim()
    psi = sim.distribution.init()
    out = _simulate(sim, jax.random.key(0), psi, 16)
    assert isinstance(out, Simulation)
    assert out.inputs.shape == (16, 3, 4) and out.inputs.dtype == jnp.float32
    assert out.labels.shape == (16,) and out.labels.dtype == jnp.int32
    np.testing.assert_array_equal(out.labels, out.scenes["quality"])
    again = _simulate(sim, jax.random.key(0), psi, 16)
    jax.tree.map(np.testing.assert_array_equal, out, again)
    other = _simulate(sim, jax.random.key(1), psi, 16)
    assert not np.array_equal(out.inputs, other.inputs)


def test_simulate_mixture_renders_each_psi_in_its_own_rows():
    """7 scenes over 3 psi: rows 0-1, 2-3 and 4-6, each exactly simulate() of its psi with the
    i-th split key; lights far apart tell the parts apart."""
    sim = _sim()
    psis = [sim.distribution.init() for _ in range(3)]
    psis = [{**p, "light": p["light"]._replace(loc=p["light"].loc + shift)} for p, shift in zip(psis, (-4, 0, 4))]
    key = jax.random.key(5)
    mix = jax.jit(sim.simulate_mixture, static_argnums=2)(key, psis, 7)
    assert mix.inputs.shape == (7, 3, 4)
    for k, psi, (a, b) in zip(jax.random.split(key, 3), psis, [(0, 2), (2, 4), (4, 7)]):
        part = _simulate(sim, k, psi, b - a)
        jax.tree.map(lambda m, p, a=a, b=b: np.testing.assert_array_equal(m[a:b], p), mix, part)
    light = np.asarray(mix.scenes["light"])
    assert light[:2].max() < light[2:4].min() and light[2:4].max() < light[4:].min()
    for bad in ([], psis * 3):
        with pytest.raises(ValueError, match="simulate_mixture: needs 1 to n=7 psis"):
            sim.simulate_mixture(key, bad, 7)


def test_callback_equals_render_numpy_with_the_derived_seed():
    """The seed is jax.random.bits of the second half of the key split, passed to the host."""
    sim = _sim()
    psi = sim.distribution.init()
    key = jax.random.key(3)
    out = sim.simulate(key, psi, 8)
    inputs, labels = sim.render_numpy(
        {k: np.asarray(v) for k, v in out.scenes.items()}, _render_seed(key)
    )
    np.testing.assert_array_equal(out.inputs, inputs)
    np.testing.assert_array_equal(out.labels, labels)


def test_jit_equals_eager():
    sim = _sim()
    psi = sim.distribution.init()
    eager = sim.simulate(jax.random.key(4), psi, 8)
    jitted = _simulate(sim, jax.random.key(4), psi, 8)
    jax.tree.map(np.testing.assert_array_equal, eager, jitted)


def _render_seed(key):
    return int(jax.random.bits(jax.random.split(key)[1], (), jnp.uint32))


def _assert_matches_host_loop(sim, keys, batched):
    """Each batch element equals render_numpy on its own scenes and seed, exactly."""
    for i, key in enumerate(keys):
        scenes = {k: np.asarray(v[i]) for k, v in batched.scenes.items()}
        inputs, labels = sim.render_numpy(scenes, _render_seed(key))
        np.testing.assert_array_equal(batched.inputs[i], inputs)
        np.testing.assert_array_equal(batched.labels[i], labels)


def test_vmap_equals_python_loop():
    """vmap over keys, and a nested vmap over (psi, keys), equal a loop of host renders of
    the same scenes exactly; against a loop of single jitted calls they agree exactly over
    keys, and to float32 rounding over psi (XLA may fuse the batched sampling differently)."""
    sim = _sim()
    psi = sim.distribution.init()
    keys = jax.random.split(jax.random.key(7), 6)
    one = jax.jit(lambda k, p: sim.simulate(k, p, 5))

    batched = jax.jit(jax.vmap(lambda k: sim.simulate(k, psi, 5)))(keys)
    _assert_matches_host_loop(sim, keys, batched)
    for i, key in enumerate(keys):
        jax.tree.map(
            lambda a, b, i=i: np.testing.assert_array_equal(a[i], b), batched, one(key, psi)
        )

    psis = jax.tree.map(lambda x: jnp.stack([x, x + 0.1]), psi)
    nested = jax.jit(jax.vmap(jax.vmap(lambda k, p: sim.simulate(k, p, 5), in_axes=(0, None))))(
        keys.reshape(2, 3), psis
    )
    flat = jax.tree.map(lambda x: x.reshape(6, *x.shape[2:]), nested)
    _assert_matches_host_loop(sim, keys, flat)
    for i, key in enumerate(keys):
        ref = one(key, jax.tree.map(lambda x, i=i: x[i // 3], psis))
        jax.tree.map(
            lambda a, b, i=i: np.testing.assert_allclose(a[i], b, rtol=1e-5, atol=1e-6), flat, ref
        )


def test_float64_spec_is_canonicalised_without_x64():
    class F64(ToyRenderer):
        inputs_spec = OutputSpec((3, 4), np.float64)

        def render(self, scenes, seed):
            x, y = super().render(scenes, seed)
            return x.astype(np.float64), y

    sim = _sim(F64())
    out = _simulate(sim, jax.random.key(0), sim.distribution.init(), 4)
    assert out.inputs.dtype == jnp.float32


def test_no_retracing_on_second_call():
    sim = _sim()

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(key, psi):
        return sim.simulate(key, psi, 4).inputs.sum()

    psi = sim.distribution.init()
    step(jax.random.key(0), psi)
    step(jax.random.key(1), jax.tree.map(lambda x: x + 0.1, psi))


# --------------------------------------------------------------------------- error paths

ERROR_CASES = [
    (
        RaisingRenderer,
        None,
        (
            r"Renderer 'toy' raised ZeroDivisionError: light model blew up while rendering "
            r"scenes 0\.\.7 of 8 with seed \d+"
        ),
    ),
    (
        WrongShapeRenderer,
        "inputs",
        r"returned inputs of shape \(8, 2, 4\) for 8 scenes; .*\(8, 3, 4\)",
    ),
    (
        WrongDtypeRenderer,
        "inputs",
        r"returned inputs of dtype float64 for 8 scenes; its inputs_spec declares float32",
    ),
    (
        NonFiniteRenderer,
        "inputs",
        r"returned non-finite inputs for scene \d+ of 8 .*'light': 1\.[5-9]",
    ),
    (NotAPairRenderer, None, r"must return a pair \(inputs, labels\)"),
]


def _bright_start():
    """A start where most scenes have light > 1.5 (so NonFiniteRenderer fails)."""
    return {"light": {"loc": 1.9, "scale": 0.01}}


@pytest.mark.parametrize("renderer_cls,field,message", ERROR_CASES)
def test_render_numpy_raises_render_error(renderer_cls, field, message):
    sim = _sim(renderer_cls(), **_bright_start())
    scenes = {
        k: np.asarray(v)
        for k, v in sim.distribution.sample(jax.random.key(0), sim.distribution.init(), 8).items()
    }
    with pytest.raises(RenderError, match=message) as info:
        sim.render_numpy(scenes, 11)
    err = info.value
    assert err.renderer == "toy" and err.field == field and err.seed == 11
    if renderer_cls is NonFiniteRenderer:
        assert err.scenes["light"] == pytest.approx(float(scenes["light"][err.scene_index]))
        assert err.scenes["light"] > 1.5


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("renderer_cls,field,message", ERROR_CASES)
def test_errors_through_pure_callback(renderer_cls, field, message, jit):
    """A JaxRuntimeError carrying the RenderError's message reaches the caller;
    reraise_render_errors() turns it back into the RenderError with its attributes."""
    sim = _sim(renderer_cls(), **_bright_start())
    psi = sim.distribution.init()
    simulate = jax.jit(sim.simulate, static_argnums=2) if jit else sim.simulate
    with pytest.raises(jax.errors.JaxRuntimeError, match=message):
        jax.block_until_ready(simulate(jax.random.key(0), psi, 8))
    with pytest.raises(RenderError, match=message) as info, reraise_render_errors():
        jax.block_until_ready(simulate(jax.random.key(0), psi, 8))
    assert info.value.renderer == "toy" and info.value.field == field
    assert isinstance(info.value.__cause__, jax.errors.JaxRuntimeError)


def test_error_after_successful_calls_is_still_a_render_error():
    """JAX's fast path (a jitted function's later calls) raises ValueError, not JaxRuntimeError."""

    class FailsOnThirdCall(ToyRenderer):
        calls = 0

        def render(self, scenes, seed):
            type(self).calls += 1
            if type(self).calls >= 3:
                raise RuntimeError("out of film")
            return super().render(scenes, seed)

    sim = _sim(FailsOnThirdCall())
    psi = sim.distribution.init()
    simulate = jax.jit(sim.simulate, static_argnums=2)
    for i in range(2):
        jax.block_until_ready(simulate(jax.random.key(i), psi, 4))
    with pytest.raises(RenderError, match="out of film"), reraise_render_errors():
        jax.block_until_ready(simulate(jax.random.key(2), psi, 4))


def test_error_in_vmapped_call_names_the_batch_element():
    sim = _sim(NonFiniteRenderer())
    psi = jax.tree.map(lambda x: jnp.stack([x, x]), sim.distribution.init())
    psi["light"] = psi["light"]._replace(loc=jnp.array([-3.0, 4.0]))  # element 1 is bright
    step = jax.jit(jax.vmap(lambda k, p: sim.simulate(k, p, 8)))
    with pytest.raises(RenderError, match=r"vmapped batch element \(1,\)"), reraise_render_errors():
        jax.block_until_ready(step(jax.random.split(jax.random.key(0)), psi))


def test_invalid_scenes_are_rejected_on_the_host_and_name_the_scene():
    sim = _sim()
    scenes = {
        "light": np.array([0.5, 2.5, 1.0], np.float32),
        "pos": np.zeros((3, 2), np.float32),
        "quality": np.array([0, 1, 2], np.int32),
    }
    with pytest.raises(RenderError, match=r"invalid scenes.*'light'.*scene 1") as info:
        sim.render_numpy(scenes, 0)
    assert (
        info.value.field == "light"
        and info.value.scene_index == 1
        and info.value.scenes["light"] == 2.5
    )
    with pytest.raises(RenderError, match=r"'quality'") as info, reraise_render_errors():
        jax.jit(sim.render)(
            {
                **scenes,
                "light": np.full(3, 0.5, np.float32),
                "quality": np.array([0, 3, 1], np.int32),
            },
            jnp.uint32(0),
        )
    assert info.value.field == "quality" and info.value.scene_index == 1


def test_caller_state_survives_an_error():
    """After a failed render: psi is untouched, the same jitted function runs again, and its
    result equals that of a fresh simulator."""
    sim = _sim(NonFiniteRenderer())
    step = jax.jit(sim.simulate, static_argnums=2)
    bad_psi = from_schema(SCHEMA, _bright_start()).init()
    copy = jax.tree.map(np.array, bad_psi)
    with pytest.raises(jax.errors.JaxRuntimeError):
        jax.block_until_ready(step(jax.random.key(0), bad_psi, 8))
    jax.tree.map(np.testing.assert_array_equal, bad_psi, copy)
    good_psi = from_schema(SCHEMA, {"light": {"loc": 0.3, "scale": 0.01}}).init()
    out = step(jax.random.key(0), good_psi, 8)
    ref = _sim(NonFiniteRenderer()).simulate(jax.random.key(0), good_psi, 8)
    jax.tree.map(np.testing.assert_array_equal, out, ref)


def test_mismatched_distribution_is_rejected_when_built():
    with pytest.raises(ValueError, match=r"missing \['quality'\]"):
        Simulator(product({"light": bounded(0.0, 2.0), "pos": gaussian((2,))}), ToyRenderer())
    with pytest.raises(ValueError, match=r"'pos' has shape \(1, 3\)"):
        Simulator(
            product({"light": bounded(0.0, 2.0), "pos": gaussian((3,)), "quality": categorical(3)}),
            ToyRenderer(),
        )
    with pytest.raises(ValueError, match=r"'quality' \(categorical\) has dtype float"):
        Simulator(
            product({"light": bounded(0.0, 2.0), "pos": gaussian((2,)), "quality": gaussian()}),
            ToyRenderer(),
        )
    with pytest.raises(ValueError, match="OutputSpec"):

        class NoSpec(ToyRenderer):
            inputs_spec = (3, 4)

        _sim(NoSpec())


def test_render_checks_seed_at_trace_time():
    sim = _sim()
    scenes = sim.distribution.sample(jax.random.key(0), sim.distribution.init(), 2)
    with pytest.raises(ValueError, match="seed must be an integer scalar"):
        sim.render(scenes, jnp.float32(1.0))


def test_64_bit_scenes_and_outputs_under_thread_local_x64(x64):
    """The x64 fixture is a thread-local context and the callback runs on another thread, so
    64-bit scenes and outputs travel as uint32 words (see simulator._pack): the renderer sees
    the float64 scenes unrounded and its float64 / int64 outputs arrive intact."""

    class F64(ToyRenderer):
        inputs_spec = OutputSpec((3, 4), np.float64)
        labels_spec = OutputSpec((), np.int64)

        def render(self, scenes, seed):
            x, y = super().render(scenes, seed)
            return x.astype(np.float64) / 3.0, y.astype(np.int64) + 2**40

    sim = _sim(F64())
    key = jax.random.key(0)
    out = jax.jit(jax.vmap(lambda k: sim.simulate(k, sim.distribution.init(), 4)))(
        jax.random.split(key, 2)
    )
    assert out.inputs.dtype == jnp.float64 and out.labels.dtype == jnp.int64
    _assert_matches_host_loop(sim, jax.random.split(key, 2), out)
    assert out.scenes["light"].dtype == jnp.float64


# ------------------------------------------------------------------- chunks and seeds


def _chunked_reference(renderer, scenes, seed, chunk_size):
    """A batch rendered by hand: consecutive chunks, chunk i seeded by SeedSequence([seed, i])."""
    n = len(next(iter(scenes.values())))
    parts = []
    for i, start in enumerate(range(0, n, chunk_size)):
        part = {k: v[start:start + chunk_size] for k, v in scenes.items()}
        chunk_seed = int(np.random.SeedSequence([seed, i]).generate_state(1)[0])
        parts.append(renderer.render(part, chunk_seed))
    return tuple(np.concatenate([p[j] for p in parts]) for j in range(2))


def _host_scenes(sim, n, key=0):
    return {
        k: np.array(v)
        for k, v in sim.distribution.sample(jax.random.key(key), sim.distribution.init(), n).items()
    }


def test_render_numpy_renders_chunks_of_eight_with_their_own_seeds():
    """19 scenes = chunks 0..7, 8..15, 16..18, each rendered with its own chunk seed; the
    callback (simulate) renders exactly that."""
    sim = _sim()
    scenes = _host_scenes(sim, 19)
    inputs, labels = sim.render_numpy(scenes, 5)
    ref_inputs, ref_labels = _chunked_reference(ToyRenderer(), scenes, 5, 8)
    np.testing.assert_array_equal(inputs, ref_inputs)
    np.testing.assert_array_equal(labels, ref_labels)
    whole_batch = ToyRenderer().render(scenes, 5)[0]  # the renders before chunking
    assert not np.array_equal(inputs, whole_batch)

    key = jax.random.key(11)
    out = _simulate(sim, key, sim.distribution.init(), 19)
    host = {k: np.asarray(v) for k, v in out.scenes.items()}
    ref_inputs, _ = _chunked_reference(ToyRenderer(), host, _render_seed(key), 8)
    np.testing.assert_array_equal(out.inputs, ref_inputs)


def test_chunk_size_is_part_of_the_seeding():
    """A serial pool of another chunk size renders the same scenes with other noise."""
    from autosim_jax.render_pool import make_render_pool

    renderer = ToyRenderer()
    sim = _sim(renderer)
    scenes = _host_scenes(sim, 12)
    with make_render_pool(renderer, chunk_size=5) as pool:
        five = sim.with_pool(pool).render_numpy(scenes, 3)
    np.testing.assert_array_equal(five[0], _chunked_reference(renderer, scenes, 3, 5)[0])
    assert not np.array_equal(five[0], sim.render_numpy(scenes, 3)[0])


def test_errors_in_a_later_chunk_name_the_scene_in_the_whole_batch():
    scenes = _host_scenes(_sim(), 19)
    scenes["light"][:] = 0.5
    scenes["light"][13] = 1.8  # chunk 8..15, index 5 there
    with pytest.raises(RenderError, match=r"non-finite inputs for scene 13 of 19") as info:
        _sim(NonFiniteRenderer()).render_numpy(scenes, 0)
    assert info.value.scene_index == 13 and info.value.scenes["light"] == pytest.approx(1.8)

    class ShortLastChunk(ToyRenderer):
        def render(self, scenes, seed):
            x, y = super().render(scenes, seed)
            return (x[:-1], y) if len(x) < 8 else (x, y)

    with pytest.raises(RenderError, match=r"shape \(2, 3, 4\) for scenes 16\.\.18 of 19") as info:
        _sim(ShortLastChunk()).render_numpy(scenes, 0)
    assert info.value.field == "inputs" and info.value.scene_range == (16, 19)

    class RaisesOnBright(ToyRenderer):
        def render(self, scenes, seed):
            if (scenes["light"] > 1.5).any():
                raise ArithmeticError("too bright")
            return super().render(scenes, seed)

    with pytest.raises(RenderError, match=r"raised ArithmeticError: too bright while rendering "
                       r"scenes 8\.\.15 of 19") as info:
        _sim(RaisesOnBright()).render_numpy(scenes, 0)
    assert info.value.scene_range == (8, 16) and info.value.field is None
    assert isinstance(info.value.__cause__, ArithmeticError)


def test_pool_must_render_with_the_simulators_renderer():
    from autosim_jax.render_pool import make_render_pool

    with make_render_pool(ToyRenderer()) as pool, pytest.raises(ValueError, match="same one"):
        _sim(ToyRenderer()).with_pool(pool)
    with pytest.raises(ValueError, match="pool must be a RenderPool"):
        Simulator(from_schema(SCHEMA), ToyRenderer(), pool="process")


class OutOfRangeLabelRenderer(ToyRenderer):
    """Declares 3 classes (the quality index) but returns label 7 for scene 5."""

    labels_spec = OutputSpec((), np.int32, num_classes=3)

    def render(self, scenes, seed):
        x, y = super().render(scenes, seed)
        if len(y) > 5:
            y[5] = 7
        return x, y


class LabelMapRenderer(ToyRenderer):
    """A (3, 4) label map of 2 classes, with a -1 at pixel (2, 1) of the scenes whose light exceeds 1.5."""

    labels_spec = OutputSpec((3, 4), np.int32, num_classes=2)

    def render(self, scenes, seed):
        x, _ = super().render(scenes, seed)
        y = (x > x.mean()).astype(np.int32)
        y[scenes["light"] > 1.5, 2, 1] = -1
        return x, y


def test_labels_outside_the_declared_classes_name_the_scene():
    """Issue 15, item 5: a render's out-of-range label used to give NaN losses downstream."""
    sim = _sim(OutOfRangeLabelRenderer())
    scenes = sim.distribution.sample(jax.random.key(0), sim.distribution.init(), 6)
    scenes = {k: np.asarray(v) for k, v in scenes.items()}
    with pytest.raises(RenderError, match=r"Renderer 'toy' returned labels 7 for scene 5 of 6 \(seed 3\); its "
                                          r"labels_spec declares num_classes=3, so every value must be a class "
                                          r"index in \[0, 3\)") as err:
        sim.render_numpy(scenes, 3)
    assert err.value.field == "labels" and err.value.scene_index == 5
    with pytest.raises(RenderError, match=r"returned labels 7 for scene 5 of 6"), reraise_render_errors():
        jax.block_until_ready(_simulate(sim, jax.random.key(0), sim.distribution.init(), 6))


def test_label_map_outside_the_classes_names_scene_and_pixel():
    sim = _sim(LabelMapRenderer())
    scenes = {k: np.asarray(v) for k, v in sim.distribution.sample(jax.random.key(0), sim.distribution.init(),
                                                                    16).items()}
    first = int(np.flatnonzero(scenes["light"] > 1.5)[0])
    assert first >= 8  # in a later chunk: the index is the scene's in the whole batch
    with pytest.raises(RenderError, match=rf"returned labels -1 at \(2, 1\) for scene {first} of 16"):
        sim.render_numpy(scenes, 0)


def test_output_spec_num_classes_is_checked():
    assert OutputSpec((), np.int32).num_classes is None
    with pytest.raises(ValueError, match="num_classes must be None or an int >= 1, got 0"):
        OutputSpec((), np.int32, num_classes=0)
    with pytest.raises(ValueError, match="declares class indices, which need an integer dtype, got float32"):
        OutputSpec((), np.float32, num_classes=3)
