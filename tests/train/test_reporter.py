"""The console lines of a run: ETA arithmetic, a progress line at least every 10 s, durations."""
import logging

import pytest

from mnv3_jax.tasks import base
from mnv3_jax.train import reporter


class Clock:
  def __init__(self):
    self.now = 1000.0

  def __call__(self):
    return self.now


@pytest.mark.parametrize('seconds, text', [(0, '0:00'), (42.4, '0:42'), (59.6, '1:00'),
                                           (725, '12:05'), (10930, '3:02:10'), (-3, '0:00')])
def test_duration(seconds, text):
  assert reporter.duration(seconds) == text


def test_progress_speed_eta_and_the_ten_second_rule(caplog):
  caplog.set_level(logging.INFO, logger='absl')   # absl's own level may be WARNING here
  clock = Clock()
  report = reporter.Reporter(total_steps=1000, start_step=100, min_interval_s=10.0, clock=clock)
  clock.now += 30.0                    # the first step's compile: not counted in the speed
  report.start_timing(101)
  assert report.steps_per_second(101) is None
  clock.now += 9.9
  assert not report.due()
  clock.now += 0.1
  assert report.due()                  # 10 s after the last line: a line is due
  # 99 steps in 10 s: 9.9 steps/s, 799 steps left: 80.7 s.
  report.progress(200, {'loss': 0.6713, 'top1': 0.9431, 'learning_rate': 8.6e-4})
  assert not report.due()
  line = caplog.records[-1].getMessage()
  assert line == 'step  200/1000  20%  loss 0.671  top1 94.3%  lr 8.60e-04  9.9 steps/s  ETA 1:21'
  clock.now += 10.0
  report.evaluation(300, {'eval_top1': 0.5, 'ema_top1': 0.25, 'eval_count': 37}, best=True,
                    saved=['checkpoints/300', 'best/300'], seconds=1.25)
  assert caplog.records[-1].getMessage() == (
      'eval step  300/1000  top1 50.0%  EMA top1 25.0% (best)  37 images in 1.2 s  '
      'saved checkpoints/300, best/300')
  assert not report.due()              # an evaluation line counts as a line
  clock.now += 5.0
  report.final(1000, {'eval_top1': 0.75, 'ema_top1': 0.8125}, (0.8125, 900, '/w/best/900'))
  assert caplog.records[-1].getMessage() == (
      'done: 900 steps in 0:55; final EMA top1 81.2% (raw 75.0%); best EMA top1 81.2% at step '
      '900: /w/best/900')


def test_compiling_logs_before_and_the_time_after(caplog):
  caplog.set_level(logging.INFO, logger='absl')   # absl's own level may be WARNING here
  clock = Clock()
  report = reporter.Reporter(total_steps=10, start_step=0, clock=clock)
  done = report.compiling('train step')
  assert caplog.records[-1].getMessage() == 'compiling the train step ...'
  clock.now += 12.34
  assert done() == pytest.approx(12.34)
  assert caplog.records[-1].getMessage() == 'compiled the train step in 12.3 s'


def test_a_task_names_its_metrics(caplog):
  """Segmentation's lines: pixel accuracy in progress lines, mIoU where classification has top1."""
  caplog.set_level(logging.INFO, logger='absl')
  clock = Clock()
  names = base.ReportNames('pixel_accuracy', 'pixel acc', 'miou', 'mIoU')
  report = reporter.Reporter(total_steps=10, start_step=0, clock=clock, names=names)
  report.progress(5, {'loss': 0.5, 'pixel_accuracy': 0.875, 'learning_rate': 1e-3})
  assert caplog.records[-1].getMessage() == (
      'step  5/10  50%  loss 0.500  pixel acc 87.5%  lr 1.00e-03')
  report.evaluation(10, {'eval_miou': 0.5, 'ema_miou': 0.625, 'eval_count': 300}, best=False,
                    saved=[], seconds=2.0)
  assert caplog.records[-1].getMessage() == (
      'eval step 10/10  mIoU 50.0%  EMA mIoU 62.5%  300 images in 2.0 s')
  report.final(10, {'eval_miou': 0.5, 'ema_miou': 0.625}, (0.625, 10, '/w/best/10'))
  assert caplog.records[-1].getMessage().endswith(
      'final EMA mIoU 62.5% (raw 50.0%); best EMA mIoU 62.5% at step 10: /w/best/10')
