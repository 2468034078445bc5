"""Reward model: the soft Bradley-Terry loss, learning a synthetic preference, sharded training."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from rlaif_jax import checkpoint_hf, pretrained
from rlaif_jax import model as model_lib
from rlaif_jax import reward_model as rm
from rlaif_jax import sharding as shd

CFG = model_lib.ModelConfig(vocab_size=32, hidden_size=32, intermediate_size=64, num_layers=2,
                            num_heads=4, num_kv_heads=2, head_dim=8, scalar_head=True)


def synthetic_batch(rng, n, length=12):
  """Pairs of random token rows; the one with more 7s and 9s is preferred (soft label 0.9)."""
  ta, tb = rng.integers(3, 32, (n, length)), rng.integers(3, 32, (n, length))
  ca, cb = np.isin(ta, (7, 9)).sum(1), np.isin(tb, (7, 9)).sum(1)
  p = np.where(ca > cb, 0.9, np.where(ca < cb, 0.1, 0.5)).astype(np.float32)
  valid = np.ones_like(ta, bool)
  valid[: n // 4, : length // 3] = False  # some left padding
  return rm.Batch(ta.astype(np.int32), valid, tb.astype(np.int32), valid.copy(), p)


def one_device():
  return shd.make_mesh({'data': 1}, jax.devices()[:1])


def test_preference_loss_values():
  r = jnp.asarray([0.0, 2.0])
  np.testing.assert_allclose(float(rm.preference_loss(r[:1], r[:1], jnp.asarray([0.5]))), np.log(2),
                             rtol=1e-6)
  hard = float(rm.preference_loss(r[1:], r[:1], jnp.asarray([1.0])))
  np.testing.assert_allclose(hard, -np.log(1 / (1 + np.exp(-2.0))), rtol=1e-6)  # hard label case
  soft = float(rm.preference_loss(r[1:], r[:1], jnp.asarray([0.7])))
  assert soft > hard


def test_tiny_reward_model_learns_a_synthetic_preference():
  mesh = one_device()
  model = pretrained.random_model(CFG, 0, mesh)
  opt = rm.make_optimizer(3e-3, total_steps=250, warmup_steps=20)
  step = rm.make_train_step(model, opt, mesh)
  state = step.init()
  rng = np.random.default_rng(0)
  for _ in range(250):
    state, metrics = step(state, synthetic_batch(rng, 64))
  assert np.isfinite(float(metrics['loss']))
  assert step.jitted._cache_size() == 1  # compiled once
  held_out = synthetic_batch(np.random.default_rng(99), 512)
  reward = rm.make_reward_fn(model)
  ra = np.asarray(reward(state.params, held_out.tokens_a, held_out.valid_a))
  rb = np.asarray(reward(state.params, held_out.tokens_b, held_out.valid_b))
  decided = held_out.p_a != 0.5
  accuracy = float(np.mean(((ra > rb) == (held_out.p_a > 0.5))[decided]))
  assert accuracy > 0.9, accuracy


def test_sharded_train_step_matches_one_device():
  single_mesh = one_device()
  base = pretrained.random_model(CFG, 1, single_mesh)
  weights = checkpoint_hf.host_arrays(nnx.state(base))
  batches = [synthetic_batch(np.random.default_rng(i), 16) for i in range(3)]
  results = []
  for mesh in (single_mesh, shd.make_mesh({'data': 2, 'fsdp': 2, 'tensor': 2})):
    model = pretrained.place(CFG, weights, mesh)
    # SGD: Adam would turn the exactly-zero true gradient of the bias (the loss only sees r_a - r_b)
    # into +-lr steps from float noise, which differs between layouts.
    opt = optax.sgd(0.1)
    step = rm.make_train_step(model, opt, mesh)
    state = step.init()
    for b in batches:
      state, _ = step(state, b)
    results.append(checkpoint_hf.host_arrays(state.params))
  sharded_q = state.params['layers'][0]['attn']['q'][...]
  assert sharded_q.sharding.spec[0] == 'fsdp'
  for name in results[0]:
    np.testing.assert_allclose(results[1][name], results[0][name], atol=2e-5, err_msg=name)
