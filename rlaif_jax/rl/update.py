"""The RL update: PPO (clipped surrogate + value loss), REINFORCE with a baseline, RLOO and GRPO
(with Dr. GRPO's, DAPO's and GSPO's variants as settings) and online DPO (`rl/online_dpo.py`), as
one jitted, sharded function per algorithm that donates its state.

`make_update` returns `update(state, rollout, kl_coef, key) -> (state, metrics)`, which runs `epochs`
passes over shuffled minibatches inside one `lax.scan`. Its pieces, each a method of `Update`:
  forward / objective       the teacher-forced pass and the loss of one minibatch
  step_given_advantages     one optimizer step when advantages are known before the update
  step_with_first_values    one optimizer step when PPO's old values come from step 0's own pass
  old_values_policy         where PPO's old values come from (given, step 0, or a pass of their own)
  epochs_given_advantages / epochs_with_first_values   the scans over all minibatch steps

Shapes: B rollout rows, P prompt length, N response length; a minibatch takes B / minibatches rows.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from rlaif_jax.generation import scoring
from rlaif_jax.infra import sharding as shd
from rlaif_jax.models import lora
from rlaif_jax.models import transformer as model_lib
from rlaif_jax.rl import losses, online_dpo
from rlaif_jax.rl.advantages import advantages_and_returns
from rlaif_jax.rl.config import RLConfig, values_from_first_step
from rlaif_jax.rl.rollout import Rollout
from rlaif_jax.training import step as step_lib
from rlaif_jax.training.state import TrainState, init_state, train_state_shardings


def token_values(model: model_lib.Transformer, prompt: jax.Array, prompt_valid: jax.Array,
                 response: jax.Array, mask: jax.Array) -> jax.Array:
  """A value model's scalar head on the state before each response token: [B, N] (0 past the end).
  Only the scalar head is read, so under jit the LM head's matmul is never computed."""
  if not model.cfg.scalar_head:
    raise ValueError('The value model needs a scalar head: load it with scalar_head=True.')
  return scoring.response_forward(model, prompt, prompt_valid, response, mask).values * mask


class UpdateModels(NamedTuple):
  """The models an update trains, as (graph definition, non-parameter state); their parameters are
  the train state's params['policy'] (and params['value'])."""
  policy: tuple
  value: tuple | None  # a separate value model; None: PPO's values come from the policy's head

  @classmethod
  def split(cls, policy: model_lib.Transformer, value_model: model_lib.Transformer | None = None
            ) -> 'UpdateModels':
    def parts(m):
      graphdef, _, rest = nnx.split(m, nnx.Param, ...)
      return graphdef, rest
    return cls(parts(policy), None if value_model is None else parts(value_model))

  def policy_model(self, params: Any) -> model_lib.Transformer:
    model = nnx.merge(self.policy[0], params['policy'], self.policy[1])
    if model.cfg.lora_rank:  # only the adapters train: no gradient for the base weights
      model = nnx.merge(self.policy[0], lora.freeze_base(params['policy']), self.policy[1])
    return model

  def critic(self, params: Any) -> model_lib.Transformer:
    """The model whose scalar head gives PPO's values: the separate value model or the policy."""
    if self.value is not None:
      return nnx.merge(self.value[0], params['value'], self.value[1])
    return self.policy_model(params)


@dataclasses.dataclass(frozen=True, eq=False)  # hashed by identity, as jit needs
class Update:
  """The pieces of one update; `__call__(state, rollout, kl_coef, key)` runs them (under jit)."""
  models: UpdateModels
  optimizer: optax.GradientTransformation
  cfg: RLConfig
  temperature: float = 1.0

  # ------------------------------------------------------------------ one minibatch
  def forward(self, params: Any, mb: Rollout) -> tuple[scoring.TokenScores, jax.Array | None]:
    """Teacher-forced policy scores of the minibatch and PPO's values (None for other algorithms)."""
    policy = self.models.policy_model(params)
    s = scoring.token_scores(policy, mb.prompt, mb.prompt_valid, mb.response, mb.mask,
                             self.temperature)
    values = None
    if self.cfg.algorithm == 'ppo':  # a shared head's values come out of the policy's own pass
      values = (token_values(self.models.critic(params), mb.prompt, mb.prompt_valid, mb.response,
                             mb.mask) if self.models.value is not None else s.values)
    return s, values

  def objective(self, s: scoring.TokenScores, values: jax.Array | None, mb: Rollout,
                adv: jax.Array, returns: jax.Array, kl_coef) -> tuple[jax.Array, dict]:
    """The clipped policy loss, minus the entropy bonus, plus PPO's weighted value loss and, with
    rl.kl_in='loss', kl_coef x the KL to the reference; all aggregated as rl.loss_aggregation."""
    cfg = self.cfg
    how = cfg.aggregation
    info = losses.policy_loss(s.log_probs, mb.old_log_probs, adv, mb.mask, cfg.clip_range, how,
                              cfg.importance_ratio)
    entropy = losses.aggregate(s.entropy, mb.mask, how)
    loss = info.loss - cfg.entropy_coef * entropy
    v_loss = kl_loss = jnp.zeros(())
    if values is not None:
      v_loss = losses.value_loss(values, mb.old_values, returns, mb.mask, cfg.value_clip, how)
      loss = loss + cfg.vf_coef * v_loss
    if cfg.kl_location == 'loss':
      kl_loss = losses.aggregate(losses.kl_penalty(s.log_probs, mb.ref_log_probs, cfg.kl_kind),
                                 mb.mask, how)
      loss = loss + kl_coef * kl_loss
    return loss, {'policy_loss': info.loss, 'value_loss': v_loss, 'kl_loss': kl_loss,
                  'entropy': entropy, 'clip_fraction': info.clip_fraction,
                  'approx_kl': info.approx_kl}

  def loss_given_advantages(self, params: Any, batch: tuple, kl_coef) -> tuple[jax.Array, dict]:
    mb, adv, returns = batch
    return self.objective(*self.forward(params, mb), mb, adv, returns, kl_coef)

  def loss_with_first_values(self, params: Any, batch: tuple) -> tuple[jax.Array, tuple]:
    """The loss when the old values come from the first step: at step 0 they are this forward
    pass's values (constants to the gradient), later the ones step 0 saw; the advantages and returns
    follow from them (GAE is per row, whitening over the one minibatch: the same at every step)."""
    mb, kl_coef, old_values, first = batch
    s, values = self.forward(params, mb)
    mb = mb._replace(old_values=jnp.where(first, jax.lax.stop_gradient(values), old_values))
    adv, returns, _ = advantages_and_returns(mb, kl_coef, self.cfg)
    loss, metrics = self.objective(s, values, mb, adv, returns, kl_coef)
    return loss, (metrics, mb.old_values)

  def apply(self, state: TrainState, grads: Any, loss: jax.Array, metrics: dict
            ) -> tuple[TrainState, dict]:
    state, metrics['skipped'] = step_lib.apply_gradients(self.optimizer, state, grads, loss)
    metrics['grad_norm'] = optax.tree.norm(grads)
    return state, metrics

  def step_given_advantages(self, state: TrainState, mb: Rollout, adv: jax.Array,
                            returns: jax.Array, kl_coef) -> tuple[TrainState, dict]:
    """One optimizer step; each micro-batch counts by its share of the minibatch's aggregate (its
    tokens for a token mean, its responses for a sequence mean, its rows for a token sum)."""
    k = self.cfg.micro_batches
    weights = losses.aggregation_weights(step_lib.split_micro_batches(mb.mask, k),
                                         self.cfg.aggregation)
    (loss, metrics), grads = self.accumulated(
        lambda params, batch: self.loss_given_advantages(params, batch, kl_coef), state.params,
        (mb, adv, returns), weights)
    return self.apply(state, grads, loss, metrics)

  def step_with_first_values(self, state: TrainState, mb: Rollout, kl_coef, old_values: jax.Array,
                             first: jax.Array) -> tuple[TrainState, dict, jax.Array]:
    """One optimizer step that also returns the old values it used (step 0's own, when `first`)."""
    (loss, (metrics, seen)), grads = jax.value_and_grad(self.loss_with_first_values, has_aux=True)(
        state.params, (mb, kl_coef, old_values, first))
    state, metrics = self.apply(state, grads, loss, metrics)
    return state, metrics, seen

  # ------------------------------------------------------------------ the whole rollout
  def minibatch_order(self, key: jax.Array, rows: int) -> jax.Array:
    """Row indices [epochs * minibatches, rows / minibatches]: a fresh permutation per epoch."""
    cfg = self.cfg
    order = jnp.concatenate([jax.random.permutation(k, rows)
                             for k in jax.random.split(key, cfg.epochs)])
    return order.reshape(cfg.epochs * cfg.minibatches, rows // cfg.minibatches)

  def old_values_policy(self, r: Rollout) -> str:
    """Where PPO's old values come from: 'given' (in the rollout, or no value head), 'first_step'
    (step 0's forward pass, see `values_from_first_step`) or 'pass' (a forward pass of their own)."""
    if r.old_values is not None or self.cfg.algorithm != 'ppo':
      return 'given'
    return 'first_step' if values_from_first_step(self.cfg) else 'pass'

  def epochs_given_advantages(self, state: TrainState, r: Rollout, kl_coef, order: jax.Array):
    """Advantages first, then every minibatch step. Returns (state, step metrics, rollout, advantage
    info (adv, returns, kl))."""
    if self.old_values_policy(r) == 'pass':
      critic = self.models.critic(state.params)
      r = r._replace(old_values=token_values(critic, r.prompt, r.prompt_valid, r.response, r.mask))
    elif r.old_values is None:
      r = r._replace(old_values=jnp.zeros_like(r.old_log_probs))  # unused without a value head
    adv, returns, kl = advantages_and_returns(r, kl_coef, self.cfg)

    def step(carry, xs):
      state, old_values = carry
      _, idx = xs
      take = lambda x: jnp.take(x, idx, axis=0)
      state, metrics = self.step_given_advantages(state, jax.tree.map(take, r), take(adv),
                                                  take(returns), kl_coef)
      return (state, old_values), metrics

    (state, _), metrics = jax.lax.scan(step, (state, r.old_values),
                                       (jnp.arange(order.shape[0]), order))
    return state, metrics, r, (adv, returns, kl)

  def epochs_with_first_values(self, state: TrainState, r: Rollout, kl_coef, order: jax.Array):
    """Every minibatch step, step 0 taking the rows in rollout order and setting the old values that
    the later steps (and the advantages) use. Returns as `epochs_given_advantages`."""
    order = order.at[0].set(jnp.arange(r.scores.shape[0]))  # one minibatch: the order is free

    def step(carry, xs):
      state, old_values = carry
      i, idx = xs
      take = lambda x: jnp.take(x, idx, axis=0)
      state, metrics, seen = self.step_with_first_values(
          state, jax.tree.map(take, r), kl_coef, take(old_values), i == 0)
      return (state, jnp.where(i == 0, seen, old_values)), metrics  # step 0's rows are in order

    (state, old_values), metrics = jax.lax.scan(
        step, (state, jnp.zeros_like(r.old_log_probs)), (jnp.arange(order.shape[0]), order))
    r = r._replace(old_values=old_values)
    return state, metrics, r, advantages_and_returns(r, kl_coef, self.cfg)

  def summary(self, metrics: dict, r: Rollout, returns: jax.Array, kl: jax.Array) -> dict:
    """Step metrics averaged over the update (skipped steps counted), and the rollout's own."""
    skipped = jnp.sum(metrics.pop('skipped'))
    metrics = jax.tree.map(jnp.mean, metrics)
    metrics['skipped'] = skipped  # minibatch steps left out for a non-finite loss or gradient
    metrics.update(score=jnp.mean(r.scores), kl=jnp.mean(jnp.sum(kl * r.mask, axis=1)),
                   response_length=jnp.mean(jnp.sum(r.mask, axis=1)))
    if self.cfg.algorithm == 'ppo':
      metrics['explained_variance'] = losses.explained_variance(r.old_values, returns, r.mask)
    return metrics

  def accumulated(self, fn, params: Any, batch: Any, weights: jax.Array):
    """`value_and_grad(fn, has_aux=True)(params, batch)` accumulated over rl.micro_batches slices."""
    return step_lib.accumulated_value_and_grad(fn, params, batch, self.cfg.micro_batches, weights)

  def __call__(self, state: TrainState, r: Rollout, kl_coef, key: jax.Array):
    if self.cfg.algorithm == 'online_dpo':  # steps over pairs, DPO's loss (rl/online_dpo.py)
      order = self.minibatch_order(key, r.scores.shape[0] // 2)
      state, metrics, r, (_, returns, kl) = online_dpo.epochs(self, state, r, order)
      return state, self.summary(metrics, r, returns, kl)
    order = self.minibatch_order(key, r.scores.shape[0])
    epochs = (self.epochs_with_first_values if self.old_values_policy(r) == 'first_step'
              else self.epochs_given_advantages)
    state, metrics, r, (_, returns, kl) = epochs(state, r, kl_coef, order)
    return state, self.summary(metrics, r, returns, kl)


def check_models(model: model_lib.Transformer, cfg: RLConfig,
                 value_model: model_lib.Transformer | None) -> bool:
  """Whether PPO trains a separate value model; a clear error for a combination that cannot run."""
  separate = cfg.algorithm == 'ppo' and cfg.value_model == 'separate'
  if separate and value_model is None:
    raise ValueError("rl.value_model='separate' needs a value model (value_model=...).")
  if cfg.algorithm == 'ppo' and not separate and not model.cfg.scalar_head:
    raise ValueError("PPO with rl.value_model='shared' needs the policy loaded with scalar_head=True "
                     "(or set rl.value_model='separate').")
  return separate


def make_update(model: model_lib.Transformer, optimizer: optax.GradientTransformation,
                mesh: jax.sharding.Mesh, cfg: RLConfig, temperature: float = 1.0,
                value_model: model_lib.Transformer | None = None):
  """`update(state, rollout, kl_coef, key) -> (state, metrics)`, jitted, sharded, donating state.

  state.params is {'policy': ...} or, with rl.value_model='separate', {'policy': ..., 'value': ...}
  (both trained by one optimizer, as in TRL's PolicyAndValueWrapper); `value_model` is ignored
  otherwise. A PPO rollout whose old_values is None gets them inside the update (`Update.
  old_values_policy`). `update.init()` is the initial train state, sharded as the update expects."""
  separate = check_models(model, cfg, value_model)
  models = {'policy': model, **({'value': value_model} if separate else {})}
  if model.cfg.lora_rank:  # moments and updates for the policy's adapters (and a value model)
    optimizer = lora.only_adapters(optimizer, lambda n: lora.trains(n)
                                   or not models[n.split('/')[0]].cfg.lora_rank)
  update = Update(UpdateModels.split(model, value_model if separate else None), optimizer, cfg,
                  temperature)
  state_sh = train_state_shardings(models, optimizer, mesh)
  repl = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  batch = jax.sharding.NamedSharding(
      mesh, shd.logical_to_spec(('batch',), model.cfg.logical_axis_rules, None, mesh))
  shardings = (state_sh, batch, repl, repl)
  jitted = shd.on_mesh(jax.jit(update, in_shardings=shardings, out_shardings=(state_sh, repl),
                               donate_argnums=(0,)), mesh, shardings)

  devices = shd.batch_shards(mesh, model.cfg.logical_axis_rules)

  def call(state, rollout, kl_coef, key):
    cfg.check_batch(rollout.scores.shape[0], devices)
    return jitted(state, rollout, jnp.asarray(kl_coef, jnp.float32), key)

  call.jitted = jitted.jitted
  call.init = lambda: jax.device_put(init_state(models, optimizer), state_sh)
  call.state_shardings = state_sh  # of the optimizer the update uses (LoRA: adapters' moments only)
  return call
