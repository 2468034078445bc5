"""The dpo stage: the policy trained directly on the label stage's AI preferences (DPO, IPO or the
soft-label form, `training.dpo`), no reward model and no RL. The reference is the starting policy
(sft's, else the base model); its log-probs of every pair are computed once and written to
dpo/reference.json, so a resumed run reuses them. Leaves dpo/policy (DONE.json last), which the
eval and export stages (and a later rl stage) take as the policy; dpo/checkpoints while it runs.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flax import nnx

from rlaif_jax.infra import distributed, storage
from rlaif_jax.infra import sharding as shd
from rlaif_jax.pipeline import reward_model, training_loop
from rlaif_jax.pipeline.context import DONE, RunContext
from rlaif_jax.training import dpo, sft
from rlaif_jax.training import state as state_lib

REFERENCE_FILE = 'reference.json'


def dpo_config(c) -> dpo.DPOConfig:
  return dpo.DPOConfig(beta=c.beta, loss=c.loss, labels=c.labels, label_smoothing=c.label_smoothing)


def encode(tokenizer, rows: list[dict], prompt_length: int, response_length: int
           ) -> dpo.PreferenceBatch:
  """Preference rows -> a batch: the prompt (chat template; a long one loses the start of its user
  text), both responses ending with eos; the reference log-probs the rows carry (else 0)."""
  prompts = [r['prompt'] for r in rows]
  a = sft.encode(tokenizer, prompts, [r['response_a'] for r in rows], prompt_length, response_length)
  b = sft.encode(tokenizer, prompts, [r['response_b'] for r in rows], prompt_length, response_length)
  f = lambda key: np.asarray([r.get(key, 0.0) for r in rows], np.float32)
  return dpo.PreferenceBatch(a.prompt, a.prompt_valid, a.response, a.mask, b.response, b.mask,
                             f('p_a_better'), f('ref_a'), f('ref_b'))


def batches(rows: list[dict], size: int, multiple: int):
  """Consecutive chunks of `size` rows, each filled to the mesh's batch multiple with undecided
  (p = 0.5) copies of its first row; yields (chunk, filled rows)."""
  for i in range(0, len(rows), size):
    chunk = rows[i:i + size]
    yield chunk, chunk + [dict(chunk[0], p_a_better=0.5)] * (-len(chunk) % multiple)


def log_probs(ctx: RunContext, fn, params, tokenizer, rows: list[dict], size: int
              ) -> tuple[np.ndarray, np.ndarray]:
  """Summed log-probs of both responses of every row under `params`: ([n], [n])."""
  c = ctx.config.dpo
  multiple = shd.batch_shards(ctx.mesh, ctx.rules)
  out_a, out_b = [], []
  for chunk, filled in batches(rows, size, multiple):
    a, b = distributed.to_host(fn(params, encode(tokenizer, filled, c.prompt_length,
                                                 c.response_length)))
    out_a.append(np.asarray(a)[:len(chunk)])
    out_b.append(np.asarray(b)[:len(chunk)])
  return np.concatenate(out_a), np.concatenate(out_b)


def with_reference(ctx: RunContext, rows: list[dict], tokenizer, size: int) -> list[dict]:
  """The rows with the reference's log-probs (ref_a, ref_b), computed once (dpo/reference.json)."""
  path = ctx.path('dpo', REFERENCE_FILE)
  if path.exists():
    ref = storage.read_json(path)
  else:
    model, _ = ctx.policy(reference=True, frozen=True)
    fn = dpo.make_log_prob_fn(model, ctx.mesh)
    a, b = log_probs(ctx, fn, nnx.state(model, nnx.Param), tokenizer, rows, size)
    ref = {'ref_a': a.tolist(), 'ref_b': b.tolist()}
    storage.write_json(path, ref)
  if len(ref['ref_a']) != len(rows):
    raise RuntimeError(f'{path} holds {len(ref["ref_a"])} pairs, the labels {len(rows)}.')
  return [dict(r, ref_a=a, ref_b=b) for r, a, b in zip(rows, ref['ref_a'], ref['ref_b'])]


def held_out(ctx: RunContext, model, params, tokenizer, rows: list[dict], cfg: dpo.DPOConfig
             ) -> dict[str, float]:
  """Held-out preference accuracy (the implicit reward's margin h > 0 agrees with the label, ties
  left out) and the mean reward margin beta x h toward the preferred side."""
  fn = dpo.make_log_prob_fn(model, ctx.mesh)
  a, b = log_probs(ctx, fn, params, tokenizer, rows, ctx.config.dpo.batch_size)
  h = (a - np.asarray([r['ref_a'] for r in rows])) - (b - np.asarray([r['ref_b'] for r in rows]))
  p = np.asarray([r['p_a_better'] for r in rows])
  decided = p != 0.5
  return {'eval_accuracy': float(np.mean(((h > 0) == (p > 0.5))[decided])) if decided.any() else 0.0,
          'eval_reward_margin': float(cfg.beta * np.mean(np.where(p >= 0.5, h, -h))),
          'eval_pairs': int(decided.sum())}


def run_stage(ctx: RunContext) -> dict[str, Any]:
  if (info := training_loop.complete(ctx, 'dpo')) is not None:
    return info
  c = ctx.config.dpo
  cfg = dpo_config(c)
  train_rows, eval_rows = reward_model.labeled_rows(ctx, c.batch_size, c.eval_fraction)
  model, tokenizer = ctx.policy()
  rows = with_reference(ctx, train_rows + eval_rows, tokenizer, c.batch_size)
  train_rows, eval_rows = rows[:len(train_rows)], rows[len(train_rows):]
  optimizer = state_lib.make_optimizer(c.learning_rate, c.steps, c.warmup_steps)
  step = dpo.make_train_step(model, optimizer, ctx.mesh, cfg, c.micro_batches)
  batch = lambda chunk: encode(tokenizer, chunk, c.prompt_length, c.response_length)
  state = training_loop.fit(ctx, 'dpo', step, step.init(), train_rows, c.batch_size, batch, c.steps,
                            ctx.config.seed,
                            lora=bool(model.cfg.lora_rank))
  nnx.update(model, state.params)
  report = held_out(ctx, model, state.params, tokenizer, eval_rows, cfg)
  info = {**report, 'train_pairs': len(train_rows), 'steps': c.steps, 'loss': c.loss,
          'labels': c.labels, 'beta': c.beta}
  training_loop.save_policy(ctx, 'dpo', model, info)
  storage.write_json(ctx.path('dpo', DONE), info)
  print(f'[dpo] held-out preference accuracy {report["eval_accuracy"]:.3f} on '
        f'{report["eval_pairs"]} pairs, reward margin {report["eval_reward_margin"]:.3f}', flush=True)
  return info
