"""The steps each stage runs, compiled for a topology, and `make_plan`, which gathers them.

For each step: the jitted function the stage really runs (the sampler's prefill and one decode step,
the judge's option scoring, the reward-model train step, the reference and reward scoring passes, PPO's
old-values pass when the update runs one, the RL update) on abstract arguments of the config's shapes,
and the weights of the other models that stay on the chips meanwhile.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from rlaif_jax.feedback import option_scoring
from rlaif_jax.feedback.requests import JudgeConfig
from rlaif_jax.generation import sampler, scoring
from rlaif_jax.generation import text as text_lib
from rlaif_jax.infra import sharding as shd
from rlaif_jax.models import attention
from rlaif_jax.plan.chips import Chip, topology_devices
from rlaif_jax.plan.analysis import (S, Step, abstract_arrays, abstract_key, abstract_model,
                                     compile_step, decoding_shardings, device_bytes,
                                     model_config, params_bytes)
from rlaif_jax.rl import rewards
from rlaif_jax.rl import update as update_lib
from rlaif_jax.rl.config import RLConfig, values_from_first_step
from rlaif_jax.rl.rollout import Rollout
from rlaif_jax.training import reward_model as rm
from rlaif_jax.training import state as state_lib
from rlaif_jax.infra.errors import UserError


@dataclasses.dataclass
class Plan:
  topology: str
  chip: Chip
  mesh: dict[str, int]
  mfu: float
  steps: list[Step]
  models: dict[str, tuple[float, int]]  # name -> (billions of parameters, bytes per device)

  @property
  def fits(self) -> bool:
    return all(s.fits(self.chip) for s in self.steps)


@dataclasses.dataclass
class Planning:
  """What the stage planners share: the config, mesh, RL settings and the abstract models: the
  trained ones in model.param_dtype, the frozen ones (judge, reference policy, the reward model
  during RL) in their own storage dtypes."""
  config: ml_collections.ConfigDict
  mesh: jax.sharding.Mesh
  rules: Any
  rl: RLConfig
  policy: Any
  judge: Any
  reward: Any
  reference: Any
  frozen_reward: Any

  def weights(self, model: Any) -> int:
    """Bytes per device of a model's parameters."""
    return params_bytes(model, self.mesh)


def compile_built(p: Planning, step: Step, build) -> Step:
  """Compile `build(p) -> (jitted fn, abstract args)` and read back its numbers."""
  fn, args = build(p)
  return compile_step(step, fn, args, p.mesh)


def plan_models(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> Planning:
  """The abstract policy (with a value head when PPO shares it), judge and reward model."""
  rules = shd.rules_from_config(config.logical_axis_rules)
  m, j = config.model, config.judge
  common = dict(param_dtype=m.param_dtype, dtype=m.dtype, remat=m.remat, logical_axis_rules=rules,
                scan_layers=m.scan_layers, logit_chunk_rows=m.get('logit_chunk_rows', 0),
                attention=attention.resolve(m.get('attention', 'auto'), 'tpu'))  # the target's
  frozen = m.get('frozen_param_dtype') or m.param_dtype
  rl_cfg = RLConfig.from_config(config.rl)
  shared_head = rl_cfg.algorithm == 'ppo' and rl_cfg.value_model == 'shared'
  lora = dict(lora_rank=m.get('lora_rank', 0), lora_alpha=m.get('lora_alpha', 16.0),
              lora_targets=tuple(m.get('lora_targets', ('q', 'k', 'v', 'o', 'gate', 'up', 'down'))))
  policy_cfg = model_config(m.source, m.architecture, **common).replace(scalar_head=shared_head,
                                                                        **lora)
  judge_cfg = model_config(j.source or m.source, j.get('architecture') or
                           (None if j.source else m.architecture), **common).replace(
      param_dtype=j.get('param_dtype') or frozen, dtype=j.get('dtype') or m.dtype)
  rm_arch = config.reward_model.get('architecture') or (
      None if config.reward_model.source else m.architecture)
  rm_cfg = model_config(config.reward_model.source or m.source, rm_arch, scalar_head=True,
                        lm_head=False, **common)
  return Planning(config, mesh, rules, rl_cfg, abstract_model(policy_cfg), abstract_model(judge_cfg),
                  abstract_model(rm_cfg), abstract_model(policy_cfg.replace(param_dtype=frozen)),
                  abstract_model(rm_cfg.replace(param_dtype=frozen)))


def sampler_steps(p: Planning, stage: str, rows: int, settings: ml_collections.ConfigDict,
                  resident: int, group: int = 1) -> list[Step]:
  """The rollout's prefill (of rows / group distinct prompts) and one decode step (run
  max_new_tokens - 1 times)."""
  cfg = sampler.SamplingConfig(settings.max_new_tokens, temperature=settings.temperature or 1.0)
  length = p.config.rl.prompt_length
  prompt = (S((rows, length), jnp.int32), S((rows, length), bool))

  def prefill(q: Planning):
    state_sh, batch, repl = shd.model_shardings(q.policy, q.mesh)
    graphdef = nnx.graphdef(q.policy)
    fn = jax.jit(lambda st, t, v, k: sampler.prefill(nnx.merge(graphdef, st), t, v, k, cfg,
                                                     group=group),
                 in_shardings=(state_sh, batch, batch, repl))
    return fn, (abstract_arrays(nnx.state(q.policy)), *prompt, abstract_key())

  def decode(q: Planning):
    state_sh, _, _ = shd.model_shardings(q.policy, q.mesh)
    graphdef = nnx.graphdef(q.policy)
    fn, args = prefill(q)
    decoding = jax.eval_shape(fn, *args)
    step = jax.jit(lambda st, d: sampler.decode_step(nnx.merge(graphdef, st), d, cfg),
                   in_shardings=(state_sh, decoding_shardings(decoding, q.rules, q.mesh)),
                   donate_argnums=(1,))
    return step, (args[0], decoding)

  return [compile_built(p, Step(stage, 'rollout prefill', 1, resident), prefill),
          compile_built(p, Step(stage, 'rollout decode step', cfg.max_new_tokens - 1, resident),
                        decode)]


def judge_step(p: Planning, step: Step, rows: int, length: int, options: tuple[int, int]) -> Step:
  """The judge's option scoring of `rows` requests of `length` tokens, `options` = (O, L)."""
  def build(q: Planning):
    fn = option_scoring.jit_option_log_probs(q.judge, q.mesh).jitted
    return fn, (abstract_arrays(nnx.state(q.judge)), S((rows, length), jnp.int32),
                S((rows, length), bool), S(options, jnp.int32), S(options, bool))
  return compile_built(p, step, build)


def label_steps(p: Planning) -> list[Step]:
  c, j = p.config.label, p.config.judge
  steps = sampler_steps(p, 'label', 2 * c.batch_size, c.sampling, p.weights(p.judge))  # two a prompt
  length = text_lib.bucket_length(j.max_context_tokens + 2 * j.max_response_tokens + 256,
                                  JudgeConfig.prompt_buckets)
  rows = c.batch_size * (2 if j.debias else 1)  # both orders
  return steps + [judge_step(p, Step('label', 'judge: preference of a pair', 1,
                                     p.weights(p.policy)), rows, length, (2, 1))]


def reward_model_steps(p: Planning) -> list[Step]:
  c = p.config.reward_model
  optimizer = state_lib.make_optimizer(c.learning_rate, c.steps, c.warmup_steps)
  pair = (S((c.batch_size, c.max_length), jnp.int32), S((c.batch_size, c.max_length), bool))
  batch = rm.PairBatch(*pair, *pair, S((c.batch_size,), jnp.float32))

  def build(q: Planning):
    step = rm.make_train_step(q.reward, optimizer, p.mesh, c.micro_batches)
    return step.jitted, (jax.eval_shape(step.init), batch)
  return [compile_built(p, Step('reward_model', 'reward-model train step', 1, 0), build)]


def rl_scoring_steps(p: Planning, response: tuple, w_state: int, w_policy: int, scorer_weights: int,
                     value_model: bool) -> list[Step]:
  """The reference log-probs, PPO's old-values pass (when the update runs one) and the reward."""
  others = w_policy + scorer_weights

  def reference(q: Planning):
    return (scoring.jit_token_scores(q.reference, q.mesh).jitted,
            (abstract_arrays(nnx.state(q.reference)), *response))

  steps = [compile_built(p, Step('rl', 'score: reference log-probs', 1, w_state + scorer_weights),
                         reference)]
  if p.rl.algorithm == 'ppo' and not values_from_first_step(p.rl):
    # the update's own forward pass for the old values (with one minibatch and no micro-batches
    # its first step gives them, at no cost)
    critic = lambda q: abstract_model(q.reward.cfg) if value_model else q.policy

    def old_values(q: Planning):
      fn = scoring.jit_response_fn(critic(q), q.mesh, update_lib.token_values).jitted
      return fn, (abstract_arrays(nnx.state(critic(q))), *response)
    steps.append(compile_built(
        p, Step('rl', 'score: old values', 1, w_state - p.weights(critic(p)) + others), old_values))
  kinds = p.rl.reward_kinds  # text functions run on the host
  if 'reward_model' in kinds:
    def reward(q: Planning):
      fn = rewards.reward_model_rewards(q.frozen_reward, None, q.mesh, rm.RewardStats(0.0, 1.0)).jitted
      return fn, (abstract_arrays(nnx.state(q.frozen_reward)), *response)
    steps.append(compile_built(p, Step('rl', 'score: reward model', 1, w_state + w_policy), reward))
  c = p.config.rl
  for kind, what, options in (('judge', 'score: judge (d-RLAIF)', (10, 3)),
                              ('judge_yes_no', 'score: judge yes/no', (2, 1))):
    if kind in kinds:  # the judge's answer after each prompt + response
      steps.append(judge_step(p, Step('rl', what, 1, w_state + w_policy), response[0].shape[0],
                              c.prompt_length + c.sampling.max_new_tokens + 128, options))
  return steps


def rl_update_step(p: Planning, optimizer, rows: int, response: tuple, others: int,
                   value: bool) -> Step:
  """The update as the RL loop calls it (PPO's old values left to it): epochs x minibatches x
  micro-batches, each a pass of its loops."""
  c, rl_cfg, n = p.config.rl, p.rl, p.config.rl.sampling.max_new_tokens
  rollout = Rollout(*response, *(S((rows, n), jnp.float32),) * 2, None, S((rows,), jnp.float32))

  def build(q: Planning):
    u = update_lib.make_update(q.policy, optimizer, p.mesh, rl_cfg, c.sampling.temperature or 1.0,
                               abstract_model(q.reward.cfg) if value else None)
    return u.jitted, (jax.eval_shape(u.init), rollout, S((), jnp.float32), abstract_key())
  micro = f' x {rl_cfg.micro_batches} micro' if rl_cfg.micro_batches > 1 else ''
  name = f'{rl_cfg.algorithm} update ({rl_cfg.epochs} epochs x {rl_cfg.minibatches} minibatches{micro})'
  return compile_built(p, Step('rl', name, 1, others), build)


def rl_steps(p: Planning) -> list[Step]:
  c = p.config.rl
  rows = c.batch_size * c.samples_per_prompt
  value = abstract_model(p.reward.cfg) if p.rl.value_model == 'separate' else None
  optimizer = state_lib.make_optimizer(c.learning_rate, c.iterations, c.warmup_steps)
  update = update_lib.make_update(p.policy, optimizer, p.mesh, p.rl, c.sampling.temperature or 1.0,
                                  value)
  w_state = device_bytes(jax.eval_shape(update.init), update.state_shardings)
  # the frozen reference policy; a LoRA policy started from the base model is its own reference
  # (adapters off), so nothing more stays on the chips
  own_reference = p.policy.cfg.lora_rank and 'sft' not in p.config.stages
  w_policy = 0 if own_reference else p.weights(p.reference)
  kinds = p.rl.reward_kinds  # text functions hold no weights
  scorer_weights = ((p.weights(p.frozen_reward) if 'reward_model' in kinds else 0)
                    + (p.weights(p.judge) if kinds & {'judge', 'judge_yes_no'} else 0))
  others = w_policy + scorer_weights  # the reference and the reward sources stay on the chips
  n = c.sampling.max_new_tokens
  response = (S((rows, c.prompt_length), jnp.int32), S((rows, c.prompt_length), bool),
              S((rows, n), jnp.int32), S((rows, n), bool))
  return (sampler_steps(p, 'rl', rows, c.sampling, w_state - w_policy + others,
                        c.samples_per_prompt)
          + rl_scoring_steps(p, response, w_state, w_policy, scorer_weights, value is not None)
          + [rl_update_step(p, optimizer, rows, response, others, value is not None)])


def make_plan(config: ml_collections.ConfigDict, topology: str, mfu: float = 0.4) -> Plan:
  """Compile every step of config.stages for `topology` (see the package docstring)."""
  if not 0 < mfu <= 1:
    raise UserError(f'--mfu must be in (0, 1], got {mfu}.')
  devices, chip = topology_devices(topology)
  mesh = shd.make_mesh(dict(config.mesh), devices)
  p = plan_models(config, mesh)
  models = {name: (sum(x.size for x in jax.tree.leaves(nnx.state(mod, nnx.Param))) / 1e9,
                   p.weights(mod))
            for name, mod in (('policy', p.policy), ('judge', p.judge), ('reward model', p.reward))}
  stages = set(config.stages)
  steps = []
  for stage, planner in (('label', label_steps), ('reward_model', reward_model_steps),
                         ('rl', rl_steps)):
    if stage in stages:
      steps += planner(p)
  return Plan(topology, chip, dict(mesh.shape), mfu, steps, models)
