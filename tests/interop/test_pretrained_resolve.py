"""Which checkpoint of a training workdir `pretrained.resolve` picks: the best by the task's metric."""
import json

import pytest

from mnv3_jax.interop import pretrained
from mnv3_jax.storage import train_state


def _workdir(root, metric, values):
  (root / 'config.json').write_text(json.dumps({'model': {}, 'data': {}}))
  for step, value in values.items():
    step_dir = root / 'best' / str(step)
    (step_dir / train_state.STATE).mkdir(parents=True)
    (step_dir / 'metrics').mkdir()
    (step_dir / 'metrics' / 'metrics').write_text(json.dumps({metric: value}))
  return root


@pytest.mark.parametrize('metric', ['ema_top1', 'ema_miou'])
def test_a_workdir_resolves_to_its_best_step_by_its_tasks_metric(tmp_path, metric):
  root = _workdir(tmp_path, metric, {3: 0.50, 5: 0.52, 9: 0.61, 12: 0.60, 20: 0.55})
  kind, step_dir, _ = pretrained.resolve(root)
  assert kind == 'train_state' and step_dir.name == '9'
