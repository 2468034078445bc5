"""RL on CPU: a tiny policy learns to emit a target token under PPO and RLOO, with bounded KL."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rlaif_jax import pretrained, rl, sampling
from rlaif_jax import model as model_lib
from rlaif_jax import reward_model as rm
from rlaif_jax import sharding as shd

CFG = model_lib.ModelConfig(vocab_size=32, hidden_size=32, intermediate_size=64, num_layers=2,
                            num_heads=4, num_kv_heads=2, head_dim=8, scalar_head=True)
TARGET = 7


def target_fraction(response, mask):
  """Programmatic reward: the share of the target token among the response's tokens."""
  m = np.asarray(mask)
  return ((np.asarray(response) == TARGET) & m).sum(1) / np.maximum(m.sum(1), 1)


def train(cfg: rl.RLConfig, iterations: int, batch: int = 32, kl_coef: float = 0.02):
  mesh = shd.make_mesh({'data': 1}, jax.devices()[:1])
  policy = pretrained.random_model(CFG, 0, mesh)
  reference = nnx.state(policy)  # frozen copy of the starting parameters
  reference = jax.tree.map(jnp.copy, reference)
  settings = sampling.SamplingConfig(6, temperature=1.0)
  sample = sampling.make_sampler(policy, mesh, settings)
  scorer = sampling.make_scorer(policy, mesh)
  update = rl.make_update(policy, rm.make_optimizer(1e-2, iterations * 4, 2, clip_norm=1.0), mesh, cfg)
  state = update.init()
  rng = np.random.default_rng(0)
  key = jax.random.key(0)
  history = []
  for _ in range(iterations):
    key, k_sample, k_update = jax.random.split(key, 3)
    n_prompts = batch // cfg.samples_per_prompt
    prompts = np.repeat(rng.integers(3, 32, (n_prompts, 4)).astype(np.int32),
                        cfg.samples_per_prompt, axis=0)
    valid = np.ones_like(prompts, bool)
    out = sample(state.params, prompts, valid, k_sample)
    ref = scorer(reference, prompts, valid, out.tokens, out.mask)
    old = scorer(state.params, prompts, valid, out.tokens, out.mask)
    scores = target_fraction(out.tokens, out.mask).astype(np.float32)
    values = old.values if cfg.algorithm == 'ppo' else jnp.zeros_like(old.log_probs)
    rollout = rl.Rollout(prompts, valid, out.tokens, out.mask, old.log_probs, ref.log_probs,
                         values, jnp.asarray(scores))
    state, metrics = update(state, rollout, kl_coef, k_update)
    history.append({k: float(v) for k, v in metrics.items()})
  return history, update


@pytest.mark.parametrize('cfg', [rl.RLConfig('ppo'), rl.RLConfig('rloo', samples_per_prompt=4)],
                         ids=['ppo', 'rloo'])
def test_policy_learns_the_target_token_with_bounded_kl(cfg):
  history, update = train(cfg, iterations=30, kl_coef=0.02)
  start = np.mean([h['score'] for h in history[:3]])
  end = np.mean([h['score'] for h in history[-3:]])
  assert end > start + 0.3, (start, end)  # from ~1/32 to a clear majority of target tokens
  assert all(np.isfinite(list(h.values())).all() for h in history)
  assert update.jitted._cache_size() == 1
  # The KL leash: a deterministic all-target policy is ~21 nats from the reference over 6 tokens;
  # a 10x larger coefficient keeps the policy within a few nats of it.
  assert max(h['kl'] for h in history) < 25.0
  leashed, _ = train(cfg, iterations=30, kl_coef=0.2)
  assert max(h['kl'] for h in leashed) < 5.0
  assert np.mean([h['kl'] for h in leashed[-5:]]) < np.mean([h['kl'] for h in history[-5:]]) / 3


def test_rloo_needs_several_samples_per_prompt():
  with pytest.raises(ValueError, match='samples_per_prompt >= 2'):
    rl.RLConfig('rloo')
  with pytest.raises(ValueError, match='Unknown rl.algorithm'):
    rl.RLConfig('dpo')


def test_rloo_baseline_leaves_each_sample_out():
  adv = rl.sequence_advantages(jnp.asarray([1.0, 2.0, 3.0, 10.0, 10.0, 10.0]),
                               rl.RLConfig('rloo', samples_per_prompt=3))
  np.testing.assert_allclose(np.asarray(adv), [1 - 2.5, 2 - 2.0, 3 - 1.5, 0, 0, 0])


def test_sharded_ppo_update_matches_one_device():
  import optax
  from rlaif_jax import checkpoint_hf
  single = shd.make_mesh({'data': 1}, jax.devices()[:1])
  base = pretrained.random_model(CFG, 2, single)
  weights = checkpoint_hf.host_arrays(nnx.state(base))
  rng = np.random.default_rng(0)
  prompts = rng.integers(3, 32, (8, 4)).astype(np.int32)
  valid = np.ones_like(prompts, bool)
  out = sampling.make_sampler(base, single, sampling.SamplingConfig(6, temperature=1.0))(
      nnx.state(base), prompts, valid, jax.random.key(0))
  old = sampling.make_scorer(base, single)(nnx.state(base), prompts, valid, out.tokens, out.mask)
  rollout = jax.device_get(rl.Rollout(
      prompts, valid, out.tokens, out.mask, old.log_probs, old.log_probs - 0.1, old.values,
      jnp.asarray(target_fraction(out.tokens, out.mask), jnp.float32)))
  results = []
  for mesh in (single, shd.make_mesh({'data': 2, 'fsdp': 2, 'tensor': 2})):
    model = pretrained.place(CFG, weights, mesh)
    update = rl.make_update(model, optax.sgd(0.05), mesh, rl.RLConfig('ppo'))
    state, metrics = update(update.init(), rollout, 0.05, jax.random.key(1))
    assert update.jitted._cache_size() == 1
    results.append(checkpoint_hf.host_arrays(state.params))
  assert tuple(state.params['embed'][...].sharding.spec) == ('tensor', 'fsdp')
  moved = max(np.abs(results[0][n] - weights[n]).max() for n in results[0])
  assert moved > 1e-4  # the update really changed the parameters
  for name in results[0]:
    np.testing.assert_allclose(results[1][name], results[0][name], atol=1e-5, err_msg=name)
