"""The rl stage: PPO / REINFORCE / RLOO / GRPO / online DPO of the policy against the reward model
(canonical RLAIF), the judge's direct or yes/no scores (d-RLAIF), reward functions, or a weighted sum
of these (rl.rewards), with a KL leash to the reference policy. Every iteration is
checkpointed with everything needed to resume exactly (train state, PRNG key, KL coefficient, data
position). Leaves rl/policy (DONE.json last); rl/checkpoints while it runs.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rlaif_jax.data import prompts as prompts_lib
from rlaif_jax.generation import text as text_lib
from rlaif_jax.infra import metrics, storage
from rlaif_jax.infra import sharding as shd
from rlaif_jax.infra.progress import Progress
from rlaif_jax.models import lora
from rlaif_jax.pipeline import preflight, reward_model, training_loop
from rlaif_jax.pipeline.context import DONE, RunContext
from rlaif_jax.rl import loop as rl_loop
from rlaif_jax.rl import reward_functions, rewards
from rlaif_jax.rl.config import RLConfig
from rlaif_jax.training import state as state_lib


def reward_source_and_value_model(ctx: RunContext, cfg: RLConfig, tokenizer: Any):
  """(the reward rl.reward / rl.rewards names, the separate value model or None). The value model
  starts from the reward model, as in TRL. config.check, when set, is monitored beside the reward
  (logged per iteration as reward/check:NAME, weight 0) so that reward hacking shows."""
  kinds = cfg.reward_kinds
  reward_args, value_model = {'tokenizer': tokenizer}, None
  if 'reward_model' in kinds or cfg.value_model == 'separate':
    source = ctx.config.reward_model.source
    rm_model, _ = reward_model.load(ctx, source, frozen=True)
    stats = reward_model.stats(ctx.restored_info)
    reward_args['reward_model'] = (rm_model, nnx.state(rm_model, nnx.Param), ctx.mesh, stats)
    if cfg.value_model == 'separate':  # trained: in model.param_dtype
      value_model, _ = reward_model.load(ctx, source)
  if kinds & set(reward_functions.NEEDS_JUDGE):
    reward_args['judge'] = ctx.judge()
  monitors = (f'check:{ctx.config.check}',) if ctx.config.check else ()
  return rewards.make_reward_source(cfg, functions=preflight.reward_functions(ctx.config),
                                    monitors=monitors, **reward_args), value_model


def build_loop(ctx: RunContext, cfg: RLConfig, policy, tokenizer) -> rl_loop.RLLoop:
  """The compiled RL iteration for this run's policy, reward source, sampling and optimizer."""
  c = ctx.config.rl
  reward_source, value_model = reward_source_and_value_model(ctx, cfg, tokenizer)
  settings = dataclasses.replace(ctx.sampling(c.sampling), stop_tokens=text_lib.stop_tokens(tokenizer))
  optimizer = state_lib.make_optimizer(c.learning_rate, c.iterations * c.epochs * c.minibatches,
                                       c.warmup_steps)
  return rl_loop.RLLoop(policy, ctx.mesh, cfg, settings, optimizer, reward_source, value_model,
                        tokenizer.pad_token_id or 0)


def train(ctx: RunContext, cfg: RLConfig, iteration: rl_loop.RLLoop, tokenizer, reference: Any,
          lora_policy: bool = False):
  """rl.iterations iterations from the latest checkpoint; returns (train state, KL coefficient)."""
  c = ctx.config.rl
  key = ctx.stage_key('rl')
  train_prompts, _ = ctx.prompts()
  batches = prompts_lib.batches(train_prompts, c.batch_size, ctx.config.seed)
  like = {'train': iteration.init(), 'key': np.asarray(jax.random.key_data(key))}  # host: replicated
  # a LoRA policy's checkpoints hold its adapters, not the base weights
  frozen = lora.base_weights('train/params/policy/') if lora_policy else None
  ckpt, start, tree, meta = training_loop.resume(ctx, 'rl', like, batches, frozen)
  state, key = tree['train'], jax.random.wrap_key_data(tree['key'])
  kl_coef = meta.get('kl_coef', cfg.kl_coef)
  writer = metrics.Writer(ctx.workdir, 'rl', resume_step=start)  # drops rows of a killed try
  progress = Progress('rl', c.iterations, start, unit='iteration', every=0)
  guard = training_loop.NonFiniteGuard(ctx.config.train.max_nonfinite_steps, 'rl', ckpt)
  try:
    # rl.dynamic_sampling's further rounds draw the next batches (the data position saved after)
    draw = lambda: text_lib.encode_prompt_batch(tokenizer, next(batches), c.prompt_length)
    for i in range(start, c.iterations):
      state, kl_coef, m = iteration.iteration(state, reference, kl_coef, draw(),
                                              jax.random.fold_in(key, i), more_prompts=draw)
      guard.check(i + 1, m['skipped'])
      writer.write(i + 1, m)
      progress.update(i + 1, {k: m[k] for k in ('reward', 'kl', 'entropy', *(  # the check too
          k for k in m if k.startswith('reward/check:')))})
      meta = {'kl_coef': kl_coef, 'data': batches.get_state()}
      tree = {'train': state, 'key': np.asarray(jax.random.key_data(key))}
      ckpt.save(i + 1, tree, meta, force=i + 1 == c.iterations)
      if ctx.preempted():
        training_loop.save_and_exit(ckpt, i + 1, tree, meta, 'rl')
  finally:
    writer.close()
    ckpt.close()
  return state, kl_coef


def run_stage(ctx: RunContext) -> dict[str, Any]:
  if (info := training_loop.complete(ctx, 'rl')) is not None:
    return info
  cfg = RLConfig.from_config(ctx.config.rl)
  cfg.check_batch(ctx.config.rl.batch_size * cfg.samples_per_prompt,
                  shd.batch_shards(ctx.mesh, ctx.rules))  # before any model loads
  shared = cfg.algorithm == 'ppo' and cfg.value_model == 'shared'
  policy, tokenizer = ctx.policy(scalar_head=shared)
  # the reference parameters in the policy's own layout (with its head when the value head is
  # shared); a LoRA policy started from the base model has its own base weights (adapters off) as
  # reference: None, no second copy
  reference = None
  if not (policy.cfg.lora_rank and ctx.policy_dir(reference=True) is None):
    reference = jax.tree.map(jnp.copy, nnx.state(ctx.policy(reference=True, scalar_head=shared,
                                                            frozen=True)[0]))
  iteration = build_loop(ctx, cfg, policy, tokenizer)
  state, kl_coef = train(ctx, cfg, iteration, tokenizer, reference, bool(policy.cfg.lora_rank))
  nnx.update(policy, state.params['policy'])
  last = metrics.read(ctx.workdir, 'rl')[-3:]
  info = {'iterations': ctx.config.rl.iterations, 'kl_coef': kl_coef,
          **{k: float(np.mean([r[k] for r in last])) for k in ('reward', 'kl', 'reward_raw')}}
  training_loop.save_policy(ctx, 'rl', policy, info)
  storage.write_json(ctx.path('rl', DONE), info)
  return info
