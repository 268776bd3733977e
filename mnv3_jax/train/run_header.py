"""The first lines a training run prints: what it trains, on what data and devices, for how long."""
from typing import Optional

import jax
import ml_collections

from mnv3_jax.data.datasets import DatasetInfo
from mnv3_jax.model import MobileNetV3
from mnv3_jax.model import summary


def _millions(n: int) -> str:
  return f'{n / 1e6:.2f}M' if n < 1e8 else f'{n / 1e9:.2f}G'


def lines(model: MobileNetV3, config: ml_collections.ConfigDict, info: DatasetInfo, mesh,
          steps_per_epoch: int, total_steps: int, workdir: str,
          start_step: Optional[int]) -> list[str]:
  """Model (params, MACs per image), data (split sizes), batch and devices, plan and start.

  start_step: the restored checkpoint's step, or None for a fresh start.
  """
  size = config.data.image_size
  counts = summary.summarize(model, (size, size))
  variant = f'MobileNetV3-{model.variant.capitalize()} {float(model.width)}'
  if model.minimalistic:
    variant += ' minimalistic'
  data = config.data
  hosts = jax.process_count()
  devices = mesh.devices.size
  start = 'fresh start' if start_step is None else f'resuming from step {start_step}'
  epochs = total_steps / steps_per_epoch
  return [
      f'{variant} at {size}x{size}, {model.num_classes} classes: '
      f'{_millions(counts["params"])} params, {_millions(counts["macs"])} MACs per image',
      f'data: {data.dataset}, {data.train_split} {info.num_train_examples} / {data.eval_split} '
      f'{info.num_eval_examples} examples; global batch {config.batch_size} on {devices} '
      f'device{"s" * (devices > 1)} ({hosts} host{"s" * (hosts > 1)}, '
      f'{jax.devices()[0].platform})',
      f'{total_steps} steps ({steps_per_epoch} per epoch, {epochs:.3g} epochs), {start} in '
      f'{workdir}',
  ]
