"""The resumable training loop the stages share: checkpoints and exact resume (parameters, optimizer
state, PRNG key, data position), metrics rows, progress lines, the non-finite guard, SIGTERM saving,
and the markers that say a stage is complete.
"""

from __future__ import annotations

from typing import Any, Callable

from flax import nnx

from rlaif_jax.data import prompts as prompts_lib
from rlaif_jax.infra import checkpoints, distributed, metrics
from rlaif_jax.infra import sharding as shd
from rlaif_jax.infra.progress import Progress
from rlaif_jax.models import lora as lora_lib
from rlaif_jax.pipeline.context import DONE, RunContext
from rlaif_jax.training.state import TrainState


class Preempted(SystemExit):
  """Raised after SIGTERM once the running stage has saved a checkpoint."""


def complete(ctx: RunContext, stage: str, marker: str = DONE) -> dict | None:
  """The stage's summary when its output is complete (it then skips itself), else None."""
  info = checkpoints.read_marker(ctx.path(stage), marker)
  if info is not None:
    ctx.skipped.add(stage)
    print(f'[{stage}] complete already ({ctx.path(stage, marker)}); skipping.', flush=True)
  return info


def resume(ctx: RunContext, stage: str, like: Any, batches: Any, frozen=None
           ) -> tuple[checkpoints.Checkpoints, int, Any, dict]:
  """The stage's checkpoints and where to start: (checkpoints, step, state, meta) from its own latest
  checkpoint, else from `checkpoint.restore_from` when that names this stage, else (.., 0, like, {}).
  Puts the data iterator `batches` back where the checkpoint left it. frozen: the leaves the
  checkpoints leave out (a LoRA model's base weights, `lora.base_weights`), kept from `like`."""
  ck = ctx.config.checkpoint
  ckpt = checkpoints.Checkpoints(ctx.path(stage, 'checkpoints'), ck.interval, ck.keep, ck.async_save,
                                 frozen)
  restored = ckpt.restore(like) if ckpt.latest_step() is not None else None
  if restored is None and checkpoints.stage_of(ck.restore_from) == stage:
    restored = checkpoints.restore_from(ck.restore_from, like, frozen)
  if restored is None:
    return ckpt, 0, like, {}
  start, state, meta = restored
  batches.set_state(meta['data'])
  print(f'[{stage}] resumed at step {start} from {ckpt.directory}', flush=True)
  return ckpt, start, state, meta


class NonFiniteGuard:
  """Counts updates skipped for a non-finite loss or gradient; too many in a row stop the run."""

  def __init__(self, limit: int, stage: str, ckpt: checkpoints.Checkpoints):
    self.limit, self.stage, self.ckpt, self.run = limit, stage, ckpt, 0
    self.total = 0

  def check(self, step: int, skipped: float) -> None:
    self.total += int(skipped)
    self.run = self.run + 1 if skipped else 0
    if self.run > self.limit:
      raise FloatingPointError(
          f'[{self.stage}] {self.run} steps in a row had a non-finite loss or gradient (up to step '
          f'{step}); stopped. The last good checkpoint (step {self.ckpt.latest_step()}) is kept in '
          f'{self.ckpt.directory}. Lower the learning rate or check the data, then run again; raise '
          f'config.train.max_nonfinite_steps to tolerate more.')


def save_and_exit(ckpt: checkpoints.Checkpoints, step: int, state: Any, meta: dict, stage: str):
  """After SIGTERM: make sure step `step` is saved and finalized, then exit with status 143."""
  if ckpt.latest_step() != step:
    ckpt.save(step, state, meta, force=True)
  ckpt.wait()
  print(f'[{stage}] SIGTERM: saved the checkpoint of step {step} in {ckpt.directory}; exiting. '
        f'Run the same command again to resume.', flush=True)
  raise Preempted(143)


def fit(ctx: RunContext, stage: str, step: Callable, state: TrainState, items: list, batch_size: int,
        to_batch: Callable[[list], Any], steps: int, seed: int, lora: bool = False) -> TrainState:
  """`steps` train steps over shuffled batches of `items` with checkpoints, exact resume, metrics,
  progress, SIGTERM saving and the non-finite guard. Returns the final state. lora: the model has
  LoRA adapters; its checkpoints hold them without the base weights."""
  batches = prompts_lib.batches(items, batch_size, seed)
  frozen = lora_lib.base_weights('params/') if lora else None
  ckpt, start, state, _ = resume(ctx, stage, state, batches, frozen)
  writer = metrics.Writer(ctx.workdir, stage, resume_step=start)  # drops rows of a killed try
  progress = Progress(stage, steps, start)
  guard = NonFiniteGuard(ctx.config.train.max_nonfinite_steps, stage, ckpt)
  try:
    for i in range(start, steps):
      state, m = step(state, to_batch(next(batches)))
      m = {k: float(v) for k, v in distributed.to_host(m).items()}
      guard.check(i + 1, m['skipped'])
      writer.write(i + 1, m)
      progress.update(i + 1, {'loss': m.get('loss', float('nan'))})
      ckpt.save(i + 1, state, {'data': batches.get_state()}, force=i + 1 == steps)
      if ctx.preempted():
        save_and_exit(ckpt, i + 1, state, {'data': batches.get_state()}, stage)
  finally:
    writer.close()
    ckpt.close()
  return state


def policy_params(model: nnx.Module) -> Any:
  """The policy's parameters without a scalar (value) head."""
  params = nnx.state(model, nnx.Param)
  return nnx.State({k: v for k, v in params.items() if not k.startswith('scalar_')})


def save_policy(ctx: RunContext, stage: str, model: nnx.Module, info: dict) -> None:
  """The stage's finished policy in <stage>/policy; a LoRA policy as its adapters alone, with the
  place of its base weights (`RunContext.lora_base`) in the marker."""
  params = policy_params(model)
  if model.cfg.lora_rank:
    params = nnx.from_flat_state([(p, v) for p, v in nnx.to_flat_state(params)
                                  if lora_lib.is_adapter_name(shd._path_name(p))])
    info = {**info, 'lora_base': ctx.lora_base()}
  checkpoints.save_params(ctx.path(stage, 'policy'), params, info)
