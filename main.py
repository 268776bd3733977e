r"""Trains and evaluates MobileNetV3.

  python main.py --config=configs/small.py --workdir=/tmp/mnv3_small
  python main.py --config=configs/small.py:width=0.75,res=192 --workdir=DIR --config.batch_size=1024
  python main.py --config=configs/demo.py --workdir=/tmp/mnv3_demo      # embedded demo, CPU

On a TPU pod, under SLURM or with --coordinator_address/--num_processes/--process_id (or the
MNV3_* environment variables) every process runs this same command: see launch/ and
docs/MULTIHOST.md.

A user error ends in one line on stderr, `error: ...`, with status 2; MNV3_TRACEBACK=1 (or -v 1)
also prints its traceback (mnv3_jax/cli_errors.py).
"""
from mnv3_jax import runtime

runtime.use_tcmalloc()   # re-executes with tcmalloc preloaded, before jax allocates anything

# pylint: disable=g-import-not-at-top,wrong-import-position
import os
import sys

from mnv3_jax import console

if not any(a.startswith(('--library_logs', '-library_logs')) for a in sys.argv[1:]):
  console.import_tensorflow_quietly()   # before anything imports TensorFlow

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from mnv3_jax import cli_errors
from mnv3_jax.parallel import distributed
from mnv3_jax.train import checkpointing, trainer

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Where checkpoints, TensorBoard events and config go.')
config_flags.DEFINE_config_file('config', None, 'A configs/*.py file, optionally with :args.',
                                lock_config=True)
flags.mark_flags_as_required(['config', 'workdir'])
flags.DEFINE_string('coordinator_address', None, 'host:port of process 0 in a multi-process run '
                    f'(or ${distributed.ENV_COORDINATOR}).')
flags.DEFINE_integer('num_processes', None,
                     f'Processes in a multi-process run (or ${distributed.ENV_NUM_PROCESSES}).')
flags.DEFINE_integer('process_id', None,
                     f'This process, 0..num_processes-1 (or ${distributed.ENV_PROCESS_ID}).')
flags.DEFINE_bool('library_logs', False, 'Also print the INFO logging of orbax, TFDS and absl '
                  '(hidden by default; warnings and errors always show).')
flags.DEFINE_integer('heartbeat_timeout_s', None,
                     'Seconds of silence after which a process counts as dead and the others stop '
                     f'(or ${distributed.ENV_HEARTBEAT}; default '
                     f'{distributed.DEFAULT_HEARTBEAT_TIMEOUT_S}).')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if not FLAGS.library_logs:
    console.quiet_libraries()
  distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id,
                         FLAGS.heartbeat_timeout_s)   # before anything touches a device
  if jax.process_count() > 1:
    logging.info('JAX process %d of %d; %d local / %d global devices: %s', jax.process_index(),
                 jax.process_count(), jax.local_device_count(), jax.device_count(), jax.devices())
  with distributed.fail_fast():
    try:
      trainer.train_and_evaluate(FLAGS.config, FLAGS.workdir, ctrl_c_stops=True)
    except checkpointing.CheckpointWriteError as e:
      # orbax's threads of the failed save wait minutes for signals that never come, and Python
      # waits for them at exit: report and end now (the lock and the writers are released).
      cli_errors.report(e)
      logging.flush()
      os._exit(1)   # pylint: disable=protected-access


if __name__ == '__main__':
  cli_errors.run(main)
