"""The networks that AutoSimulate trains on simulated data (paper Section 5).

* :class:`UNet`: the CLEVR segmentation network, "a UNet with eight convolutional layers",
  after jvanvugt/pytorch-unet at depth 2 with ``up_mode="upsample"``.
* :class:`SmallCNN`: a small classifier of 8x8 handwritten digits (sklearn's bundled digits are
  the real validation set, on their 0..16 intensity scale).

Both hold nothing but ``nnx.Param`` state (no BatchNorm, no Dropout, no stored RNG), so pure
code needs only ``graphdef, params = nnx.split(model, nnx.Param)`` and ``nnx.merge(graphdef,
params)(x)`` inside the jitted loss. Both compute the same function in training and evaluation.

The activation is GELU (``jax.nn.gelu``, tanh approximation) rather than ReLU: the curvature
code takes exact Hessian-vector products of the training loss, and GELU is smooth, so the
Hessian keeps its second-derivative-of-activation terms and does not jump as units cross zero.
With ReLU those terms are zero almost everywhere (the Hessian and the Gauss-Newton matrix then
differ only through the loss) and the HVP is discontinuous in the parameters. Pooling is an
average and upsampling nearest-neighbour, both linear, for the same reason.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

_NOT_NHWC = (
    "{name} expects images of shape (N, H, W, {channels}) (NHWC, channels last), got shape "
    "{shape}. Transpose NCHW batches with x.transpose(0, 2, 3, 1); add a batch axis with x[None]."
)
_NOT_EVEN = (
    "UNet halves and then doubles the image size, so H and W must be even; got H, W = {h}, {w}. "
    "Crop or pad the images to an even size."
)
_WRONG_SIZE = (
    "SmallCNN is built for {size}x{size} images (its dense layer's input size depends on it), got "
    "H, W = {h}, {w}."
)


def _check_nhwc(x: jax.Array, channels: int, name: str) -> None:
    """Raises a ValueError unless ``x`` is an NHWC batch with ``channels`` channels."""
    if jnp.ndim(x) != 4 or x.shape[-1] != channels:
        raise ValueError(_NOT_NHWC.format(name=name, channels=channels, shape=jnp.shape(x)))


def _avg_pool2(x: jax.Array) -> jax.Array:
    """2x2 average pooling with stride 2 of an NHWC batch with even H and W."""
    n, h, w, c = x.shape
    return x.reshape(n, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def _upsample2(x: jax.Array) -> jax.Array:
    """Nearest-neighbour x2 upsampling of an NHWC batch."""
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


class UNet(nnx.Module):
    """A depth-2 UNet of exactly eight convolutional layers, for per-pixel classification.

    With ``C = base_channels`` and ``K = num_classes`` the layers are, in call order
    ("same" padding throughout, GELU after every convolution but the last):

    ====  ===========  ======  =============  ===========================================
    #     attribute    kernel  channels       input
    ====  ===========  ======  =============  ===========================================
    1     ``enc1a``    3x3     in -> C        the image, H x W
    2     ``enc1b``    3x3     C -> C         (its output is the skip connection)
    3     ``enc2a``    3x3     C -> 2C        2x2 average pool of the skip, H/2 x W/2
    4     ``enc2b``    3x3     2C -> 2C
    5     ``up``       1x1     2C -> C        nearest-neighbour x2 upsample, H x W
    6     ``dec1a``    3x3     2C -> C        concat(up output, skip) on channels
    7     ``dec1b``    3x3     C -> C
    8     ``head``     1x1     C -> K         logits, no activation
    ====  ===========  ======  =============  ===========================================

    This is jvanvugt/pytorch-unet's ``UNet(depth=2, padding=True, up_mode="upsample")``, whose
    up block is an upsample followed by a 1x1 convolution, with max pooling replaced by
    average pooling, bilinear by nearest upsampling and ReLU by GELU (see the module docstring).

    Args:
      in_channels: channels of the input images.
      num_classes: number of classes, i.e. output channels (logits).
      base_channels: ``C``, the width of the first level; the second level has ``2C``.
      rngs: the ``nnx.Rngs`` that initialise the parameters (used once, not stored).
      param_dtype: dtype of the parameters (``jnp.float64`` for dense float64 references).

    References:
      Behl et al., "AutoSimulate: (Quickly) Learning Synthetic Data Generation", ECCV 2020,
      Section 5.2 (CLEVR); Ronneberger et al., "U-Net", MICCAI 2015.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> model = UNet(in_channels=3, num_classes=4, rngs=nnx.Rngs(0))
      >>> model(jnp.zeros((2, 16, 16, 3))).shape
      (2, 16, 16, 4)
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 4,
        base_channels: int = 16,
        *,
        rngs: nnx.Rngs,
        param_dtype=jnp.float32,
    ):
        c = base_channels

        def conv(cin, cout, k=3):
            return nnx.Conv(cin, cout, (k, k), padding="SAME", param_dtype=param_dtype, rngs=rngs)

        self.in_channels = in_channels
        self.enc1a, self.enc1b = conv(in_channels, c), conv(c, c)
        self.enc2a, self.enc2b = conv(c, 2 * c), conv(2 * c, 2 * c)
        self.up = conv(2 * c, c, k=1)
        self.dec1a, self.dec1b = conv(2 * c, c), conv(c, c)
        self.head = conv(c, num_classes, k=1)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Maps images ``(N, H, W, in_channels)``, H and W even, to logits ``(N, H, W, K)``."""
        _check_nhwc(x, self.in_channels, "UNet")
        if x.shape[1] % 2 or x.shape[2] % 2:
            raise ValueError(_NOT_EVEN.format(h=x.shape[1], w=x.shape[2]))
        act = jax.nn.gelu
        skip = act(self.enc1b(act(self.enc1a(x))))
        h = act(self.enc2b(act(self.enc2a(_avg_pool2(skip)))))
        h = act(self.up(_upsample2(h)))
        h = jnp.concatenate([h, skip], axis=-1)
        h = act(self.dec1b(act(self.dec1a(h))))
        return self.head(h)


class SmallCNN(nnx.Module):
    """A small convolutional classifier of 8x8 digit images.

    Layers: divide by 16 (sklearn digits are on a 0..16 scale, so callers pass raw values)
    -> 3x3 conv ``in -> C``, GELU -> 2x2 average pool (4x4) -> 3x3 conv ``C -> C``, GELU ->
    flatten (``16 C`` features) -> dense ``16 C -> num_classes`` (logits). Flattening rather
    than a global mean keeps where the strokes are, which digits need.

    Args:
      in_channels: channels of the input images.
      num_classes: number of classes (logits).
      channels: ``C``, the width of both convolutions.
      rngs: the ``nnx.Rngs`` that initialise the parameters (used once, not stored).
      param_dtype: dtype of the parameters.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> model = SmallCNN(rngs=nnx.Rngs(0))
      >>> model(jnp.full((5, 8, 8, 1), 16.0)).shape
      (5, 10)
    """

    image_size = 8

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        channels: int = 16,
        *,
        rngs: nnx.Rngs,
        param_dtype=jnp.float32,
    ):
        self.in_channels = in_channels

        def conv(cin, cout):
            return nnx.Conv(cin, cout, (3, 3), padding="SAME", param_dtype=param_dtype, rngs=rngs)

        self.conv1, self.conv2 = conv(in_channels, channels), conv(channels, channels)
        features = (self.image_size // 2) ** 2 * channels
        self.dense = nnx.Linear(features, num_classes, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Maps raw 0..16 images ``(N, 8, 8, in_channels)`` to logits ``(N, num_classes)``."""
        _check_nhwc(x, self.in_channels, "SmallCNN")
        if x.shape[1:3] != (self.image_size, self.image_size):
            raise ValueError(_WRONG_SIZE.format(size=self.image_size, h=x.shape[1], w=x.shape[2]))
        h = jax.nn.gelu(self.conv1(x / 16.0))
        h = jax.nn.gelu(self.conv2(_avg_pool2(h)))
        return self.dense(h.reshape(h.shape[0], -1))
