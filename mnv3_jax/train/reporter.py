"""What a training run prints: a header, compile times, progress with an ETA, evaluations, a summary.

One line per event, on process 0 only (the other processes of a multi-host run log warnings and
errors only). The full metrics go to TensorBoard; these lines are for the person watching.

  MobileNetV3-Small 1.0 at 32x32, 10 classes: 1.53M params, 2.9M MACs per image
  data: digits, train 1497 / test 300 examples; global batch 64 on 1 device (1 host)
  690 steps (23 per epoch, 30 epochs), fresh start in /tmp/mnv3_demo
  compiling the train step ...
  compiled the train step in 11.2 s
  step  50/690   7%  loss 2.230  top1 19.6%  lr 1.62e-03  24.3 steps/s  ETA 0:26
  eval step 200/690  top1 93.3%  EMA top1 92.0% (best)  300 images in 1.4 s  saved checkpoints/200, best/200
  done: 690 steps in 0:42; final EMA top1 96.0% (raw 96.3%); best EMA top1 96.3% at step 600: /tmp/mnv3_demo/best/600

The metrics named are the task's (`Task.report`): a segmentation run prints 'pixel acc' in its
progress lines and mIoU where classification prints top1.
"""
import time
from typing import Callable, Mapping, Optional, Sequence

import jax
from absl import logging

from mnv3_jax.tasks import base

CLASSIFICATION = base.ReportNames('top1', 'top1', 'top1', 'top1')


def duration(seconds: float) -> str:
  """'0:42', '12:05', '3:02:10' (H:MM:SS without leading zero hours)."""
  seconds = max(0, int(round(seconds)))
  hours, rest = divmod(seconds, 3600)
  minutes, secs = divmod(rest, 60)
  return f'{hours}:{minutes:02d}:{secs:02d}' if hours else f'{minutes}:{secs:02d}'


def _log(message: str, *args) -> None:
  if jax.process_index() == 0:
    logging.info(message, *args)


class Reporter:
  """The console lines of one run from `start_step` to `total_steps`.

  Progress lines come every `log_every_steps` and, between those, whenever `min_interval_s`
  seconds have passed (`due`), so that even a short run shows its ETA while it runs.
  """

  def __init__(self, total_steps: int, start_step: int, min_interval_s: float = 10.0,
               clock: Callable[[], float] = time.monotonic,
               names: base.ReportNames = CLASSIFICATION):
    self.total_steps, self.start_step = total_steps, start_step
    self._names = names
    self._interval, self._clock = min_interval_s, clock
    self._started = clock()
    self._timed_from: Optional[tuple[int, float]] = None   # (step, time) after the first compile
    self._last_line = self._started
    self._width = len(str(total_steps))

  def header(self, lines: Sequence[str]) -> None:
    for line in lines:
      _log('%s', line)

  def compiling(self, what: str) -> Callable[[], float]:
    """Logs 'compiling the <what> ...'; call the returned function when done: it logs the time."""
    _log('compiling the %s ...', what)
    start = self._clock()

    def done() -> float:
      seconds = self._clock() - start
      _log('compiled the %s in %.1f s', what, seconds)
      return seconds
    return done

  def start_timing(self, step: int) -> None:
    """Steps/s and the ETA count from here (after the first step, i.e. its compile)."""
    self._timed_from = (step, self._clock())
    self._last_line = self._clock()

  def steps_per_second(self, step: int) -> Optional[float]:
    """Training speed since `start_timing`, evaluations and checkpoints included."""
    if self._timed_from is None or step <= self._timed_from[0]:
      return None
    first, since = self._timed_from
    return (step - first) / max(self._clock() - since, 1e-9)

  def due(self) -> bool:
    """Whether `min_interval_s` have passed since the last progress line."""
    return self._clock() - self._last_line >= self._interval

  def progress(self, step: int, metrics: Mapping[str, float]) -> None:
    """One progress line: step, %, loss, top-1 (the task's train metric), learning rate,
    steps/s, ETA."""
    self._last_line = self._clock()
    rate = self.steps_per_second(step)
    speed = ('' if rate is None else
             f'  {rate:.1f} steps/s  ETA {duration((self.total_steps - step) / rate)}')
    n = self._names
    value = metrics[n.train_metric]
    shown = f'{100 * value:.1f}%' if n.train_percent else f'{value:.3f}'
    _log('step %*d/%d %3d%%  loss %.3f  %s %s  lr %.2e%s', self._width, step,
         self.total_steps, 100 * step // self.total_steps, metrics['loss'], n.train_label,
         shown, metrics['learning_rate'], speed)

  def evaluation(self, step: int, metrics: Mapping[str, float], best: bool,
                 saved: Sequence[str], seconds: float, with_compile: bool = False,
                 save_seconds: float = 0.0) -> None:
    """One line per evaluation: raw and EMA top-1 (the task's eval metric), whether it is the best, (in QAT, the float
    EMA weights' top-1), what was saved (and how long starting the saves took, when it took a
    second or more)."""
    self._last_line = self._clock()
    saving = f'  saved {", ".join(saved)}' if saved else ''
    if saved and save_seconds >= 1:
      saving += f' in {save_seconds:.1f} s'
    key, label = self._names.eval_metric, self._names.eval_label
    float_ema = ('' if f'float_ema_{key}' not in metrics else
                 f'  float EMA {label} {100 * metrics[f"float_ema_{key}"]:.1f}%')
    _log('eval step %*d/%d  %s %.1f%%  EMA %s %.1f%%%s%s  %d images in %.1f s%s%s',
         self._width, step, self.total_steps, label, 100 * metrics[f'eval_{key}'], label,
         100 * metrics[f'ema_{key}'], ' (best)' if best else '', float_ema,
         metrics['eval_count'], seconds, ' (with compile)' if with_compile else '', saving)

  def stopped(self, step: int, why: str, saved: str) -> None:
    logging.warning('stopped at step %d (%s); checkpoint %s. Rerun the same command to resume.',
                    step, why, saved)

  def final(self, step: int, metrics: Mapping[str, float], best: Optional[tuple[float, int, str]]
            ) -> None:
    """The summary: wall time, final EMA (and raw) top-1 (the task's eval metric), the best
    checkpoint."""
    key, label = self._names.eval_metric, self._names.eval_label
    best_text = ('' if best is None else
                 f'; best EMA {label} {100 * best[0]:.1f}% at step {best[1]}: {best[2]}')
    _log('done: %d steps in %s; final EMA %s %.1f%% (raw %.1f%%)%s', step - self.start_step,
         duration(self._clock() - self._started), label, 100 * metrics[f'ema_{key}'],
         100 * metrics[f'eval_{key}'], best_text)
