"""The first lines a training run prints: what it trains, on what data and devices, for how long."""
from typing import Optional

import jax
import ml_collections


def lines(model_lines: list[str], config: ml_collections.ConfigDict, info, mesh,
          steps_per_epoch: int, total_steps: int, workdir: str, start_step: Optional[int],
          eval_split: str) -> list[str]:
  """Model (the task's `header_lines`: params, MACs), data (split sizes), batch and devices,
  plan and start.

  info: the task's dataset info; start_step: the restored checkpoint's step, or None for a fresh
  start.
  """
  data = config.data
  hosts = jax.process_count()
  devices = mesh.devices.size
  start = 'fresh start' if start_step is None else f'resuming from step {start_step}'
  epochs = total_steps / steps_per_epoch
  return [
      *model_lines,
      f'data: {data.dataset}, {data.train_split} {info.num_train_examples} / {eval_split} '
      f'{info.num_eval_examples} examples; global batch {config.batch_size} on {devices} '
      f'device{"s" * (devices > 1)} ({hosts} host{"s" * (hosts > 1)}, '
      f'{jax.devices()[0].platform})',
      f'{total_steps} steps ({steps_per_epoch} per epoch, {epochs:.3g} epochs), {start} in '
      f'{workdir}',
  ]
