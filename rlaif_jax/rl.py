"""The RL update: PPO (clipped surrogate + value head on a shared trunk), REINFORCE with a baseline,
and RLOO, as one jitted, sharded function per algorithm that donates its state.

A rollout batch holds left-padded prompts, sampled responses, their log-probs under the policy that
sampled them, the reference policy's log-probs and a sequence score per response. `make_update`
returns `update(state, rollout, kl_coef, key) -> (state, metrics)` that runs `epochs` passes over
shuffled minibatches inside one `lax.scan`.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from rlaif_jax import model as model_lib
from rlaif_jax import ppo, sampling
from rlaif_jax import sharding as shd
from rlaif_jax.reward_model import TrainState, init_state, train_state_shardings

ALGORITHMS = ('ppo', 'reinforce', 'rloo')


@dataclasses.dataclass(frozen=True)
class RLConfig:
  algorithm: str = 'ppo'  # ppo | reinforce | rloo
  epochs: int = 2  # passes over each rollout batch
  minibatches: int = 2  # per epoch
  clip_eps: float = 0.2
  value_clip: float = 0.2
  vf_coef: float = 0.5
  entropy_coef: float = 0.0
  gamma: float = 1.0
  lam: float = 0.95
  kl_estimator: str = 'k1'
  whiten_advantages: bool = True
  samples_per_prompt: int = 1  # RLOO needs >= 2 (rows of one prompt are adjacent)

  def __post_init__(self):
    if self.algorithm not in ALGORITHMS:
      raise ValueError(f'Unknown rl.algorithm {self.algorithm!r}; choose one of {ALGORITHMS}.')
    if self.algorithm == 'rloo' and self.samples_per_prompt < 2:
      raise ValueError('rl.algorithm=rloo needs rl.samples_per_prompt >= 2 (the leave-one-out '
                       'baseline averages the other samples of the same prompt).')


class Rollout(NamedTuple):
  prompt: jax.Array  # [B, P] left-padded
  prompt_valid: jax.Array  # [B, P]
  response: jax.Array  # [B, N]
  mask: jax.Array  # [B, N]
  old_log_probs: jax.Array  # [B, N] under the sampling policy
  ref_log_probs: jax.Array  # [B, N] under the frozen reference
  old_values: jax.Array  # [B, N] value head at sampling time (zeros without PPO)
  scores: jax.Array  # [B] sequence scores (reward model, judge, or a programmatic reward)


def sequence_advantages(scores: jax.Array, cfg: RLConfig) -> jax.Array:
  """REINFORCE (batch-mean baseline) and RLOO (leave-one-out over a prompt's samples): [B] -> [B]."""
  if cfg.algorithm == 'rloo':
    k = cfg.samples_per_prompt
    s = scores.reshape(-1, k)
    return (s - (s.sum(axis=1, keepdims=True) - s) / (k - 1)).reshape(-1)
  return scores - jnp.mean(scores)


def advantages_and_returns(r: Rollout, kl_coef, cfg: RLConfig):
  """Per-token advantages and value targets; the KL penalty enters the rewards for every algorithm."""
  kl = ppo.kl_penalty(r.old_log_probs, r.ref_log_probs, cfg.kl_estimator)
  if cfg.algorithm == 'ppo':
    rewards = ppo.token_rewards(r.scores, kl, r.mask, kl_coef)
    adv, returns = ppo.gae(rewards, r.old_values, r.mask, cfg.gamma, cfg.lam)
  else:  # sequence-level: score minus the KL of the whole response, with a baseline
    seq = r.scores - kl_coef * jnp.sum(kl * r.mask, axis=1)
    adv = sequence_advantages(seq, cfg)[:, None] * r.mask
    returns = jnp.zeros_like(adv)
  if cfg.whiten_advantages:
    adv = ppo.whiten(adv, r.mask)
  return adv, returns, kl


def make_update(model: model_lib.Transformer, optimizer: optax.GradientTransformation,
                mesh: jax.sharding.Mesh, cfg: RLConfig, temperature: float = 1.0):
  """`update(state, rollout, kl_coef, key) -> (state, metrics)`, jitted, sharded, donating state."""
  graphdef, _, rest = nnx.split(model, nnx.Param, ...)

  def loss_fn(params, mb: Rollout, adv, returns):
    policy = nnx.merge(graphdef, params, rest)
    s = sampling.score(policy, mb.prompt, mb.prompt_valid, mb.response, mb.mask, temperature)
    info = ppo.policy_loss(s.log_probs, mb.old_log_probs, adv, mb.mask, cfg.clip_eps)
    entropy = ppo.masked_mean(s.entropy, mb.mask)
    loss = info.loss - cfg.entropy_coef * entropy
    v_loss = jnp.zeros(())
    if cfg.algorithm == 'ppo':
      v_loss = ppo.value_loss(s.values, mb.old_values, returns, mb.mask, cfg.value_clip)
      loss = loss + cfg.vf_coef * v_loss
    return loss, {'policy_loss': info.loss, 'value_loss': v_loss, 'entropy': entropy,
                  'clip_fraction': info.clip_fraction, 'approx_kl': info.approx_kl}

  def update(state: TrainState, r: Rollout, kl_coef, key):
    adv, returns, kl = advantages_and_returns(r, kl_coef, cfg)
    b = r.scores.shape[0]
    size = b // cfg.minibatches
    order = jnp.concatenate([jax.random.permutation(k, b) for k in jax.random.split(key, cfg.epochs)])
    order = order.reshape(cfg.epochs * cfg.minibatches, size)

    def step(state, idx):
      take = lambda x: jnp.take(x, idx, axis=0)
      mb = jax.tree.map(take, r)
      grads, metrics = jax.grad(loss_fn, has_aux=True)(state.params, mb, take(adv), take(returns))
      updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
      metrics['grad_norm'] = optax.tree.norm(grads)
      return TrainState(optax.apply_updates(state.params, updates), opt_state, state.step + 1), metrics

    state, metrics = jax.lax.scan(step, state, order)
    metrics = jax.tree.map(jnp.mean, metrics)
    seq_kl = jnp.sum(kl * r.mask, axis=1)
    metrics.update(score=jnp.mean(r.scores), kl=jnp.mean(seq_kl),
                   response_length=jnp.mean(jnp.sum(r.mask, axis=1)))
    return state, metrics

  rules = model.cfg.logical_axis_rules
  state_sh = train_state_shardings(model, optimizer, mesh)
  repl = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  batch = jax.sharding.NamedSharding(mesh, shd.logical_to_spec(('batch',), rules, None, mesh))
  jitted = shd.on_mesh(jax.jit(update, in_shardings=(state_sh, batch, repl, repl),
                               out_shardings=(state_sh, repl), donate_argnums=(0,)), mesh)

  def call(state, rollout, kl_coef, key):
    return jitted(state, rollout, jnp.asarray(kl_coef, jnp.float32), key)

  call.jitted = jitted.jitted
  call.init = lambda: jax.device_put(init_state(model, optimizer), state_sh)
  return call
