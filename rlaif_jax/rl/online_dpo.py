"""Online DPO with the judge in the loop (Guo et al. 2024, "Direct Language Model Alignment from
Online AI Feedback"): each iteration the policy samples two responses per prompt, they are labeled
(from their two scores, or by the judge's debiased preference of the pair), and DPO steps follow
on those pairs, the frozen reference's log-probs taken from the rollout. No reward model, no value
model.

Rows 2i and 2i + 1 of a rollout are prompt i's pair; the update works on [pairs, 2, ...] so that
minibatches and micro-batches (and the devices they are split over) always hold whole pairs.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from rlaif_jax.generation import scoring
from rlaif_jax.rl.config import RLConfig
from rlaif_jax.rl.losses import kl_penalty
from rlaif_jax.rl.rollout import Rollout
from rlaif_jax.training import dpo


def dpo_config(cfg: RLConfig) -> dpo.DPOConfig:
  return dpo.DPOConfig(beta=cfg.dpo_beta, loss=cfg.dpo_loss, labels=cfg.dpo_labels)


def pairs(r: Rollout) -> Rollout:
  """[B, ...] rows -> [B / 2, 2, ...] pairs (None fields stay None)."""
  return jax.tree.map(lambda x: x.reshape(-1, 2, *x.shape[1:]), r)


def rows(x: jax.Array) -> jax.Array:
  """[b, 2, ...] -> [2b, ...]."""
  return x.reshape(-1, *x.shape[2:])


def preference_targets(scores: jax.Array, cfg: RLConfig) -> jax.Array:
  """P(first of the pair better) [b] from the pairs' scores [b, 2]: the judge's pairwise soft label
  stored as the first score (rl.preference='pairwise'), or s((s_a - s_b) / temperature)."""
  if cfg.preference == 'pairwise':
    return scores[:, 0]
  return jax.nn.sigmoid((scores[:, 0] - scores[:, 1]) / cfg.preference_temperature)


def loss(model, mb: Rollout, cfg: RLConfig, temperature: float = 1.0) -> tuple[jax.Array, dict]:
  """The DPO loss of a minibatch of pairs [b, 2, ...]: the policy's summed log-probs of both
  responses (one forward pass over 2b rows) against the rollout's reference log-probs, both under
  softmax(logits / temperature): the temperature the reference was scored at (the sampling one, see
  rl/loop.py), so a policy equal to its reference has a zero margin on every pair."""
  mask = rows(mb.mask)
  s = scoring.token_scores(model, rows(mb.prompt), rows(mb.prompt_valid), rows(mb.response), mask,
                           temperature)
  pi = jnp.sum(s.log_probs * mask, axis=1).reshape(-1, 2)
  ref = jnp.sum(mb.ref_log_probs * mb.mask, axis=2)
  h = (pi[:, 0] - ref[:, 0]) - (pi[:, 1] - ref[:, 1])
  p = preference_targets(mb.scores, cfg)
  d = dpo_config(cfg)
  value = dpo.preference_loss(h, dpo.targets(p, d), d)
  decided = (p != 0.5).astype(jnp.float32)
  agree = ((h > 0) == (p > 0.5)).astype(jnp.float32)
  return value, {'dpo_loss': value, 'entropy': scoring.masked_mean(s.entropy, mask),
                 'preference_accuracy': jnp.sum(agree * decided) / jnp.maximum(jnp.sum(decided), 1),
                 'reward_margin': d.beta * jnp.mean(jnp.where(p >= 0.5, h, -h)),
                 'label_confidence': jnp.mean(jnp.abs(p - 0.5) * 2)}


def epochs(update: Any, state: Any, r: Rollout, order: jax.Array):
  """Every minibatch step over the rollout's pairs (`order` indexes pairs). Returns as
  `Update.epochs_given_advantages`; there are no returns, and the KL is the rollout's own."""
  cfg = update.cfg
  r = r._replace(old_values=None)
  paired = pairs(r)

  def step(state, idx):
    mb = jax.tree.map(lambda x: jnp.take(x, idx, axis=0), paired)
    weights = jnp.full((cfg.micro_batches,), 1.0 / cfg.micro_batches)  # a mean over equal pairs
    (value, metrics), grads = update.accumulated(
        lambda params, b: loss(update.models.policy_model(params), b, cfg, update.temperature),
        state.params, mb, weights)
    return update.apply(state, grads, value, metrics)

  state, metrics = jax.lax.scan(step, state, order)
  kl = kl_penalty(r.old_log_probs, r.ref_log_probs, cfg.kl_kind)
  return state, metrics, r, (None, jnp.zeros_like(kl), kl)
