"""Reward functions as RL rewards (check:NAME, a user's module:function, the judge's yes/no score, a
weighted sum with each term kept), the checked effect on several sampled answers per prompt, and
the reward-hacking verdict of the eval report."""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from configs import tiny
from rlaif_jax.feedback import validation
from rlaif_jax.infra import metrics
from rlaif_jax.infra.errors import UserError
from rlaif_jax.pipeline import preflight, report, runner
from rlaif_jax.rl import config as rl_config
from rlaif_jax.rl import rewards

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPTS = ['say hi', 'say hello', 'say bye']
RESPONSES = ['hi ! !', 'hello there', 'bye !']


def shouted_words(prompt, response):  # a user's reward function: 'tests.test_reward_functions:...'
  return float(sum(w.isupper() for w in response.split()))


def not_a_number(prompt, response):
  return 'loud'


class YesNoJudge:  # records the question; "yes" as often as the response has exclamation marks
  def __init__(self):
    self.asked = []

  def yes_no(self, contexts, responses, question):
    self.asked.append((list(contexts), list(responses), question))
    return np.array([2.0 * r.count('!') - 1.0 for r in responses]), np.zeros(len(responses), bool)


def responses_of(tok, texts):
  """Responses encoded as the sampler leaves them: left-aligned, junk past the mask."""
  ids = [tok.encode(t, add_special_tokens=False) for t in texts]
  n = max(map(len, ids)) + 2
  response, mask = np.zeros((len(ids), n), np.int32), np.zeros((len(ids), n), bool)
  for i, x in enumerate(ids):
    response[i, :len(x)], mask[i, :len(x)] = x, True
    response[i, len(x):] = ids[0][0]  # must not reach a reward function
  prompt = np.ones((len(ids), 3), np.int32)
  return rewards.Responses(PROMPTS, prompt, np.ones_like(prompt, bool), response, mask)


def source_for(cfg, tok, judge=None, monitors=()):
  functions = preflight.resolve([name for name, _ in cfg.reward_terms] + list(monitors))
  return rewards.make_reward_source(cfg, judge=judge, tokenizer=tok, functions=functions,
                                    monitors=monitors)


@pytest.fixture(scope='module')
def tok(tokenizer_dir):
  from transformers import AutoTokenizer
  return AutoTokenizer.from_pretrained(tokenizer_dir)


def test_each_reward_kind_on_hand_made_responses(tok):
  x = responses_of(tok, RESPONSES)
  texts = [tok.decode(tok.encode(t, add_special_tokens=False)) for t in RESPONSES]
  # a built-in check: exclamation marks counted on the decoded responses (junk left out)
  got = source_for(rl_config.RLConfig(reward='check:exclamations'), tok)(x)
  np.testing.assert_array_equal(got.raw, [t.count('!') for t in texts])
  np.testing.assert_array_equal(got.normalized, got.raw)
  assert list(got.terms) == ['check:exclamations']
  # a user's function by module:function
  fn = 'tests.test_reward_functions:shouted_words'
  got = source_for(rl_config.RLConfig(reward=fn), tok)(responses_of(tok, ['HI there', 'OK OK', 'no']))
  np.testing.assert_array_equal(got.raw, [1, 2, 0])
  # the judge's pointwise yes/no score of rl.question
  judge = YesNoJudge()
  cfg = rl_config.RLConfig(reward='judge_yes_no', question='Is it loud?')
  got = source_for(cfg, tok, judge)(x)
  (contexts, seen, question), = judge.asked
  assert contexts == PROMPTS and question == 'Is it loud?' and seen == texts
  np.testing.assert_array_equal(got.raw, [2.0 * t.count('!') - 1 for t in texts])


def test_a_weighted_sum_keeps_each_term_and_a_monitor_adds_nothing(tok):
  x = responses_of(tok, RESPONSES)
  texts = [tok.decode(tok.encode(t, add_special_tokens=False)) for t in RESPONSES]
  cfg = rl_config.RLConfig(rewards=(('judge_yes_no', 1.0), ('check:brevity', 0.05)),
                           question='Is it loud?')
  judge = YesNoJudge()
  got = source_for(cfg, tok, judge, monitors=('check:exclamations',))(x)
  yes_no = np.array([2.0 * t.count('!') - 1 for t in texts])
  brevity = np.array([-len(t.split()) for t in texts], np.float64)
  np.testing.assert_allclose(got.normalized, yes_no + 0.05 * brevity, rtol=1e-6)
  np.testing.assert_allclose(got.raw, got.normalized)
  assert set(got.terms) == {'judge_yes_no', 'check:brevity', 'check:exclamations'}
  np.testing.assert_allclose(got.terms['check:brevity'], brevity)
  np.testing.assert_allclose(got.terms['check:exclamations'], [t.count('!') for t in texts])
  assert len(judge.asked) == 1  # the responses decoded once, the judge asked once


def test_bad_reward_terms_are_clear_errors():
  with pytest.raises(UserError, match="Unknown rl.reward 'human'"):
    rl_config.RLConfig(reward='human')
  with pytest.raises(UserError, match='set rl.question'):
    rl_config.RLConfig(reward='judge_yes_no')
  with pytest.raises(UserError, match='not a .name, weight. pair'):
    rl_config.RLConfig(rewards=(('check:brevity', 'high'),))
  with pytest.raises(UserError, match='no term with a non-zero weight'):
    rl_config.RLConfig(rewards=(('check:brevity', 0.0),))
  config = tiny.get_config()
  config.rl.reward = 'check:exclamation'
  with pytest.raises(UserError, match="Unknown check 'exclamation'"):
    preflight.reward_functions(config)
  config.rl.reward = 'tests.test_reward_functions:no_such_function'
  with pytest.raises(UserError, match='cannot be imported'):
    preflight.reward_functions(config)
  from rlaif_jax.pipeline import checks, context
  config.rl.reward, config.eval.baseline = 'check:brevity', 'start'
  with pytest.raises(UserError, match="eval.baseline must be 'reference'"):
    checks.check_config(config, context.STAGE_ORDER)


def test_a_reward_function_that_returns_no_number_names_itself(tok):
  cfg = rl_config.RLConfig(reward='tests.test_reward_functions:not_a_number')
  with pytest.raises(UserError, match="not_a_number' returned 'loud' for response 0"):
    source_for(cfg, tok)(responses_of(tok, RESPONSES))


@pytest.mark.parametrize('flag', ['--config.rl.reward=check:exclamation',
                                  "--config.rl.rewards=(('judge_yes_no', 1.0), ('bogus', 0.1))"])
def test_an_unknown_reward_name_fails_before_anything_loads(tmp_path, flag):
  t0 = time.time()
  r = subprocess.run([sys.executable, '-m', 'rlaif_jax.main', '--config=configs/tiny.py',
                      f'--workdir={tmp_path / "run"}', '--config.model.source=/no/model/needed',
                      "--config.rl.question=Is it?", flag], cwd=ROOT, capture_output=True, text=True,
                     timeout=120, env=dict(os.environ, JAX_PLATFORMS='cpu'))
  seconds = time.time() - t0
  assert r.returncode == 2, r.stderr[-2000:]
  (error,) = [line for line in r.stderr.splitlines() if line.strip()]  # one line, nothing else
  assert error.startswith('rlaif_jax: error: Unknown') and len(error) < 400, error
  assert not (tmp_path / 'run').exists() and r.stdout == ''  # no stage, no workdir, no model
  print(f'{flag}: failed in {seconds:.2f} s')


def test_checked_effect_averages_each_prompts_samples_and_resamples_prompts():
  check = lambda p, r: float(r.count('!'))
  prompts = ['a', 'b', 'c', 'd']
  policy = ['!', '', '!!', '!', '', '', '!', '!']  # per prompt: 0.5, 1.5, 0, 1
  reference = ['', '', '', '!', '', '', '', '']  # 0, 0.5, 0, 0
  e = validation.checked_effect(check, prompts, policy, reference, samples=2)
  assert e['prompts'] == 4 and e['policy'] == pytest.approx(0.75) and e['reference'] == 0.125
  assert e['effect'] == pytest.approx(0.625) and e['policy_higher'] == 3
  assert e['policy_nonzero'] == pytest.approx(5 / 8) and e['reference_nonzero'] == 1 / 8
  low, high = e['effect_ci95']
  assert 0 <= low < 0.625 < high <= 1.0  # bootstrap over the 4 prompt differences (0.5, 1, 0, 1)
  with pytest.raises(ValueError, match='need 8 responses a side'):
    validation.checked_effect(check, prompts, policy[:6], reference, samples=2)


def _write_run(workdir, reward, check):
  writer = metrics.Writer(str(workdir), 'rl')
  for i, (r, c) in enumerate(zip(reward, check)):
    writer.write(i + 1, {'reward': float(r), 'kl': 0.01 * i, 'reward/check:exclamations': float(c)})
  writer.close()
  return metrics.read(str(workdir), 'rl')


def test_reward_hacking_is_flagged_when_the_reward_rises_and_the_check_does_not(tmp_path):
  rng = np.random.default_rng(0)
  rising = np.linspace(0.0, 2.0, 20) + 0.05 * rng.standard_normal(20)
  flat = 0.3 + 0.05 * rng.standard_normal(20)
  hacked = report.reward_hacking(_write_run(tmp_path / 'hacked', rising, flat), 'exclamations')
  assert hacked['flag'] and hacked['reward_rose'] and not hacked['check_rose']
  assert hacked['window'] == 4 and hacked['text'].startswith('Reward hacking: the RL reward rose')
  honest = report.reward_hacking(_write_run(tmp_path / 'honest', rising, rising / 2), 'exclamations')
  assert not honest['flag'] and honest['check_rose'] and 'check exclamations' in honest['text'] and honest['text'].count('(rose') == 2
  # no monitored check, or too few iterations: no verdict
  assert report.reward_hacking(_write_run(tmp_path / 'short', rising[:3], flat[:3]),
                               'exclamations') is None
  assert report.reward_hacking(_write_run(tmp_path / 'other', rising, flat), 'brevity') is None
  # the report says it, in bold, and plots reward and check per iteration
  results = {'prompts': 4, 'policy_from': 'rl', 'reference_from': 'base', 'reward_hacking': hacked}
  path = report.write(str(tmp_path / 'hacked'), results)
  text = path.read_text()
  assert '**Reward hacking: the RL reward rose' in text and 'rl_reward_check.png' in text
  assert os.path.getsize(tmp_path / 'hacked' / 'eval' / 'rl_reward_check.png') > 1000


def test_rl_on_a_check_with_sampled_eval_and_no_judge(tmp_path, tiny_hf_folder):
  """The tiny pipeline, rl and eval only: GRPO on a check, the check monitored per iteration, the
  checked effect on 3 sampled answers per held-out prompt (and greedy), no judge loaded."""
  config = tiny.get_config()
  config.model.source = tiny_hf_folder
  config.stages = ('rl', 'eval')
  config.check = 'brevity'
  config.rl.algorithm, config.rl.samples_per_prompt, config.rl.batch_size = 'grpo', 2, 4
  config.rl.rewards = (('check:brevity', 1.0), ('tests.test_reward_functions:shouted_words', 0.5))
  config.rl.iterations = 4
  config.eval.judge, config.eval.samples_per_prompt, config.eval.baseline = False, 3, 'source'
  config.eval.sampling.temperature = 0.0
  summaries = runner.run_stages(config, str(tmp_path))
  rows = metrics.read(str(tmp_path), 'rl')
  assert [r['step'] for r in rows] == [1, 2, 3, 4]
  for r in rows:  # each term per iteration; the sum is what RL optimised
    assert r['reward/check:brevity'] <= 0 and r['reward/tests.test_reward_functions:shouted_words'] >= 0
    assert r['reward'] == pytest.approx(r['reward/check:brevity'] +
                                        0.5 * r['reward/tests.test_reward_functions:shouted_words'],
                                        rel=1e-5, abs=1e-5)
  ev = summaries['eval']
  assert ev['reference_from'] == tiny_hf_folder  # eval.baseline='source'
  assert 'win_rate' not in ev and 'harmless_rate_policy' not in ev  # eval.judge=False
  assert ev['check']['samples_per_prompt'] == 3 and ev['check']['temperature'] == 1.0
  assert ev['check_greedy']['samples_per_prompt'] == 1 and ev['check']['prompts'] == 8
  sampled = [json.loads(line) for line in open(tmp_path / 'eval' / 'sampled.jsonl')]
  assert len(sampled) == 24 and [s['prompt'] for s in sampled[:3]] == [sampled[0]['prompt']] * 3
  # the sampled effect is the mean over prompts of each prompt's mean check difference
  score = lambda t: -float(len(t.split()))
  diff = np.array([score(s['policy']) - score(s['reference']) for s in sampled]).reshape(8, 3)
  assert ev['check']['effect'] == pytest.approx(diff.mean(1).mean())
  assert 'reward_hacking' in ev and isinstance(ev['reward_hacking']['flag'], bool)
  assert 'x 3 sampled answers (T=1)' in (tmp_path / 'eval' / 'report.md').read_text()
