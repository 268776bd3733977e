"""What the trainer asks of a task: the interface classification, segmentation (and detection)
implement, so that one loop (mesh, RMSProp, EMA, checkpoints, resume, clu metrics, preflight,
console lines) trains them all.

A task is built from the whole run config (`Task(config)`) and answers four kinds of questions:
- config and data (host side, before anything compiles): `check_config` (its own fields, named by
  their config path; returns the dataset info), `build_model`, `train_iterator`/`eval_iterator`
  (numpy batches of this process), `header_lines`;
- the pure, jitted pieces of the steps: `loss_and_metrics` (the training loss of a batch and its
  per-batch train metrics, collected by `train_metrics`, a clu Collection) and `eval_outputs`
  (what one eval batch contributes: a clu Collection, or any pytree such as detections);
- host-side evaluation: `eval_accumulator()` gathers the eval outputs of a pass over the eval
  split (on device, or on the host where a metric needs it: COCO mAP) and gives scalar results;
- `report`: the metric names the console prints and the best checkpoint is chosen by
  ('ema_' + report.eval_metric), and `on_train_end` (e.g. a picture of predictions).

Models take (N, H, W, 3) images in [-1, 1] and `train=`; their variables are {'params',
'batch_stats'}, so the trainer's state, EMA and checkpoints are the same for every task.
"""
import abc
import types
from typing import Any, Dict, Iterator, List, NamedTuple, Optional, Tuple

import jax
import ml_collections
from clu import metrics as clu_metrics


class ReportNames(NamedTuple):
  """Metric keys and their console labels. `train_metric` is a key of the train metrics, printed
as a percentage or (train_percent False) as it is; `eval_metric` one of the eval results (also
'ema_<eval_metric>': the best-checkpoint metric), a fraction printed as a percentage."""
  train_metric: str
  train_label: str
  eval_metric: str
  eval_label: str
  train_percent: bool = True


def train_metrics(*averaged: str) -> type:
  """The clu Collection of a task's train metrics: the mean of 'loss' and of each of `averaged`
  (keys `Task.loss_and_metrics` returns) over the steps since the last log, and what every task's
  step adds: learning_rate and param_norm (last values), grad_norm and update_norm (means)."""
  return clu_metrics.Collection.create(
      loss=clu_metrics.Average.from_output('loss'),
      **{name: clu_metrics.Average.from_output(name) for name in averaged},
      learning_rate=clu_metrics.LastValue.from_output('learning_rate'),
      grad_norm=clu_metrics.Average.from_output('grad_norm'),
      update_norm=clu_metrics.Average.from_output('update_norm'),
      param_norm=clu_metrics.LastValue.from_output('param_norm'))


class EvalAccumulator(abc.ABC):
  """Gathers the eval outputs of one set of weights over a pass of the eval split."""

  @abc.abstractmethod
  def add(self, outputs: Any, batch: dict) -> None:
    """Adds one batch's `Task.eval_outputs` (global arrays; may stay on device); batch: the eval
    batch they were computed from (global arrays, sharded over the mesh), for accumulators that
    need its ground truth on the host (detection's COCO mAP)."""

  @abc.abstractmethod
  def result(self) -> Dict[str, float]:
    """Scalar metrics over the real examples, with 'count': the number of examples scored.
    Equal on every process."""


class CollectionAccumulator(EvalAccumulator):
  """Merges clu Collections on device; `result` is their `compute()` flattened by `flatten`."""

  def __init__(self, flatten):
    self._total, self._flatten = None, flatten

  def add(self, outputs, batch) -> None:
    del batch   # the Collection already holds what it needs
    self._total = outputs if self._total is None else self._total.merge(outputs)

  def result(self) -> Dict[str, float]:
    return self._flatten(self._total)


class Task(abc.ABC):
  """One task of the trainer (module docstring). Subclasses set `name`, `report`,
  `train_metrics`, `init_from_scope` and `pipeline`."""
  name: str
  pipeline: types.ModuleType   # the task's input pipeline: its train_iterator, eval_iterator
  #                              (and eval_split) of config.data
  report: ReportNames
  train_metrics: type          # `train_metrics(...)` of the metrics `loss_and_metrics` returns
  # init_from: None, the weights must fit the whole model; or a top-level params key (e.g.
  # 'backbone') under which the arrays whose names and shapes match a classifier's are loaded.
  init_from_scope: Optional[str] = None

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config

  @abc.abstractmethod
  def check_config(self) -> Any:
    """Checks the task's fields (data.*, model.*, its own), raising ValueError naming the field
    and what is allowed; returns the dataset info (num_classes, num_train_examples,
    num_eval_examples), reading as little data as it can."""

  @abc.abstractmethod
  def build_model(self, info: Any):
    """The flax module trained: `(images, train=...) -> outputs`."""

  @abc.abstractmethod
  def init_image_size(self) -> Tuple[int, int]:
    """(H, W) of the dummy images the variables are created with."""

  def train_iterator(self, *, global_batch_size: int, seed: int, start_step: int,
                     process_index: int, process_count: int) -> Iterator[dict]:
    """Endless, deterministic numpy training batches of this process from `start_step` on
    (`pipeline.train_iterator` of config.data)."""
    return self.pipeline.train_iterator(
        self.config.data, global_batch_size=global_batch_size, seed=seed, start_step=start_step,
        process_index=process_index, process_count=process_count)

  def eval_iterator(self, *, global_batch_size: int, process_index: int,
                    process_count: int) -> Iterator[dict]:
    """One pass over this process's eval shard, padded to whole batches ('mask' 0 = padding);
    every process yields the same number of batches (`pipeline.eval_iterator` of config.data)."""
    return self.pipeline.eval_iterator(self.config.data, global_batch_size=global_batch_size,
                                       process_index=process_index, process_count=process_count)

  def eval_split(self) -> str:
    """The name of the split evaluated on, for the console (`pipeline.eval_split`)."""
    return self.pipeline.eval_split(self.config.data)

  @abc.abstractmethod
  def header_lines(self, model, info: Any) -> List[str]:
    """The model line(s) of the run header: what is trained, its params and MACs."""

  @abc.abstractmethod
  def loss_and_metrics(self, outputs: Any, batch: dict,
                       axis_name: Optional[str]) -> Tuple[jax.Array, Dict[str, jax.Array]]:
    """(loss, {metric: scalar}) of a training batch; pure. outputs: the model's (an array, or a
    tuple such as SSD's (box_regression, cls_logits)); a 'loss' metric is the loss itself.

    axis_name None: `batch` is the global batch. Otherwise this is one device's shard under a
    shard_map over `axis_name`, and the values must be such that their mean over the axis is the
    global batch's (the step averages loss, gradients and metrics with `pmean`).
    """

  @abc.abstractmethod
  def eval_outputs(self, outputs: Any, batch: dict) -> Any:
    """What one padded eval batch contributes (mask 0 examples must not count); pure."""

  @abc.abstractmethod
  def eval_accumulator(self) -> EvalAccumulator:
    """A fresh accumulator of `eval_outputs`."""

  def on_train_end(self, workdir: str, model, variables: dict) -> Optional[str]:
    """Called on every process when training finished, with the EMA variables as host arrays;
    may write files (process 0) and return the path of what it wrote."""
    del workdir, model, variables
    return None


def millions(n: int) -> str:
  """'1.53M', '2.69G': a count for the run header."""
  return f'{n / 1e6:.2f}M' if n < 1e8 else f'{n / 1e9:.2f}G'
