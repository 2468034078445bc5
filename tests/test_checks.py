"""Checks (programmatic ground truth for a principle) and judge validation against them."""

import numpy as np
import pytest

from rlaif_jax.feedback import checks, validation
from rlaif_jax.feedback.preferences import Preference
from rlaif_jax.infra.errors import UserError

# (check, the response with more of the property, one with less)
PAIRS = [
    ('bulleted_list', 'Three ideas:\n- walk\n- read\n- cook', 'Walk, read or cook.'),
    ('bulleted_list', '1. Preheat\n2. Mix\n3) Bake', 'Preheat, mix, then bake.\n- one item'),
    ('ends_with_question', 'Paris is lovely. Would you like a list of museums?', 'Paris is lovely.'),
    ('ends_with_question', 'Sure. What time suits you?"', 'What time suits you? Any works.'),
    ('french', 'Bonjour, je suis très content de vous aider avec ce problème.',
     'Hello, I am very happy to help you with this problem.'),
    ('brevity', 'Yes.', 'Yes, that is right, and here is why in some detail.'),
    ('polite', 'Thank you for asking! I hope this helps.', 'Here it is.'),
    ('exclamations', 'Great question! Paris!', 'Paris, I think.'),
]


@pytest.mark.parametrize('name, more, less', PAIRS)
def test_each_built_in_check_prefers_the_response_with_its_property(name, more, less):
  check = checks.resolve(name)
  assert check('Q', more) > check('Q', less)
  assert checks.preferred(check, 'Q', more, less) == 1.0
  assert checks.preferred(check, 'Q', less, more) == 0.0
  assert checks.preferred(check, 'Q', more, more) == 0.5


def shouting(prompt, response):  # a user's own check, named 'tests.test_checks:shouting'
  letters = [c for c in response if c.isalpha()]
  return sum(c.isupper() for c in letters) / max(len(letters), 1)


def test_a_users_check_by_module_and_function_and_clear_errors():
  assert checks.resolve('tests.test_checks:shouting')('', 'HEY there') == pytest.approx(3 / 8)
  with pytest.raises(UserError, match="Unknown check 'loud'; use one of"):
    checks.resolve('loud')
  with pytest.raises(UserError, match='cannot be imported'):
    checks.resolve('tests.no_such_module:f')
  with pytest.raises(UserError, match='cannot be imported'):
    checks.resolve('tests.test_checks:no_such_function')


def test_agreement_leaves_out_check_ties_and_counts_judge_ties_as_half():
  p = np.array([0.9, 0.2, 0.5, 0.7, 0.1, 0.6])
  c = np.array([1.0, 0.0, 1.0, 0.0, 0.5, 1.0])  # the fifth pair: the check cannot tell
  out = validation.agreement(p, c, resamples=500)
  assert out['pairs'] == 5 and out['check_ties'] == 1
  assert out['agreement'] == pytest.approx((1 + 1 + 0.5 + 0 + 1) / 5)
  low, high = out['agreement_ci95']
  assert 0 <= low <= out['agreement'] <= high <= 1
  assert validation.verdict({'pairs': 40, 'agreement': 0.8, 'agreement_ci95': [0.66, 0.92]}
                            ).startswith('Worth training against')
  assert validation.verdict({'pairs': 40, 'agreement': 0.62, 'agreement_ci95': [0.52, 0.75]}
                            ).startswith('A weak signal')
  assert validation.verdict({'pairs': 40, 'agreement': 0.55, 'agreement_ci95': [0.4, 0.7]}
                            ).startswith('Do not train against it')
  assert validation.verdict({'pairs': 3, 'agreement': 1.0, 'agreement_ci95': [1.0, 1.0]}
                            ).startswith('Too few pairs for a verdict')


class StandIn:
  """A judge whose answers are known: pairwise prefers the longer response in the first order and
  says "1" in the swapped one (position-biased); pointwise says Yes to a list."""

  def pairwise(self, contexts, a, b, principles=None):
    p_ab = np.array([0.9 if len(x) > len(y) else 0.1 for x, y in zip(a, b)], np.float32)
    p_ba = np.full(len(a), 0.1, np.float32)  # "1" again after the swap: B's side, whichever it is
    p = (p_ab + p_ba) / 2
    return Preference(p, p_ab, p_ba, (p_ab > 0.5) == (p_ba > 0.5), np.zeros(len(a), bool), 0)

  def yes_no(self, contexts, responses, question):
    return np.array([3.0 * checks.bulleted_list('', r) - 1.0 for r in responses]), None


def test_validation_against_a_check_pairwise_and_pointwise_with_a_known_judge():
  prompts = ['Ideas?'] * 4
  lists = ['- a\n- b', '- walk far\n- swim', '1. x\n2. y', '- only']
  plain = ['a or b, or something else entirely', 'walk or swim', 'x then y', 'just this one']
  check = checks.CHECKS['bulleted_list']
  point = validation.validate(StandIn(), prompts, lists, plain, check, 'pointwise',
                              question='Is the response a bulleted list?', resamples=200)
  assert point['pairs'] == 4 and point['agreement'] == 1.0 and point['position_consistency'] is None
  pair = validation.validate(StandIn(), prompts, lists, plain, check, 'pairwise', resamples=200)
  # debiased p = (0.9 + 0.1) / 2 = 0.5 (a tie: half) where the list is longer, else 0.1 (B, against
  # the check, which prefers the list everywhere): two of each
  assert pair['agreement'] == pytest.approx(0.25) and pair['verdict'].startswith('Too few pairs')
  # consistent only where the first order also picked B (the longer, plain response)
  longer_b = np.mean([len(b) >= len(a) for a, b in zip(lists, plain)])
  assert pair['position_consistency'] == pytest.approx(longer_b)
  with pytest.raises(ValueError, match='question'):
    validation.validate(StandIn(), prompts, lists, plain, check, 'pointwise')


def test_validation_with_a_real_tiny_judge(tiny_hf_folder):
  """The tiny random judge through both formulations: numbers in range, and the pointwise soft
  label is the sigmoid of the two responses' yes/no scores."""
  import jax
  from rlaif_jax.feedback.judge import Judge
  from rlaif_jax.infra import sharding as shd
  from rlaif_jax.models import loading
  mesh = shd.make_mesh({'data': 1}, jax.devices()[:1])
  model, tok = loading.load_model(tiny_hf_folder, mesh)
  judge = Judge(model, tok, mesh)
  prompts = ['Give me ideas.', 'How do I bake bread?', 'Plan a trip.']
  lists = ['- walk\n- read', '1. Mix\n2. Bake', '- Paris\n- Lyon']
  plain = ['Walk or read.', 'Mix and bake.', 'Go to Paris.']
  check = checks.CHECKS['bulleted_list']
  for mode in ('pairwise', 'pointwise'):
    out = validation.validate(judge, prompts, lists, plain, check, mode,
                              question='Is the response a bulleted list?', resamples=200)
    assert out['pairs'] == 3 and 0 <= out['agreement'] <= 1 and isinstance(out['verdict'], str)
  sa, _ = judge.yes_no(prompts, lists, 'Is the response a bulleted list?')
  sb, _ = judge.yes_no(prompts, plain, 'Is the response a bulleted list?')
  assert np.all(np.isfinite(sa)) and not np.allclose(sa, sb)  # the response is read
  expected = np.mean(np.where(sa > sb, 1.0, np.where(sa < sb, 0.0, 0.5)))
  assert out['agreement'] == pytest.approx(expected)


def test_the_validate_stage_writes_its_measurement_and_verdicts(tmp_path, tiny_hf_folder):
  """--config.stages=validate on the tiny model: pairs sampled on held-out prompts, both
  formulations measured against the check, pairs and check scores written, a verdict each."""
  import json
  from configs import tiny
  from rlaif_jax.pipeline import runner
  config = tiny.get_config()
  config.model.source = tiny_hf_folder
  config.stages = ('validate',)
  config.check, config.validate.num_prompts = 'brevity', 4
  config.validate.question = 'Is the response short?'
  config.validate.sampling.max_new_tokens = 8
  out = runner.run_stages(config, str(tmp_path))['validate']
  saved = json.load(open(tmp_path / 'validate' / 'validation.json'))
  assert saved['check'] == 'brevity' and saved['prompts'] == 4
  rows = [json.loads(line) for line in open(tmp_path / 'validate' / 'pairs.jsonl')]
  assert len(rows) == 4
  differs = sum(r['check_a'] != r['check_b'] for r in rows)
  for mode in ('pairwise', 'pointwise'):
    assert saved[mode]['pairs'] == differs and saved[mode]['verdict'] == out[mode]['verdict']
  assert saved['check_differs'] == differs / 4
  assert 'judge agrees with check brevity' in runner.report.summary_table(
      str(tmp_path), {'validate': out}, {'validate': 1.0})
  # a second run finds it done
  assert runner.run_stages(config, str(tmp_path))['validate']['pairwise'] == saved['pairwise']


def test_pointwise_labels_and_the_checked_effect():
  """Pointwise label rows are the sigmoid of the yes/no scores' difference over the scale; the
  checked effect is the mean paired difference of the check's scores with a bootstrap interval."""
  import jax
  from rlaif_jax.feedback import labeling

  class Pointwise(StandIn):
    name = 'stand-in'

    def yes_no(self, contexts, responses, question):
      scores, _ = super().yes_no(contexts, responses, question)
      return scores, np.array([r == '' for r in responses])

  lists, plain = ['- a\n- b', '1. x\n2. y', '- c'], ['a or b', '', '- c']
  rows = labeling.label_batch(Pointwise(), ['Q'] * 3, lists, plain, 10, jax.random.key(0),
                              question='Is this a list?', scale=2.0)
  sa = np.array([3.0 * checks.bulleted_list('', r) - 1.0 for r in lists])
  sb = np.array([3.0 * checks.bulleted_list('', r) - 1.0 for r in plain])
  np.testing.assert_allclose([r['p_a_better'] for r in rows], 1 / (1 + np.exp(-(sa - sb) / 2)),
                             rtol=1e-6)
  assert [r['index'] for r in rows] == [10, 11, 12] and rows[2]['p_a_better'] == 0.5
  assert [r['skipped'] for r in rows] == [False, True, False]
  assert all(r['consistent'] and r['source'] == 'judge' for r in rows)
  assert rows[0]['p_ab'] == pytest.approx(sa[0]) and rows[0]['principle'] == 'Is this a list?'
  e = validation.checked_effect(checks.brevity, ['q'] * 4, ['a', 'a b', 'a', 'a b c'],
                                ['a b', 'a b', 'a b c', 'a'], resamples=500)
  assert e['effect'] == pytest.approx(0.25) and e['policy'] == pytest.approx(-7 / 4)
  assert e['reference'] == pytest.approx(-2.0) and (e['policy_higher'], e['reference_higher']) == (2, 1)
  lo, hi = e['effect_ci95']
  assert lo < 0.25 < hi and lo >= -2 and hi <= 2
  same = validation.checked_effect(checks.brevity, ['q'] * 3, ['a b'] * 3, ['a b'] * 3)
  assert same['effect'] == 0.0 and same['effect_ci95'] == [0.0, 0.0]
