"""torchvision SSDLite weights -> Flax variables of `tasks.detection.ssdlite.SSDLiteMobileNetV3`.

torchvision's `ssdlite320_mobilenet_v3_large` (its COCO weights included) is built with
weights_backbone=None, which gives MobileNetV3 Large a reduced tail (`reduced_tail=True`: the last
stage 80 wide, head conv 480, C4 = bneck 13's expansion kept at 672). All its BatchNorms have eps
0.001 and momentum 0.03 (Flax momentum 0.97); convs are symmetrically padded; images are fed as
(x - 0.5) / 0.5 of [0, 1] pixels, i.e. the [-1, 1] inputs of our models (input_norm 'none').

Weight names: `backbone.features.0` is the classifier's features[:c4] plus the expansion conv of
features[c4] (c4 = 13 on Large), `backbone.features.1` the rest of features[c4] then the later
features; they are renamed to the classifier's and mapped by `torch_weights`. Then
`backbone.extra.<i>.<0|1|2>` (expand, depthwise, project) and
`head.<regression|classification>_head.module_list.<k>.<0.0|0.1|1>` (depthwise conv, its BN, 1x1
conv). `from_torchvision` checks the model's options and fills its variables, or raises ValueError
naming what does not fit.
"""
import os
import re
from typing import Any, Dict, Mapping, Optional

import jax
import jax.numpy as jnp
from flax import traverse_util

from mnv3_jax.interop import torch_weights
from mnv3_jax.model.backbone import MobileNetV3Backbone
from mnv3_jax.tasks.detection import anchors, ssdlite

# What torchvision's SSDLite computes with beyond its weights' shapes.
_BACKBONE = {**{k: v for k, v in torch_weights.required_options('torchvision').items()
                if k != 'last_stage'},
             'input_norm': 'none', 'output_stride': 32, 'reduced_tail': 'torchvision',
             'width': 1.0, 'minimalistic': False}
_MODEL = {'extra_widths': ssdlite.EXTRA_WIDTHS, 'aspect_ratios': anchors.ASPECT_RATIOS}
BN_MOMENTUM = 0.97   # torchvision's 0.03: training only
_FIRST = re.compile(r'backbone\.features\.0\.(\d+)\.(.*)')
_SECOND = re.compile(r'backbone\.features\.1\.(\d+)\.(.*)')
_EXTRA = re.compile(r'backbone\.extra\.(\d+)\.([012])\.([01])\.(\w+)')
_HEAD = re.compile(r'head\.(regression|classification)_head\.module_list\.(\d+)\.(0\.[01]|1)\.(\w+)')
_ROLES = ('expand', 'depthwise', 'project')
_MAX_LISTED = 8


def torchvision_model(variant: str = 'large', num_classes: int = 91,
                      **backbone_options) -> ssdlite.SSDLiteMobileNetV3:
  """The SSDLiteMobileNetV3 that computes like torchvision's SSDLite on MobileNetV3 `variant`
  (torchvision builds 'large'). backbone_options: other MobileNetV3Backbone options (dtype,
  depthwise_impl, ...)."""
  backbone = MobileNetV3Backbone(
      variant=variant, **{**_BACKBONE, 'bn_momentum': BN_MOMENTUM, **backbone_options})
  return ssdlite.SSDLiteMobileNetV3(backbone, num_classes=num_classes, **_MODEL)


def _nested_tuple(value):
  return tuple(map(_nested_tuple, value)) if isinstance(value, (list, tuple)) else value


def check_options(model: ssdlite.SSDLiteMobileNetV3) -> None:
  """Raises ValueError naming each option of `model` torchvision's SSDLite does not compute with."""
  wrong = [f'backbone.{k}={getattr(model.backbone, k)!r} (needs {v!r})'
           for k, v in _BACKBONE.items() if getattr(model.backbone, k) != v]
  wrong += [f'{k}={getattr(model, k)!r} (needs {v!r})' for k, v in _MODEL.items()
            if _nested_tuple(getattr(model, k)) != _nested_tuple(v)]
  if wrong:
    raise ValueError('torchvision SSDLite weights do not compute like this SSDLiteMobileNetV3: '
                     + '; '.join(wrong) + '. torch_ssdlite.torchvision_model builds one that does.')


def classifier_name(name: str, c4: int) -> Optional[str]:
  """A `backbone.features.*` name as the classifier's `features.*` name (c4: the C4 bneck's
  features index); None for other names."""
  first, second = _FIRST.fullmatch(name), _SECOND.fullmatch(name)
  if first:
    index, rest = int(first[1]), first[2]
    return f'features.{index}.{rest}' if index < c4 else f'features.{c4}.block.0.{rest}'
  if second:
    index, rest = int(second[1]), second[2]
    if index == 0:   # the C4 bneck from its depthwise conv on: block.1, block.2, ...
      part, _, tail = rest.partition('.')
      return f'features.{c4}.block.{int(part) + 1}.{tail}'
    return f'features.{c4 + index}.{rest}'
  return None


def _own_path(name: str):
  """Flax path of an extra-block or head weight name, None if unknown."""
  # pylint: disable=protected-access  (the classifier converter's BN/conv leaf rule)
  extra, head = _EXTRA.fullmatch(name), _HEAD.fullmatch(name)
  if extra:
    module = (f'extra_{extra[1]}_{_ROLES[int(extra[2])]}', 'conv' if extra[3] == '0' else 'bn')
    return torch_weights._leaf(module, extra[4])
  if head:
    kind = 'box' if head[1] == 'regression' else 'class'
    module = {'0.0': (f'{kind}_{head[2]}_depthwise', 'conv'),
              '0.1': (f'{kind}_{head[2]}_depthwise', 'bn'), '1': (f'{kind}_{head[2]}',)}[head[3]]
    path = torch_weights._leaf(module, head[4])
    return path and (path[0], 'head', *path[1:])
  return None


def _listed(title: str, items: list) -> str:
  more = f' (and {len(items) - _MAX_LISTED} more)' if len(items) > _MAX_LISTED else ''
  return f'\n  {title}: ' + '; '.join(items[:_MAX_LISTED]) + more


def from_torchvision(source: Any, model: ssdlite.SSDLiteMobileNetV3) -> Dict[str, Any]:
  """Converts a torchvision SSDLite MobileNetV3 state dict into Flax variables for `model`.

  source: a state dict (name -> torch tensor or numpy array) or a .pth/.pt/.bin/.safetensors file.
  Returns {'params', 'batch_stats'} of float32 arrays in `model`'s tree. Raises ValueError if
  `model`'s options differ from torchvision's (`check_options`), or naming every weight without a
  place, every Flax leaf without a weight and every shape mismatch.
  """
  check_options(model)
  if isinstance(source, (str, os.PathLike)):
    source = torch_weights.load_state_dict(source)
  if not isinstance(source, Mapping):
    raise ValueError(f'source must be a state dict or a file path; got {type(source).__name__}.')
  # pylint: disable=protected-access  (the classifier converter's name and layout rules)
  state = {name: torch_weights._to_numpy(value) for name, value in source.items()
           if not name.endswith('num_batches_tracked')}
  c4 = max((int(m[1]) for m in map(_FIRST.fullmatch, state) if m), default=0)
  renamed = {name: classifier_name(name, c4) for name in state}
  backbone_paths = torch_weights._torchvision_paths([n for n in renamed.values() if n])
  shapes_model = model.clone(backbone=model.backbone.clone(depthwise_impl='conv'))
  expected = traverse_util.flatten_dict(jax.eval_shape(
      lambda rng: ssdlite.init_variables(shapes_model, rng, (64, 64)), jax.random.key(0)))
  found, unknown, mismatched = {}, [], []
  for name, value in state.items():
    path = backbone_paths.get(renamed[name]) if renamed[name] else _own_path(name)
    if path and renamed[name]:
      path = (path[0], 'backbone', *path[1:])
    if path is None or path not in expected or path in found:
      unknown.append(f'{name} {tuple(value.shape)}')
      continue
    converted = torch_weights._to_flax_layout(value, expected[path].shape)
    if converted.shape != expected[path].shape:
      mismatched.append(f'{name} {tuple(value.shape)} -> {"/".join(path)} has shape '
                        f'{converted.shape} but the Flax model expects {expected[path].shape}')
      continue
    found[path] = jnp.asarray(converted, expected[path].dtype)
  missing = [f'{"/".join(p)} {expected[p].shape}' for p in expected if p not in found]
  if unknown or mismatched or missing:
    raise ValueError(
        f'The torchvision SSDLite checkpoint does not fit SSDLiteMobileNetV3(variant='
        f'{model.backbone.variant!r}, num_classes={model.num_classes}):'
        + (_listed('shape mismatches', mismatched) if mismatched else '')
        + (_listed('torchvision weights left unused', unknown) if unknown else '')
        + (_listed('Flax leaves without a torchvision weight', missing) if missing else ''))
  return traverse_util.unflatten_dict(found)
