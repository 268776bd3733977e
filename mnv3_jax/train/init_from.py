"""`config.init_from`: the weights a fresh run starts from, for every task.

A task whose `init_from_scope` is None (classification) takes weights that fit its whole model
(`pretrained.init_variables`: same options, every array's shape). A task with a scope
(segmentation: 'backbone') takes a classifier's weights (a variables checkpoint or a training
workdir; a segmentation run's backbone too) into that part of its model: the arrays whose names
(`stem/...`, `block_<i>/...`, `head_conv/...`) and shapes match are loaded, every other array
(the classifier's own `pre_logits`/`logits`, a reduced tail's halved layers, the task's head)
keeps its fresh initialisation. The compute options the backbone shares with the classifier
(variant, width, activation, padding, ...) must agree. The optimizer always starts anew.
"""
from typing import Any, Dict, Optional

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import traverse_util

from mnv3_jax.interop import pretrained
from mnv3_jax.model import MobileNetV3
from mnv3_jax.storage import fingerprints
from mnv3_jax.tasks import base

_COLLECTIONS = ('params', 'batch_stats')
_LISTED = 6


def read(config, task: base.Task, model) -> Optional[Dict[str, Any]]:
  """The verified weights of config.init_from for `model` (None when unset); ValueError naming
  what does not fit. For a scoped task: {'params', 'batch_stats'} of that scope's matching arrays
  only."""
  if not config.init_from:
    return None
  if task.init_from_scope is None:
    return pretrained.init_variables(config.init_from, getattr(model, 'float_model', model))
  return _read_scoped(config.init_from, config.model.to_dict(), task, model)


def _read_scoped(path, options: dict, task: base.Task, model) -> Dict[str, Any]:
  try:
    kind, _, saved = pretrained.resolve(path)
    variables, _, _ = pretrained.load(path, 'ema')
  except (ValueError, fingerprints.DamagedCheckpointError) as e:
    raise ValueError(f'Invalid init_from {path!r}: {e}') from e
  saved = saved if kind == 'variables' else saved['model']
  defaults = pretrained.model_options(MobileNetV3())
  shared = [k for k in pretrained.COMPUTE_OPTIONS if k in options]
  differing = [(k, {**defaults, **saved}[k], options[k]) for k in shared
               if {**defaults, **saved}[k] != options[k]]
  if differing:
    raise ValueError(f'init_from {path} holds weights of another backbone than config.model: '
                     + '; '.join(f'model.{k}: weights {w!r}, config {c!r}' for k, w, c in differing)
                     + '; allowed: weights trained with these options equal.')
  scope = task.init_from_scope
  image = jnp.zeros((1, *task.init_image_size(), 3), jnp.float32)
  want = jax.eval_shape(lambda: model.init(jax.random.key(0), image, train=False))
  found, loaded, fresh = {}, 0, []
  for collection in _COLLECTIONS:
    have = variables[collection]
    have = traverse_util.flatten_dict(have.get(scope, have), sep='/')
    target = traverse_util.flatten_dict(want[collection][scope], sep='/')
    matched = {k: np.asarray(have[k]) for k, v in target.items()
               if k in have and np.shape(have[k]) == v.shape}
    fresh += [f'{collection}/{scope}/{k}' for k in sorted(target.keys() - matched.keys())]
    loaded += len(matched)
    found[collection] = traverse_util.unflatten_dict(matched, sep='/')
  if not loaded:
    raise ValueError(f'Invalid init_from {path!r}: none of its arrays fits config.model\'s '
                     f'{scope} by name and shape; allowed: a MobileNetV3 classifier or a run '
                     'with the same backbone.')
  logging.info('init_from %s: %d %s arrays loaded (names and shapes match); fresh: the rest of '
               'the model%s', path, loaded, scope,
               f' and {len(fresh)} {scope} arrays, e.g. {fresh[:_LISTED]}' if fresh else '')
  return found


def apply(state, variables: Optional[Dict[str, Any]], task: base.Task, sharding):
  """`state` (a fresh steps.TrainState) with `read`'s weights (and their EMAs) set in."""
  if variables is None:
    return state
  if task.init_from_scope is None:
    return pretrained.replace_weights(state, variables, sharding)
  scope = task.init_from_scope
  merged = {}
  for collection in _COLLECTIONS:
    tree = jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), getattr(state, collection))
    flat = traverse_util.flatten_dict(tree[scope], sep='/')
    flat.update(traverse_util.flatten_dict(variables[collection], sep='/'))
    merged[collection] = {**tree, scope: traverse_util.unflatten_dict(flat, sep='/')}
  return pretrained.replace_weights(state, merged, sharding)
