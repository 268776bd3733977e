"""Trained weights on disk: variables checkpoints, training workdirs, and `config.init_from`.

A variables checkpoint is a directory written by `save` (`python -m mnv3_jax.interop.import_weights`):
  model.json         the MobileNetV3 options the weights compute with (variant, width, padding, ...)
  variables/         an orbax checkpoint of {'params', 'batch_stats'} (float32, unsharded)
  fingerprints.json  one fingerprint per array (`mnv3_jax.storage.fingerprints`)
`load` reads one, a training workdir (its best checkpoint by EMA top-1 or mIoU, else its latest; the EMA
weights by default) or one step of a workdir (`WORKDIR/checkpoints/STEP`, `WORKDIR/best/STEP`),
and verifies every array against its fingerprint: a damaged checkpoint is refused, by name.

`config.init_from` (a path `load` reads) starts training from such weights: `init_variables` reads
and verifies them and checks them against `config.model` (the trainer's pre-flight checks call it,
before anything compiles or is written); the optimizer state starts fresh.
"""
import dataclasses
import json
from typing import Any, Dict, Optional, Tuple

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from flax import traverse_util

from mnv3_jax import model as model_lib
from mnv3_jax.storage import fingerprints as fingerprints_lib
from mnv3_jax.storage import train_state

# Options that change what the weights compute; the others (dropout, dtype, BN momentum, the
# depthwise implementation) may differ between the weights' source and their use.
COMPUTE_OPTIONS = ('variant', 'width', 'minimalistic', 'num_classes', 'activation', 'se',
                   'se_gate', 'stem_filters', 'last_stage', 'padding', 'bn_epsilon', 'input_norm')
WEIGHTS = ('ema', 'raw')
_MODEL_JSON, _VARIABLES, _CONFIG_JSON = 'model.json', 'variables', 'config.json'
_FINGERPRINTS_JSON = 'fingerprints.json'


def model_options(model: model_lib.MobileNetV3) -> Dict[str, Any]:
  """The fields of a MobileNetV3 as a JSON-able dict (what `MobileNetV3(**options)` rebuilds)."""
  return {f.name: getattr(model, f.name) for f in dataclasses.fields(model)
          if f.name not in ('parent', 'name')}


def save(directory, variables: Dict[str, Any], model: model_lib.MobileNetV3) -> None:
  """Writes {'params', 'batch_stats'} of `model` and its options as a variables checkpoint.

  Raises ValueError if `directory` exists and is not empty, or if `variables` does not fit `model`.
  """
  directory = epath.Path(directory)
  if directory.exists() and any(directory.iterdir()):
    raise ValueError(f'{directory} exists and is not empty; choose a new directory.')
  variables = {k: variables[k] for k in ('params', 'batch_stats')}
  check_fits(jax.tree.map(np.shape, variables), model, str(directory))
  directory.mkdir(parents=True, exist_ok=True)
  variables = jax.tree.map(np.asarray, variables)
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(directory / _VARIABLES, variables)
  (directory / _FINGERPRINTS_JSON).write_text(
      json.dumps(fingerprints_lib.fingerprints(variables)) + '\n')
  (directory / _MODEL_JSON).write_text(json.dumps(model_options(model), indent=2) + '\n')


def _step_dirs(parent: epath.Path) -> Dict[int, epath.Path]:
  if not parent.is_dir():
    return {}
  return {int(p.name): p for p in parent.iterdir() if p.name.isdigit()
          and (p / train_state.STATE).is_dir()}


# The best-checkpoint metric of each task (classification, segmentation, detection): higher is
# better.
_BEST_METRICS = ('ema_top1', 'ema_miou', 'ema_AP')


def _best_metric(step_dir: epath.Path) -> float:
  """The step's best-checkpoint metric (EMA top-1; EMA mIoU, EMA AP for segmentation, detection);
  -inf if none."""
  try:
    metrics = json.loads((step_dir / 'metrics' / 'metrics').read_text())
    return float(next(metrics[k] for k in _BEST_METRICS if k in metrics))
  except (OSError, StopIteration, ValueError, TypeError):
    return float('-inf')


def task_of(path) -> str:
  """The task of the run `path` is a workdir of (or a step of): its config.json's 'task'
  ('classification' for a run older than tasks, and for a variables checkpoint)."""
  path = epath.Path(path)
  for config in (path / _CONFIG_JSON, path.parent.parent / _CONFIG_JSON):
    if config.is_file():
      return json.loads(config.read_text()).get('task', 'classification')
  return 'classification'


def resolve(path) -> Tuple[str, epath.Path, Dict[str, Any]]:
  """What `path` is: ('variables' | 'train_state', the orbax item or step directory, the config).

  The config is model.json's options for a variables checkpoint, the run's config.json (with
  'model' and 'data') for a workdir or one of its steps. Raises ValueError if it is neither.
  """
  path = epath.Path(path)
  if (path / _MODEL_JSON).is_file() and (path / _VARIABLES).is_dir():
    return 'variables', path / _VARIABLES, json.loads((path / _MODEL_JSON).read_text())
  if path.name.isdigit() and (path.parent.parent / _CONFIG_JSON).is_file():
    return 'train_state', path, json.loads((path.parent.parent / _CONFIG_JSON).read_text())
  if (path / _CONFIG_JSON).is_file():
    best, latest = _step_dirs(path / 'best'), _step_dirs(path / 'checkpoints')
    if best or latest:
      step_dir = (max(best.values(), key=_best_metric) if best else latest[max(latest)])
      return 'train_state', step_dir, json.loads((path / _CONFIG_JSON).read_text())
    raise ValueError(f'Workdir {path} has no checkpoint yet (nothing in best/ or checkpoints/).')
  raise ValueError(f'{path} is neither a variables checkpoint (model.json + variables/), nor a '
                   'training workdir (config.json + checkpoints/), nor one of its steps.')


def _read_variables(item_dir: epath.Path) -> Dict[str, Any]:
  """A variables checkpoint's arrays (numpy), verified against fingerprints.json."""
  where = str(item_dir.parent)
  try:
    saved = json.loads((item_dir.parent / _FINGERPRINTS_JSON).read_text())
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    with ocp.StandardCheckpointer() as checkpointer:
      tree = checkpointer.metadata(item_dir).item_metadata.tree
      restored = checkpointer.restore(item_dir, jax.tree.map(
          lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), tree))
  except Exception as e:  # pylint: disable=broad-except
    raise fingerprints_lib.DamagedCheckpointError(
        f'{where}: unreadable ({train_state.reason(e)}).') from e
  fingerprints_lib.verify(saved, restored, where)
  return jax.tree.map(np.asarray, restored)


def _read(kind: str, item_dir: epath.Path) -> Dict[str, Any]:
  """The verified arrays of a variables checkpoint or of one train-state step."""
  if kind == 'variables':
    return _read_variables(item_dir)
  return jax.tree.map(np.asarray, train_state.read_step_dir(item_dir))


def load(path, weights: str = 'ema') -> Tuple[Dict[str, Any], Dict[str, Any], Optional[Any]]:
  """Reads weights from a variables checkpoint, a training workdir or one of its steps.

  weights: 'ema' (the moving averages, which the trainer's ema_top1 evaluates) or 'raw'; ignored
  for a variables checkpoint. Returns ({'params', 'batch_stats'} of numpy arrays, the model's
  options (a dict for MobileNetV3(**...)), the run's data config dict or None); a QAT run's
variables also hold its activation ranges, 'quant_stats'. Raises
  DamagedCheckpointError (a ValueError) naming the checkpoint if any array is unreadable or
  differs from its fingerprint.
  """
  if weights not in WEIGHTS:
    raise ValueError(f'Unknown weights {weights!r}; allowed: {list(WEIGHTS)}.')
  kind, item_dir, config = resolve(path)
  restored = _read(kind, item_dir)
  if kind == 'variables':
    return restored, config, None
  prefix = 'ema_' if weights == 'ema' else ''
  variables = {'params': restored[prefix + 'params'],
               'batch_stats': restored[prefix + 'batch_stats']}
  if restored.get('quant_stats'):     # a quantization-aware trained run's activation ranges
    variables['quant_stats'] = restored['quant_stats']
  return variables, config['model'], config.get('data')


def check_fits(shapes: Any, model: model_lib.MobileNetV3, source: str) -> None:
  """Raises ValueError unless the tree of shapes `shapes` is `model`'s {'params', 'batch_stats'}."""
  want = traverse_util.flatten_dict(jax.tree.map(np.shape, jax.eval_shape(
      lambda rng: model_lib.init_variables(model.clone(depthwise_impl='conv'), rng, (32, 32)),
      jax.random.key(0))), sep='/')
  have = traverse_util.flatten_dict(shapes, sep='/')
  diffs = [f'{k}: weights {have.get(k, "absent")}, model {want.get(k, "absent")}'
           for k in sorted(have.keys() | want.keys()) if have.get(k) != want.get(k)]
  if diffs:
    raise ValueError(f'The weights of {source} do not fit the model ({len(diffs)} arrays differ, '
                     f'e.g. {diffs[:4]}).')


def differing_options(first: Dict[str, Any], second: Dict[str, Any]) -> list:
  """(option, first's value, second's value) for each of COMPUTE_OPTIONS in which two model
  configs differ; an option missing on either side (written before it existed) is the default."""
  defaults = model_options(model_lib.MobileNetV3())
  first, second = ({**defaults, **o} for o in (first, second))
  return [(k, first[k], second[k]) for k in COMPUTE_OPTIONS if first[k] != second[k]]


def _check_options(weights_options: Dict[str, Any], model_config: Dict[str, Any], path) -> None:
  differing = differing_options(weights_options, model_config)
  if differing:
    diffs = [f'model.{k}: weights {w!r}, config {c!r}' for k, w, c in differing]
    fix = ' '.join(f'--config.model.{k}={w}' for k, w, _ in differing)
    raise ValueError(f'init_from {path} holds weights of another model than config.model: '
                     + '; '.join(diffs) + f'. Train with the weights\' options ({fix}); '
                     'init_from does not re-initialise layers, so the class count must match too.')


def init_variables(path, model: model_lib.MobileNetV3) -> Dict[str, Any]:
  """{'params', 'batch_stats'} (numpy) of `config.init_from`, verified and checked against `model`
  (options, then every array's shape). Raises ValueError naming what differs or is damaged."""
  try:
    kind, _, config = resolve(path)
  except ValueError as e:
    raise ValueError(f'Invalid init_from {path!r}: {e}') from e
  _check_options(config if kind == 'variables' else config['model'], model_options(model), path)
  try:
    variables, _, _ = load(path, 'ema')
  except fingerprints_lib.DamagedCheckpointError as e:
    raise fingerprints_lib.DamagedCheckpointError(f'Invalid init_from {path!r}: {e}') from e
  variables = {k: variables[k] for k in ('params', 'batch_stats')}   # not a QAT run's ranges
  check_fits(jax.tree.map(np.shape, variables), model, f'init_from {path}')
  return variables


def replace_weights(state, variables: Dict[str, Any], sharding: jax.sharding.Sharding):
  """`state` (a steps.TrainState) with its weights and their EMAs set to `variables`.

  Each copy gets its own device buffers (from host arrays), so donating the state is safe.
  """
  def put(tree):
    return jax.tree.map(lambda x: jax.device_put(np.asarray(x), sharding), tree)
  return state.replace(params=put(variables['params']), batch_stats=put(variables['batch_stats']),
                       ema_params=put(variables['params']),
                       ema_batch_stats=put(variables['batch_stats']))
