"""GRPO and its variants (Dr. GRPO, DAPO, GSPO) against plain NumPy, the loss aggregations, the KL
as a loss term, sequence-level normalisation for REINFORCE / RLOO, and each one learning a
programmatic reward on a tiny policy."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rlaif_jax.infra import sharding as shd
from rlaif_jax.infra.errors import UserError
from rlaif_jax.models import hf_checkpoint
from rlaif_jax.models import loading
from rlaif_jax.rl import advantages
from rlaif_jax.rl import config as rl_config
from rlaif_jax.rl import losses
from rlaif_jax.rl import update as rl_update
from tests.test_dpo import log_sigmoid
from tests.test_rl import CFG, random_rollout, run_loop

RLConfig = rl_config.RLConfig


def random_batch(rows=12, tokens=7, seed=0):
  rng = np.random.default_rng(seed)
  lengths = rng.integers(1, tokens + 1, rows)
  mask = np.arange(tokens)[None] < lengths[:, None]
  logp = -rng.uniform(0.1, 3.0, (rows, tokens)).astype(np.float32)
  old = (logp + rng.normal(0, 0.3, (rows, tokens))).astype(np.float32)
  return logp, old, mask


# ---------------------------------------------------------------- advantages vs NumPy
@pytest.mark.parametrize('scale', ['group', 'batch', 'none'])
def test_grpo_advantages_equal_numpy(scale):
  k = 4
  scores = np.random.default_rng(1).normal(size=(5 * k,)).astype(np.float32)
  scores[8:12] = 0.5  # a group whose samples all scored the same: advantage 0, not 0 / 0
  got = np.asarray(advantages.sequence_advantages(
      jnp.asarray(scores), RLConfig('grpo', samples_per_prompt=k, scale_rewards=scale)))
  g = scores.reshape(-1, k)
  centered = g - g.mean(1, keepdims=True)
  want = {'group': centered / (g.std(1, ddof=1, keepdims=True) + 1e-4),
          'batch': centered / (scores.std(ddof=1) + 1e-4), 'none': centered}[scale].reshape(-1)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got[8:12], 0.0, atol=1e-6)


@pytest.mark.parametrize('algorithm', ['reinforce', 'rloo'])
def test_sequence_estimators_are_normalised_per_response_not_per_token(algorithm):
  """Whitening a sequence-level advantage over tokens would move RLOO's leave-one-out baseline
  and weight long responses more; over responses it only rescales."""
  k = 3
  rng = np.random.default_rng(2)
  scores = rng.normal(size=(4 * k,)).astype(np.float32)
  cfg = RLConfig(algorithm, samples_per_prompt=k)
  raw = np.asarray(advantages.sequence_advantages(jnp.asarray(scores),
                                                  dataclasses.replace(cfg, whiten_advantages=False)))
  got = np.asarray(advantages.sequence_advantages(jnp.asarray(scores), cfg))
  if algorithm == 'rloo':
    g = scores.reshape(-1, k)
    np.testing.assert_allclose(raw, (g - (g.sum(1, keepdims=True) - g) / (k - 1)).reshape(-1),
                               rtol=1e-5, atol=1e-6)
  else:
    np.testing.assert_allclose(raw, scores - scores.mean(), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got, raw / np.sqrt(np.mean(raw ** 2)), rtol=1e-5)
  # per token: a response's advantage is the same on all its tokens, whatever the lengths
  mask = np.arange(6)[None] < rng.integers(1, 7, (4 * k, 1))
  logp, old, _ = random_batch(4 * k, 6)
  from rlaif_jax.rl.rollout import Rollout
  r = Rollout(None, None, None, mask, old, old, None, scores)
  adv, _, _ = advantages.advantages_and_returns(r, 0.0, cfg)
  np.testing.assert_allclose(np.asarray(adv), got[:, None] * mask, rtol=1e-5, atol=1e-6)


def test_kl_in_the_reward_or_in_the_loss():
  logp, old, mask = random_batch()
  ref = old - 0.2
  from rlaif_jax.rl.rollout import Rollout
  scores = np.linspace(-1, 1, 12).astype(np.float32)
  r = Rollout(None, None, None, mask, old, ref, None, scores)
  cfg = RLConfig('grpo', samples_per_prompt=4, scale_rewards='none')
  kl_sum = ((old - ref) * mask).sum(1)
  in_reward, _, _ = advantages.advantages_and_returns(r, 0.5, cfg)
  want = advantages.sequence_advantages(jnp.asarray(scores - 0.5 * kl_sum), cfg)
  np.testing.assert_allclose(np.asarray(in_reward), np.asarray(want)[:, None] * mask, rtol=1e-5,
                             atol=1e-6)
  in_loss, _, _ = advantages.advantages_and_returns(r, 0.5, dataclasses.replace(cfg, kl_in='loss'))
  want = advantages.sequence_advantages(jnp.asarray(scores), cfg)
  np.testing.assert_allclose(np.asarray(in_loss), np.asarray(want)[:, None] * mask, rtol=1e-5,
                             atol=1e-6)


# ---------------------------------------------------------------- losses vs NumPy
def numpy_policy_loss(logp, old, adv, mask, low, high, how, ratio):
  m = mask.astype(np.float64)
  lr = (logp - old).astype(np.float64)
  if ratio == 'sequence':
    lr = np.repeat(((lr * m).sum(1) / m.sum(1))[:, None], lr.shape[1], 1)
  r = np.exp(lr)
  per = -np.minimum(r * adv, np.clip(r, 1 - low, 1 + high) * adv)
  if how == 'token_mean':
    return (per * m).sum() / m.sum()
  if how == 'sequence_mean':
    return ((per * m).sum(1) / m.sum(1)).mean()
  return (per * m).sum() / m.size


@pytest.mark.parametrize('how', rl_config.LOSS_AGGREGATIONS)
@pytest.mark.parametrize('ratio,clip', [('token', (0.2, 0.2)), ('token', (0.2, 0.28)),
                                        ('sequence', (3e-2, 4e-2))], ids=['grpo', 'dapo', 'gspo'])
def test_policy_losses_equal_numpy(how, ratio, clip):
  logp, old, mask = random_batch(seed=3)
  adv = np.repeat(np.random.default_rng(4).normal(size=(12, 1)), 7, 1).astype(np.float32) * mask
  info = losses.policy_loss(jnp.asarray(logp), jnp.asarray(old), jnp.asarray(adv), jnp.asarray(mask),
                            clip, how, ratio)
  want = numpy_policy_loss(logp, old, adv, mask, *clip, how, ratio)
  np.testing.assert_allclose(float(info.loss), want, rtol=1e-5)
  assert 0 < float(info.clip_fraction) < 1  # the batch straddles the clip range


def test_gspo_gradient_is_the_sequence_ratio_gradient():
  """GSPO's objective on s_i = exp(mean_t log pi / pi_old): our token form (the sequence ratio's
  value, each token's gradient) has exactly the gradient of the sequence-level formula."""
  logp, old, mask = random_batch(seed=5)
  adv = np.random.default_rng(6).normal(size=(12,)).astype(np.float32)
  low, high = 0.05, 0.08
  m = jnp.asarray(mask, jnp.float32)

  def sequence_formula(lp):
    s = jnp.exp(jnp.sum((lp - old) * m, 1) / jnp.sum(m, 1))
    return -jnp.mean(jnp.minimum(s * adv, jnp.clip(s, 1 - low, 1 + high) * adv))

  ours = lambda lp: losses.policy_loss(lp, jnp.asarray(old), jnp.asarray(adv[:, None] * mask),
                                       jnp.asarray(mask), (low, high), 'sequence_mean',
                                       'sequence').loss
  np.testing.assert_allclose(float(ours(jnp.asarray(logp))), float(sequence_formula(logp)), rtol=1e-5)
  g_ours, g_ref = jax.grad(ours)(jnp.asarray(logp)), jax.grad(sequence_formula)(jnp.asarray(logp))
  assert float(jnp.abs(g_ref).max()) > 1e-3  # some sequences are inside the clip range
  np.testing.assert_allclose(np.asarray(g_ours), np.asarray(g_ref), rtol=1e-4, atol=1e-7)


def test_dapo_clip_higher_lets_low_probability_tokens_grow():
  """With A > 0 the upper clip stops the gradient: a ratio of 1.25 is clipped at eps 0.2, not at
  DAPO's eps_high 0.28; with A < 0 the lower bound applies."""
  logp = jnp.log(jnp.asarray([[1.25, 0.75]], jnp.float32))
  old = jnp.zeros((1, 2))
  mask = jnp.ones((1, 2), bool)
  grad = lambda adv, clip: jax.grad(lambda lp: losses.policy_loss(lp, old, adv, mask, clip).loss)(logp)
  pos = jnp.asarray([[1.0, 1.0]])
  assert float(grad(pos, (0.2, 0.2))[0, 0]) == 0.0
  assert float(grad(pos, (0.2, 0.28))[0, 0]) < 0.0  # minimising -r A: the token is pushed up
  neg = -pos
  assert float(grad(neg, (0.2, 0.28))[0, 1]) == 0.0  # 0.75 < 1 - 0.2: clipped below


def test_aggregations_weigh_tokens_responses_or_the_budget():
  x = jnp.asarray([[1.0, 1.0, 1.0, 1.0], [3.0, 0.0, 0.0, 0.0]])
  mask = jnp.asarray([[1, 1, 1, 1], [1, 0, 0, 0]], bool)
  assert float(losses.aggregate(x, mask, 'token_mean')) == pytest.approx(7 / 5)
  assert float(losses.aggregate(x, mask, 'sequence_mean')) == pytest.approx(2.0)
  assert float(losses.aggregate(x, mask, 'token_sum')) == pytest.approx(7 / 8)
  with pytest.raises(UserError, match='loss aggregation'):
    losses.aggregate(x, mask, 'mean')


# ---------------------------------------------------------------- the update
GRPO = RLConfig('grpo', samples_per_prompt=4, epochs=2, minibatches=2)
VARIANTS = {
    'grpo': dataclasses.replace(GRPO, loss_aggregation='sequence_mean', kl_in='loss', kl_estimator='k3'),
    'dr_grpo': dataclasses.replace(GRPO, scale_rewards='none', loss_aggregation='token_sum'),
    'dapo': dataclasses.replace(GRPO, clip_eps_high=0.28, loss_aggregation='token_mean'),
    'gspo': dataclasses.replace(GRPO, importance_ratio='sequence', clip_eps_low=3e-3,
                                clip_eps_high=4e-3, loss_aggregation='sequence_mean'),
}


@pytest.mark.parametrize('name', ['grpo', 'dr_grpo', 'gspo'])
def test_micro_batches_and_sharding_give_the_same_grpo_update(name):
  """Micro-batches weigh by their share of each aggregation; an 8-device mesh splits the rows
  (and so the groups) over devices, and the group statistics still see whole groups."""
  single = shd.make_mesh({'data': 1}, jax.devices()[:1])
  weights, rollout = random_rollout(3, 1, rows=16, new_tokens=8, ragged=True)
  rollout = rollout._replace(old_values=None,
                             scores=np.random.default_rng(0).normal(size=16).astype(np.float32))
  results = []
  for mesh, micro in ((single, 1), (single, 2), (shd.make_mesh({'data': 2, 'fsdp': 2, 'tensor': 2}), 2)):
    model = loading.place(CFG.replace(scalar_head=False), weights, mesh)
    cfg = dataclasses.replace(VARIANTS[name], micro_batches=micro, minibatches=2)
    update = rl_update.make_update(model, optax.sgd(0.05), mesh, cfg)
    state, metrics = update(update.init(), rollout, 0.05, jax.random.key(1))
    results.append((hf_checkpoint.host_arrays(state.params['policy']), jax.device_get(metrics)))
  moved = max(np.abs(results[0][0][n] - weights[n]).max() for n in results[0][0])
  assert moved > 1e-4
  for params, metrics in results[1:]:
    for n in params:
      np.testing.assert_allclose(params[n], results[0][0][n], atol=2e-5, err_msg=n)
    for n in ('policy_loss', 'kl_loss', 'entropy'):
      np.testing.assert_allclose(metrics[n], results[0][1][n], rtol=1e-4, atol=1e-6, err_msg=n)


def test_batch_that_does_not_split_is_refused_up_front():
  cfg = RLConfig('grpo', samples_per_prompt=4, minibatches=3)
  with pytest.raises(UserError, match='rl.minibatches=3'):
    cfg.check_batch(16)
  with pytest.raises(UserError, match='rl.micro_batches=3'):
    dataclasses.replace(cfg, minibatches=2, micro_batches=3).check_batch(16)
  with pytest.raises(UserError, match='devices'):
    dataclasses.replace(cfg, minibatches=2).check_batch(12, batch_devices=4)
  dataclasses.replace(cfg, minibatches=2).check_batch(16, batch_devices=4)
  with pytest.raises(UserError, match='samples_per_prompt >= 2'):
    RLConfig('grpo')
  for field in ('loss_aggregation', 'importance_ratio', 'scale_rewards', 'kl_in'):
    with pytest.raises(UserError, match=f'rl.{field}'):
      RLConfig('grpo', samples_per_prompt=2, **{field: 'nope'})


# ---------------------------------------------------------------- learning
@pytest.mark.parametrize('name', ['reinforce', *VARIANTS])
def test_policy_learns_the_target_token(name):
  cfg = (RLConfig('reinforce', kl_coef=0.02) if name == 'reinforce'
         else dataclasses.replace(VARIANTS[name], kl_coef=0.02))
  history, loop = run_loop(cfg, iterations=25)
  start = np.mean([h['score'] for h in history[:3]])
  end = np.mean([h['score'] for h in history[-3:]])
  assert end > start + 0.3, (name, start, end)
  assert all(np.isfinite(list(h.values())).all() for h in history)
  # see test_rl: ~21 nats for an all-target policy over 6 tokens (this k1 estimate is noisy)
  assert max(h['kl'] for h in history) < 30.0
  assert loop.update.jitted._cache_size() == 1
  if cfg.kl_in == 'loss':  # the leash as a k3 loss term: a larger coefficient holds the policy
    assert history[-1]['kl_loss'] > 0  # k3 is non-negative, and the policy has moved
    leashed, _ = run_loop(dataclasses.replace(cfg, kl_coef=1.0), iterations=25)
    assert max(h['kl'] for h in leashed) < 5.0
    assert np.mean([h['kl'] for h in leashed[-5:]]) < np.mean([h['kl'] for h in history[-5:]]) / 3


# ---------------------------------------------------------------- RL hygiene
def test_a_long_prompt_loses_its_user_text_not_the_template(tokenizer_dir):
  from transformers import AutoTokenizer
  from rlaif_jax.generation import text as text_lib
  tok = AutoTokenizer.from_pretrained(tokenizer_dir)
  long = ' '.join(['the cat sat on the mat'] * 20) + ' ; talk about the weather ?'
  full = text_lib.encode_texts(tok, [long], chat=True)[0]
  batch = text_lib.encode_prompt_batch(tok, [long, 'the sun ?'], 40)
  ids = batch.tokens[0][batch.valid[0]].tolist()
  assert len(full) > 40 and 36 <= len(ids) <= 40  # cut, and re-counted after the cut
  text = tok.decode(ids)
  start, end = '<|im_start|>user\n', '<|im_end|>\n<|im_start|>assistant\n'
  assert text.startswith(start) and text.endswith(end), text  # BOS, header, generation prompt
  kept = text[len(start):-len(end)]
  assert len(kept) > 5 and long.endswith(kept), kept  # the end of the user text, its start cut
  assert ids[-3:] == full[-3:]
  short = batch.tokens[1][batch.valid[1]].tolist()
  assert short == text_lib.encode_texts(tok, ['the sun ?'], chat=True)[0]  # untouched
  with pytest.raises(UserError, match='chat template alone takes'):
    text_lib.encode_prompt_batch(tok, [long], 4)


def test_rl_refuses_top_k_and_top_p_sampling():
  from rlaif_jax.generation import sampler
  from rlaif_jax.rl import loop as rl_loop
  mesh = shd.make_mesh({'data': 1}, jax.devices()[:1])
  policy = loading.random_model(CFG, 0, mesh)
  for kw in ({'top_k': 5}, {'top_p': 0.9}):
    with pytest.raises(UserError, match='rl.sampling.top_k=0 and rl.sampling.top_p=1.0'):
      rl_loop.RLLoop(policy, mesh, RLConfig('ppo'), sampler.SamplingConfig(4, temperature=1.0, **kw),
                     optax.sgd(0.1), lambda x: None)


# ---------------------------------------------------------------- online DPO
def test_online_dpo_raises_the_programmatic_reward():
  """Two samples a prompt, labeled from a stand-in judge's scores (the target fraction), DPO steps."""
  cfg = RLConfig('online_dpo', samples_per_prompt=2, epochs=2, minibatches=2, dpo_beta=0.1,
                 preference_temperature=0.1)
  history, loop = run_loop(cfg, iterations=30)
  start = np.mean([h['score'] for h in history[:3]])
  end = np.mean([h['score'] for h in history[-3:]])
  assert end > start + 0.3, (start, end)
  assert loop.update.jitted._cache_size() == 1
  for h in history:
    assert np.isfinite(h['dpo_loss']) and h['kl'] < 30.0
    np.testing.assert_allclose(h['share_rollout'] + h['share_scoring'] + h['share_update'], 1.0,
                               rtol=1e-6)
  # while the pairs still differ, the policy's implicit reward ranks them as the labels do; once
  # every sample is all-target the pairs tie (label confidence 0) and the steps stop moving it
  assert np.mean([h['preference_accuracy'] for h in history[:4]]) > 0.8
  assert history[0]['label_confidence'] > 0.1 and history[-1]['label_confidence'] < 0.05


def test_online_dpo_keeps_pairs_whole_across_micro_batches_and_devices():
  single = shd.make_mesh({'data': 1}, jax.devices()[:1])
  weights, rollout = random_rollout(5, 3, rows=32, new_tokens=6, ragged=True)
  rollout = rollout._replace(old_values=None,
                             scores=np.random.default_rng(1).uniform(size=32).astype(np.float32))
  cfg = RLConfig('online_dpo', samples_per_prompt=2, epochs=2, minibatches=2)
  results = []
  for mesh, micro in ((single, 1), (single, 2), (shd.make_mesh({'data': 2, 'fsdp': 2, 'tensor': 2}), 2)):
    model = loading.place(CFG.replace(scalar_head=False), weights, mesh)
    update = rl_update.make_update(model, optax.sgd(0.1), mesh,
                                   dataclasses.replace(cfg, micro_batches=micro))
    state, metrics = update(update.init(), rollout, 0.05, jax.random.key(1))
    results.append((hf_checkpoint.host_arrays(state.params['policy']), jax.device_get(metrics)))
  assert max(np.abs(results[0][0][n] - weights[n]).max() for n in results[0][0]) > 1e-4
  for params, metrics in results[1:]:
    for n in params:
      np.testing.assert_allclose(params[n], results[0][0][n], atol=2e-5, err_msg=n)
    np.testing.assert_allclose(metrics['dpo_loss'], results[0][1]['dpo_loss'], rtol=1e-4)
  with pytest.raises(UserError, match='samples_per_prompt=2'):
    RLConfig('online_dpo', samples_per_prompt=4)
  with pytest.raises(UserError, match="rl.reward='judge'"):
    RLConfig('online_dpo', samples_per_prompt=2, preference='pairwise')
  with pytest.raises(UserError, match='8 pairs'):
    dataclasses.replace(cfg, minibatches=3).check_batch(16)


def test_online_dpo_loss_is_dpo_on_each_pair():
  """The update's first-step loss equals the DPO formula on the rollout's pairs (rows 2i, 2i+1)."""
  from rlaif_jax.rl import online_dpo
  from rlaif_jax.generation import scoring
  single = shd.make_mesh({'data': 1}, jax.devices()[:1])
  weights, r = random_rollout(6, 4, rows=8, new_tokens=5, ragged=True)
  r = r._replace(old_values=None, scores=np.linspace(0, 1, 8).astype(np.float32),
                 ref_log_probs=np.asarray(r.old_log_probs) - 0.3)
  model = loading.place(CFG.replace(scalar_head=False), weights, single)
  cfg = RLConfig('online_dpo', samples_per_prompt=2, preference_temperature=0.5, dpo_beta=0.2)
  value, _ = online_dpo.loss(model, online_dpo.pairs(r), cfg)
  lp = np.asarray(scoring.token_scores(model, r.prompt, r.prompt_valid, r.response, r.mask).log_probs)
  m = np.asarray(r.mask)
  pi, ref = (lp * m).sum(1), (np.asarray(r.ref_log_probs) * m).sum(1)
  h = (pi[0::2] - ref[0::2]) - (pi[1::2] - ref[1::2])
  p = 1 / (1 + np.exp(-(r.scores[0::2] - r.scores[1::2]) / 0.5))
  want = np.mean(-(p * log_sigmoid(0.2 * h) + (1 - p) * log_sigmoid(-0.2 * h)))
  np.testing.assert_allclose(float(value), want, rtol=1e-5)
