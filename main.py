r"""Trains and evaluates MobileNetV3.

  python main.py --config=configs/small.py --workdir=/tmp/mnv3_small
  python main.py --config=configs/small.py:width=0.75,res=192 --workdir=DIR --config.batch_size=1024
  python main.py --config=configs/demo.py --workdir=/tmp/mnv3_demo      # embedded demo, CPU
"""
from mnv3_jax import runtime

runtime.use_tcmalloc()   # re-executes with tcmalloc preloaded, before jax allocates anything

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax
from absl import app, flags, logging
from ml_collections import config_flags

from mnv3_jax import train

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Where checkpoints, TensorBoard events and config go.')
config_flags.DEFINE_config_file('config', None, 'A configs/*.py file, optionally with :args.',
                                lock_config=True)
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  logging.info('JAX process %d of %d; %d local / %d global devices: %s', jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count(), jax.devices())
  train.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == '__main__':
  app.run(main)
