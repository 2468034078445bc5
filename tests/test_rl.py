"""RL on CPU: a tiny policy learns to emit a target token under PPO and RLOO, with bounded KL."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rlaif_jax.generation import sampler
from rlaif_jax.generation import scoring
from rlaif_jax.generation import text as text_lib
from rlaif_jax.infra import sharding as shd
from rlaif_jax.models import hf_checkpoint
from rlaif_jax.models import layers
from rlaif_jax.models import loading
from rlaif_jax.models import transformer as model_lib
from rlaif_jax.rl import advantages
from rlaif_jax.rl import config as rl_config
from rlaif_jax.rl import loop as rl_loop
from rlaif_jax.rl import rewards
from rlaif_jax.rl import rollout as rollout_lib
from rlaif_jax.rl import update as rl_update
from rlaif_jax.training import state as train_state

CFG = model_lib.ModelConfig(vocab_size=32, hidden_size=32, intermediate_size=64, num_layers=2,
                            num_heads=4, num_kv_heads=2, head_dim=8, scalar_head=True)
TARGET = 7


def target_fraction(response, mask):
  """Programmatic reward: the share of the target token among the response's tokens."""
  m = np.asarray(mask)
  return ((np.asarray(response) == TARGET) & m).sum(1) / np.maximum(m.sum(1), 1)


def target_rewards(x: rewards.Responses) -> rewards.Rewards:
  s = target_fraction(x.response, x.mask).astype(np.float32)
  return rewards.Rewards(s, s)


def run_loop(cfg: rl_config.RLConfig, iterations: int, batch: int = 32, stop_tokens=(), model_cfg=CFG,
             on_state=None, own_reference=False):
  """own_reference: pass no reference (a LoRA policy's is its base weights, adapters off)."""
  mesh = shd.make_mesh({'data': 1}, jax.devices()[:1])
  policy = loading.random_model(model_cfg, 0, mesh)
  # frozen copy of the starting parameters
  reference = None if own_reference else jax.tree.map(jnp.copy, nnx.state(policy))
  value_model = loading.random_model(CFG, 1, mesh) if cfg.value_model == 'separate' else None
  settings = sampler.SamplingConfig(6, temperature=1.0, stop_tokens=stop_tokens)
  loop = rl_loop.RLLoop(policy, mesh, cfg, settings,
                        train_state.make_optimizer(1e-2, iterations * 4, 2, clip_norm=1.0), target_rewards,
                        value_model)
  state = loop.init()
  rng = np.random.default_rng(0)
  key = jax.random.key(0)
  kl_coef = cfg.kl_coef
  history = []
  for _ in range(iterations):
    key, k = jax.random.split(key)
    tokens = rng.integers(3, 32, (batch // cfg.samples_per_prompt, 4)).astype(np.int32)
    state, kl_coef, metrics = loop.iteration(state, reference, kl_coef,
                                             text_lib.PromptBatch(tokens, np.ones_like(tokens, bool)), k)
    history.append(metrics)
    if on_state is not None:
      on_state(state)
  return history, loop


@pytest.mark.parametrize('cfg', [rl_config.RLConfig('ppo', kl_coef=0.02),
                                 rl_config.RLConfig('rloo', samples_per_prompt=4, kl_coef=0.02)],
                         ids=['ppo', 'rloo'])
def test_policy_learns_the_target_token_with_bounded_kl(cfg):
  history, loop = run_loop(cfg, iterations=30)
  start = np.mean([h['score'] for h in history[:3]])
  end = np.mean([h['score'] for h in history[-3:]])
  assert end > start + 0.3, (start, end)  # from ~1/32 to a clear majority of target tokens
  assert all(np.isfinite(list(h.values())).all() for h in history)
  assert loop.update.jitted._cache_size() == 1
  for h in history:  # the time shares are measured and add up
    assert h['time_rollout'] > 0 and h['time_scoring'] > 0 and h['time_update'] > 0
    np.testing.assert_allclose(h['share_rollout'] + h['share_scoring'] + h['share_update'], 1.0,
                               rtol=1e-6)
  # The KL leash: a deterministic all-target policy is ~21 nats from the reference over 6 tokens;
  # a 10x larger coefficient keeps the policy within a few nats of it.
  assert max(h['kl'] for h in history) < 25.0
  leashed, _ = run_loop(dataclasses.replace(cfg, kl_coef=0.2), iterations=30)
  assert max(h['kl'] for h in leashed) < 5.0
  assert np.mean([h['kl'] for h in leashed[-5:]]) < np.mean([h['kl'] for h in history[-5:]]) / 3


def test_bfloat16_compute_with_float32_master_parameters_learns_like_float32():
  """The same run (seeds, prompts, optimizer) in float32 and with bfloat16 compute over float32
  master parameters: the bfloat16 run learns as far, its first rollout's log-probs are float32's
  to bfloat16 precision, and its master copy stays float32 and moves at every step."""
  cfg = rl_config.RLConfig('ppo', kl_coef=0.02)
  snapshots = []
  keep = lambda state: snapshots.append(hf_checkpoint.host_arrays(state.params['policy']))
  history, _ = run_loop(cfg, iterations=30, model_cfg=CFG.replace(dtype='bfloat16'), on_state=keep)
  full, _ = run_loop(cfg, iterations=30)
  score = lambda h, part: np.mean([r['score'] for r in h[part]])
  start, end = score(history, slice(3)), score(history, slice(-3, None))
  assert end > start + 0.3, (start, end)  # as test_policy_learns_the_target_token_with_bounded_kl
  assert end > score(full, slice(-3, None)) - 0.15, (end, score(full, slice(-3, None)))
  # iteration 1 samples the same tokens from the same start: its entropy matches float32's to
  # bfloat16 precision (about 3 significant digits), not exactly
  assert history[0]['entropy'] == pytest.approx(full[0]['entropy'], rel=2e-2)
  assert history[0]['entropy'] != full[0]['entropy']
  name = 'layers/0/mlp/down'
  assert all(s[name].dtype == np.float32 for s in snapshots)  # the master copy stays float32
  for before, after in zip(snapshots, snapshots[1:]):  # and moves at every step
    assert not np.array_equal(before[name], after[name])


def test_ppo_with_a_separate_value_model_and_adaptive_kl():
  cfg = rl_config.RLConfig('ppo', value_model='separate', kl_coef=0.01, kl_target=2.0, kl_horizon=200)
  history, loop = run_loop(cfg, iterations=30)
  start = np.mean([h['score'] for h in history[:3]])
  end = np.mean([h['score'] for h in history[-3:]])
  assert end > start + 0.3, (start, end)
  assert set(loop.init().params) == {'policy', 'value'}
  # the value model learns to predict returns: explained variance rises from ~0 (or below)
  assert np.mean([h['explained_variance'] for h in history[-5:]]) > max(
      0.2, np.mean([h['explained_variance'] for h in history[:3]]) + 0.2)
  # the adaptive controller: the coefficient falls while the KL is under its target and rises
  # once the KL is over it
  coefs = [h['kl_coef'] for h in history]
  for h, after in zip(history, coefs[1:]):
    assert np.sign(after - h['kl_coef']) == np.sign(h['kl'] - 2.0), (h['kl'], h['kl_coef'], after)
  assert any(h['kl'] > 2.0 for h in history) and any(h['kl'] < 2.0 for h in history)


def test_judge_rewards_send_prompt_texts_and_decoded_responses(tokenizer_dir):
  from transformers import AutoTokenizer
  tok = AutoTokenizer.from_pretrained(tokenizer_dir)
  seen = {}

  class FakeJudge:  # records what d-RLAIF scoring was asked; scores by response length
    def direct_reward(self, contexts, responses):
      seen.update(contexts=contexts, responses=responses)
      return np.array([len(r) / 10 for r in responses]), np.zeros(len(responses), bool)

  texts = ['hello there', 'good morning']
  ids = [tok.encode(t, add_special_tokens=False) for t in ['nice day', 'ok']]
  n = max(map(len, ids)) + 2
  response = np.zeros((2, n), np.int32)
  mask = np.zeros((2, n), bool)
  for i, x in enumerate(ids):
    response[i, :len(x)] = x
    response[i, len(x):] = ids[0][0]  # junk past the mask must not reach the judge
    mask[i, :len(x)] = True
  prompt = np.ones((2, 3), np.int32)
  reward_source = rewards.make_reward_source(rl_config.RLConfig(reward='judge'), judge=FakeJudge(),
                                             tokenizer=tok)
  scored = reward_source(
      rewards.Responses(texts, prompt, np.ones_like(prompt, bool), response, mask))
  assert seen['contexts'] == texts
  assert [r.strip() for r in seen['responses']] == ['nice day', 'ok']
  np.testing.assert_allclose(scored.raw, [len(r) / 10 for r in seen['responses']])
  np.testing.assert_allclose(scored.normalized, scored.raw)
  with pytest.raises(ValueError, match='prompt texts'):
    rewards.judge_rewards(FakeJudge(), tok)(rewards.Responses(None, prompt, prompt, response, mask))


def test_missing_stop_penalty():
  response = np.array([[5, 2, 0], [5, 6, 7], [2, 0, 0]])
  mask = np.array([[1, 1, 0], [1, 1, 1], [1, 0, 0]], bool)
  ended = rewards.stopped(response, mask, (2,))
  np.testing.assert_array_equal(ended, [True, False, True])
  np.testing.assert_allclose(rewards.apply_missing_stop_penalty(np.ones(3), ended, 0.5),
                             [1.0, 0.5, 1.0])
  # in the loop: a policy that is penalised for never stopping learns to emit the stop token
  cfg = rl_config.RLConfig('rloo', samples_per_prompt=4, kl_coef=0.0, missing_eos_penalty=1.0)
  history, _ = run_loop(cfg, iterations=15, stop_tokens=(TARGET,))
  assert history[-1]['stopped_fraction'] > history[0]['stopped_fraction'] + 0.3
  assert all(h['kl_k1'] == h['kl'] for h in history)  # the estimator is recorded with the KL
  assert history[0]['score'] < -0.5  # most early responses never stop and are penalised


def test_rloo_needs_several_samples_per_prompt():
  with pytest.raises(ValueError, match='samples_per_prompt >= 2'):
    rl_config.RLConfig('rloo')
  with pytest.raises(ValueError, match='Unknown rl.algorithm'):
    rl_config.RLConfig('dpo')
  with pytest.raises(ValueError, match='Unknown rl.reward'):
    rl_config.RLConfig(reward='human')
  with pytest.raises(ValueError, match='needs a trained reward model'):
    rewards.make_reward_source(rl_config.RLConfig())
  with pytest.raises(ValueError, match='needs the judge model'):
    rewards.make_reward_source(rl_config.RLConfig(reward='judge'))


def test_rloo_baseline_leaves_each_sample_out():
  adv = advantages.sequence_advantages(jnp.asarray([1.0, 2.0, 3.0, 10.0, 10.0, 10.0]),
                                       rl_config.RLConfig('rloo', samples_per_prompt=3,
                                                          whiten_advantages=False))
  np.testing.assert_allclose(np.asarray(adv), [1 - 2.5, 2 - 2.0, 3 - 1.5, 0, 0, 0])


def random_rollout(model_seed: int, data_seed: int, rows: int, new_tokens: int, ragged=False):
  """(host weights of a random tiny policy, a rollout it sampled, scored by the target fraction);
  ragged: responses cut at random lengths."""
  single = shd.make_mesh({'data': 1}, jax.devices()[:1])
  base = loading.random_model(CFG, model_seed, single)
  rng = np.random.default_rng(data_seed)
  prompts = rng.integers(3, 32, (rows, 4)).astype(np.int32)
  valid = np.ones_like(prompts, bool)
  out = sampler.make_sampler(base, single, sampler.SamplingConfig(new_tokens, temperature=1.0))(
      nnx.state(base), prompts, valid, jax.random.key(0))
  mask = out.mask
  if ragged:
    mask = np.arange(new_tokens)[None] < rng.integers(1, new_tokens + 1, (rows, 1))
  old = scoring.jit_token_scores(base, single)(nnx.state(base), prompts, valid, out.tokens, mask)
  rollout = jax.device_get(rollout_lib.Rollout(
      prompts, valid, out.tokens, mask, old.log_probs, old.log_probs - 0.1, old.values,
      jnp.asarray(target_fraction(out.tokens, mask), jnp.float32)))
  return hf_checkpoint.host_arrays(nnx.state(base)), rollout


def test_sharded_ppo_update_matches_one_device():
  import optax
  single = shd.make_mesh({'data': 1}, jax.devices()[:1])
  weights, rollout = random_rollout(2, 0, rows=8, new_tokens=6)
  results = []
  for mesh in (single, shd.make_mesh({'data': 2, 'fsdp': 2, 'tensor': 2})):
    model = loading.place(CFG, weights, mesh)
    update = rl_update.make_update(model, optax.sgd(0.05), mesh, rl_config.RLConfig('ppo'))
    state, metrics = update(update.init(), rollout, 0.05, jax.random.key(1))
    assert update.jitted._cache_size() == 1
    results.append(hf_checkpoint.host_arrays(state.params['policy']))
  assert tuple(state.params['policy']['embed'][...].sharding.spec) == ('tensor', 'fsdp')
  moved = max(np.abs(results[0][n] - weights[n]).max() for n in results[0])
  assert moved > 1e-4  # the update really changed the parameters
  for name in results[0]:
    np.testing.assert_allclose(results[1][name], results[0][name], atol=1e-5, err_msg=name)


def test_micro_batches_and_remat_give_the_same_update():
  """Gradient accumulation weights each micro-batch by its share of the response tokens, so the
  update equals the one over whole minibatches; rematerialized blocks give the same gradients, and
  so do scanned layers (stacked parameters, one lax.scan), with and without remat and sharding."""
  import optax
  single = shd.make_mesh({'data': 1}, jax.devices()[:1])
  weights, rollout = random_rollout(3, 1, rows=16, new_tokens=8, ragged=True)
  results = []
  mesh8 = shd.make_mesh({'data': 2, 'fsdp': 2, 'tensor': 2})
  for mesh, micro, remat, scan in ((single, 1, 'none', False), (single, 4, 'dots', False),
                                   (mesh8, 2, 'full', False), (single, 1, 'none', True),
                                   (mesh8, 2, 'full', True)):
    model = loading.place(CFG.replace(remat=remat, scan_layers=scan), weights, mesh)
    cfg = rl_config.RLConfig('ppo', epochs=2, minibatches=2, micro_batches=micro)
    update = rl_update.make_update(model, optax.sgd(0.05), mesh, cfg)
    state, metrics = update(update.init(), rollout, 0.05, jax.random.key(1))
    results.append((hf_checkpoint.host_arrays(state.params['policy']), jax.device_get(metrics)))
    update(state, rollout, 0.05, jax.random.key(2))
    assert update.jitted._cache_size() == 1  # one compile, scanned or not
  moved = max(np.abs(results[0][0][n] - weights[n]).max() for n in weights)
  assert moved > 1e-4
  for params, metrics in results[1:]:
    for name in weights:
      np.testing.assert_allclose(params[name], results[0][0][name], atol=2e-5, err_msg=name)
    for name in ('policy_loss', 'value_loss', 'clip_fraction', 'entropy'):
      np.testing.assert_allclose(metrics[name], results[0][1][name], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize('value_model,minibatches', [('shared', 1), ('shared', 2), ('separate', 1)])
def test_old_values_left_to_the_update_equal_given_ones(value_model, minibatches):
  """A rollout without old values: the update computes them (from its first step's forward pass with
  one minibatch, else from a pass of its own) and ends exactly where it does when they are given."""
  import optax
  single = shd.make_mesh({'data': 1}, jax.devices()[:1])
  weights, rollout = random_rollout(4, 2, rows=8, new_tokens=6, ragged=True)
  cfg = rl_config.RLConfig('ppo', epochs=2, minibatches=minibatches, value_model=value_model)
  models = lambda: (loading.place(CFG, weights, single),
                    loading.random_model(CFG, 5, single) if value_model == 'separate' else None)
  value = models()[1]
  if value is not None:  # the given old values are the separate value model's
    values = scoring.jit_response_fn(value, single, rl_update.token_values)(
        nnx.state(value, nnx.Param), rollout.prompt, rollout.prompt_valid, rollout.response,
        rollout.mask)
    rollout = rollout._replace(old_values=np.asarray(values))
  results = []
  for given in (rollout, rollout._replace(old_values=None)):
    policy, value = models()
    update = rl_update.make_update(policy, optax.sgd(0.05), single, cfg, value_model=value)
    state, metrics = update(update.init(), given, 0.05, jax.random.key(1))
    results.append(({k: hf_checkpoint.host_arrays(v) for k, v in state.params.items()},
                    jax.device_get(metrics)))
  (given, m_given), (inside, m_inside) = results
  assert max(np.abs(given['policy'][n] - weights[n]).max() for n in weights) > 1e-4
  for part in given:
    for name in given[part]:
      np.testing.assert_allclose(inside[part][name], given[part][name], atol=1e-5, err_msg=name)
  for name in ('policy_loss', 'value_loss', 'explained_variance', 'kl', 'clip_fraction'):
    np.testing.assert_allclose(m_inside[name], m_given[name], rtol=1e-4, atol=1e-6, err_msg=name)


def test_micro_batches_must_divide_the_minibatch():
  import optax
  mesh = shd.make_mesh({'data': 1}, jax.devices()[:1])
  model = loading.random_model(CFG, 0, mesh)
  update = rl_update.make_update(model, optax.sgd(0.1), mesh, rl_config.RLConfig('ppo', minibatches=1,
                                                                                 micro_batches=3))
  z = np.zeros((4, 3), np.float32)
  rollout = rollout_lib.Rollout(z.astype(np.int32), z > -1, z.astype(np.int32), z > -1, z, z, z, z[:, 0])
  with pytest.raises(ValueError, match='rl.micro_batches=3'):
    update(update.init(), rollout, 0.05, jax.random.key(0))


def test_model_matmul_gradient_equals_autodiff():
  kx, kw, kd = jax.random.split(jax.random.key(0), 3)
  x, w = jax.random.normal(kx, (2, 5, 6)), jax.random.normal(kw, (6, 4))
  dy = jax.random.normal(kd, (2, 5, 4))
  ours = jax.vjp(layers.matmul, x, w)[1](dy)
  plain = jax.vjp(lambda a, b: a @ b, x, w)[1](dy)
  for a, b in zip(ours, plain):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


def test_chunked_log_probs_lower_the_ppo_update_temporaries():
  """The update's backward pass keeps a chunk of [rows, vocab] logits, not all of them: compiled for
  a vocabulary-heavy tiny policy (2048 response tokens x 8192 vocab = 64 MiB of float32 logits)."""
  import optax
  from jax import ShapeDtypeStruct as S
  mesh = shd.make_mesh({'data': 1}, jax.devices()[:1])
  b, p, n = 16, 8, 128
  f = jnp.float32
  rollout = rollout_lib.Rollout(S((b, p), jnp.int32), S((b, p), bool), S((b, n), jnp.int32),
                                S((b, n), bool), S((b, n), f), S((b, n), f), None, S((b,), f))
  temps = {}
  for rows in (256, 1 << 30):
    cfg = CFG.replace(vocab_size=8192, logit_chunk_rows=rows, scan_layers=True)
    update = rl_update.make_update(loading.abstract_model(cfg), optax.adamw(1e-3), mesh,
                                   rl_config.RLConfig('ppo', epochs=1, minibatches=1))
    with jax.set_mesh(mesh):
      compiled = update.jitted.lower(jax.eval_shape(update.init), rollout, S((), f),
                                     jax.eval_shape(lambda: jax.random.key(0))).compile()
    temps[rows] = compiled.memory_analysis().temp_size_in_bytes
  logits = b * n * 8192 * 4
  assert temps[1 << 30] > 2 * logits  # autodiff of the whole head keeps several [rows, V] arrays
  assert temps[256] < temps[1 << 30] / 3, temps
