"""Reward model: a model-family backbone with a scalar head, trained on AI soft labels.

Loss: cross-entropy between softmax(r_a, r_b) and the soft label (Bradley-Terry with soft targets;
hard labels are p in {0, 1}). The reward of a response is the scalar head on the last real token of
prompt + response. The train step is one jitted, sharded function that donates its state. Saving
and restoring a trained reward model with its statistics is the pipeline's (`pipeline.reward_model`).
"""

from __future__ import annotations

from typing import Any, Iterable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from rlaif_jax.models import transformer as model_lib
from rlaif_jax.infra import distributed
from rlaif_jax.training import step as step_lib
from rlaif_jax.infra.errors import UserError


def preference_loss(r_a: jax.Array, r_b: jax.Array, p_a: jax.Array) -> jax.Array:
  """Mean soft Bradley-Terry cross-entropy: -(p log s(r_a - r_b) + (1 - p) log s(r_b - r_a))."""
  d = r_a - r_b
  return jnp.mean(-(p_a * jax.nn.log_sigmoid(d) + (1 - p_a) * jax.nn.log_sigmoid(-d)))


def sequence_rewards(model: model_lib.Transformer, tokens: jax.Array, valid: jax.Array) -> jax.Array:
  """Scalar head at the last real token of each row: tokens, valid [B, T] -> [B] float32."""
  out = model_lib.forward(model, tokens, valid)
  last = jnp.maximum(valid.shape[1] - 1 - jnp.argmax(valid[:, ::-1], axis=1), 0)
  return jnp.take_along_axis(out.values, last[:, None], axis=1)[:, 0]


class PairBatch(NamedTuple):
  """A batch of pairs: each side is prompt + response, [B, T] tokens and a validity mask."""
  tokens_a: jax.Array
  valid_a: jax.Array
  tokens_b: jax.Array
  valid_b: jax.Array
  p_a: jax.Array  # [B] soft label P(a better)


def pair_rewards(model: model_lib.Transformer, batch: PairBatch) -> tuple[jax.Array, jax.Array]:
  """Rewards of both sides in one forward pass over the stacked [2B, T] batch."""
  tokens = jnp.concatenate([batch.tokens_a, batch.tokens_b])
  valid = jnp.concatenate([batch.valid_a, batch.valid_b])
  r = sequence_rewards(model, tokens, valid)
  return jnp.split(r, 2)


def rm_loss(model: model_lib.Transformer, batch: PairBatch):
  """Soft Bradley-Terry loss of a batch of pairs, with agreement and mean reward as metrics."""
  r_a, r_b = pair_rewards(model, batch)
  loss = preference_loss(r_a, r_b, batch.p_a)
  agree = jnp.mean(((r_a > r_b) == (batch.p_a > 0.5)).astype(jnp.float32))
  return loss, {'loss': loss, 'accuracy': agree, 'reward_mean': jnp.mean(jnp.concatenate([r_a, r_b]))}


def make_train_step(model: model_lib.Transformer, optimizer: optax.GradientTransformation,
                    mesh: jax.sharding.Mesh, micro_batches: int = 1):
  """The reward model's jitted, sharded, donating train step (see `step.make_train_step`); gradients
  accumulated over `micro_batches` slices of each batch."""
  return step_lib.make_train_step(model, optimizer, mesh, rm_loss, micro_batches)


def make_reward_fn(model: model_lib.Transformer):
  """Jitted `fn(params, tokens, valid) -> rewards [B]` for evaluation."""
  graphdef, _, rest = nnx.split(model, nnx.Param, ...)
  return jax.jit(lambda params, tokens, valid: sequence_rewards(nnx.merge(graphdef, params, rest),
                                                                tokens, valid))


# --------------------------------------------------------------------------- evaluation and stats

class RewardStats(NamedTuple):
  """Normalisation of raw rewards: (r - mean) / std, measured on the reward model's training
  responses after training and saved with it, so RL sees rewards of unit scale."""
  mean: float
  std: float

  def normalize(self, rewards):
    return (rewards - self.mean) / self.std


def reward_stats(rewards: Any) -> RewardStats:
  r = np.asarray(rewards, np.float64)
  if r.size < 2 or not np.all(np.isfinite(r)):
    raise UserError(f'Reward statistics need >= 2 finite rewards, got {r.size} '
                    f'({int(np.sum(~np.isfinite(r)))} not finite).')
  return RewardStats(float(r.mean()), float(max(r.std(), 1e-6)))


def evaluate(reward_fn, params: Any, batches: Iterable[PairBatch],
             human_a_better: Iterable[np.ndarray] | None = None) -> dict[str, float]:
  """Held-out accuracy of a reward model: the share of pairs where r_a > r_b agrees with the AI
  label (pairs whose soft label is exactly 0.5 are left out) and, when given, with human labels
  (one bool array per batch: True where humans preferred side a). Also returns the raw rewards'
  mean and std (see `reward_stats`)."""
  ai_hits, ai_n, rewards = 0, 0, []
  human_hits, human_n = 0, 0
  human = list(human_a_better) if human_a_better is not None else None
  for i, b in enumerate(batches):
    ra = distributed.to_host(reward_fn(params, b.tokens_a, b.valid_a))
    rb = distributed.to_host(reward_fn(params, b.tokens_b, b.valid_b))
    rewards.extend([ra, rb])
    p = np.asarray(b.p_a)
    decided = p != 0.5
    ai_hits += int(np.sum(((ra > rb) == (p > 0.5))[decided]))
    ai_n += int(decided.sum())
    if human is not None:
      h = np.asarray(human[i], bool)
      human_hits += int(np.sum((ra > rb) == h))
      human_n += h.size
  stats = reward_stats(np.concatenate(rewards))
  out = {'accuracy_ai': ai_hits / max(ai_n, 1), 'pairs_ai': ai_n,
         'reward_mean': stats.mean, 'reward_std': stats.std}
  if human is not None:
    out.update(accuracy_human=human_hits / max(human_n, 1), pairs_human=human_n)
  return out
