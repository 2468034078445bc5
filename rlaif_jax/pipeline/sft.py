"""The sft stage: supervised fine-tuning of the policy on demonstrations (config.sft.data: a JSONL
file) or on constitutional revisions of its own responses ('revisions', written once to
sft/revisions.jsonl). Leaves sft/policy (DONE.json last); sft/checkpoints while it runs."""

from __future__ import annotations

from typing import Any

import jax
from flax import nnx

from rlaif_jax.feedback import constitution
from rlaif_jax.generation import text as text_lib
from rlaif_jax.infra import storage
from rlaif_jax.pipeline import training_loop
from rlaif_jax.pipeline.context import DONE, RunContext
from rlaif_jax.training import sft, state as state_lib
from rlaif_jax.infra.errors import UserError


def run_stage(ctx: RunContext) -> dict[str, Any]:
  if (info := training_loop.complete(ctx, 'sft')) is not None:
    return info
  c = ctx.config.sft
  model, tokenizer = ctx.policy()
  train_prompts, _ = ctx.prompts()
  if c.data == 'revisions':
    prompts, responses = revisions(ctx, model, tokenizer, train_prompts[:c.num_examples])
  else:
    rows = storage.read_jsonl(c.data)
    prompts = [r[c.prompt_field] for r in rows]
    responses = [r[c.response_field] for r in rows]
  batch = lambda idx: sft.encode(tokenizer, [prompts[i] for i in idx], [responses[i] for i in idx],
                                 c.prompt_length, c.response_length)
  optimizer = state_lib.make_optimizer(c.learning_rate, c.steps, c.warmup_steps)
  step = sft.make_train_step(model, optimizer, ctx.mesh)
  state = training_loop.fit(ctx, 'sft', step, step.init(), list(range(len(prompts))), c.batch_size,
                            batch, c.steps, ctx.config.seed,
                            lora=bool(model.cfg.lora_rank))
  nnx.update(model, state.params)
  info = {'examples': len(prompts), 'steps': c.steps}
  training_loop.save_policy(ctx, 'sft', model, info)
  storage.write_json(ctx.path('sft', DONE), info)
  return info


def revisions(ctx: RunContext, model, tokenizer, prompts: list[str]) -> tuple[list[str], list[str]]:
  """Constitutional revisions of the policy's own responses (written once to sft/revisions.jsonl)."""
  path = ctx.path('sft', 'revisions.jsonl')
  if not path.exists():
    principles = ctx.constitution()
    if not principles:
      raise UserError("sft.data='revisions' needs a constitution: set judge.constitution.")
    generator = text_lib.TextGenerator(model, tokenizer, ctx.mesh)
    settings = ctx.sampling(ctx.config.sft.sampling)
    k_resp, k_rev = jax.random.split(ctx.stage_key('sft'))
    responses = generator(prompts, settings, k_resp)
    records = constitution.critique_and_revise(
        generator, prompts, responses,
        constitution.sample_principles(principles, len(prompts), ctx.config.seed), k_rev, settings)
    storage.write_jsonl(path, records)  # (prompt, revision) pairs with the full trail
  rows = storage.read_jsonl(path)
  return [r['prompt'] for r in rows], [r['revision'] for r in rows]

