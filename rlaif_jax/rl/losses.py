"""The per-token losses and estimators of RL: the KL penalty's estimators, PPO's clipped
policy and value losses, and the value function's explained variance.

Shapes: B responses, T response tokens; `mask` [B, T] is True for real response tokens (up to and
including the stop token). All functions are jit-friendly and free of state.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from rlaif_jax.generation.scoring import masked_mean
from rlaif_jax.infra.errors import UserError


def kl_penalty(logp: jax.Array, ref_logp: jax.Array, estimator: str = 'k1') -> jax.Array:
  """Per-token estimate of KL(policy || reference) from sampled tokens' log-probs [B, T].

  k1: logp - ref (unbiased, can be negative); k2: (logp - ref)^2 / 2; k3: exp(ref - logp) - 1 - (ref -
  logp) (unbiased and non-negative; Schulman's estimator). `abs`: |logp - ref|.
  """
  d = logp - ref_logp
  if estimator == 'k1':
    return d
  if estimator == 'k2':
    return 0.5 * jnp.square(d)
  if estimator == 'k3':
    return jnp.expm1(-d) + d
  if estimator == 'abs':
    return jnp.abs(d)
  raise UserError(f'Unknown KL estimator {estimator!r}; use k1, k2, k3 or abs.')


class PolicyLossInfo(NamedTuple):
  loss: jax.Array
  clip_fraction: jax.Array
  approx_kl: jax.Array  # k3 estimate of KL(old || new) over the batch


def policy_loss(logp: jax.Array, old_logp: jax.Array, advantages: jax.Array, mask: jax.Array,
                clip_eps: float) -> PolicyLossInfo:
  """PPO's clipped surrogate, averaged over real tokens: -min(r A, clip(r, 1 +- eps) A)."""
  log_ratio = logp - old_logp
  ratio = jnp.exp(log_ratio)
  unclipped = ratio * advantages
  clipped = jnp.clip(ratio, 1 - clip_eps, 1 + clip_eps) * advantages
  loss = masked_mean(-jnp.minimum(unclipped, clipped), mask)
  clip_fraction = masked_mean((jnp.abs(ratio - 1) > clip_eps).astype(jnp.float32), mask)
  approx_kl = masked_mean(jnp.expm1(log_ratio) - log_ratio, mask)
  return PolicyLossInfo(loss, clip_fraction, approx_kl)


def value_loss(values: jax.Array, old_values: jax.Array, returns: jax.Array, mask: jax.Array,
               clip: float) -> jax.Array:
  """Clipped value loss: 0.5 * max((v - R)^2, (clip(v, v_old +- clip) - R)^2) over real tokens."""
  clipped = old_values + jnp.clip(values - old_values, -clip, clip)
  return 0.5 * masked_mean(jnp.maximum(jnp.square(values - returns), jnp.square(clipped - returns)),
                           mask)


def explained_variance(values: jax.Array, returns: jax.Array, mask: jax.Array) -> jax.Array:
  """1 - Var(returns - values) / Var(returns) over real tokens (1 = perfect, <= 0 = useless)."""
  var = lambda x: masked_mean(jnp.square(x - masked_mean(x, mask)), mask)
  return 1.0 - var(returns - values) / jnp.maximum(var(returns), 1e-8)
