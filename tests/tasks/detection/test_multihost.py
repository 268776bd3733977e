"""Detection on a pod on this machine (launch/local.sh: 2 processes x 4 CPU devices, one JAX
cluster): the COCO AP process 0 reports is that of every eval image of both hosts, equal to what
one process computes from the pod's weights."""
import re

from configs import det_demo
from mnv3_jax.parallel import sharding
from mnv3_jax.train import evaluation
from tests.parallel.test_multihost import logs, running_pod
from tests import support
from tests.tasks.detection.test_train import tiny

NUM_STEPS = 3


def test_pod_ap_is_the_ap_of_every_eval_image_of_both_hosts(det_shapes_dir, tmp_path):
  # 37 eval images: shards of 19 and 18, padded to 3 batches of 8 per process.
  config = tiny(det_shapes_dir, num_train_steps=NUM_STEPS, **{'data.eval_split': 'test[:37]'})
  workdir, log_dir = tmp_path / 'pod', tmp_path / 'logs'
  with running_pod(config, workdir, log_dir, flags=support.main_flags(config, det_demo)) as pod:
    out, _ = pod.communicate(timeout=900)
  assert pod.returncode == 0, f'{out}\n{logs(log_dir)}'
  found = re.search(r'eval step 3/3  AP ([\d.]+)%  EMA AP ([\d.]+)%.*  (\d+) images',
                    (log_dir / 'worker_0.log').read_text())
  assert found, logs(log_dir)
  assert 'eval step' not in (log_dir / 'worker_1.log').read_text()

  state = support.restore_task_state(config, workdir)
  mesh = sharding.make_mesh()
  task, _, (_, _, eval_fn) = support.task_steps(config, mesh)
  one = evaluation.evaluate_state(eval_fn, None, task, state, config, mesh)
  assert one['eval_count'] == one['ema_count'] == 37
  assert one['ema_AP50'] > 0      # some true positives: the comparison can fail
  assert found.groups() == (f"{100 * one['eval_AP']:.1f}", f"{100 * one['ema_AP']:.1f}", '37')
