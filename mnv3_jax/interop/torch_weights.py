"""PyTorch MobileNetV3 weights (torchvision, timm) -> Flax variables.

`from_torch(source, model, fmt)` returns {'params', 'batch_stats'} for a
`mnv3_jax.model.MobileNetV3` from a state dict or a `.safetensors`, `.pth`, `.pt` or `.bin` file.
Formats (which models' weights, and what they compute with):

  'torchvision': torchvision.models.mobilenet_v3_large / _small, width 1.0 only (its width rule
      scales every expansion and the 1280/1024 layer, which the Keras rule of `model.py` does not);
      symmetric padding, BN epsilon 1e-3.
  'timm':    timm's native `mobilenetv3_large_100`, `mobilenetv3_small_100/075/050`: symmetric
      padding, BN epsilon 1e-5 (PyTorch's default).
  'timm_tf': timm's ports of the TF weights, `tf_mobilenetv3_*` (incl. `*_minimal_100`): TF SAME
      padding, BN epsilon 1e-3.

Padding and epsilon are invisible in the weights, so `model` must already have the format's values
(`required_options(fmt)`); other options are checked by shape, as in `mnv3_jax.convert.from_keras`:
every weight maps by name to one Flax leaf and every leaf must be filled with a weight of its
shape, else a ValueError names the weights, the Flax paths and both shapes. Its steps are shared
with the LR-ASPP and SSDLite converters: `read_state`, `torchvision_paths` / `leaf_path` (names ->
Flax paths), `to_flax_layout` and `fill_variables` (the checked placement).

Files are read by `load_state_dict` (`torch_files`), which never unpickles code.
"""
import collections
import os
import re
from typing import Any, Dict, Iterable, Mapping, Optional, Tuple

import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from mnv3_jax.interop import keras_weights
from mnv3_jax.interop.torch_files import load_state_dict
from mnv3_jax import model as model_lib

FORMATS = ('torchvision', 'timm', 'timm_tf')
_FORMAT_OPTIONS = {
    'torchvision': dict(padding='symmetric', bn_epsilon=1e-3),
    'timm': dict(padding='symmetric', bn_epsilon=1e-5),
    'timm_tf': dict(padding='same', bn_epsilon=1e-3),
}
# What every format computes; the rest (variant, width, minimalistic, classes) shows in the shapes.
_COMMON_OPTIONS = dict(activation='hard_swish', se_gate='hard_sigmoid', stem_filters=16,
                       last_stage='efficient')
_MAX_LISTED = 8   # problems of one kind that `fill_variables` names

Path = Tuple[str, ...]
_BN = {'weight': ('params', 'scale'), 'bias': ('params', 'bias'),
       'running_mean': ('batch_stats', 'mean'), 'running_var': ('batch_stats', 'var')}
_DENSE = {'weight': ('params', 'kernel'), 'bias': ('params', 'bias')}

# torchvision: features.0 = stem, features.i.block.j = bneck i-1, the last features.n = head conv.
_TV_FEATURE = re.compile(r'features\.(\d+)\.(?:block\.(\d+)\.)?(0|1|fc1|fc2)\.(\w+)')
_TV_CLASSIFIER = {'classifier.0': ('pre_logits',), 'classifier.3': ('logits',)}
_TV_ROLES = ('expand', 'depthwise', 'project')
# timm: blocks.s.i are the bnecks in order, the last one a ConvBnAct ('cn'): the head conv.
_TIMM_BLOCK = re.compile(r'blocks\.(\d+)\.(\d+)\.((?:se\.)?\w+)\.(\w+)')
_TIMM_PARTS = {
    'ds': {'conv_dw': ('depthwise', 'conv'), 'bn1': ('depthwise', 'bn'),
           'conv_pw': ('project', 'conv'), 'bn2': ('project', 'bn')},
    'ir': {'conv_pw': ('expand', 'conv'), 'bn1': ('expand', 'bn'), 'conv_dw': ('depthwise', 'conv'),
           'bn2': ('depthwise', 'bn'), 'conv_pwl': ('project', 'conv'), 'bn3': ('project', 'bn')},
    'cn': {'conv': ('conv',), 'bn1': ('bn',)},
}
_TIMM_SE = {'se.conv_reduce': ('se', 'reduce'), 'se.conv_expand': ('se', 'expand')}
_TIMM_TOP = {'conv_stem': ('stem', 'conv'), 'bn1': ('stem', 'bn'), 'conv_head': ('pre_logits',),
             'classifier': ('logits',)}


def required_options(fmt: str) -> Dict[str, Any]:
  """The MobileNetV3 options a format's weights compute with (beyond what their shapes fix)."""
  if fmt not in FORMATS:
    raise ValueError(f'Unknown weights format {fmt!r}; allowed: {list(FORMATS)}.')
  return {**_COMMON_OPTIONS, **_FORMAT_OPTIONS[fmt]}


def leaf_path(module: Path, leaf: str) -> Optional[Path]:
  """Flax path (collection, *module, leaf) of PyTorch weight `leaf` of Flax module `module`, or
  None. BatchNorms (module ends in 'bn'): weight, bias, running_mean, running_var -> params scale,
  bias, batch_stats mean, var; convs and linears: weight, bias -> params kernel, bias."""
  table = _BN if module[-1] == 'bn' else _DENSE
  return (table[leaf][0], *module, table[leaf][1]) if leaf in table else None


def torchvision_paths(names: Iterable[str]) -> Dict[str, Optional[Path]]:
  """Flax path (`leaf_path`; None: unknown) of every torchvision classifier weight name, of one
  state dict's `features.*` and `classifier.*` names together (they show which bneck is last)."""
  parsed = {n: _TV_FEATURE.fullmatch(n) for n in names}
  last = max((int(m[1]) for m in parsed.values() if m), default=0)
  convs = collections.defaultdict(set)   # bneck -> indices of its conv-BN modules
  for m in parsed.values():
    if m and m[2] is not None and m[3] in ('0', '1'):
      convs[int(m[1])].add(int(m[2]))
  paths = {}
  for name, m in parsed.items():
    module = None
    if m is None:
      prefix, _, leaf = name.rpartition('.')
      module = _TV_CLASSIFIER.get(prefix)
    elif m[2] is None:
      place = 'stem' if m[1] == '0' else 'head_conv' if int(m[1]) == last else None
      if place and m[3] in ('0', '1'):
        module = (place, 'conv' if m[3] == '0' else 'bn')
      leaf = m[4]
    else:
      block, index = f'block_{int(m[1]) - 1}', int(m[2])
      leaf = m[4]
      if m[3] in ('fc1', 'fc2'):
        module = (block, 'se', 'reduce' if m[3] == 'fc1' else 'expand')
      else:
        order = sorted(convs[int(m[1])])
        roles = _TV_ROLES[len(_TV_ROLES) - len(order):] if len(order) in (2, 3) else ()
        if roles:
          module = (block, roles[order.index(index)], 'conv' if m[3] == '0' else 'bn')
    paths[name] = module and leaf_path(module, leaf)
  return paths


def _timm_paths(names) -> Dict[str, Optional[Path]]:
  """Flax path (None: unknown) of every timm weight name."""
  parsed = {n: _TIMM_BLOCK.fullmatch(n) for n in names}
  parts = collections.defaultdict(set)
  for m in parsed.values():
    if m:
      parts[(int(m[1]), int(m[2]))].add(m[3])
  kinds = {key: 'ir' if 'conv_pwl' in p else 'ds' if 'conv_dw' in p else 'cn'
           for key, p in parts.items()}
  numbers = {key: i for i, key in enumerate(k for k in sorted(kinds) if kinds[k] != 'cn')}
  paths = {}
  for name, m in parsed.items():
    module = None
    if m is None:
      prefix, _, leaf = name.rpartition('.')
      module = _TIMM_TOP.get(prefix)
    else:
      key, part, leaf = (int(m[1]), int(m[2])), m[3], m[4]
      if kinds[key] == 'cn':
        module = ('head_conv', *_TIMM_PARTS['cn'][part]) if part in _TIMM_PARTS['cn'] else None
      elif part in _TIMM_SE or part in _TIMM_PARTS[kinds[key]]:
        module = (f'block_{numbers[key]}',
                  *(_TIMM_SE.get(part) or _TIMM_PARTS[kinds[key]][part]))
    paths[name] = module and leaf_path(module, leaf)
  return paths


def to_flax_layout(value: np.ndarray, want: Tuple[int, ...]) -> np.ndarray:
  """A PyTorch weight in Flax layout, for a leaf of shape `want`: convs (out, in, kh, kw) -> (kh,
  kw, in, out) (depthwise (C, 1, k, k) -> (k, k, 1, C)), or (in, out) for a 1x1 conv where `want`
  is 2-D (a Dense); linears (out, in) -> (in, out); 1-D weights (biases, BN) as they are."""
  if value.ndim == 4 and len(want) == 2 and value.shape[2:] == (1, 1):
    return value[:, :, 0, 0].T     # a 1x1 conv, a matmul in Flax
  if value.ndim == 4:
    return value.transpose(2, 3, 1, 0)   # depthwise (C, 1, k, k) -> (k, k, 1, C) too
  return value.T if value.ndim == 2 else value


def _summary(state: Mapping[str, np.ndarray], fmt: str) -> str:
  """What the checkpoint looks like: number of bnecks (11 Small, 15 Large) and classes."""
  head = state.get('classifier.3.weight' if fmt == 'torchvision' else 'classifier.weight')
  if fmt == 'torchvision':
    blocks = {n.split('.')[1] for n in state if '.block.' in n}
  else:
    blocks = {tuple(n.split('.')[1:3]) for n in state
              if n.startswith('blocks.') and '.conv_dw.' in n}
  classes = f'{head.shape[0]} classes' if head is not None and head.ndim == 2 else 'no classifier'
  return f'{len(blocks)} bnecks (Small has 11, Large 15), {classes}'


def check_options(model: model_lib.MobileNetV3, fmt: str) -> None:
  """Raises ValueError naming each option of `model` that `fmt`'s weights do not compute with."""
  wrong = [f'{k}={getattr(model, k)!r} (needs {v!r})' for k, v in required_options(fmt).items()
           if getattr(model, k) != v]
  if fmt == 'torchvision' and model.width != 1.0:
    wrong.append(f'width={model.width} (torchvision weights: only 1.0; its width rule differs '
                 'from the Keras rule of mnv3_jax.model at other widths)')
  if fmt == 'torchvision' and model.minimalistic:
    wrong.append('minimalistic=True (torchvision has no minimalistic models)')
  if wrong:
    raise ValueError(f'{fmt} weights do not compute like {keras_weights.describe(model)}: '
                     + '; '.join(wrong) + '. See convert_torch.required_options.')


def from_torch(source: Any, model: model_lib.MobileNetV3, fmt: str) -> Dict[str, Any]:
  """Converts torchvision or timm MobileNetV3 weights into Flax variables for `model`.

  source: a state dict (name -> torch tensor or numpy array) or a file path (`load_state_dict`).
  fmt: one of FORMATS. Returns {'params', 'batch_stats'} of float32 arrays in `model`'s tree.
  Raises ValueError if `model`'s options differ from the format's, or if any weight is unused,
  any leaf unfilled, or any shape differs (naming them and the checkpoint's bnecks and classes).
  """
  check_options(model, fmt)
  state = read_state(source)
  paths = (torchvision_paths if fmt == 'torchvision' else _timm_paths)(state)
  return keras_weights.fill_leaves(
      [(name, paths[name], value) for name, value in state.items()], model,
      lambda value, path, shape: to_flax_layout(value, shape),
      source=f'The {fmt} checkpoint ({_summary(state, fmt)})', kind=fmt)


def read_state(source: Any) -> Dict[str, np.ndarray]:
  """A state dict (name -> torch tensor or numpy array) or a file (`load_state_dict`) as name ->
  numpy array in PyTorch layout (torch float tensors as float32), less `num_batches_tracked`."""
  if isinstance(source, (str, os.PathLike)):
    source = load_state_dict(source)
  if not isinstance(source, Mapping):
    raise ValueError(f'source must be a state dict or a file path; got {type(source).__name__}.')
  return {name: _to_numpy(value) for name, value in source.items()
          if not name.endswith('num_batches_tracked')}


def fill_variables(weights: Iterable[Tuple[str, Optional[Path], np.ndarray]], shapes: Mapping,
                   description: str) -> Dict[str, Any]:
  """Places PyTorch weights into a Flax variable tree, or explains why they do not fit.

  weights: (name, Flax path (`leaf_path`) or None if unknown, array in PyTorch layout) triples.
  shapes: the model's variable tree of jax.ShapeDtypeStructs (`jax.eval_shape` of its init).
  description: the error's first words (what does not fit what). Returns {'params',
  'batch_stats'} in `shapes`' tree and dtypes, in Flax layout (`to_flax_layout`). Raises
  ValueError naming (up to 8 each) every shape mismatch, weight without a leaf (or whose leaf is
  filled already) and leaf without a weight."""
  expected = traverse_util.flatten_dict(shapes)
  found, unknown, mismatched = {}, [], []
  for name, path, value in weights:
    if path is None or path not in expected or path in found:
      unknown.append(f'{name} {tuple(value.shape)}')
      continue
    converted = to_flax_layout(value, expected[path].shape)
    if converted.shape != expected[path].shape:
      mismatched.append(f'{name} {tuple(value.shape)} -> {"/".join(path)} has shape '
                        f'{converted.shape} but the Flax model expects {expected[path].shape}')
      continue
    found[path] = jnp.asarray(converted, expected[path].dtype)
  missing = [f'{"/".join(p)} {expected[p].shape}' for p in expected if p not in found]
  if unknown or mismatched or missing:
    raise ValueError(
        f'{description}:' + (_listed('shape mismatches', mismatched) if mismatched else '')
        + (_listed('torchvision weights left unused', unknown) if unknown else '')
        + (_listed('Flax leaves without a torchvision weight', missing) if missing else ''))
  return traverse_util.unflatten_dict(found)


def _listed(title: str, items: list) -> str:
  more = f' (and {len(items) - _MAX_LISTED} more)' if len(items) > _MAX_LISTED else ''
  return f'\n  {title}: ' + '; '.join(items[:_MAX_LISTED]) + more


def _to_numpy(value: Any) -> np.ndarray:
  if hasattr(value, 'detach'):   # a torch tensor; bfloat16 has no numpy dtype
    value = value.detach().cpu()
    value = value.float() if value.is_floating_point() else value
    return value.numpy()
  return np.asarray(value)
