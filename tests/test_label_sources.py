"""Label sources: the judge, human labels (a JSONL file, or a check standing in for annotators),
hybrid (the budgeted least-confident pairs to the human source) and the review queue a person edits
before the reward model trains."""

import json

import numpy as np
import pytest

from rlaif_jax.feedback import checks, label_sources
from rlaif_jax.infra.errors import UserError


def row(index, p, consistent=True, skipped=False, source='judge'):
  return {'index': index, 'prompt': f'p{index}', 'response_a': f'a{index}', 'response_b': f'b{index}',
          'p_a_better': p, 'consistent': consistent, 'skipped': skipped, 'source': source}


def test_doubt_order_hybrid_and_review_queue_pick_the_least_sure_labels():
  rows = [row(0, 0.9), row(1, 0.55), row(2, 0.2, consistent=False), row(3, 0.48),
          row(4, 0.5, skipped=True), row(5, 0.7, consistent=False), row(6, 0.99)]
  # inconsistent first (by confidence), then the least confident; skipped never
  assert label_sources.doubt_order(rows) == [5, 2, 3, 1, 0, 6]
  asked = []

  def human(rs):
    asked.extend(r['index'] for r in rs)
    return np.array([1.0, 0.0, 0.5])
  mixed = label_sources.hybrid(rows, 3, human)
  assert asked == [5, 2, 3]
  assert [r['source'] for r in mixed] == ['judge', 'judge', 'human', 'human', 'judge', 'human', 'judge']
  assert mixed[5]['p_a_better'] == 1.0 and mixed[5]['p_judge'] == 0.7
  assert mixed[2]['p_a_better'] == 0.0 and mixed[3]['p_a_better'] == 0.5
  assert rows[5]['p_a_better'] == 0.7  # the input rows are not changed
  assert label_sources.hybrid(rows, 0, human) == rows
  # the queue: AI labels only (human-labeled pairs are settled), most in doubt first
  queue = label_sources.review_queue(mixed, 2)
  assert [q['index'] for q in queue] == [1, 0] and all(q['preference'] is None for q in queue)
  assert set(queue[0]) == set(label_sources.QUEUE_FIELDS)


def test_merge_review_changes_exactly_the_filled_in_rows_and_refuses_a_mismatch():
  rows = [row(i, 0.6) for i in range(5)]
  queue = [dict(label_sources.review_queue(rows, 5)[k]) for k in range(5)]
  queue[1]['preference'], queue[3]['preference'] = 'b', 0.25
  merged, changed = label_sources.merge_review(rows, queue)
  assert changed == 2
  by = {r['index']: r for r in merged}
  edited = {queue[1]['index']: 0.0, queue[3]['index']: 0.25}
  for i in range(5):
    if i in edited:
      assert by[i]['p_a_better'] == edited[i] and by[i]['source'] == 'review'
      assert by[i]['p_judge'] == 0.6
    else:
      assert by[i] == rows[i]
  queue[1]['response_a'] = 'edited by mistake'
  with pytest.raises(UserError, match='does not match a labeled pair'):
    label_sources.merge_review(rows, queue)
  queue[1]['response_a'], queue[1]['preference'] = rows[queue[1]['index']]['response_a'], 'maybe'
  with pytest.raises(UserError, match="preference 'maybe' is not"):
    label_sources.merge_review(rows, queue)


def test_human_pairs_and_check_labels():
  lines = [json.dumps({'prompt': 'q', 'response_a': 'x', 'response_b': 'y', 'preference': p})
           for p in ('a', 'B', 'tie', 0.8)] + ['']
  pairs = label_sources.parse_human_pairs(lines, 'h.jsonl')
  assert [p.preference for p in pairs] == [1.0, 0.0, 0.5, 0.8]
  with pytest.raises(UserError, match='h.jsonl:1: malformed human label'):
    label_sources.parse_human_pairs(['{"prompt": "q"}'], 'h.jsonl')
  with pytest.raises(UserError, match='h.jsonl:1: preference 2 is not'):
    label_sources.parse_human_pairs([lines[0].replace('"a"', '2')], 'h.jsonl')
  labels = label_sources.check_labels(checks.brevity, ['q'] * 3, ['ok', 'a b c', 'same'],
                                      ['a b c', 'ok', 'same'])
  np.testing.assert_array_equal(labels, [1.0, 0.0, 0.5])


def _config(tiny_hf_folder, **label):
  from configs import tiny
  config = tiny.get_config()
  config.model.source = tiny_hf_folder
  config.stages = ('label',)
  config.check = 'brevity'
  config.label.num_prompts = 12
  config.label.batch_size = 4
  for k, v in label.items():
    config.label[k] = v
  return config


def test_hybrid_sends_exactly_the_budgeted_least_confident_pairs_to_the_check(tmp_path, tiny_hf_folder):
  from rlaif_jax.pipeline import label, runner
  config = _config(tiny_hf_folder, source='hybrid', human='check', human_budget=3, review_size=4)
  info = runner.run_stages(config, str(tmp_path))['label']
  ai = label.read_labels(tmp_path / 'label' / label.CHUNKS)  # the judge's labels of every pair
  rows = label.labels(tmp_path / 'label')
  assert [r['index'] for r in rows] == list(range(12)) and info['human_labels'] == 3
  human = [r for r in rows if r['source'] == 'human']
  assert sorted(r['index'] for r in human) == sorted(label_sources.doubt_order(ai)[:3])
  for r in human:  # the check's label, the judge's kept beside it
    assert r['p_a_better'] == checks.preferred(checks.brevity, r['prompt'], r['response_a'],
                                               r['response_b'])
    assert r['p_judge'] == ai[r['index']]['p_a_better']
  rest = [r for r in rows if r['source'] == 'judge']
  assert all(r == ai[r['index']] for r in rest)
  assert 'check_agreement' in info and info['check_pairs'] > 0
  queue = [json.loads(x) for x in open(tmp_path / 'label' / label.QUEUE)]
  assert len(queue) == 4 and {q['index'] for q in queue}.isdisjoint(r['index'] for r in human)


def test_an_edited_review_queue_changes_exactly_those_labels_in_the_reward_models_data(
    tmp_path, tiny_hf_folder):
  from rlaif_jax.pipeline import label, reward_model, runner
  from rlaif_jax.pipeline.context import RunContext
  config = _config(tiny_hf_folder, review_size=5)
  config.reward_model.steps = 2
  config.reward_model.batch_size = 8
  ctx = RunContext(config, str(tmp_path))
  runner.run_stages(config, str(tmp_path))  # label
  before = sum(reward_model.labeled_rows(ctx, 8, 0.25), [])
  path = tmp_path / 'label' / label.QUEUE
  queue = [json.loads(x) for x in open(path)]
  assert len(queue) == 5 and [q['index'] for q in queue] == label_sources.doubt_order(
      label.labels(tmp_path / 'label'))[:5]
  edits = {queue[0]['index']: 'a', queue[2]['index']: 'b', queue[4]['index']: 0.3}
  for q in queue:
    q['preference'] = edits.get(q['index'])
  path.write_text(''.join(json.dumps(q) + '\n' for q in queue))
  after = sum(reward_model.labeled_rows(ctx, 8, 0.25), [])
  want = {i: label_sources.preference_value(v, '') for i, v in edits.items()}
  assert [r['index'] for r in after] == [r['index'] for r in before]
  for b, a in zip(before, after):
    if b['index'] in want:
      assert a['p_a_better'] == want[b['index']] and a['source'] == 'review'
    else:
      assert a == b
  config.stages = ('label', 'reward_model')
  out = runner.run_stages(config, str(tmp_path))  # the reward model trains on the corrected labels
  assert 0 <= out['reward_model']['accuracy_check'] <= 1 and out['reward_model']['pairs_check'] > 0
  assert path.exists() and json.loads(path.read_text().splitlines()[0])['preference'] == 'a'


def test_human_labels_from_a_jsonl_the_test_writes(tmp_path, tiny_hf_folder):
  from rlaif_jax.pipeline import label, runner
  rng = np.random.default_rng(0)
  written = [{'prompt': f'question {i} ?', 'response_a': 'the cat ' * (1 + i % 3),
              'response_b': 'a dog ran', 'preference': ['a', 'b', 'tie', float(rng.uniform())][i % 4]}
             for i in range(10)]
  path = tmp_path / 'human.jsonl'
  path.write_text(''.join(json.dumps(r) + '\n' for r in written))
  config = _config(tiny_hf_folder, source='human', human=str(path))
  config.judge.source = str(tmp_path / 'no_judge_here')  # never loaded: humans label every pair
  info = runner.run_stages(config, str(tmp_path / 'work'))['label']
  rows = label.labels(tmp_path / 'work' / 'label')
  assert len(rows) == 10 and info['human_labels'] == 10 and info['position_consistency'] is None
  for r, w in zip(rows, written):
    assert (r['prompt'], r['response_a'], r['response_b']) == (w['prompt'], w['response_a'],
                                                               w['response_b'])
    assert r['p_a_better'] == label_sources.preference_value(w['preference'], '')
    assert r['source'] == 'human' and r['judge'] == f'human:{path}'
  bad = _config(tiny_hf_folder, source='human')
  with pytest.raises(UserError, match="label.source='human' needs label.human"):
    runner.run_stages(bad, str(tmp_path / 'bad'))


def test_compare_runs_each_source_in_its_own_workdir_and_tabulates_them(tmp_path):
  """pipeline.compare with a stand-in for run_stages: one config per source (judge without human
  labels, human for all, hybrid with the budget), its own workdir, the table from their summaries."""
  from configs import smollm2_demo
  from rlaif_jax.pipeline import compare
  config = smollm2_demo.get_config('compare')
  assert config.check and config.label.human == 'check' and tuple(config.compare) == (
      'judge', 'human', 'hybrid', 'reward_function')
  seen = {}

  def run_stages(c, workdir):
    ev = lambda effect: {'check': {'effect': effect, 'effect_ci95': [effect - 0.05, effect + 0.05],
                                   'policy': 0.3, 'reference': 0.2, 'samples_per_prompt': 8},
                         'win_rate': 0.5, 'win_rate_ci95': [0.4, 0.6]}
    if 'label' not in c.stages:  # reward_function: RL on the check, no labels
      seen['reward_function'] = (workdir, c.rl.reward, tuple(c.stages))
      return {'rl': {}, 'eval': ev(0.3)}
    seen[c.label.source] = (workdir, c.label.human, c.label.human_budget, tuple(c.compare))
    n = {'judge': 0, 'human': 256, 'hybrid': c.label.human_budget}[c.label.source]
    effect = {'judge': 0.01, 'human': 0.2, 'hybrid': 0.1}[c.label.source]
    return {'label': {'human_labels': n, 'pairs': 256, 'check_agreement': 0.5 + n / 600,
                      'check_agreement_ci95': [0.4, 0.9]},
            'reward_model': {'accuracy_check': 0.7, 'pairs_check': 40}, 'eval': ev(effect)}
  rows = compare.run(config, str(tmp_path), run_stages)
  budget = config.label.human_budget
  assert seen == {'judge': (str(tmp_path / 'judge'), '', 0, ()),
                  'human': (str(tmp_path / 'human'), 'check', 0, ()),
                  'hybrid': (str(tmp_path / 'hybrid'), 'check', budget, ()),
                  'reward_function': (str(tmp_path / 'reward_function'), 'check:exclamations',
                                      ('rl', 'eval'))}
  assert rows['human']['effect'] == 0.2 and rows['hybrid']['human_labels'] == budget
  table = (tmp_path / 'compare.md').read_text()
  assert f'| hybrid | {0.5 + budget / 600:.0%} (CI 40%-90%) | 0.700 (40 pairs) | +0.100 (CI 0.050-0.150)' in table
  assert '| human |' in table and 'standing in for annotators' in table
  assert '| reward_function | - (no labels: RL on the check) | - | +0.300 (CI 0.250-0.350) |' in table
  assert 'checked effect on 8 answers per held-out prompt' in table
  assert json.loads((tmp_path / 'compare.json').read_text())['judge']['human_labels'] == 0
  config.compare = ('judge', 'crowd')
  with pytest.raises(UserError, match='config.compare names label sources'):
    compare.run(config, str(tmp_path), run_stages)


def test_compare_on_a_tiny_model_end_to_end(tmp_path, tiny_hf_folder):
  """config.compare through the real stages: pointwise judge labels, the check as the human source,
  hybrid; each run's eval has the checked effect (the summary's first row) and samples in its report."""
  from configs import tiny
  from rlaif_jax.pipeline import compare, runner
  config = tiny.get_config()
  config.model.source = tiny_hf_folder
  config.stages = ('label', 'reward_model', 'rl', 'eval')
  config.check, config.label.question = 'brevity', 'Is the response short?'
  config.label.human, config.label.human_budget, config.label.num_prompts = 'check', 4, 12
  config.compare = ('judge', 'human', 'hybrid')
  config.rl.iterations, config.eval.samples_in_report = 2, 3
  rows = compare.run(config, str(tmp_path), runner.run_stages)
  assert [rows[s]['human_labels'] for s in ('judge', 'human', 'hybrid')] == [0, 12, 4]
  assert rows['human']['label_check_agreement'] == 1.0  # the check labels its own ties 0.5: left out
  for source in config.compare:
    ev = json.loads((tmp_path / source / 'eval' / 'eval.json').read_text())
    assert ev['check']['name'] == 'brevity' and ev['check']['prompts'] == 8
    assert rows[source]['effect'] == pytest.approx(ev['check']['policy'] - ev['check']['reference'])
    report = (tmp_path / source / 'eval' / 'report.md').read_text()
    assert '**check brevity: effect' in report and report.count('\n| ') >= 3
    assert '## Held-out samples (3 of 8)' in report
  assert (tmp_path / 'compare.md').read_text().count('\n| ') == 4  # header + 3 sources
