"""torchvision LR-ASPP weights -> Flax variables of `tasks.segmentation.lraspp.LRASPPMobileNetV3`.

torchvision's `lraspp_mobilenet_v3_large` is `LRASPP(IntermediateLayerGetter(mobilenet_v3_large(
dilated=True).features), ...)`: its backbone weights are the classifier's `features.*` renamed
`backbone.*` (mapped by the classifier converter, `torch_weights`), its head `classifier.*`.
It computes with output stride 16, symmetric padding, ImageNet mean/std inputs, BN epsilon 1e-3 in
the backbone and PyTorch's default 1e-5 in the head, a global-pool gate and 'low' features from
the first stride-8 bneck: `torchvision_model` builds that model; `from_torchvision` checks a
model against it and fills its variables, or raises ValueError naming what does not fit.
"""
from typing import Any, Dict, Mapping

import jax

from mnv3_jax.interop import torch_weights
from mnv3_jax.model.backbone import MobileNetV3Backbone
from mnv3_jax.tasks.segmentation import lraspp

HEAD_BN_EPSILON = 1e-5   # torchvision's LRASPPHead: nn.BatchNorm2d's default
_HEAD = {'classifier.cbr.0': ('head', 'cbr', 'conv'), 'classifier.cbr.1': ('head', 'cbr', 'bn'),
         'classifier.scale.1': ('head', 'scale'),
         'classifier.low_classifier': ('head', 'low_classifier'),
         'classifier.high_classifier': ('head', 'high_classifier')}
# What torchvision's LR-ASPP computes with beyond its weights' shapes. Its input normalization
# is not checked (as in `torch_weights`): images may be normalized before the model instead.
# reduced_tail 'none' or 'torchvision' (its `reduced_tail=True` backbones) show in the shapes.
_BACKBONE = {**{k: v for k, v in torch_weights.required_options('torchvision').items()
                if k != 'last_stage'},   # no last stage in a backbone
             'output_stride': 16, 'width': 1.0, 'minimalistic': False}
_TAILS = ('none', 'torchvision')
_MODEL = {'pooling': 'global', 'low_tap': 'low', 'head_bn_epsilon': HEAD_BN_EPSILON}


def torchvision_model(variant: str = 'large', num_classes: int = 21,
                      **backbone_options) -> lraspp.LRASPPMobileNetV3:
  """The LRASPPMobileNetV3 that computes like torchvision's LR-ASPP on MobileNetV3 `variant`
  (torchvision builds only 'large'; 'small' is its `_lraspp_mobilenetv3` on the Small backbone),
  on [-1, 1] images (input_norm='imagenet' by default).
  backbone_options: other MobileNetV3Backbone options (dtype, depthwise_impl, input_norm, ...)."""
  backbone = MobileNetV3Backbone(variant=variant,
                                 **{**_BACKBONE, 'input_norm': 'imagenet', **backbone_options})
  return lraspp.LRASPPMobileNetV3(backbone, num_classes=num_classes, **_MODEL)


def check_options(model: lraspp.LRASPPMobileNetV3) -> None:
  """Raises ValueError naming each option of `model` torchvision's LR-ASPP does not compute with."""
  wrong = [f'backbone.{k}={getattr(model.backbone, k)!r} (needs {v!r})'
           for k, v in _BACKBONE.items() if getattr(model.backbone, k) != v]
  if model.backbone.reduced_tail not in _TAILS:
    wrong.append(f'backbone.reduced_tail={model.backbone.reduced_tail!r} (needs one of '
                 f'{list(_TAILS)})')
  wrong += [f'{k}={getattr(model, k)!r} (needs {v!r})' for k, v in _MODEL.items()
            if getattr(model, k) != v]
  if wrong:
    raise ValueError('torchvision LR-ASPP weights do not compute like this LRASPPMobileNetV3: '
                     + '; '.join(wrong) + '. torch_lraspp.torchvision_model builds one that does.')


def _flax_path(name: str, backbone_paths: Mapping[str, Any]):
  """Flax path of a torchvision LR-ASPP weight name, None if unknown."""
  if name.startswith('backbone.'):
    path = backbone_paths.get('features.' + name[len('backbone.'):])
    return path and (path[0], 'backbone', *path[1:])
  prefix, _, leaf = name.rpartition('.')
  return prefix in _HEAD and torch_weights.leaf_path(_HEAD[prefix], leaf) or None


def from_torchvision(source: Any, model: lraspp.LRASPPMobileNetV3) -> Dict[str, Any]:
  """Converts a torchvision LR-ASPP MobileNetV3 state dict into Flax variables for `model`.

  source: a state dict (name -> torch tensor or numpy array) or a .pth/.pt/.bin/.safetensors
  file. Returns {'params', 'batch_stats'} of float32 arrays in `model`'s tree. Raises ValueError
  if `model`'s options differ from torchvision's (`check_options`), or naming every weight
  without a place, every Flax leaf without a weight and every shape mismatch.
  """
  check_options(model)
  state = torch_weights.read_state(source)
  backbone_paths = torch_weights.torchvision_paths(
      ['features.' + n[len('backbone.'):] for n in state if n.startswith('backbone.')])
  shapes_model = model.clone(backbone=model.backbone.clone(depthwise_impl='conv'))
  shapes = jax.eval_shape(lambda rng: lraspp.init_variables(shapes_model, rng, (64, 64)),
                          jax.random.key(0))
  return torch_weights.fill_variables(
      [(name, _flax_path(name, backbone_paths), value) for name, value in state.items()], shapes,
      f'The torchvision LR-ASPP checkpoint does not fit LRASPPMobileNetV3(variant='
      f'{model.backbone.variant!r}, num_classes={model.num_classes}, inter_channels='
      f'{model.inter_channels})')
