"""SSDLite (MobileNetV2 paper §6.2, MobileNetV3 paper §6.3) on a `MobileNetV3Backbone`.

Feature maps: the backbone's C4 (stride 16) and C5 (stride 32) taps, then four extra blocks
(torchvision's `_extra_block`), each
  1x1 conv to width/2 -> BN -> ReLU6 -> 3x3 depthwise, stride 2 -> BN -> ReLU6 -> 1x1 conv to width
  -> BN -> ReLU6,
widths 512, 256, 256, 128 (strides 64 ... 512). On every map two predictors (torchvision's
`SSDLiteHead`), one for box regressions (4 per default box) and one for class logits
(num_classes per default box, class 0 the background), each
  3x3 depthwise -> BN -> ReLU6 -> 1x1 conv with bias.
Outputs come in the order of `anchors.default_boxes` (maps, then rows, columns, boxes of a
location), so regressions and logits line up with the default boxes of the input size.

New extra and predictor convs start from N(0, 0.03²) kernels and zero biases, torchvision's
`_normal_init` of these layers; the backbone keeps its own initialisation.
"""
import functools
from typing import Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from mnv3_jax.model import blocks, options
from mnv3_jax.model.backbone import MobileNetV3Backbone
from mnv3_jax.ops import batchnorm, depthwise, pointwise
from mnv3_jax.tasks.detection import anchors

EXTRA_WIDTHS = (512, 256, 256, 128)
_INIT = nn.initializers.normal(0.03)


class _Depthwise(nn.Module):
  """`ops.depthwise.DepthwiseConv` with torchvision's N(0, 0.03²) kernel init of these layers."""
  kernel_size: int
  stride: int
  padding: Tuple[Tuple[int, int], Tuple[int, int]]
  impl: str
  dtype: jnp.dtype

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param('kernel', _INIT, (self.kernel_size, self.kernel_size, 1, x.shape[-1]),
                        jnp.float32)
    return depthwise.depthwise_conv(x.astype(self.dtype), kernel.astype(self.dtype), self.stride,
                                    self.padding, self.impl)


class _ConvBNReLU6(nn.Module):
  """1x1 conv (features) or kxk depthwise conv (features None) -> BN -> ReLU6; N(0, 0.03²) init."""
  features: Optional[int] = None
  kernel_size: int = 1
  stride: int = 1
  bn_momentum: float = 0.97
  bn_epsilon: float = 1e-3
  padding: str = 'symmetric'
  depthwise_impl: str = 'auto'
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    if self.features is None:
      pads = blocks.spatial_padding(x.shape, self.kernel_size, self.stride, self.padding)
      x = _Depthwise(self.kernel_size, self.stride, pads, self.depthwise_impl, self.dtype,
                     name='conv')(x)
    else:
      x = pointwise.Pointwise(self.features, kernel_init=_INIT, dtype=self.dtype, name='conv')(x)
    x = batchnorm.BatchNorm(use_running_average=not train, momentum=self.bn_momentum,
                            epsilon=self.bn_epsilon, dtype=self.dtype, name='bn')(x)
    return nn.relu6(x)


class SSDLiteHead(nn.Module):
  """Per map (N, h_k, w_k, C_k): box regressions and class logits of its P_k boxes per location.

  Returns (box_regression (N, A, 4), cls_logits (N, A, num_classes)) float32, A = sum h_k·w_k·P_k.
  Variables per map k: box_<k>_depthwise/{conv,bn} and box_<k> (the 1x1 conv: kernel, bias), and
  the same for class_<k>. conv: the convs' options (bn_momentum, bn_epsilon, padding,
  depthwise_impl, dtype: the compute dtype), those of the backbone in `SSDLiteMobileNetV3`.
  """
  num_classes: int
  boxes_per_location: Tuple[int, ...]
  conv: dict

  @nn.compact
  def __call__(self, maps: Sequence[jax.Array], train: bool) -> Tuple[jax.Array, jax.Array]:
    outputs = {'box': [], 'class': []}
    for k, (x, boxes) in enumerate(zip(maps, self.boxes_per_location)):
      for name, columns in (('box', 4), ('class', self.num_classes)):
        y = _ConvBNReLU6(kernel_size=3, name=f'{name}_{k}_depthwise', **self.conv)(x, train)
        y = nn.Dense(boxes * columns, kernel_init=_INIT, dtype=self.conv['dtype'],
                     name=f'{name}_{k}')(y)
        outputs[name].append(y.reshape(y.shape[0], -1, columns))
    return tuple(jnp.concatenate(outputs[name], 1).astype(jnp.float32)
                 for name in ('box', 'class'))


class SSDLiteMobileNetV3(nn.Module):
  """SSDLite detector: backbone C4, C5 -> extra blocks -> SSDLiteHead (see the module docstring).

  backbone: a MobileNetV3Backbone at output_stride 32 (the paper's setting is a reduced tail).
  num_classes: including the background (COCO: 91, torchvision's numbering).
  Input (N, H, W, 3) in [-1, 1], H, W >= 32. Output (box_regression (N, A, 4), cls_logits
  (N, A, num_classes)), float32, for the A default boxes `default_boxes((H, W))`; `postprocess`
  turns them into detections, `loss.ssd_loss` into the training loss.
  """
  backbone: MobileNetV3Backbone
  num_classes: int = 91
  extra_widths: Tuple[int, ...] = EXTRA_WIDTHS
  aspect_ratios: Tuple[Tuple[float, ...], ...] = anchors.ASPECT_RATIOS

  def __post_init__(self):
    if not isinstance(self.backbone, MobileNetV3Backbone) or self.backbone.output_stride != 32:
      raise ValueError(f'backbone must be a MobileNetV3Backbone with output_stride 32 (C4 at 16, '
                       f'C5 at 32); got {self.backbone!r}.')
    if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int) or (
        self.num_classes < 2):
      raise ValueError(f'Invalid num_classes {self.num_classes!r}; allowed: an integer >= 2 '
                       '(the background and at least one class).')
    if not all(isinstance(w, int) and w >= 2 for w in self.extra_widths):
      raise ValueError(f'Invalid extra_widths {self.extra_widths!r}; allowed: integers >= 2.')
    if len(self.aspect_ratios) != 2 + len(self.extra_widths):
      raise ValueError(f'aspect_ratios has {len(self.aspect_ratios)} maps; allowed: one per feature'
                       f' map, 2 + len(extra_widths) = {2 + len(self.extra_widths)}.')
    anchors.box_shapes(self.aspect_ratios)   # validates the ratios
    super().__post_init__()

  def default_boxes(self, image_size: Tuple[int, int]) -> np.ndarray:
    """The (A, 4) default boxes (x1, y1, x2, y2 pixels) the outputs for an (H, W) input refer to."""
    return anchors.default_boxes(image_size, self.aspect_ratios)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> Tuple[jax.Array, jax.Array]:
    b = self.backbone
    conv = dict(bn_momentum=b.bn_momentum, bn_epsilon=b.bn_epsilon, padding=b.padding,
                depthwise_impl=b.depthwise_impl, dtype=options.compute_dtype(b.dtype))
    features = b(x, train, taps=('C4', 'C5'))
    maps = [features['C4'], features['C5']]
    for i, width in enumerate(self.extra_widths):
      y = _ConvBNReLU6(width // 2, name=f'extra_{i}_expand', **conv)(maps[-1], train)
      y = _ConvBNReLU6(kernel_size=3, stride=2, name=f'extra_{i}_depthwise', **conv)(y, train)
      maps.append(_ConvBNReLU6(width, name=f'extra_{i}_project', **conv)(y, train))
    sizes = tuple(m.shape[1:3] for m in maps)
    if sizes != anchors.feature_map_sizes(x.shape[1:3], len(maps)):
      raise ValueError(f'Feature maps {sizes} of a {x.shape[1:3]} input are not those the default '
                       f'boxes assume, {anchors.feature_map_sizes(x.shape[1:3], len(maps))}.')
    return SSDLiteHead(self.num_classes, anchors.boxes_per_location(self.aspect_ratios), conv,
                       name='head')(maps, train)


def init_variables(model: SSDLiteMobileNetV3, rng: jax.Array,
                   image_size: Tuple[int, int] = (320, 320)):
  """{'params', 'batch_stats'} of `model` for (1, H, W, 3) inputs; checks the shape first."""
  shape = (1, *image_size, 3)
  options.check_input_shape(shape)
  return jax.jit(functools.partial(model.init, train=False))(rng, jnp.zeros(shape, jnp.float32))
