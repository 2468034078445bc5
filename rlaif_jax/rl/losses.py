"""The per-token losses and estimators of RL: the KL penalty's estimators, the clipped policy loss
(PPO, GRPO, DAPO's decoupled clip, GSPO's sequence ratio) and value loss, how per-token losses are
aggregated, and the value function's explained variance.

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


def aggregate(x: jax.Array, mask: jax.Array, how: str = 'token_mean') -> jax.Array:
  """A per-token loss [B, T] as one number: the mean over real tokens ('token_mean'), the mean over
  responses of each one's token mean ('sequence_mean'; responses without tokens are left out), or
  the sum over real tokens divided by B x T, T the response budget ('token_sum', Dr. GRPO)."""
  if how == 'token_mean':
    return masked_mean(x, mask)
  if how == 'sequence_mean':
    return masked_mean(masked_mean(x, mask, axis=1), jnp.any(mask, axis=1))
  if how == 'token_sum':
    return jnp.sum(x * mask) / mask.size
  raise UserError(f'Unknown loss aggregation {how!r}; use token_mean, sequence_mean or token_sum.')


def aggregation_weights(mask: jax.Array, how: str) -> jax.Array:
  """Each micro-batch's share of `aggregate` over the whole minibatch: mask [k, B / k, T] -> [k]."""
  if how == 'token_mean':
    counts = jnp.sum(mask, axis=(1, 2))
  elif how == 'sequence_mean':
    counts = jnp.sum(jnp.any(mask, axis=2), axis=1)
  else:
    counts = jnp.ones(mask.shape[:1], jnp.int32)  # every row counts the same
  counts = counts.astype(jnp.float32)
  return counts / jnp.maximum(jnp.sum(counts), 1.0)


class PolicyLossInfo(NamedTuple):
  loss: jax.Array
  clip_fraction: jax.Array
  approx_kl: jax.Array  # k3 estimate of KL(old || new) over the batch


def policy_loss(logp: jax.Array, old_logp: jax.Array, advantages: jax.Array, mask: jax.Array,
                clip_eps: float | tuple[float, float], aggregation: str = 'token_mean',
                ratio: str = 'token') -> PolicyLossInfo:
  """The clipped surrogate -min(r A, clip(r, 1 - eps_low, 1 + eps_high) A), aggregated.

  clip_eps: eps, or (eps_low, eps_high) (DAPO's decoupled range). ratio='token': r = pi / pi_old
  per token (PPO, GRPO); 'sequence': GSPO's r = exp(mean over the response of log pi - log pi_old),
  the same for every token of a response, its gradient flowing through each token's log-prob
  (GSPO-token; with aggregation='sequence_mean' and one advantage per response it is GSPO)."""
  low, high = clip_eps if isinstance(clip_eps, tuple) else (clip_eps, clip_eps)
  log_ratio = logp - old_logp
  if ratio == 'sequence':
    seq = masked_mean(log_ratio, mask, axis=1)[:, None]
    log_ratio = jax.lax.stop_gradient(seq) + logp - jax.lax.stop_gradient(logp)
  elif ratio != 'token':
    raise UserError(f'Unknown importance ratio {ratio!r}; use token or sequence.')
  r = jnp.exp(log_ratio)
  unclipped = r * advantages
  clipped = jnp.clip(r, 1 - low, 1 + high) * advantages
  loss = aggregate(-jnp.minimum(unclipped, clipped), mask, aggregation)
  clipped_tokens = ((r < 1 - low) | (r > 1 + high)).astype(jnp.float32)
  if ratio == 'sequence':  # one ratio a response: the share of responses clipped
    clip_fraction = masked_mean(jnp.max(clipped_tokens * mask, axis=1), jnp.any(mask, axis=1))
  else:
    clip_fraction = masked_mean(clipped_tokens, mask)
  token_log_ratio = logp - old_logp
  approx_kl = masked_mean(jnp.expm1(token_log_ratio) - token_log_ratio, mask)
  return PolicyLossInfo(loss, clip_fraction, approx_kl)


def value_loss(values: jax.Array, old_values: jax.Array, returns: jax.Array, mask: jax.Array,
               clip: float, aggregation: str = 'token_mean') -> jax.Array:
  """Clipped value loss: 0.5 * max((v - R)^2, (clip(v, v_old +- clip) - R)^2) over real tokens."""
  clipped = old_values + jnp.clip(values - old_values, -clip, clip)
  return 0.5 * aggregate(jnp.maximum(jnp.square(values - returns), jnp.square(clipped - returns)),
                         mask, aggregation)


def explained_variance(values: jax.Array, returns: jax.Array, mask: jax.Array) -> jax.Array:
  """1 - Var(returns - values) / Var(returns) over real tokens (1 = perfect, <= 0 = useless)."""
  var = lambda x: masked_mean(jnp.square(x - masked_mean(x, mask)), mask)
  return 1.0 - var(returns - values) / jnp.maximum(var(returns), 1e-8)
