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


def test_kl_estimators_expected_gradients_on_policy():
  """Exact expectations over a categorical policy pi (= pi_old, sampled from) and a reference:
  k1's gradient is zero (E[grad log pi] = 0: as a loss term it holds nothing), k2's is the gradient
  of KL(pi || ref), and k3's is sum (pi - ref) grad log pi: non-zero until pi = ref."""
  theta = jnp.asarray([0.3, -1.0, 0.8, 0.1])
  ref = jax.nn.log_softmax(jnp.asarray([-0.2, 0.4, 0.3, -0.9]))
  pi_old = jax.nn.softmax(theta)

  def expected(estimator):
    return lambda t: jnp.sum(pi_old * losses.kl_penalty(jax.nn.log_softmax(t), ref, estimator))

  grad = {e: jax.grad(expected(e))(theta) for e in ('k1', 'k2', 'k3')}
  true_kl = lambda t: jnp.sum(jax.nn.softmax(t) * (jax.nn.log_softmax(t) - ref))
  np.testing.assert_allclose(np.asarray(grad['k1']), 0.0, atol=1e-7)
  np.testing.assert_allclose(np.asarray(grad['k2']), np.asarray(jax.grad(true_kl)(theta)),
                             rtol=1e-5)
  assert float(jnp.abs(grad['k3']).max()) > 0.05


def test_kl_defaults_put_a_working_estimator_where_the_kl_goes():
  """GRPO puts the KL in the loss (its paper) with k3; the others keep it in the reward with k1; k1
  as a loss term is refused; GSPO's sequence ratio implies the sequence mean."""
  grpo, ppo = RLConfig('grpo', samples_per_prompt=2), RLConfig('ppo')
  assert (grpo.kl_location, grpo.kl_kind) == ('loss', 'k3')
  assert (ppo.kl_location, ppo.kl_kind) == ('reward', 'k1')
  assert RLConfig('ppo', kl_in='loss').kl_kind == 'k3'
  assert dataclasses.replace(grpo, kl_in='reward').kl_kind == 'k1'  # '' follows the choice made
  assert RLConfig('ppo', kl_in='loss', kl_estimator='k2').kl_kind == 'k2'
  with pytest.raises(UserError, match="kl_estimator='k1' as a loss term"):
    RLConfig('grpo', samples_per_prompt=2, kl_estimator='k1')
  with pytest.raises(UserError, match='rl.kl_estimator'):
    RLConfig('ppo', kl_estimator='k4')
  gspo = RLConfig('grpo', samples_per_prompt=2, importance_ratio='sequence')
  assert (gspo.aggregation, grpo.aggregation) == ('sequence_mean', 'token_mean')
  with pytest.raises(UserError, match="importance_ratio='sequence'"):
    RLConfig('grpo', samples_per_prompt=2, importance_ratio='sequence', loss_aggregation='token_mean')


def test_kl_in_the_reward_or_in_the_loss():
  logp, old, mask = random_batch()
  ref = old - 0.2
  from rlaif_jax.rl.rollout import Rollout
  scores = np.linspace(-1, 1, 12).astype(np.float32)
  r = Rollout(None, None, None, mask, old, ref, None, scores)
  cfg = RLConfig('grpo', samples_per_prompt=4, scale_rewards='none', kl_in='reward')
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
  lr = logp - old
  if ratio == 'sequence':  # one ratio a response: the share of responses clipped
    seq = (lr * mask).sum(1) / mask.sum(1)
    want_clipped = np.mean((seq < np.log(1 - clip[0])) | (seq > np.log(1 + clip[1])))
  else:
    out = (lr < np.log(1 - clip[0])) | (lr > np.log(1 + clip[1]))
    want_clipped = (out * mask).sum() / mask.sum()
  np.testing.assert_allclose(float(info.clip_fraction), want_clipped, rtol=1e-5)


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
    'grpo': dataclasses.replace(GRPO, loss_aggregation='sequence_mean'),  # the KL: k3 in the loss
    # the variants keep the KL leash in the reward (k1), as before GRPO's default moved it
    'dr_grpo': dataclasses.replace(GRPO, scale_rewards='none', loss_aggregation='token_sum',
                                   kl_in='reward'),
    'dapo': dataclasses.replace(GRPO, clip_eps_high=0.28, loss_aggregation='token_mean',
                                kl_in='reward'),
    'gspo': dataclasses.replace(GRPO, importance_ratio='sequence', clip_eps_low=3e-3,
                                clip_eps_high=4e-3, kl_in='reward'),  # sequence_mean implied
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
  if name == 'grpo':  # the leash as a k3 loss term: a larger coefficient holds the policy
    assert (cfg.kl_location, cfg.kl_kind) == ('loss', 'k3')
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


# ---------------------------------------------------------------- DAPO's batch-side pieces
def test_overlong_penalty_is_dapos_soft_punishment():
  from rlaif_jax.rl import dynamic_sampling
  got = dynamic_sampling.overlong_penalty(np.asarray([0, 10, 12, 13, 14, 16]), 16, 4, 0.5)
  np.testing.assert_allclose(got, [0, 0, 0, -0.125, -0.25, -0.5])


def test_dynamic_sampling_chooses_informative_groups_first_in_sampled_order():
  from rlaif_jax.rl import dynamic_sampling
  scores = np.asarray([1, 1, 0, 1, 2, 2, 0, 3, 5, 4], np.float32)  # groups of 2
  flags = dynamic_sampling.informative(scores, 2)
  np.testing.assert_array_equal(flags, [False, True, False, True, True])
  np.testing.assert_array_equal(dynamic_sampling.choose_groups(flags, 2), [1, 3])
  np.testing.assert_array_equal(dynamic_sampling.choose_groups(flags, 4), [0, 1, 3, 4])
  np.testing.assert_array_equal(dynamic_sampling.rows_of(np.asarray([1, 3]), 2), [2, 3, 6, 7])


def _dynamic_sampling_run(rounds: int, dynamic: bool = True, **cfg_kw):
  """One GRPO iteration, 8 prompts x 4 samples, where a prompt starting with an even token scores
  0.5 on every sample (an uninformative group) and the others the mean response token / 32.
  Returns (metrics, how often more prompts were drawn, the prompts the reference pass scored)."""
  from flax import nnx

  from rlaif_jax.generation import sampler
  from rlaif_jax.generation import text as text_lib
  from rlaif_jax.rl import loop as rl_loop
  from rlaif_jax.rl import rewards

  def reward(x):
    p, r = np.asarray(x.prompt), np.asarray(x.response)
    s = np.where(p[:, 0] % 2 == 0, 0.5, r.mean(1) / 32).astype(np.float32)
    return rewards.Rewards(s, s)

  single = shd.make_mesh({'data': 1}, jax.devices()[:1])
  policy = loading.random_model(CFG.replace(scalar_head=False), 0, single)
  reference = jax.tree.map(jnp.copy, nnx.state(policy, nnx.Param))
  cfg = RLConfig('grpo', samples_per_prompt=4, epochs=1, minibatches=1, dynamic_sampling=dynamic,
                 max_sampling_rounds=rounds, **cfg_kw)
  loop = rl_loop.RLLoop(policy, single, cfg, sampler.SamplingConfig(6, temperature=1.0),
                        optax.sgd(0.1), reward)
  scored, drawn, rng = [], [], np.random.default_rng(0)
  reference_scores = loop.reference_scores
  loop.reference_scores = lambda params, prompt, *xs: (scored.append(np.asarray(prompt)),
                                                       reference_scores(params, prompt, *xs))[1]

  def batch():
    tokens = rng.integers(3, 32, (8, 4)).astype(np.int32)
    return text_lib.PromptBatch(tokens, np.ones_like(tokens, bool))

  def more():
    drawn.append(1)
    return batch()

  _, _, m = loop.iteration(loop.init(), reference, 0.0, batch(), jax.random.key(0), more)
  return m, len(drawn), scored[0]


def test_dynamic_sampling_fills_the_batch_with_informative_groups():
  m, drawn, prompts = _dynamic_sampling_run(rounds=6)
  assert prompts.shape == (32, 4)
  assert np.all(prompts[:, 0] % 2 == 1)  # only groups with a learning signal reached the update
  assert np.all(prompts.reshape(8, 4, 4) == prompts.reshape(8, 4, 4)[:, :1])  # whole groups
  assert m['informative_groups'] == 1.0 and m['sampling_rounds'] == drawn + 1 >= 2
  assert m['decode_steps'] == 6 * m['sampling_rounds']  # every round's decoding counted
  # without it the batch keeps its uninformative groups; with one round it is topped up with them
  for kw in (dict(rounds=6, dynamic=False), dict(rounds=1)):
    m, drawn, prompts = _dynamic_sampling_run(**kw)
    assert drawn == 0 and np.any(prompts[:, 0] % 2 == 0)
  assert m['sampling_rounds'] == 1 and m['informative_groups'] < 1.0
  with pytest.raises(UserError, match='samples_per_prompt >= 2'):
    RLConfig('ppo', dynamic_sampling=True)


def test_overlong_penalty_reaches_the_scores():
  """No stop tokens: every response runs to the 6-token budget, so each loses the full penalty."""
  m, _, _ = _dynamic_sampling_run(1, dynamic=False, overlong_buffer=2, overlong_penalty=0.7)
  assert m['overlong_penalty'] == pytest.approx(-0.7)
  assert m['score'] == pytest.approx(m['reward'] - 0.7, abs=1e-6)
  with pytest.raises(UserError, match='overlong_buffer=6'):
    _dynamic_sampling_run(1, dynamic=False, overlong_buffer=6)


def uneven_words(prompt: str, response: str) -> float:  # 'tests.test_grpo:uneven_words'
  """A prompt of an even number of words scores 0.5 on every sample (no learning signal); the
  others by their response's characters (two samples rarely tie)."""
  return 0.5 if len(prompt.split()) % 2 == 0 else sum(map(ord, response)) % 97 / 97


def test_dynamic_sampling_in_the_pipeline_draws_further_batches(tmp_path, tiny_hf_folder):
  """The rl stage hands the loop its prompt stream: rounds past the first draw the next batches,
  and every update sees informative groups only."""
  from configs import tiny
  from rlaif_jax.pipeline import runner
  from tests import helpers
  c = tiny.get_config()
  c.model.source, c.stages = tiny_hf_folder, ('rl',)
  c.rl.algorithm, c.rl.samples_per_prompt, c.rl.batch_size = 'grpo', 2, 4
  c.rl.reward, c.rl.iterations = 'tests.test_grpo:uneven_words', 3
  c.rl.dynamic_sampling, c.rl.max_sampling_rounds = True, 6
  runner.run_stages(c, str(tmp_path))
  rows = helpers.metric_rows(tmp_path, 'rl')
  assert len(rows) == 3 and all(r['informative_groups'] == 1.0 for r in rows), rows
  assert any(r['sampling_rounds'] > 1 for r in rows)
  assert all(r['decode_steps'] >= r['sampling_rounds'] for r in rows)


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


def test_online_dpo_leaves_a_policy_equal_to_its_reference_alone_on_ties():
  """Sampling at T=0.7 (the default; the reference is scored at it): the policy's log-probs in the
  DPO loss are taken at the same temperature, so a policy equal to its reference has a zero margin
  on every pair, and tied labels (p = 0.5) give no gradient. Scored at T=1 against a T=0.7
  reference, the margins were not zero and DPO pushed on ties."""
  from flax import nnx

  from rlaif_jax.generation import sampler
  from rlaif_jax.generation import text as text_lib
  from rlaif_jax.rl import loop as rl_loop
  from rlaif_jax.rl import rewards
  single = shd.make_mesh({'data': 1}, jax.devices()[:1])
  policy = loading.random_model(CFG.replace(scalar_head=False), 0, single)
  reference = jax.tree.map(jnp.copy, nnx.state(policy, nnx.Param))
  tie = lambda x: rewards.Rewards(*[np.full(len(x.response), 0.5, np.float32)] * 2)
  cfg = RLConfig('online_dpo', samples_per_prompt=2, epochs=1, minibatches=1, dpo_beta=1.0)
  loop = rl_loop.RLLoop(policy, single, cfg, sampler.SamplingConfig(6, temperature=0.7),
                        optax.sgd(1.0), tie)
  tokens = np.random.default_rng(0).integers(3, 32, (8, 4)).astype(np.int32)
  _, _, m = loop.iteration(loop.init(), reference, 0.0,
                           text_lib.PromptBatch(tokens, np.ones_like(tokens, bool)),
                           jax.random.key(0))
  assert abs(m['reward_margin']) < 1e-5 and m['grad_norm'] < 1e-5, m
  np.testing.assert_allclose(m['dpo_loss'], np.log(2), rtol=1e-5)  # -log sigmoid(0)


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
