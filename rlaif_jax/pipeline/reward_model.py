"""The reward_model stage: the reward model trained on the label stage's preference rows (soft
Bradley-Terry), its held-out accuracy against the AI labels, and the normalisation statistics RL uses.
Leaves reward_model/model (reward_stats.json last); reward_model/checkpoints while it runs.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rlaif_jax.feedback import checks
from rlaif_jax.generation import text as text_lib
from rlaif_jax.infra import checkpoints, distributed
from rlaif_jax.infra import sharding as shd
from rlaif_jax.pipeline import label, training_loop
from rlaif_jax.pipeline.context import RunContext
from rlaif_jax.training import reward_model as rm
from rlaif_jax.training import state as state_lib
from rlaif_jax.infra.errors import MissingInput, UserError

STATS_FILE = 'reward_stats.json'


def save(directory: str, params: Any, stats: rm.RewardStats, extra: dict | None = None) -> None:
  """Write a reward model: parameters (Orbax) and its normalisation statistics (JSON, written last,
  so a directory with them holds a complete model)."""
  checkpoints.save_params(directory, params, {**stats._asdict(), **(extra or {})}, STATS_FILE)


def load(ctx: RunContext, source: str, frozen: bool = False):
  """(the trained reward model, restored straight from reward_model/model, tokenizer); its
  statistics are in ctx.restored_info (see `stats`)."""
  return ctx.load(source, scalar_head=True, frozen=frozen, lm_head=False,
                  restore_from=ctx.path('reward_model', 'model'), marker=STATS_FILE,
                  what='reward model')


def stats(info: dict) -> rm.RewardStats:
  return rm.RewardStats(info['mean'], info['std'])


def pair_tokens(tokenizer, prompts, responses, length: int) -> tuple[np.ndarray, np.ndarray]:
  """Prompt (chat template) + response + eos, left-padded to `length` (long ones keep their end)."""
  eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
  ids = [p + tokenizer.encode(r, add_special_tokens=False) + eos
         for p, r in zip(text_lib.encode_texts(tokenizer, prompts, True), responses)]
  pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
  return text_lib.left_pad([x[-length:] for x in ids], length, pad)


def pair_batch(tokenizer, rows: list[dict], length: int) -> rm.PairBatch:
  """A reward-model batch from preference rows: both sides tokenized, the soft label P(a better)."""
  prompts = [r['prompt'] for r in rows]
  ta, va = pair_tokens(tokenizer, prompts, [r['response_a'] for r in rows], length)
  tb, vb = pair_tokens(tokenizer, prompts, [r['response_b'] for r in rows], length)
  return rm.PairBatch(ta, va, tb, vb, np.asarray([r['p_a_better'] for r in rows], np.float32))


def labeled_rows(ctx: RunContext, batch_size: int, eval_fraction: float
                 ) -> tuple[list[dict], list[dict]]:
  """(train, held-out) preference rows of the complete label stage (skipped pairs left out)."""
  if checkpoints.read_marker(ctx.path('label')) is None:
    raise MissingInput(f'The reward_model stage needs labels: no complete label stage in '
                       f'{ctx.path("label")}; add "label" to config.stages before it.')
  rows, reviewed = label.reviewed(ctx.path('label'), label.labels(ctx.path('label')))
  if reviewed:
    print(f'[labels] {reviewed} labels corrected in {ctx.path("label", label.QUEUE)}', flush=True)
  rows = [r for r in rows if not r['skipped']]
  n_eval = max(1, int(len(rows) * eval_fraction))
  if len(rows) - n_eval < batch_size:
    raise UserError(f'{len(rows)} labeled pairs leave fewer than reward_model.batch_size='
                    f'{batch_size} for training; label more prompts or lower the batch size.')
  return rows[:-n_eval], rows[-n_eval:]


def held_out_report(ctx: RunContext, model, reward, params, batch, eval_rows, batch_size
                    ) -> dict[str, float]:
  """Held-out accuracy: batches filled to the mesh's batch multiple with undecided (p = 0.5) rows,
  which the accuracy leaves out."""
  multiple = shd.batch_shards(ctx.mesh, model.cfg.logical_axis_rules)
  filler = dict(eval_rows[0], p_a_better=0.5)
  held_out = [batch(chunk + [filler] * (-len(chunk) % multiple))
              for chunk in (eval_rows[i:i + batch_size] for i in range(0, len(eval_rows), batch_size))]
  return rm.evaluate(reward, params, held_out)


def run_stage(ctx: RunContext) -> dict[str, Any]:
  info = training_loop.complete(ctx, 'reward_model', f'model/{STATS_FILE}')
  if info is not None:
    return info
  c = ctx.config.reward_model
  train_rows, eval_rows = labeled_rows(ctx, c.batch_size, c.eval_fraction)
  model, tokenizer = ctx.load(c.source, scalar_head=True, lm_head=False)
  batch = lambda rows: pair_batch(tokenizer, rows, c.max_length)
  optimizer = state_lib.make_optimizer(c.learning_rate, c.steps, c.warmup_steps)
  step = rm.make_train_step(model, optimizer, ctx.mesh, c.micro_batches)
  state = training_loop.fit(ctx, 'reward_model', step, step.init(), train_rows, c.batch_size, batch,
                            c.steps, ctx.config.seed)
  reward = rm.make_reward_fn(model)
  report = held_out_report(ctx, model, reward, state.params, batch, eval_rows, c.batch_size)
  train_rewards = [distributed.to_host(reward(state.params, b.tokens_a, b.valid_a))
                   for b in (batch(train_rows[i:i + c.batch_size])
                             for i in range(0, len(train_rows) - c.batch_size + 1, c.batch_size))]
  stats = rm.reward_stats(np.concatenate(train_rewards))
  info = {**report, 'train_pairs': len(train_rows), 'eval_pairs': len(eval_rows), 'steps': c.steps}
  if ctx.config.check:  # the held-out pairs labeled by the principle's check instead
    check = checks.resolve(ctx.config.check)
    by_check = [dict(r, p_a_better=checks.preferred(check, r['prompt'], r['response_a'],
                                                    r['response_b'])) for r in eval_rows]
    vs = held_out_report(ctx, model, reward, state.params, batch, by_check, c.batch_size)
    info.update(accuracy_check=vs['accuracy_ai'], pairs_check=vs['pairs_ai'])
  save(ctx.path('reward_model', 'model'), state.params, stats, info)
  print(f'[reward_model] held-out accuracy vs its labels {report["accuracy_ai"]:.3f} on '
        f'{report["pairs_ai"]} pairs' + (f', vs check {ctx.config.check} {info["accuracy_check"]:.3f} '
                                         f'on {info["pairs_check"]}' if ctx.config.check else ''),
        flush=True)
  return {**stats._asdict(), **info}
