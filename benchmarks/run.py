r"""Throughput of mnv3_jax against Keras-on-TF, torchvision (eager, torch.compile), onnxruntime and
TFLite on this machine; writes a Markdown report.

  .venv/bin/python benchmarks/run.py --out docs/BENCHMARKS.md

Every measurement runs in its own process (`benchmarks/workers.py`), all with tcmalloc preloaded
when it is installed; the frameworks alternate within each round and rounds repeat, so slow
drift of the machine hits all of them alike. A cell is the median over rounds of each process's
median step time (after warm-up). Frameworks that are not installed are skipped with a note.
Install the optional ones with `pip install -r benchmarks/requirements.txt`.
"""
import argparse
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys
from collections import defaultdict

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mnv3_jax import runtime  # pylint: disable=wrong-import-position

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TRAIN = ('mnv3_jax', 'keras_tf', 'torch_eager')
INFER = ('mnv3_jax', 'keras_tf', 'torch_eager', 'torch_compile', 'onnxruntime', 'tflite')
LABELS = {'mnv3_jax': 'mnv3_jax (Flax, XLA CPU)', 'keras_tf': 'Keras 3 on TF (graph)',
          'torch_eager': 'torchvision eager', 'torch_compile': 'torchvision + torch.compile',
          'onnxruntime': 'onnxruntime (torch export)', 'tflite': 'TFLite (Keras convert)'}


def parse_args():
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--out', help='Markdown report to write (default: print only).')
  p.add_argument('--variants', default='small,large')
  p.add_argument('--batches', default='1,32', help='Inference batch sizes.')
  p.add_argument('--train_batch', type=int, default=32)
  p.add_argument('--steps', type=int, default=10, help='Timed steps per process.')
  p.add_argument('--rounds', type=int, default=3)
  p.add_argument('--frameworks', default=','.join(INFER))
  p.add_argument('--skip_input_pipeline', action='store_true')
  p.add_argument('--timeout', type=int, default=1800, help='Seconds per worker process.')
  return p.parse_args()


def worker_env():
  env = dict(os.environ)
  path = runtime.find_tcmalloc()
  if path and os.environ.get('MNV3_TCMALLOC') != '0':
    env['LD_PRELOAD'] = ':'.join(p for p in (path, env.get('LD_PRELOAD')) if p)
  return env


def measure(framework, mode, variant, batch, steps, timeout):
  cmd = [sys.executable, os.path.join(HERE, 'workers.py'), framework, mode, variant, str(batch),
         str(steps)]
  try:
    out = subprocess.run(cmd, capture_output=True, text=True, env=worker_env(), cwd=ROOT,
                         timeout=timeout, check=False)
  except subprocess.TimeoutExpired:
    return {'ok': False, 'error': f'timed out after {timeout} s'}
  lines = [l for l in out.stdout.splitlines() if l.startswith('{')]
  if out.returncode != 0 or not lines:
    return {'ok': False, 'error': (out.stderr or out.stdout).strip().splitlines()[-1:] or ['?']}
  return json.loads(lines[-1])


def cases(args):
  frameworks = args.frameworks.split(',')
  for variant in args.variants.split(','):
    yield [('train', variant, args.train_batch, f) for f in TRAIN if f in frameworks]
    for batch in (int(b) for b in args.batches.split(',')):
      yield [('infer', variant, batch, f) for f in INFER if f in frameworks]


def run_all(args):
  """{(mode, variant, batch, framework): [results over rounds]}, frameworks alternating."""
  results = defaultdict(list)
  skipped = set()
  for r in range(args.rounds):
    for group in cases(args):
      order = group[r % len(group):] + group[:r % len(group)]   # rotate who goes first
      for key in order:
        if key[3] in skipped:
          continue
        res = measure(key[3], *key[:3], args.steps, args.timeout)
        print(f'round {r + 1}: {key} -> {res}', flush=True)
        if 'skip' in res:   # not installed: no use asking again
          skipped.add(key[3])
        results[key].append(res)
  return results


def summarise(results):
  """Rows of (mode, variant, batch, framework, img/s, compile s, version or note)."""
  rows = []
  for (mode, variant, batch, fw), runs in results.items():
    ok = [r for r in runs if r['ok']]
    if ok:
      ms = statistics.median(r['ms'] for r in ok)
      rows.append((mode, variant, batch, fw, batch * 1e3 / ms,
                   statistics.median(r['compile_s'] for r in ok), ok[0]['version']))
    else:
      rows.append((mode, variant, batch, fw, None, None, str(runs[0].get('skip') or
                                                             runs[0].get('error'))[:120]))
  return rows


def table(rows):
  lines = ['| mode | variant | batch | implementation | images/s | mnv3_jax / this | '
           'first call (s) | version / note |', '|---|---|---|---|---|---|---|---|']
  ours = {(m, v, b): s for m, v, b, f, s, _, _ in rows if f == 'mnv3_jax' and s}
  for m, v, b, f, s, c, note in rows:
    ratio = f'{ours[(m, v, b)] / s:.2f}x' if s and (m, v, b) in ours else '—'
    lines.append(f'| {m} | {v} | {b} | {LABELS[f]} | {f"{s:.1f}" if s else "skipped"} | '
                 f'{ratio} | {f"{c:.1f}" if c is not None else "—"} | {note} |')
  return '\n'.join(lines)


def verdict(rows):
  """The issue's targets: train >= 1.2x the best of Keras-TF/torch eager; b32 infer >= 1.0x
  torch.compile."""
  get = {(m, v, b, f): s for m, v, b, f, s, _, _ in rows if s}
  out = []
  for (m, v, b, f), s in sorted(get.items()):
    if f != 'mnv3_jax':
      continue
    if m == 'train':
      rivals = [get[k] for k in ((m, v, b, 'keras_tf'), (m, v, b, 'torch_eager')) if k in get]
      need, name = 1.2, 'the faster of Keras-TF and torchvision eager'
    elif b == 32:
      rivals = [get[k] for k in ((m, v, b, 'torch_compile'),) if k in get]
      need, name = 1.0, 'torch.compile'
    else:
      continue
    if rivals:
      ratio = s / max(rivals)
      out.append(f'- {m} {v} b{b}: {ratio:.2f}x {name} (target {need}x): '
                 f'{"met" if ratio >= need else "NOT met"}')
  return '\n'.join(out)


def input_pipeline_lines(train_rows):
  """Runs benchmarks/input_pipeline.py; returns its result lines."""
  out = subprocess.run([sys.executable, os.path.join(HERE, 'input_pipeline.py'),
                        '--num_batches=30'], capture_output=True, text=True, cwd=ROOT,
                       env=worker_env(), check=False)
  lines = [l for l in out.stdout.splitlines() if re.search(r'images/s', l)]
  steps = ', '.join(f'{v} {s:.0f} images/s' for m, v, b, f, s, _, _ in train_rows
                    if f == 'mnv3_jax' and s)
  return lines or [f'(input pipeline benchmark failed: {out.stderr.strip()[-200:]})'], steps


def machine():
  cpu = next((l.split(':', 1)[1].strip() for l in open('/proc/cpuinfo')
              if l.startswith('model name')), platform.processor())
  return (f'{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, '
          f'Python {platform.python_version()}, tcmalloc: {runtime.find_tcmalloc() or "not found"}')


def main():
  args = parse_args()
  results = run_all(args)
  rows = summarise(results)
  command = 'python benchmarks/run.py ' + ' '.join(sys.argv[1:])
  report = [
      '## Results', '',
      f'Made {datetime.datetime.now():%Y-%m-%d %H:%M} with `{command}` ({args.rounds} rounds, '
      f'{args.steps} timed steps per process after warm-up, frameworks alternating).', '',
      f'Machine: {machine()}.', '',
      'Images 224x224x3 float32; random weights; 1000 classes. Train = forward + backward + '
      'RMSProp update (mnv3_jax: the real `steps.train_step`, with EMA and metrics). "first call" '
      'is the first step: tracing and compilation where the framework compiles.', '',
      table(rows), '', '## Targets (issue 4)', '', verdict(rows) or '(not measured)', '']
  if not args.skip_input_pipeline:
    lines, steps = input_pipeline_lines([r for r in rows if r[0] == 'train'])
    report += ['## Input pipeline vs train step', '',
               f'Train step (mnv3_jax, batch {args.train_batch}): {steps}.', '',
               'benchmarks/input_pipeline.py (one process, batch 32):', '',
               *[f'- {l.strip()}' for l in lines], '']
  text = '\n'.join(report)
  print(text)
  if args.out:
    write_report(args.out, text)


def write_report(path, text):
  """Writes `text` between the results markers of `path` (keeping the rest), else the whole file."""
  begin, end = '<!-- results:begin -->', '<!-- results:end -->'
  old = open(path).read() if os.path.exists(path) else ''
  if begin in old and end in old:
    text = old[:old.index(begin) + len(begin)] + '\n' + text + '\n' + old[old.index(end):]
  with open(path, 'w') as f:
    f.write(text)


if __name__ == '__main__':
  main()
