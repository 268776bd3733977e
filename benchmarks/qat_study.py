r"""Float vs post-training int8 vs quantization-aware int8, per activation: the paper's question
whether h-swish is friendlier to int8 than swish, measured end to end on exported TFLite models.

For each activation variant and seed: train the float model (configs/demo.py plus --set), export
it with post-training int8 (ranges calibrated on training images), fine-tune it
quantization-aware from its weights (config.quant='qat', init_from), export that with its trained
ranges; then the top-1 of the float32 TFLite model, the PTQ int8 one and the QAT int8 one on the
eval split (`export.benchmark`). Writes OUT/results.json and prints a Markdown table with the mean
and spread (min-max) over seeds.

  .venv/bin/python benchmarks/qat_study.py --out=/tmp/qat_study --seeds=0,1 \
      --set=data.image_size=64 --set=model.width=0.5
"""
import argparse
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=wrong-import-position
from configs import demo
from mnv3_jax import console
from mnv3_jax.export import benchmark, tflite
from mnv3_jax.interop import pretrained
from mnv3_jax.model import MobileNetV3
from mnv3_jax.train import trainer

VARIANTS = {   # name -> model options
    'hard_swish': {'activation': 'hard_swish'},
    'swish': {'activation': 'swish'},
    'relu': {'activation': 'relu'},
    'minimalistic': {'minimalistic': True},
}


def parse_args():
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--out', required=True, help='Folder for the runs, exports and results.json.')
  p.add_argument('--variants', default=','.join(VARIANTS))
  p.add_argument('--seeds', default='0,1')
  p.add_argument('--set', action='append', default=[],
                 help='config override FIELD=VALUE (Python literal), for every run.')
  p.add_argument('--qat_epochs', type=float, default=5.0)
  p.add_argument('--qat_learning_rate', type=float, default=5e-4)
  p.add_argument('--calibration_images', type=int, default=200)
  p.add_argument('--task', choices=('digits', 'digit_pairs'), default='digits',
                 help="digits: configs/demo.py's 10 classes; digit_pairs: 100 classes, two digits "
                      'side by side (an image folder written to OUT/digit_pairs).')
  return p.parse_args()


def write_digit_pairs(root: str, train_per_class: int = 40, test_per_class: int = 10) -> None:
  """A harder task from the same offline digits: 100 classes '00'..'99', two digits side by side
  on a 16x16 canvas at random heights, with noise; train pairs from the digits' train split,
  test pairs from its test split (as configs/demo.py splits them), PNGs in root/{train,test}/NN/."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from sklearn import datasets as sk_datasets, model_selection  # pylint: disable=g-import-not-at-top
  digits = sk_datasets.load_digits()
  images = digits.images * (255.0 / 16.0)
  train, test = model_selection.train_test_split(
      np.arange(len(images)), test_size=300, stratify=digits.target, random_state=0)
  rng = np.random.default_rng(0)
  for split, indices, count in (('train', train, train_per_class), ('test', test, test_per_class)):
    by_digit = [indices[digits.target[indices] == d] for d in range(10)]
    for label in range(100):
      folder = os.path.join(root, split, f'{label:02d}')
      os.makedirs(folder, exist_ok=True)
      for i in range(count):
        canvas = rng.normal(0, 20, (16, 16))
        for half, digit in enumerate(divmod(label, 10)):
          top = rng.integers(0, 9)
          canvas[top:top + 8, 8 * half:8 * half + 8] += images[rng.choice(by_digit[digit])]
        Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8)).save(f'{folder}/{i}.png')


def run_config(variant: str, seed: int, args, qat_from: str = ''):
  """configs/demo.py (on args.task's data) with the variant's options, the seed and the
  overrides (and, with `qat_from`, the quantization-aware fine-tuning from that float run)."""
  c = demo.demo_config()
  c.seed = seed
  if args.task == 'digit_pairs':
    c.data.dataset, c.data.data_dir = 'image_folder', os.path.join(args.out, 'digit_pairs')
    c.data.train_split, c.data.eval_split, c.model.num_classes = 'train', 'test', 100
  for key, value in VARIANTS[variant].items():
    c.model[key] = value
  for item in args.set:
    key, _, value = item.partition('=')
    *parents, leaf = key.split('.')
    node = c
    for part in parents:
      node = node[part]
    node[leaf] = type(node[leaf])(json.loads(value)) if node[leaf] is not None else value
  if qat_from:
    c.quant, c.init_from = 'qat', qat_from
    c.num_epochs = args.qat_epochs
    c.optim.base_learning_rate, c.optim.warmup_epochs = args.qat_learning_rate, 0.0
    c.qat.freeze_bn_epochs = args.qat_epochs * 0.6
    c.qat.freeze_ranges_epochs = args.qat_epochs * 0.8
  return c


def export_top1(workdir: str, out: str, calibration_images: int) -> dict:
  """{'float32': top-1, 'int8': top-1} of the workdir's best EMA weights, exported to `out`."""
  if not os.path.exists(os.path.join(out, tflite.INFO_FILE)):
    variables, options, data = pretrained.load(workdir)
    tflite.export(MobileNetV3(**{**options, 'dtype': 'float32'}), variables, out,
                  image_size=data['image_size'], data_config=data, int8=True,
                  calibration_images=calibration_images, source=workdir)
  results = benchmark.benchmark(out, runs=1)
  return {precision: r['top1'] for precision, r in results.items()}


def main():
  args = parse_args()
  console.quiet_libraries()
  path = os.path.join(args.out, 'results.json')
  results = json.load(open(path)) if os.path.exists(path) else {}
  if args.task == 'digit_pairs' and not os.path.isdir(os.path.join(args.out, 'digit_pairs')):
    write_digit_pairs(os.path.join(args.out, 'digit_pairs'))
  for variant in args.variants.split(','):
    for seed in map(int, args.seeds.split(',')):
      key = f'{variant}/seed{seed}'
      if key in results:
        continue
      run = os.path.join(args.out, variant, f'seed{seed}')
      trainer.train_and_evaluate(run_config(variant, seed, args), f'{run}/float')
      ptq = export_top1(f'{run}/float', f'{run}/export_float', args.calibration_images)
      trainer.train_and_evaluate(run_config(variant, seed, args, f'{run}/float'), f'{run}/qat')
      qat = export_top1(f'{run}/qat', f'{run}/export_qat', args.calibration_images)
      results[key] = {'float': ptq['float32'], 'ptq_int8': ptq['int8'],
                      'qat_float': qat['float32'], 'qat_int8': qat['int8']}
      with open(path, 'w') as f:
        json.dump(results, f, indent=2)
      print(key, results[key], flush=True)
  print(f'Settings: task {args.task}, configs/demo.py {" ".join(args.set)}; QAT '
        f'{args.qat_epochs} epochs at lr {args.qat_learning_rate}.\n')
  print(table(results))


def table(results: dict) -> str:
  """Markdown: per variant, the mean (min-max) over seeds of each column, in %. The losses are
  float32 - int8 of the same weights: the float run's for PTQ, the QAT run's float EMA for QAT."""
  columns = ('float', 'ptq_int8', 'qat_float', 'qat_int8')
  lines = ['| variant | seeds | float32 | PTQ int8 | QAT float32 | QAT int8 | PTQ loss | QAT loss |',
           '|---|---|---|---|---|---|---|---|']
  for variant in VARIANTS:
    runs = [r for k, r in results.items() if k.split('/')[0] == variant]
    if not runs:
      continue

    def cell(values):
      values = [100 * v for v in values]
      return (f'{statistics.mean(values):.1f} ({min(values):.1f}-{max(values):.1f})'
              if len(values) > 1 else f'{values[0]:.1f}')
    cells = [cell([r[c] for r in runs]) for c in columns]
    losses = [cell([r[f] - r[q] for r in runs]) for f, q in (('float', 'ptq_int8'),
                                                              ('qat_float', 'qat_int8'))]
    lines.append(f'| {variant} | {len(runs)} | ' + ' | '.join(cells + losses) + ' |')
  return '\n'.join(lines)


if __name__ == '__main__':
  main()
