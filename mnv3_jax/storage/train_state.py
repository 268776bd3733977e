"""A train-state checkpoint step on disk, and its one verified read.

Each step that `mnv3_jax.train.checkpointing` writes (under workdir/checkpoints/ and workdir/best/)
is an orbax composite of two items:
  <step>/state/         the TrainState pytree (StandardSave: OCDBT/tensorstore arrays)
  <step>/fingerprints/  {'path/to/array': fingerprint} (JsonSave; `storage.fingerprints`)
  <step>/metrics/       best/ only: the evaluation metrics that ranked it
`read` is the only way this project reads one back, for resume, `init_from`, export and the
notebooks alike: it checks the arrays' paths, shapes and dtypes, then their fingerprints.
"""
from typing import Any, Optional

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from etils import epath

from mnv3_jax.storage.fingerprints import DamagedCheckpointError, fingerprints, verify

STATE, FINGERPRINTS = 'state', 'fingerprints'
_OLD_ITEM = 'default'   # the single item of checkpoints written before the fingerprints item


class IncompatibleCheckpointError(ValueError):
  """A checkpoint holds another train state (model variant, class count, optimizer) than requested."""


def handler_registry() -> ocp.handlers.CheckpointHandlerRegistry:
  """The handlers of a step's items (registered up front, so metadata reads before any restore)."""
  return ocp.handlers.create_default_handler_registry(
      **{STATE: ocp.StandardCheckpointHandler(), FINGERPRINTS: ocp.JsonCheckpointHandler()})


def save_args(state: Any) -> ocp.args.Composite:
  """What `CheckpointManager.save` writes for `state`: its arrays and their fingerprints."""
  return ocp.args.Composite(**{STATE: ocp.args.StandardSave(state),
                               FINGERPRINTS: ocp.args.JsonSave(fingerprints(state))})


def reason(error: BaseException) -> str:
  """The first line of an error and of its causes (tensorstore errors embed pages of spec)."""
  lines = []
  while error is not None and len(lines) < 3:
    first = (str(error).splitlines() or [''])[0]
    lines.append(f'{type(error).__name__}: {first[:300]}')
    error = error.__cause__
  return ' <- '.join(lines)


def _describe(leaf: Any) -> str:
  return f'{jnp.dtype(leaf.dtype).name}{list(leaf.shape)}'


def _check_compatible(tree: Any, abstract_state: Any, path: epath.Path) -> None:
  have = {k: _describe(v) for k, v in ocp.tree.to_flat_dict(tree, sep='/').items()}
  want = {k: _describe(v) for k, v in ocp.tree.to_flat_dict(abstract_state, sep='/').items()}
  diffs = [f'{k}: checkpoint {have.get(k, "absent")}, requested {want.get(k, "absent")}'
           for k in sorted(have.keys() | want.keys()) if have.get(k) != want.get(k)]
  if diffs:
    raise IncompatibleCheckpointError(
        f'Checkpoint {path} holds another train state than the one requested ({len(diffs)} arrays '
        f'differ, e.g. {diffs[:3]}): another model variant, class count or optimizer? Use the '
        'config it was trained with, or a new workdir.')


def read(manager: ocp.CheckpointManager, step: int, abstract_state: Optional[Any] = None) -> Any:
  """The train state of `step` in `manager`'s directory, verified against its fingerprints.

  abstract_state: jax.ShapeDtypeStruct pytree (with .sharding) the arrays must match and restore
    to; None restores every array as saved, onto the first local device.
  Raises IncompatibleCheckpointError if the arrays' paths/shapes/dtypes differ from
  `abstract_state` (or the step has an older layout), DamagedCheckpointError naming the step's
  directory if anything is unreadable, missing or differs from its fingerprints.
  """
  path = epath.Path(manager.directory) / str(step)
  if (path / _OLD_ITEM).is_dir() and not (path / STATE).is_dir():
    raise IncompatibleCheckpointError(
        f'Checkpoint {path} has the layout of mnv3_jax before its fingerprints item (one "default" '
        'item): read it with that version, or train anew.')
  try:
    metadata = manager.metadata(step).item_metadata
    tree = metadata[STATE] if metadata is not None and STATE in metadata.keys() else None
    tree = getattr(tree, 'tree', tree)
  except Exception as e:  # pylint: disable=broad-except
    raise DamagedCheckpointError(f'{path}: its metadata is unreadable ({reason(e)}).') from e
  if tree is None:
    raise DamagedCheckpointError(f'{path}: its metadata (state/_METADATA) is missing.')
  if abstract_state is None:
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract_state = jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), tree)
  _check_compatible(tree, abstract_state, path)
  try:
    restored = manager.restore(step, args=ocp.args.Composite(
        **{STATE: ocp.args.StandardRestore(abstract_state), FINGERPRINTS: ocp.args.JsonRestore()}))
  except Exception as e:  # pylint: disable=broad-except
    raise DamagedCheckpointError(f'{path}: unreadable ({reason(e)}).') from e
  verify(restored[FINGERPRINTS], restored[STATE], str(path))
  return restored[STATE]


def read_step_dir(step_dir) -> Any:
  """`read` of one step directory (workdir/checkpoints/<step> or workdir/best/<step>), all arrays
  restored as saved on the first local device. Same errors as `read`."""
  step_dir = epath.Path(step_dir)
  if not step_dir.name.isdigit():
    raise ValueError(f'{step_dir} is not a checkpoint step directory (<dir>/<step number>).')
  manager = ocp.CheckpointManager(
      step_dir.parent, handler_registry=handler_registry(),
      # Not read_only=True: orbax then warns of every option it ignores. Only `read` is called.
      options=ocp.CheckpointManagerOptions(
          create=False, multiprocessing_options=ocp.options.MultiprocessingOptions(
              barrier_sync_key_prefix='mnv3_jax_read')))
  try:
    return read(manager, int(step_dir.name))
  finally:
    manager.close()
