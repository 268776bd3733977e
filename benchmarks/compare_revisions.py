r"""mnv3_jax throughput of two checkouts of this repository, alternating, on this machine.

  git worktree add /tmp/before REV
  .venv/bin/python benchmarks/compare_revisions.py --before=/tmp/before --after=. [--rounds=3]

Runs each checkout's own `benchmarks/workers.py mnv3_jax MODE VARIANT BATCH STEPS` (one process
per measurement, tcmalloc preloaded when installed) for train and inference of Small and Large,
the two checkouts alternating (the first one swaps every round), and prints a Markdown table of
the medians over rounds of each process's median ms per step. Answers "did this change make the
model slower?" where `run.py`'s ratios to other frameworks also move with the machine.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mnv3_jax import runtime  # pylint: disable=wrong-import-position

CASES = (('train', 'small'), ('infer', 'small'), ('train', 'large'), ('infer', 'large'))


def measure(checkout: str, mode: str, variant: str, batch: int, steps: int) -> float:
  """Median ms per step of one worker process of `checkout`."""
  env = dict(os.environ)
  if runtime.find_tcmalloc():
    env['LD_PRELOAD'] = runtime.find_tcmalloc()
  out = subprocess.run([sys.executable, os.path.join(checkout, 'benchmarks', 'workers.py'),
                        'mnv3_jax', mode, variant, str(batch), str(steps)],
                       capture_output=True, text=True, env=env, cwd=checkout, check=False)
  lines = [l for l in out.stdout.splitlines() if l.startswith('{')]
  if out.returncode or not lines or not json.loads(lines[-1]).get('ok'):
    raise RuntimeError(f'{checkout} {mode} {variant} failed: {out.stderr.strip()[-500:]}')
  return json.loads(lines[-1])['ms']


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--before', required=True, help='checkout of the older revision')
  p.add_argument('--after', required=True, help='checkout of the newer revision')
  p.add_argument('--rounds', type=int, default=3)
  p.add_argument('--batch', type=int, default=32)
  p.add_argument('--steps', type=int, default=10)
  args = p.parse_args()
  checkouts = {'before': os.path.abspath(args.before), 'after': os.path.abspath(args.after)}
  times = {}
  for r in range(args.rounds):
    for mode, variant in CASES:
      for name in (('before', 'after') if r % 2 == 0 else ('after', 'before')):
        ms = measure(checkouts[name], mode, variant, args.batch, args.steps)
        times.setdefault((mode, variant, name), []).append(ms)
        print(f'round {r + 1}: {mode} {variant} {name} {ms:.1f} ms', flush=True)
  print(f'\n| batch {args.batch} | before (ms) | after (ms) | before / after |\n|---|---|---|---|')
  for mode, variant in CASES:
    before, after = (statistics.median(times[(mode, variant, n)]) for n in ('before', 'after'))
    print(f'| {mode} {variant} | {before:.1f} | {after:.1f} | {before / after:.2f}x |')


if __name__ == '__main__':
  main()
