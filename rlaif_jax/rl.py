"""The RL update: PPO (clipped surrogate + value head on a shared trunk), REINFORCE with a baseline,
and RLOO, as one jitted, sharded function per algorithm that donates its state.

A rollout batch holds left-padded prompts, sampled responses, their log-probs under the policy that
sampled them, the reference policy's log-probs and a sequence score per response (and, optionally,
PPO's old values). `make_update` returns `update(state, rollout, kl_coef, key) -> (state, metrics)`
that runs `epochs` passes over shuffled minibatches inside one `lax.scan`.
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
from rlaif_jax import train
from rlaif_jax.train import TrainState, apply_gradients, init_state, train_state_shardings

ALGORITHMS = ('ppo', 'reinforce', 'rloo')
REWARDS = ('reward_model', 'judge')


@dataclasses.dataclass(frozen=True)
class RLConfig:
  algorithm: str = 'ppo'  # ppo | reinforce | rloo
  epochs: int = 2  # passes over each rollout batch
  minibatches: int = 2  # per epoch
  micro_batches: int = 1  # gradient accumulation: slices of each minibatch, one at a time
  clip_eps: float = 0.2
  value_clip: float = 0.2
  vf_coef: float = 0.5
  entropy_coef: float = 0.0
  gamma: float = 1.0
  lam: float = 0.95
  kl_estimator: str = 'k1'
  whiten_advantages: bool = True
  samples_per_prompt: int = 1  # RLOO needs >= 2 (rows of one prompt are adjacent)
  value_model: str = 'shared'  # PPO's value head: 'shared' (policy trunk) or 'separate' (own model)
  kl_coef: float = 0.05  # the starting (or fixed) coefficient of the per-token KL penalty
  kl_target: float = 0.0  # > 0: adaptive controller moves kl_coef so the sequence KL nears this
  kl_horizon: float = 10000.0  # the controller's horizon (in samples)
  missing_eos_penalty: float = 0.0  # subtracted from the score of a response that never stopped
  reward: str = 'reward_model'  # the score: 'reward_model' (canonical RLAIF) or 'judge' (d-RLAIF)

  def __post_init__(self):
    if self.algorithm not in ALGORITHMS:
      raise ValueError(f'Unknown rl.algorithm {self.algorithm!r}; choose one of {ALGORITHMS}.')
    if self.reward not in REWARDS:
      raise ValueError(f'Unknown rl.reward {self.reward!r}; choose one of {REWARDS}.')
    if self.value_model not in ('shared', 'separate'):
      raise ValueError(f"Unknown rl.value_model {self.value_model!r}; use 'shared' or 'separate'.")
    if min(self.epochs, self.minibatches, self.micro_batches) < 1:
      raise ValueError(f'rl.epochs, rl.minibatches and rl.micro_batches must be >= 1, got '
                       f'{self.epochs}, {self.minibatches}, {self.micro_batches}.')
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
  old_values: jax.Array | None  # [B, N] values before the update; None: the update computes them
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


def token_values(model: model_lib.Transformer, prompt: jax.Array, prompt_valid: jax.Array,
                 response: jax.Array, mask: jax.Array) -> jax.Array:
  """A value model's scalar head on the state before each response token: [B, N] (0 past the end).
  Only the scalar head is read, so under jit the LM head's matmul is never computed."""
  if not model.cfg.scalar_head:
    raise ValueError('The value model needs a scalar head: load it with scalar_head=True.')
  return sampling.response_forward(model, prompt, prompt_valid, response, mask).values * mask


def explained_variance(values: jax.Array, returns: jax.Array, mask: jax.Array) -> jax.Array:
  """1 - Var(returns - values) / Var(returns) over real tokens (1 = perfect, <= 0 = useless)."""
  var = lambda x: ppo.masked_mean(jnp.square(x - ppo.masked_mean(x, mask)), mask)
  return 1.0 - var(returns - values) / jnp.maximum(var(returns), 1e-8)


def values_from_first_step(cfg: RLConfig) -> bool:
  """Whether a PPO update left to find the old values takes them from its first step's own forward
  pass: with one minibatch of the whole rollout (and no micro-batches) that step runs the value
  model on exactly the inputs and parameters the old values come from, so a separate pass would
  only repeat it. Otherwise the update runs a forward pass for them first."""
  return cfg.algorithm == 'ppo' and cfg.minibatches == 1 and cfg.micro_batches == 1


def make_update(model: model_lib.Transformer, optimizer: optax.GradientTransformation,
                mesh: jax.sharding.Mesh, cfg: RLConfig, temperature: float = 1.0,
                value_model: model_lib.Transformer | None = None):
  """`update(state, rollout, kl_coef, key) -> (state, metrics)`, jitted, sharded, donating state.

  state.params is {'policy': ...} or, with rl.value_model='separate', {'policy': ..., 'value': ...}
  (both trained by one optimizer, as in TRL's PolicyAndValueWrapper). A PPO rollout whose old_values
  is None gets them inside the update: from the first step's forward pass when one minibatch takes
  the whole rollout without micro-batches (no extra pass), else from a forward pass of its own."""
  separate = cfg.algorithm == 'ppo' and cfg.value_model == 'separate'
  if separate and value_model is None:
    raise ValueError("rl.value_model='separate' needs a value model (value_model=...).")
  if cfg.algorithm == 'ppo' and not separate and not model.cfg.scalar_head:
    raise ValueError("PPO with rl.value_model='shared' needs the policy loaded with scalar_head=True "
                     "(or set rl.value_model='separate').")
  models = {'policy': model, **({'value': value_model} if separate else {})}
  graphdef, _, rest = nnx.split(model, nnx.Param, ...)
  if separate:
    v_graphdef, _, v_rest = nnx.split(value_model, nnx.Param, ...)
  first_step_values = values_from_first_step(cfg)

  def critic(params):
    """The model whose scalar head gives PPO's values: the separate value model or the policy."""
    if separate:
      return nnx.merge(v_graphdef, params['value'], v_rest)
    return nnx.merge(graphdef, params['policy'], rest)

  def forward(params, mb):
    """Teacher-forced policy scores of the minibatch and the value model's values (None w/o PPO)."""
    policy = nnx.merge(graphdef, params['policy'], rest)
    s = sampling.score(policy, mb.prompt, mb.prompt_valid, mb.response, mb.mask, temperature)
    values = None
    if cfg.algorithm == 'ppo':  # a shared head's values come out of the policy's own pass
      values = (token_values(critic(params), mb.prompt, mb.prompt_valid, mb.response, mb.mask)
                if separate else s.values)
    return s, values

  def objective(s, values, mb, adv, returns):
    info = ppo.policy_loss(s.log_probs, mb.old_log_probs, adv, mb.mask, cfg.clip_eps)
    entropy = ppo.masked_mean(s.entropy, mb.mask)
    loss = info.loss - cfg.entropy_coef * entropy
    v_loss = jnp.zeros(())
    if values is not None:
      v_loss = ppo.value_loss(values, mb.old_values, returns, mb.mask, cfg.value_clip)
      loss = loss + cfg.vf_coef * v_loss
    return loss, {'policy_loss': info.loss, 'value_loss': v_loss, 'entropy': entropy,
                  'clip_fraction': info.clip_fraction, 'approx_kl': info.approx_kl}

  def loss_fn(params, batch):
    mb, adv, returns = batch
    return objective(*forward(params, mb), mb, adv, returns)

  def first_values_loss_fn(params, batch):
    """loss_fn for an update that takes the old values from its first step: at step 0 they are this
    forward pass's values (constants to the gradient), later the ones step 0 saw; the advantages
    and returns follow from them (GAE is per row, whitening over the one minibatch: the same at
    every step)."""
    mb, kl_coef, old_values, first = batch
    s, values = forward(params, mb)
    mb = mb._replace(old_values=jnp.where(first, jax.lax.stop_gradient(values), old_values))
    adv, returns, _ = advantages_and_returns(mb, kl_coef, cfg)
    loss, metrics = objective(s, values, mb, adv, returns)
    return loss, (metrics, mb.old_values)

  def old_values_pass(params, r):
    """The value model's values on the whole rollout (a forward pass only), for updates that do not
    take them from their first step."""
    return token_values(critic(params), r.prompt, r.prompt_valid, r.response, r.mask)

  def update(state: TrainState, r: Rollout, kl_coef, key):
    b = r.scores.shape[0]
    size = b // cfg.minibatches
    order = jnp.concatenate([jax.random.permutation(k, b) for k in jax.random.split(key, cfg.epochs)])
    order = order.reshape(cfg.epochs * cfg.minibatches, size)
    from_first_step = first_step_values and r.old_values is None
    if from_first_step:  # step 0 takes the rows in order (one minibatch: the order does not matter)
      order = order.at[0].set(jnp.arange(b))
      old_values = jnp.zeros_like(r.old_log_probs)  # set by step 0
    else:
      if cfg.algorithm == 'ppo' and r.old_values is None:
        r = r._replace(old_values=old_values_pass(state.params, r))
      elif r.old_values is None:
        r = r._replace(old_values=jnp.zeros_like(r.old_log_probs))  # unused without a value head
      adv, returns, kl = advantages_and_returns(r, kl_coef, cfg)
      old_values = r.old_values

    def step(carry, xs):
      state, old_values = carry
      i, idx = xs
      take = lambda x: jnp.take(x, idx, axis=0)
      mb = jax.tree.map(take, r)
      if from_first_step:
        (loss, (metrics, seen)), grads = jax.value_and_grad(first_values_loss_fn, has_aux=True)(
            state.params, (mb, kl_coef, take(old_values), i == 0))
        old_values = jnp.where(i == 0, seen, old_values)  # step 0's rows are in rollout order
      else:
        # the losses are token means: each micro-batch counts by its share of the tokens
        tokens = jnp.sum(train.split_micro_batches(mb.mask, cfg.micro_batches), axis=(1, 2))
        (loss, metrics), grads = train.accumulated_value_and_grad(
            loss_fn, state.params, (mb, take(adv), take(returns)), cfg.micro_batches,
            tokens / jnp.maximum(jnp.sum(tokens), 1))
      state, metrics['skipped'] = apply_gradients(optimizer, state, grads, loss)
      metrics['grad_norm'] = optax.tree.norm(grads)
      return (state, old_values), metrics

    (state, old_values), metrics = jax.lax.scan(step, (state, old_values),
                                                (jnp.arange(order.shape[0]), order))
    if from_first_step:
      r = r._replace(old_values=old_values)
      adv, returns, kl = advantages_and_returns(r, kl_coef, cfg)
    skipped = jnp.sum(metrics.pop('skipped'))
    metrics = jax.tree.map(jnp.mean, metrics)
    metrics['skipped'] = skipped  # minibatch steps left out for a non-finite loss or gradient
    seq_kl = jnp.sum(kl * r.mask, axis=1)
    metrics.update(score=jnp.mean(r.scores), kl=jnp.mean(seq_kl),
                   response_length=jnp.mean(jnp.sum(r.mask, axis=1)))
    if cfg.algorithm == 'ppo':
      metrics['explained_variance'] = explained_variance(r.old_values, returns, r.mask)
    return state, metrics

  rules = model.cfg.logical_axis_rules
  state_sh = train_state_shardings(models, optimizer, mesh)
  repl = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  batch = jax.sharding.NamedSharding(mesh, shd.logical_to_spec(('batch',), rules, None, mesh))
  shardings = (state_sh, batch, repl, repl)
  jitted = shd.on_mesh(jax.jit(update, in_shardings=shardings, out_shardings=(state_sh, repl),
                               donate_argnums=(0,)), mesh, shardings)

  def call(state, rollout, kl_coef, key):
    return jitted(state, rollout, jnp.asarray(kl_coef, jnp.float32), key)

  call.jitted = jitted.jitted
  call.init = lambda: jax.device_put(init_state(models, optimizer), state_sh)
  return call
