"""DPO from AI labels: the losses against their formulas, and the dpo stage on a tiny policy
learning synthetic preferences it then ranks correctly on held-out pairs."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny
from rlaif_jax.infra import storage
from rlaif_jax.infra.errors import UserError
from rlaif_jax.pipeline import context, label, runner
from rlaif_jax.training import dpo

log_sigmoid = lambda x: -np.logaddexp(0.0, -x)


def random_pairs(n=16, seed=0):
  rng = np.random.default_rng(seed)
  pi_a, pi_b, ref_a, ref_b = (-rng.uniform(5, 30, n) for _ in range(4))
  p = rng.uniform(0, 1, n)
  p[:3] = [1.0, 0.0, 0.5]
  return pi_a, pi_b, ref_a, ref_b, p


@pytest.mark.parametrize('labels,smoothing', [('soft', 0.0), ('hard', 0.0), ('hard', 0.1)],
                         ids=['soft', 'dpo', 'cdpo'])
@pytest.mark.parametrize('beta', [0.1, 0.5])
def test_sigmoid_loss_equals_its_formula(labels, smoothing, beta):
  pi_a, pi_b, ref_a, ref_b, p = random_pairs()
  cfg = dpo.DPOConfig(beta=beta, labels=labels, label_smoothing=smoothing)
  h = (pi_a - ref_a) - (pi_b - ref_b)
  t = p if labels == 'soft' else np.where(p > 0.5, 1 - smoothing, np.where(p < 0.5, smoothing, 0.5))
  want = np.mean(-(t * log_sigmoid(beta * h) + (1 - t) * log_sigmoid(-beta * h)))
  got = dpo.preference_loss(jnp.asarray(h), dpo.targets(jnp.asarray(p), cfg), cfg)
  np.testing.assert_allclose(float(got), want, rtol=1e-5)
  if labels == 'hard' and not smoothing:  # DPO's own form: -log s(beta (h_w - h_l)) on the winner
    w = p != 0.5
    sign = np.where(p > 0.5, 1, -1)
    dpo_paper = -log_sigmoid(beta * sign * h)
    np.testing.assert_allclose(float(got), np.mean(np.where(w, dpo_paper, -log_sigmoid(beta * h) / 2
                                                           - log_sigmoid(-beta * h) / 2)), rtol=1e-5)


@pytest.mark.parametrize('labels', ['soft', 'hard'])
def test_ipo_loss_equals_its_formula_and_its_minimum(labels):
  pi_a, pi_b, ref_a, ref_b, p = random_pairs(seed=1)
  beta = 0.2
  cfg = dpo.DPOConfig(beta=beta, loss='ipo', labels=labels)
  h = (pi_a - ref_a) - (pi_b - ref_b)
  t = p if labels == 'soft' else np.where(p > 0.5, 1.0, np.where(p < 0.5, 0.0, 0.5))
  c = 1 / (2 * beta)
  want = np.mean(t * (h - c) ** 2 + (1 - t) * (h + c) ** 2)
  got = dpo.preference_loss(jnp.asarray(h), jnp.asarray(t), cfg)
  np.testing.assert_allclose(float(got), want, rtol=1e-5)
  if labels == 'hard':  # IPO's paper: (h_w,l - 1 / (2 tau))^2 for the preferred side
    decided = p != 0.5
    sign = np.where(p > 0.5, 1, -1)
    np.testing.assert_allclose(
        float(dpo.preference_loss(jnp.asarray(h[decided]), jnp.asarray(t[decided]), cfg)),
        np.mean((sign * h - c)[decided] ** 2), rtol=1e-5)
  # the minimiser: h = (2p - 1) / (2 beta), where the gradient vanishes
  grad = jax.grad(lambda x: dpo.preference_loss(x, jnp.asarray(t), cfg))(jnp.asarray((2 * t - 1) * c))
  np.testing.assert_allclose(np.asarray(grad), 0.0, atol=1e-5)


def test_bad_settings_are_refused():
  for kw, match in (({'loss': 'kto'}, 'dpo.loss'), ({'labels': 'x'}, 'dpo.labels'),
                    ({'beta': 0.0}, 'dpo.beta'), ({'label_smoothing': 0.5}, 'dpo.label_smoothing')):
    with pytest.raises(UserError, match=match):
      dpo.DPOConfig(**kw)


WORDS = tiny.WORDS


def synthetic_rows(n, seed):
  """Pairs where the response naming a cat is preferred (p 0.9), on random sides."""
  rng = np.random.default_rng(seed)
  rows = []
  for i in range(n):
    filler = lambda: ' '.join(rng.choice([w for w in WORDS if w != 'cat'], 4))
    good, bad = f'the cat {filler()}', f'the dog {filler()}'
    a_good = bool(rng.integers(2))
    rows.append({'index': i, 'prompt': ' '.join(rng.choice(WORDS, 5)) + ' ?',
                 'response_a': good if a_good else bad, 'response_b': bad if a_good else good,
                 'p_a_better': 0.9 if a_good else 0.1, 'skipped': False, 'consistent': True})
  return rows


def test_dpo_stage_learns_synthetic_preferences(tmp_path, tiny_hf_folder):
  config = tiny.get_config()
  config.model.source = tiny_hf_folder
  config.stages = ('dpo',)
  config.dpo.steps, config.dpo.learning_rate, config.dpo.warmup_steps = 40, 3e-3, 2
  config.dpo.beta, config.dpo.prompt_length, config.dpo.response_length = 0.5, 24, 12
  config.dpo.eval_fraction = 0.25
  rows = synthetic_rows(64, 0)
  chunks = storage.makedirs(tmp_path / 'label' / label.CHUNKS)
  storage.write_jsonl(chunks / '000000.jsonl', rows)
  storage.write_json(tmp_path / 'label' / context.DONE, {'pairs': len(rows)})
  summary = runner.run_stages(config, str(tmp_path))['dpo']
  assert summary['eval_pairs'] == 16 and summary['train_pairs'] == 48
  assert summary['eval_accuracy'] > 0.9, summary
  assert summary['eval_reward_margin'] > 0
  # the reference log-probs were computed once, for every pair, and are kept with the run
  ref = json.load(open(tmp_path / 'dpo' / 'reference.json'))
  assert len(ref['ref_a']) == 64 and all(x < 0 for x in ref['ref_a'])
  steps = [json.loads(line) for line in open(tmp_path / 'metrics.jsonl') if '"dpo"' in line]
  assert len(steps) >= 40 and steps[-1]['loss'] < steps[0]['loss']
  # the dpo policy is the run's policy from now on (eval, export, a later rl); the reference is not
  ctx = context.RunContext(config, str(tmp_path))
  assert ctx.policy_dir().name == 'policy' and ctx.policy_dir().parent.name == 'dpo'
  assert ctx.policy_dir(reference=True) is None
  assert runner.run_stages(config, str(tmp_path))['dpo'] == summary  # complete: skipped


def test_online_dpo_stage_with_the_judges_pairwise_labels(tmp_path, tiny_hf_folder, monkeypatch):
  """rl.algorithm=online_dpo in the pipeline: no reward model stage; each iteration's pairs are
  labeled by the judge (debiased, both orders) and a DPO update follows on those labels."""
  from rlaif_jax.feedback import judge as judge_lib
  labels = []
  pairwise = judge_lib.Judge.pairwise

  def recorded(self, *args, **kw):  # the judge's own preferences, as the update must see them
    pref = pairwise(self, *args, **kw)
    labels.append(np.asarray(pref.p_a_better))
    return pref

  monkeypatch.setattr(judge_lib.Judge, 'pairwise', recorded)
  config = tiny.get_config()
  config.model.source = tiny_hf_folder
  config.stages = ('rl',)
  config.rl.algorithm, config.rl.samples_per_prompt, config.rl.minibatches = 'online_dpo', 2, 1
  config.rl.reward, config.rl.preference, config.rl.iterations = 'judge', 'pairwise', 3
  summary = runner.run_stages(config, str(tmp_path))['rl']
  rows = [json.loads(line) for line in open(tmp_path / 'metrics.jsonl')]
  rl_rows = [r for r in rows if r['stage'] == 'rl']
  assert len(rl_rows) == 3 and (tmp_path / 'rl' / 'policy' / 'DONE.json').exists()
  assert len(labels) == 3  # one call a iteration, on its pairs
  for r, p in zip(rl_rows, labels):
    assert np.isfinite(r['dpo_loss']) and r['time_scoring'] > 0 and r['share_update'] > 0
    # the update's labels are the judge's: their confidence, |p - 0.5| x 2 over the pairs
    assert r['label_confidence'] == pytest.approx(np.mean(np.abs(p - 0.5) * 2), abs=1e-5)
  assert any(np.any(p != 0.5) for p in labels)  # the judge did not say 0.5 throughout
  assert not (tmp_path / 'reward_model').exists()
  assert summary['iterations'] == 3
  assert summary['reward'] == pytest.approx(np.mean([r['reward'] for r in rl_rows]), rel=1e-5)
