"""UNet and SmallCNN: architecture, pure split/merge use under jit, and that they can learn."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from autosim_jax import tasks
from autosim_jax.models import SmallCNN, UNet



@pytest.fixture(scope="module")
def unet():
    """The default UNet, built once: each new configuration compiles its init for seconds."""
    return UNet(in_channels=3, num_classes=4, base_channels=16, rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def cnn():
    return SmallCNN(in_channels=1, num_classes=10, channels=16, rngs=nnx.Rngs(0))


def _convs(model):
    return [node for _, node in nnx.iter_graph(model) if isinstance(node, nnx.Conv)]


def _variables(model):
    return [node for _, node in nnx.iter_graph(model) if isinstance(node, nnx.Variable)]


def _num_params(params):
    return sum(x.size for x in jax.tree.leaves(params))


def _fit(model, inputs, labels, per_sample_loss, steps, learning_rate=1e-2):
    """Adam on the pure (params -> loss) function; returns the losses before and after."""
    graphdef, params = nnx.split(model, nnx.Param)

    def loss_fn(p):
        return per_sample_loss(nnx.merge(graphdef, p)(inputs), labels).mean()

    opt = optax.adam(learning_rate)

    @jax.jit
    def step(p, state):
        loss, grads = jax.value_and_grad(loss_fn)(p)
        updates, state = opt.update(grads, state, p)
        return optax.apply_updates(p, updates), state, loss

    state, initial = opt.init(params), float(loss_fn(params))
    for _ in range(steps):
        params, state, _ = step(params, state)
    return initial, float(loss_fn(params)), nnx.merge(graphdef, params)


def test_unet_architecture(unet):
    model = unet
    convs = _convs(model)
    assert len(convs) == 8
    assert sorted(c.kernel_size for c in convs) == sorted([(3, 3)] * 6 + [(1, 1)] * 2)
    assert all(type(v) is nnx.Param for v in _variables(model))
    graphdef, params = nnx.split(model, nnx.Param)
    assert _num_params(params) == 24196
    assert len(jax.tree.leaves(params)) == 16  # a kernel and a bias per convolution


def test_unet_forward_under_jit(unet):
    model = unet
    x = jax.random.normal(jax.random.key(0), (2, 12, 10, 3))
    eager = model(x)
    assert eager.shape == (2, 12, 10, 4) and eager.dtype == jnp.float32
    graphdef, params = nnx.split(model, nnx.Param)
    apply = jax.jit(lambda p, x: nnx.merge(graphdef, p)(x))
    np.testing.assert_allclose(apply(params, x), eager, rtol=1e-5, atol=1e-5)


def test_unet_learns_a_fixed_batch(unet):
    x = jax.random.uniform(jax.random.key(0), (2, 8, 8, 3))
    labels = jnp.argmax(x, axis=-1)  # classes 0..2 of 4: a per-pixel function of the input
    task = tasks.segmentation_task(4)
    initial, final, model = _fit(unet, x, labels, task.per_sample_loss, steps=60)
    assert final < 0.5 * initial, (initial, final)
    assert float(task.metric(model(x), labels)) > 0.8


def test_small_cnn_architecture_and_jit(cnn):
    model = cnn
    assert len(_convs(model)) == 2
    assert all(type(v) is nnx.Param for v in _variables(model))
    graphdef, params = nnx.split(model, nnx.Param)
    assert _num_params(params) == 160 + 2320 + 2570
    x = jax.random.uniform(jax.random.key(0), (5, 8, 8, 1), maxval=16.0)
    eager = model(x)
    assert eager.shape == (5, 10)
    apply = jax.jit(lambda p, x: nnx.merge(graphdef, p)(x))
    np.testing.assert_allclose(apply(params, x), eager, rtol=1e-5, atol=1e-5)
    # It normalises by 16 itself: raw 0..16 images and the same images in 0..1 differ.
    assert not np.allclose(model(x), model(x / 16.0))


def test_small_cnn_learns_a_fixed_batch(cnn):
    k1, k2 = jax.random.split(jax.random.key(0))
    x = jnp.round(jax.random.uniform(k1, (20, 8, 8, 1), maxval=16.0))  # raw digits scale
    labels = jax.random.randint(k2, (20,), 0, 10)
    task = tasks.classification_task()
    initial, final, model = _fit(cnn, x, labels, task.per_sample_loss, steps=60)
    assert final < 0.5 * initial, (initial, final)
    assert float(task.metric(model(x), labels)) == 1.0


@pytest.mark.parametrize("model_cls", [UNet, SmallCNN])
def test_float64_parameters(x64, model_cls):
    """param_dtype reaches every layer (checked abstractly: a real init would compile anew)."""
    model = nnx.eval_shape(lambda: model_cls(rngs=nnx.Rngs(0), param_dtype=jnp.float64))
    assert all(p.dtype == jnp.float64 for p in jax.tree.leaves(nnx.state(model, nnx.Param)))


@pytest.mark.parametrize(
    "name, shape, match",
    [
        ("unet", (2, 3, 8, 8), "NHWC"),  # NCHW
        ("unet", (8, 8, 3), "NHWC"),  # no batch axis
        ("unet", (1, 7, 8, 3), "even"),
        ("cnn", (2, 8, 8, 3), "NHWC"),
        ("cnn", (2, 10, 10, 1), "8x8"),
    ],
)
def test_bad_inputs_raise(request, name, shape, match):
    with pytest.raises(ValueError, match=match):
        request.getfixturevalue(name)(jnp.zeros(shape))
