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

Classes: torchvision's COCO weights predict 91 slots, 0 the background and then COCO category ids
1..90, ten of them unused. `classes='torchvision'` (the default) keeps the checkpoint's slots as
they are; `classes='coco_contiguous'` keeps the background and the 80 used ids in TFDS coco's label
order (`COCO_CATEGORY_IDS`), an 81-class model whose class k is TFDS label k - 1 (the numbering
of `tasks.detection.data_sources`).
"""
import re
from typing import Any, Dict, Mapping, Optional, Tuple

import jax
import numpy as np

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
CLASSES = ('torchvision', 'coco_contiguous')
TORCHVISION_COCO_CLASSES = 91   # background + COCO category ids 1..90
# The COCO category ids with objects (all of 1..90 but 12, 26, 29, 30, 45, 66, 68, 69, 71, 83),
# in TFDS coco's label order: its builder names the labels in the order of the annotation file's
# categories, `...['label'].names = [c['name'] for c in categories]` (tensorflow_datasets 4.9.10,
# object_detection/coco.py, Coco._generate_examples), and COCO's instances_*.json files list
# them by ascending id. So TFDS label i (our class i + 1) is COCO id COCO_CATEGORY_IDS[i].
COCO_CATEGORY_IDS = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22,
                     23, 24, 25, 27, 28, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44,
                     46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64,
                     65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88,
                     89, 90)


def torchvision_model(variant: str = 'large', num_classes: int = 91,
                      **backbone_options) -> ssdlite.SSDLiteMobileNetV3:
  """The SSDLiteMobileNetV3 that computes like torchvision's SSDLite on MobileNetV3 `variant`
  (torchvision builds 'large'). num_classes: 91 for its COCO weights as they are, 81 for them
  with classes='coco_contiguous' (`from_torchvision`). backbone_options: other
  MobileNetV3Backbone options (dtype, depthwise_impl, ...)."""
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
  extra, head = _EXTRA.fullmatch(name), _HEAD.fullmatch(name)
  if extra:
    module = (f'extra_{extra[1]}_{_ROLES[int(extra[2])]}', 'conv' if extra[3] == '0' else 'bn')
    return torch_weights.leaf_path(module, extra[4])
  if head:
    kind = 'box' if head[1] == 'regression' else 'class'
    module = {'0.0': (f'{kind}_{head[2]}_depthwise', 'conv'),
              '0.1': (f'{kind}_{head[2]}_depthwise', 'bn'), '1': (f'{kind}_{head[2]}',)}[head[3]]
    path = torch_weights.leaf_path(module, head[4])
    return path and (path[0], 'head', *path[1:])
  return None


def _coco_contiguous(state: Mapping[str, np.ndarray],
                     boxes_per_location: Tuple[int, ...]) -> Dict[str, np.ndarray]:
  """`state` with its class predictors cut from 91 class slots to the background and
  COCO_CATEGORY_IDS, in that order (81).

  Map k's predictor `head.classification_head.module_list.<k>.1` is a 1x1 conv, weight
  (P_k * 91, C_k, 1, 1) and bias (P_k * 91,) for P_k = boxes_per_location[k]: torchvision's
  SSDScoringHead views its (N, P_k * 91, H, W) output as (N, P_k, 91, H, W), so channel p * 91 + c
  is slot c of default box p (as the Flax head's reshape to (N, H * W * P_k, classes) reads it).
  They become (P_k * 81, C_k, 1, 1) and (P_k * 81,). Maps the model lacks are left as they are.
  """
  kept = np.array((0, *COCO_CATEGORY_IDS))
  cut = dict(state)
  for name, value in state.items():
    head = _HEAD.fullmatch(name)
    if not (head and head[1] == 'classification' and head[3] == '1'
            and int(head[2]) < len(boxes_per_location)):
      continue
    boxes = boxes_per_location[int(head[2])]
    if value.shape[0] != boxes * TORCHVISION_COCO_CLASSES:
      raise ValueError(f"classes='coco_contiguous' needs torchvision's {TORCHVISION_COCO_CLASSES} "
                       f'class slots: {name} {value.shape} has {value.shape[0]} output channels, '
                       f'not {boxes} boxes x {TORCHVISION_COCO_CLASSES}.')
    per_box = value.reshape(boxes, TORCHVISION_COCO_CLASSES, *value.shape[1:])
    cut[name] = per_box[:, kept].reshape(boxes * len(kept), *value.shape[1:])
  return cut


def from_torchvision(source: Any, model: ssdlite.SSDLiteMobileNetV3,
                     classes: str = 'torchvision') -> Dict[str, Any]:
  """Converts a torchvision SSDLite MobileNetV3 state dict into Flax variables for `model`.

  source: a state dict (name -> torch tensor or numpy array) or a .pth/.pt/.bin/.safetensors file.
  classes: 'torchvision', the checkpoint's class slots as they are (model.num_classes of them:
    91 for the COCO weights); or 'coco_contiguous', for 91-slot COCO weights: the background and
    COCO_CATEGORY_IDS, in TFDS coco's order (model.num_classes 81; class k is TFDS label k - 1).
  Returns {'params', 'batch_stats'} of float32 arrays in `model`'s tree. Raises ValueError for an
  unknown `classes`, if `model`'s options differ from torchvision's (`check_options`), or naming
  every weight without a place, every Flax leaf without a weight and every shape mismatch.
  """
  if classes not in CLASSES:
    raise ValueError(f'Unknown classes {classes!r}; allowed: {list(CLASSES)}.')
  check_options(model)
  contiguous = len(COCO_CATEGORY_IDS) + 1
  if classes == 'coco_contiguous' and model.num_classes != contiguous:
    raise ValueError(f"classes='coco_contiguous' gives {contiguous} classes (the background and "
                     f"COCO's {contiguous - 1} categories), but the model has num_classes="
                     f'{model.num_classes}; torch_ssdlite.torchvision_model(num_classes='
                     f'{contiguous}) builds one that fits.')
  state = torch_weights.read_state(source)
  if classes == 'coco_contiguous':
    state = _coco_contiguous(state, anchors.boxes_per_location(model.aspect_ratios))
  c4 = max((int(m[1]) for m in map(_FIRST.fullmatch, state) if m), default=0)
  renamed = {name: classifier_name(name, c4) for name in state}
  backbone_paths = torch_weights.torchvision_paths([n for n in renamed.values() if n])
  weights = []
  for name, value in state.items():
    path = backbone_paths.get(renamed[name]) if renamed[name] else _own_path(name)
    if path and renamed[name]:
      path = (path[0], 'backbone', *path[1:])
    weights.append((name, path, value))
  shapes_model = model.clone(backbone=model.backbone.clone(depthwise_impl='conv'))
  shapes = jax.eval_shape(lambda rng: ssdlite.init_variables(shapes_model, rng, (64, 64)),
                          jax.random.key(0))
  return torch_weights.fill_variables(
      weights, shapes, f'The torchvision SSDLite checkpoint does not fit SSDLiteMobileNetV3('
      f'variant={model.backbone.variant!r}, num_classes={model.num_classes})')
