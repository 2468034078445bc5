"""Step times of a transformers `Trainer` (TRL's trainers), for the TRL sides of the benchmarks; runs
in their own environments (only transformers needed)."""

import time

from transformers import TrainerCallback


class StepTimes(TrainerCallback):
  """Wall-clock marks at the start of training and after every step: their differences are the
  seconds per step (a step = one iteration of ours)."""

  def __init__(self):
    self.marks = []

  def on_train_begin(self, args, state, control, **kwargs):
    self.marks.append(time.perf_counter())

  def on_step_end(self, args, state, control, **kwargs):
    self.marks.append(time.perf_counter())

  def seconds(self) -> list[float]:
    return [b - a for a, b in zip(self.marks, self.marks[1:])]
