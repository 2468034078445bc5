"""Direct preference optimisation from AI labels: DPO, IPO, and the soft-label form that takes the
judge's probability as its target.

With h = (log pi(a) - log ref(a)) - (log pi(b) - log ref(b)) (sequence log-probs of the two
responses to one prompt) and p the target probability that a is better:
  sigmoid (DPO):  -(p log s(beta h) + (1 - p) log s(-beta h))
                  soft labels: p is the judge's debiased probability; hard labels: p in {0, 1};
                  conservative DPO (label smoothing e): p in {e, 1 - e}
  ipo:            p (h - 1 / (2 beta))^2 + (1 - p) (h + 1 / (2 beta))^2
                  (IPO's squared loss for whichever side is preferred, weighed by p; hard labels
                  give IPO itself, and its minimiser is h = (2p - 1) / (2 beta))
The reference log-probs are computed once, before training, and travel with the batch.

Batches are the RL rollout's layout (left-padded prompt [B, P], right-padded responses [B, N]); both
responses go through the policy in one forward pass over 2B rows.
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
from rlaif_jax.infra.errors import UserError
from rlaif_jax.models import transformer as model_lib
from rlaif_jax.training import step as step_lib

LOSSES = ('sigmoid', 'ipo')
LABELS = ('soft', 'hard')


@dataclasses.dataclass(frozen=True)
class DPOConfig:
  beta: float = 0.1
  loss: str = 'sigmoid'  # sigmoid (DPO) | ipo
  labels: str = 'soft'  # soft: the judge's probability; hard: the side it prefers
  label_smoothing: float = 0.0  # hard labels become {e, 1 - e} (conservative DPO)

  def __post_init__(self):
    if self.loss not in LOSSES:
      raise UserError(f'Unknown dpo.loss {self.loss!r}; choose one of {LOSSES}.')
    if self.labels not in LABELS:
      raise UserError(f'Unknown dpo.labels {self.labels!r}; choose one of {LABELS}.')
    if self.beta <= 0:
      raise UserError(f'dpo.beta must be > 0, got {self.beta}.')
    if not 0 <= self.label_smoothing < 0.5:
      raise UserError(f'dpo.label_smoothing must be in [0, 0.5), got {self.label_smoothing}.')


class PreferenceBatch(NamedTuple):
  """Pairs of responses to the same prompts, their target P(a better) and reference log-probs."""
  prompt: Any  # [B, P] left-padded
  prompt_valid: Any
  response_a: Any  # [B, N] right-padded
  mask_a: Any
  response_b: Any
  mask_b: Any
  p_a: Any  # [B] the label's probability that a is better
  ref_a: Any  # [B] sum of the reference's log-probs of response a (0 until computed)
  ref_b: Any


def targets(p_a: jax.Array, cfg: DPOConfig) -> jax.Array:
  """The target P(a better): the soft label, or the hard one (ties stay 0.5) smoothed by e."""
  if cfg.labels == 'soft':
    return p_a
  e = cfg.label_smoothing
  return jnp.where(p_a > 0.5, 1.0 - e, jnp.where(p_a < 0.5, e, 0.5))


def preference_loss(h: jax.Array, p: jax.Array, cfg: DPOConfig) -> jax.Array:
  """Mean loss over pairs of the log-ratio margins h [B] against targets p [B] (module docstring)."""
  if cfg.loss == 'sigmoid':
    z = cfg.beta * h
    return jnp.mean(-(p * jax.nn.log_sigmoid(z) + (1 - p) * jax.nn.log_sigmoid(-z)))
  c = 1.0 / (2.0 * cfg.beta)
  return jnp.mean(p * jnp.square(h - c) + (1 - p) * jnp.square(h + c))


def pair_log_probs(model: model_lib.Transformer, b: PreferenceBatch) -> tuple[jax.Array, jax.Array]:
  """Summed log-probs of response a and of response b [B] each, one forward pass over 2B rows."""
  prompt = jnp.concatenate([b.prompt, b.prompt])
  valid = jnp.concatenate([b.prompt_valid, b.prompt_valid])
  response = jnp.concatenate([b.response_a, b.response_b])
  mask = jnp.concatenate([b.mask_a, b.mask_b])
  s = scoring.token_scores(model, prompt, valid, response, mask)
  a, b = jnp.split(jnp.sum(s.log_probs * mask, axis=1), 2)
  return a, b


def margins(model: model_lib.Transformer, b: PreferenceBatch) -> jax.Array:
  """h = (log pi(a) - ref(a)) - (log pi(b) - ref(b)) per pair [B]."""
  pi_a, pi_b = pair_log_probs(model, b)
  return (pi_a - b.ref_a) - (pi_b - b.ref_b)


def dpo_loss(model: model_lib.Transformer, b: PreferenceBatch, cfg: DPOConfig):
  h = margins(model, b)
  p = targets(b.p_a, cfg)
  loss = preference_loss(h, p, cfg)
  decided = (b.p_a != 0.5).astype(jnp.float32)
  agree = ((h > 0) == (b.p_a > 0.5)).astype(jnp.float32)
  return loss, {'loss': loss, 'accuracy': jnp.sum(agree * decided) / jnp.maximum(jnp.sum(decided), 1),
                'reward_margin': cfg.beta * jnp.mean(jnp.where(b.p_a >= 0.5, h, -h))}


def make_train_step(model: model_lib.Transformer, optimizer: optax.GradientTransformation,
                    mesh: jax.sharding.Mesh, cfg: DPOConfig, micro_batches: int = 1):
  """Jitted, sharded, donating DPO step (see `step.make_train_step`)."""
  return step_lib.make_train_step(model, optimizer, mesh, lambda m, b: dpo_loss(m, b, cfg),
                                  micro_batches)


def make_log_prob_fn(model: model_lib.Transformer, mesh: jax.sharding.Mesh):
  """Jitted `fn(params, batch) -> (log pi(a), log pi(b))` [B] each: the reference pass before
  training (with the reference's parameters) and held-out margins after it."""
  graphdef, _, rest = nnx.split(model, nnx.Param, ...)
  _, batch, _ = shd.model_shardings(model, mesh)
  params_sh = shd.state_shardings(nnx.state(model, nnx.Param), mesh, model.cfg.logical_axis_rules)
  fn = jax.jit(lambda params, b: pair_log_probs(nnx.merge(graphdef, params, rest), b),
               in_shardings=(params_sh, batch), out_shardings=(batch, batch))
  return shd.on_mesh(fn, mesh, (params_sh, batch))
