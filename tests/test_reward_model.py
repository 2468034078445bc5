"""Reward model: the soft Bradley-Terry loss, learning a synthetic preference, sharded training."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from rlaif_jax.infra import sharding as shd
from rlaif_jax.models import hf_checkpoint
from rlaif_jax.models import loading
from rlaif_jax.models import transformer as model_lib
from rlaif_jax.pipeline import reward_model as rm_stage
from rlaif_jax.rl import rewards
from rlaif_jax.training import reward_model as rm
from rlaif_jax.training import state as train_state

CFG = model_lib.ModelConfig(vocab_size=32, hidden_size=32, intermediate_size=64, num_layers=2,
                            num_heads=4, num_kv_heads=2, head_dim=8, scalar_head=True)


def synthetic_batch(rng, n, length=12):
  """Pairs of random token rows; the one with more 7s and 9s is preferred (soft label 0.9)."""
  ta, tb = rng.integers(3, 32, (n, length)), rng.integers(3, 32, (n, length))
  ca, cb = np.isin(ta, (7, 9)).sum(1), np.isin(tb, (7, 9)).sum(1)
  p = np.where(ca > cb, 0.9, np.where(ca < cb, 0.1, 0.5)).astype(np.float32)
  valid = np.ones_like(ta, bool)
  valid[: n // 4, : length // 3] = False  # some left padding
  return rm.PairBatch(ta.astype(np.int32), valid, tb.astype(np.int32), valid.copy(), p)


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
  model = loading.random_model(CFG, 0, mesh)
  opt = train_state.make_optimizer(3e-3, total_steps=250, warmup_steps=20)
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

  # evaluate(): the same accuracy against AI labels; against "human" labels that disagree with the
  # AI on a known quarter of the pairs it is lower by about that much
  rng = np.random.default_rng(5)
  flip = rng.random(512) < 0.25
  human = (held_out.p_a > 0.5) ^ flip
  report = rm.evaluate(reward, state.params, [held_out], [human])
  np.testing.assert_allclose(report['accuracy_ai'], accuracy)
  assert report['pairs_ai'] == decided.sum() and report['pairs_human'] == 512
  expected_human = np.mean((ra > rb) == human)
  np.testing.assert_allclose(report['accuracy_human'], expected_human)
  assert report['accuracy_human'] < report['accuracy_ai'] - 0.1
  stats = rm.RewardStats(report['reward_mean'], report['reward_std'])
  both = np.concatenate([ra, rb])
  np.testing.assert_allclose(stats, (both.mean(), both.std()), rtol=1e-5)
  normalized = stats.normalize(both)
  np.testing.assert_allclose((normalized.mean(), normalized.std()), (0.0, 1.0), atol=1e-5)


def test_reward_model_restores_straight_from_its_checkpoint(tmp_path, tiny_hf_folder, monkeypatch):
  """A finished reward model comes back from its Orbax checkpoint onto another (sharded) mesh with
  its stats, scanned and without an LM head, and the base checkpoint's weights are never read."""
  from configs import tiny
  from rlaif_jax.models import safetensors_io
  from rlaif_jax.pipeline import context
  config = tiny.get_config()
  config.model.source = tiny_hf_folder
  config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 2, 4, 1
  run = context.RunContext(config, str(tmp_path))
  base, _ = run.load(tiny_hf_folder, scalar_head=True, lm_head=False)
  assert base.cfg.scan_layers and not hasattr(base, 'lm_head') and base.cfg.lm_head is False
  params = jax.tree.map(lambda x: x + 0.5, nnx.state(base, nnx.Param))
  stats = rm.RewardStats(0.25, 2.0)
  rm_stage.save(str(tmp_path / 'reward_model' / 'model'), params, stats, {'accuracy_ai': 0.9})
  reads = []
  original = safetensors_io.SafetensorsFile.__getitem__
  monkeypatch.setattr(safetensors_io.SafetensorsFile, '__getitem__',
                      lambda self, name: reads.append(name) or original(self, name))
  restored, _ = rm_stage.load(run, tiny_hf_folder)
  assert reads == []  # nothing read from model.safetensors
  assert rm_stage.stats(run.restored_info) == stats
  want, got = hf_checkpoint.host_arrays(params), hf_checkpoint.host_arrays(nnx.state(restored))
  assert sorted(want) == sorted(got)
  for name in want:
    np.testing.assert_array_equal(got[name], want[name], err_msg=name)
  assert restored.blocks.attn.q[...].sharding.spec[1] == 'fsdp'
  with pytest.raises(FileNotFoundError, match='No complete reward model'):
    run.load(tiny_hf_folder, scalar_head=True, lm_head=False, restore_from=tmp_path / 'missing',
             what='reward model')


def test_reward_model_rewards_normalize_prompt_plus_response():
  mesh = one_device()
  model = loading.random_model(CFG, 5, mesh)
  params = nnx.state(model, nnx.Param)
  rng = np.random.default_rng(0)
  prompt = rng.integers(3, 32, (4, 5)).astype(np.int32)
  prompt_valid = np.ones_like(prompt, bool)
  prompt_valid[0, :2] = False
  response = rng.integers(3, 32, (4, 6)).astype(np.int32)
  mask = np.ones_like(response, bool)
  mask[1, 3:] = False
  stats = rm.RewardStats(0.5, 4.0)
  scored = rewards.reward_model_rewards(model, params, mesh, stats)(
      rewards.Responses(None, prompt, prompt_valid, response, mask))
  # reference: each row's real tokens only, scored one at a time
  reward = rm.make_reward_fn(model)
  for i in range(4):
    row = np.concatenate([prompt[i][prompt_valid[i]], response[i][mask[i]]])[None]
    want = float(reward(params, row, np.ones_like(row, bool))[0])
    np.testing.assert_allclose(scored.raw[i], want, atol=1e-5)
    np.testing.assert_allclose(scored.normalized[i], (want - 0.5) / 4.0, atol=1e-5)


@pytest.mark.parametrize('micro_batches,remat', [(1, 'none'), (2, 'dots'), (4, 'full')])
def test_sharded_train_step_matches_one_device(micro_batches, remat):
  """Also: gradient accumulation over micro-batches and block rematerialization change nothing."""
  single_mesh = one_device()
  base = loading.random_model(CFG, 1, single_mesh)
  weights = hf_checkpoint.host_arrays(nnx.state(base))
  batches = [synthetic_batch(np.random.default_rng(i), 16) for i in range(3)]
  results = []
  for mesh, micro, cfg in ((single_mesh, 1, CFG),
                           (shd.make_mesh({'data': 2, 'fsdp': 2, 'tensor': 2}), micro_batches,
                            CFG.replace(remat=remat))):
    model = loading.place(cfg, weights, mesh)
    # SGD: Adam would turn the exactly-zero true gradient of the bias (the loss only sees r_a - r_b)
    # into +-lr steps from float noise, which differs between layouts.
    opt = optax.sgd(0.1)
    step = rm.make_train_step(model, opt, mesh, micro)
    state = step.init()
    for b in batches:
      state, _ = step(state, b)
    results.append(hf_checkpoint.host_arrays(state.params))
  sharded_q = state.params['layers'][0]['attn']['q'][...]
  assert sharded_q.sharding.spec[0] == 'fsdp'
  for name in results[0]:
    np.testing.assert_allclose(results[1][name], results[0][name], atol=2e-5, err_msg=name)
