"""LR-ASPP (Lite Reduced Atrous Spatial Pyramid Pooling), the MobileNetV3 paper's segmentation head
(Howard et al. 2019, §6.4, Figure 10), and `LRASPPMobileNetV3`, backbone + head.

The head reads two backbone features, 'low' (stride 8) and 'high' (stride 16 or 32):
  high -> 1x1 conv (inter_channels, no bias) -> BN -> ReLU                     (N, h, w, F)
  high -> pool -> 1x1 conv (inter_channels, no bias) -> sigmoid: the gate      (N, 1 | ph, 1 | pw, F)
  their product -> bilinear upsampling to low's size -> 1x1 conv (bias) to classes
  + low -> 1x1 conv (bias) to classes                                          (N, h8, w8, classes)
and the model upsamples the sum bilinearly to the input size: (N, H, W, classes) float32 logits.

Gate pooling (`pooling`):
  'global': global average pooling, a (1, 1) gate (torchvision's LRASPPHead).
  'paper':  the paper's "large pooling kernel with a large stride": average pooling over a
    `pool_size` window (default 49x49) with `pool_stride` (default (16, 20), the paper's figures),
    in pixels of the high features, VALID, then the 1x1 conv and sigmoid, then bilinear
    upsampling (align_corners=True, as the TF code's `_resize_bilinear`) back to the high
    features' size. The official TF DeepLab code derives the window from a training crop
    (`image_pooling_crop_size` 769 -> (769 - 1) / 16 + 1 = 49 at output stride 16) and its model
    zoo flags give `image_pooling_stride` (4, 5). Where the high features are smaller than the
    window (any input under ~784 pixels a side at stride 16) the window is clipped to them, so
    the gate is global there, as it is on the paper's training crops; on 1024x2048 images
    (64x128 features) it is a (1, 4) grid of windows.

All bilinear resizing follows PyTorch's `F.interpolate(mode='bilinear')` (align_corners=False:
half-pixel centres, source indices clamped at 0; no antialiasing, also when shrinking), computed
as two small interpolation matrices.
"""
from typing import Tuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from mnv3_jax import defaults
from mnv3_jax.model import blocks, options
from mnv3_jax.model.backbone import MobileNetV3Backbone
from mnv3_jax.ops import pointwise

POOLINGS = ('global', 'paper')


def interpolation_matrix(n_in: int, n_out: int, align_corners: bool = False) -> np.ndarray:
  """(n_out, n_in) float32 weights of 1-D linear interpolation, PyTorch's index rule."""
  if align_corners:
    src = np.arange(n_out) * ((n_in - 1) / (n_out - 1) if n_out > 1 else 0.0)
  else:
    src = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
  lo = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
  hi = np.minimum(lo + 1, n_in - 1)
  frac = src - lo
  m = np.zeros((n_out, n_in), np.float64)
  np.add.at(m, (np.arange(n_out), lo), 1 - frac)
  np.add.at(m, (np.arange(n_out), hi), frac)
  return m.astype(np.float32)


def resize_bilinear(x: jax.Array, size: Tuple[int, int], align_corners: bool = False) -> jax.Array:
  """Bilinear resize of NHWC `x` to (N, size[0], size[1], C), as PyTorch's F.interpolate."""
  rows = jnp.asarray(interpolation_matrix(x.shape[1], size[0], align_corners), x.dtype)
  cols = jnp.asarray(interpolation_matrix(x.shape[2], size[1], align_corners), x.dtype)
  hi = jax.lax.Precision.HIGHEST
  x = jnp.einsum('Hh,nhwc->nHwc', rows, x, precision=hi)
  return jnp.einsum('Ww,nhwc->nhWc', cols, x, precision=hi)


def _check_pair(name, value):
  if (not isinstance(value, (tuple, list)) or len(value) != 2
      or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)):
    raise ValueError(f'Invalid {name} {value!r}; allowed: (height, width), integers >= 1.')


class LRASPPHead(nn.Module):
  """The LR-ASPP head: (low (N, h8, w8, Cl), high (N, h, w, Ch)) -> (N, h8, w8, num_classes).

  Variables: cbr (conv + BN), scale (the gate's 1x1 conv), low_classifier, high_classifier.
  """
  num_classes: int
  inter_channels: int = 128
  pooling: str = 'global'
  pool_size: Tuple[int, int] = (49, 49)
  pool_stride: Tuple[int, int] = (16, 20)
  bn_momentum: float = defaults.MODEL['bn_momentum']
  bn_epsilon: float = defaults.MODEL['bn_epsilon']
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, low: jax.Array, high: jax.Array, train: bool) -> jax.Array:
    x = blocks.ConvBN(self.inter_channels, activation=nn.relu, bn_momentum=self.bn_momentum,
                      bn_epsilon=self.bn_epsilon, dtype=self.dtype, name='cbr')(high, train)
    if self.pooling == 'global':
      s = jnp.mean(high, axis=(1, 2), keepdims=True)
    else:
      window = tuple(min(k, n) for k, n in zip(self.pool_size, high.shape[1:3]))
      s = nn.avg_pool(high, window, strides=tuple(self.pool_stride), padding='VALID')
    s = nn.sigmoid(pointwise.Pointwise(self.inter_channels, kernel_init=blocks.conv_kernel_init(),
                                       dtype=self.dtype, name='scale')(s))
    if self.pooling == 'paper':
      s = resize_bilinear(s, high.shape[1:3], align_corners=True)
    x = resize_bilinear(x * s, low.shape[1:3])
    low_logits = nn.Dense(self.num_classes, dtype=self.dtype, name='low_classifier')(low)
    return low_logits + nn.Dense(self.num_classes, dtype=self.dtype, name='high_classifier')(x)


class LRASPPMobileNetV3(nn.Module):
  """Segmentation model: `backbone` -> LR-ASPP head -> bilinear upsampling to the input size.

  backbone: a MobileNetV3Backbone; the paper's setting is output_stride=16 with a reduced tail.
  low_tap: the backbone tap of the low features ('low': torchvision's, the first stride-8 bneck).
  head_bn_epsilon: the head BN's epsilon (torchvision's head uses PyTorch's default 1e-5).
  Input (N, H, W, 3) in [-1, 1], H, W >= 32; output (N, H, W, num_classes) float32 logits.
  """
  backbone: MobileNetV3Backbone
  num_classes: int = 21
  inter_channels: int = 128
  pooling: str = 'global'
  pool_size: Tuple[int, int] = (49, 49)
  pool_stride: Tuple[int, int] = (16, 20)
  low_tap: str = 'low'
  head_bn_epsilon: float = defaults.MODEL['bn_epsilon']

  def __post_init__(self):
    if not isinstance(self.backbone, MobileNetV3Backbone):
      raise ValueError(f'backbone must be a MobileNetV3Backbone; got {self.backbone!r}.')
    for name in ('num_classes', 'inter_channels'):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f'Invalid {name} {value!r}; allowed: an integer >= 1.')
    if self.pooling not in POOLINGS:
      raise ValueError(f'Unknown pooling {self.pooling!r}; allowed: {list(POOLINGS)}.')
    _check_pair('pool_size', self.pool_size)
    _check_pair('pool_stride', self.pool_stride)
    if not (isinstance(self.head_bn_epsilon, (int, float)) and self.head_bn_epsilon > 0):
      raise ValueError(f'Invalid head_bn_epsilon {self.head_bn_epsilon!r}; allowed: a number > 0.')
    self.backbone.resolve_tap(self.low_tap)
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    features = self.backbone(x, train, taps=(self.low_tap, 'high'))
    logits = LRASPPHead(
        self.num_classes, self.inter_channels, self.pooling, tuple(self.pool_size),
        tuple(self.pool_stride), bn_momentum=self.backbone.bn_momentum,
        bn_epsilon=self.head_bn_epsilon, dtype=options.compute_dtype(self.backbone.dtype),
        name='head')(features[self.low_tap], features['high'], train)
    return resize_bilinear(logits.astype(jnp.float32), x.shape[1:3])


def init_variables(model: LRASPPMobileNetV3, rng: jax.Array,
                   image_size: Tuple[int, int] = (512, 512)):
  """{'params', 'batch_stats'} of `model` for (1, H, W, 3) inputs; checks the shape first."""
  shape = (1, *image_size, 3)
  options.check_input_shape(shape)
  return model.init(rng, jnp.zeros(shape, jnp.float32), train=False)
