"""MobileNetV3 as a backbone for dense tasks: named feature maps instead of logits.

`MobileNetV3Backbone` has the options of `MobileNetV3` (the blocks come from its
`block_specs()`; no table is repeated here) and its parameter names (`stem`, `block_i/...`,
`head_conv`), so a classification checkpoint's variables minus `pre_logits` and `logits` load
into it. Two options are the paper's for segmentation (§6.4) and detection (§6.3):

  output_stride: 32, or 16: the last stage (from the last stride-2 bneck on: Large 12-14, Small
    8-10) runs at stride 1 with its depthwise convs dilated by 2. This is torchvision's
    `_mobilenet_v3_conf(dilated=True)`: the stage's first bneck is dilated as well and keeps no
    shortcut. (TF-slim's `output_stride` instead leaves that first bneck undilated.)
  reduced_tail: the paper's "reduced tail", the last stage's widths halved (its bnecks' outputs
    and the later expansions, hence the head conv: Large 160 -> 80, 960 -> 480; Small 96 -> 48,
    576 -> 288):
      'none'         the classifier's widths;
      'torchvision'  `reduced_tail=True` of torchvision: the stage's first expansion is kept
                     (Large 672, Small 288);
      'official'     the official TF `mobilenet_v3_large_seg` / `_small_seg`: it is halved too
                     (Large 336, Small 144). With it the paper's LR-ASPP models have the
                     paper's param counts (tasks/segmentation/summary.py).

Taps (the `taps` argument of `__call__`; each maps to an (N, h, w, C) array in the compute dtype):
  'stem'               the stem's output, stride 2.
  'block_<i>'          the output of bneck i (0-based).
  'block_<i>/expand'   the output of bneck i's 1x1 expansion conv (after BN and activation).
  'head_conv'          the final 1x1 conv (960 Large, 576 Small at width 1), stride 16 or 32.
  'low'   torchvision LR-ASPP's low features: the first bneck at stride 8 (Large block_3, 40
          wide; Small block_1, 24 wide).
  'high'  LR-ASPP's high features: 'head_conv'.
  'C4'    SSDLite's C4: the expansion conv of the last stage's first bneck, Large bneck 13
          (block_12/expand, 672 wide), Small bneck 9 (block_8/expand, 288 wide), stride 16.
  'C5'    SSDLite's C5, the layer before pooling: 'head_conv'.
"""
import re
from typing import Dict, Sequence, Tuple

import jax
from flax import linen as nn

from mnv3_jax import defaults
from mnv3_jax.model import activations, blocks, options
from mnv3_jax.model.mobilenet_v3 import BlockSpec, MobileNetV3
from mnv3_jax.model.tables import HS, TABLES

_D = defaults.MODEL
OUTPUT_STRIDES = (16, 32)
REDUCED_TAILS = ('none', 'torchvision', 'official')
ALIASES = ('low', 'high', 'C4', 'C5')
DEFAULT_TAPS = ('low', 'high')
_BLOCK_TAP = re.compile(r'block_(\d+)(/expand)?')


class MobileNetV3Backbone(nn.Module):
  """MobileNetV3 without its classifier, returning named feature maps (see the module doc)."""
  variant: str = _D['variant']
  width: float = _D['width']
  minimalistic: bool = _D['minimalistic']
  dtype: str = _D['dtype']
  bn_momentum: float = _D['bn_momentum']
  bn_epsilon: float = _D['bn_epsilon']
  activation: str = _D['activation']
  se: bool = _D['se']
  se_gate: str = _D['se_gate']
  stem_filters: int = _D['stem_filters']
  depthwise_impl: str = _D['depthwise_impl']
  padding: str = _D['padding']
  input_norm: str = _D['input_norm']
  output_stride: int = 32
  reduced_tail: str = 'none'

  def __post_init__(self):
    self.classifier()   # validates the options shared with MobileNetV3
    if isinstance(self.output_stride, bool) or self.output_stride not in OUTPUT_STRIDES:
      raise ValueError(f'Invalid output_stride {self.output_stride!r}; allowed: '
                       f'{list(OUTPUT_STRIDES)}.')
    if self.reduced_tail not in REDUCED_TAILS:
      raise ValueError(f'Unknown reduced_tail {self.reduced_tail!r}; allowed: '
                       f'{list(REDUCED_TAILS)}.')
    super().__post_init__()

  def classifier(self) -> MobileNetV3:
    """The (unbound) classifier with these options: its blocks and rules are this backbone's."""
    names = ('variant', 'width', 'minimalistic', 'dtype', 'bn_momentum', 'bn_epsilon',
             'activation', 'se', 'se_gate', 'stem_filters', 'depthwise_impl', 'padding',
             'input_norm')
    return MobileNetV3(**{n: getattr(self, n) for n in names}, parent=None)

  def tail_start(self) -> int:
    """Index of the last stride-2 bneck, where the last stage starts (Large 12, Small 8)."""
    return max(i for i, row in enumerate(TABLES[self.variant]) if row.stride == 2)

  def block_specs(self) -> Tuple[BlockSpec, ...]:
    """The classifier's bnecks with the last stage's widths halved as `reduced_tail` says."""
    specs = list(self.classifier().block_specs())
    if self.reduced_tail == 'none':
      return tuple(specs)
    rows, start = TABLES[self.variant], self.tail_start()
    for i in range(start, len(specs)):
      # Expansion widths are ratios of the actual input width, as in MobileNetV3.block_specs.
      first = i == start
      exp = rows[i].exp if first and self.reduced_tail == 'torchvision' else rows[i].exp / 2
      ratio = exp / (rows[i - 1].out if first else rows[i - 1].out / 2)
      expanded = blocks.make_divisible(specs[i - 1].out * ratio)
      specs[i] = specs[i]._replace(
          expanded=expanded, out=blocks.make_divisible(rows[i].out / 2 * self.width),
          se_squeeze=blocks.make_divisible(expanded / 4) if specs[i].se_squeeze else None)
    return tuple(specs)

  def dilations(self) -> Tuple[int, ...]:
    """Per bneck: 2 for the last stage at output stride 16 (it then runs at stride 1), else 1."""
    start = self.tail_start() if self.output_stride == 16 else len(TABLES[self.variant])
    return tuple(2 if i >= start else 1 for i in range(len(TABLES[self.variant])))

  def resolve_tap(self, name: str) -> str:
    """The feature a tap name denotes ('low' -> 'block_3' on Large); ValueError if unknown."""
    specs = self.block_specs()
    if name in ('high', 'C5'):
      return 'head_conv'
    if name == 'C4':
      return f'block_{self.tail_start()}/expand'
    if name == 'low':
      total = 2   # the stem's stride
      for i, spec in enumerate(specs):
        total *= spec.stride
        if total == 8:
          return f'block_{i}'
    match = _BLOCK_TAP.fullmatch(name) if isinstance(name, str) else None
    if name in ('stem', 'head_conv') or (
        match and int(match[1]) < len(specs) and (not match[2] or specs[int(match[1])].expand)):
      return name
    no_expand = [i for i, s in enumerate(specs) if not s.expand]
    raise ValueError(
        f'Unknown tap {name!r}; allowed: {list(ALIASES)}, \'stem\', \'head_conv\', '
        f'\'block_<i>\' and \'block_<i>/expand\' with i in 0..{len(specs) - 1} (no /expand '
        f'for blocks {no_expand}, which have no expansion conv).')

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False,
               taps: Sequence[str] = DEFAULT_TAPS) -> Dict[str, jax.Array]:
    """Images (N, H, W, 3) in [-1, 1], H, W >= 32 -> {tap name: (N, h, w, C) features}."""
    if isinstance(taps, str):
      raise ValueError(f'taps must be a sequence of tap names, not the string {taps!r}.')
    wanted = {name: self.resolve_tap(name) for name in taps}
    options.check_input_shape(x.shape)
    model = self.classifier()
    conv = dict(bn_momentum=self.bn_momentum, bn_epsilon=self.bn_epsilon,
                dtype=options.compute_dtype(self.dtype), padding=self.padding,
                depthwise_impl=self.depthwise_impl)
    hs = activations.get_activation(model.activation_name(HS))
    x = blocks.ConvBN(self.stem_filters, 3, 2, activation=hs, name='stem',
                      **conv)(model.prepare_input(x), train)
    found = {'stem': x}
    for i, (spec, dilation) in enumerate(zip(self.block_specs(), self.dilations())):
      x, found[f'block_{i}/expand'] = blocks.InvertedResidual(
          kernel_size=spec.kernel, expanded=spec.expanded, out=spec.out, stride=spec.stride,
          activation=activations.get_activation(spec.activation), expand=spec.expand,
          se_squeeze=spec.se_squeeze, se_gate=activations.get_gate(self.se_gate),
          dilation=dilation, return_expanded=True, name=f'block_{i}', **conv)(x, train)
      found[f'block_{i}'] = x
    head_width, _ = model.head_widths(x.shape[-1])
    found['head_conv'] = blocks.ConvBN(head_width, activation=hs, name='head_conv',
                                       **conv)(x, train)
    return {name: found[key] for name, key in wanted.items()}
