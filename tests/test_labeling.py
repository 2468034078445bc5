"""The labeling stage: sampled pairs labeled by the judge into the preference rows the reward-model
stage reads, resumable after a crash."""

import jax
import numpy as np
import pytest

from rlaif_jax.feedback import judge as judge_lib
from rlaif_jax.feedback import requests as judge_requests
from rlaif_jax.generation import sampler
from rlaif_jax.generation import text as text_lib
from rlaif_jax.infra import sharding as shd
from rlaif_jax.models import loading
from rlaif_jax.feedback import labeling
from rlaif_jax.pipeline import label as label_stage

PROMPTS = [f'the cat sat on the mat {i} times ?' for i in range(10)]


@pytest.fixture(scope='module')
def tiny(tiny_hf_folder):
  mesh = shd.make_mesh({'data': 1}, jax.devices()[:1])
  model, tok = loading.load_model(tiny_hf_folder, mesh)
  j = judge_lib.Judge(model, tok, mesh,
                      judge_requests.JudgeConfig(task='helpful', prompt_buckets=(256, 512)),
                      name='tiny-judge')
  policy = text_lib.TextGenerator(model, tok, mesh, prompt_buckets=(64,))
  return j, policy


def _run(tmp, tiny, crash_after=None):
  j, policy = tiny
  calls = {'n': 0}
  original = j.pairwise

  def flaky(*a, **kw):
    calls['n'] += 1
    if crash_after is not None and calls['n'] > crash_after:
      raise RuntimeError('simulated crash')
    return original(*a, **kw)

  j.pairwise = flaky
  try:
    return label_stage.label_prompts(j, PROMPTS, str(tmp), jax.random.key(0), policy=policy,
                                     response_settings=sampler.SamplingConfig(6, temperature=1.0),
                                     batch_size=4, constitution=['Be kind.', 'Be brief.', 'Be right.'],
                                     seed=1, progress=False)
  finally:
    j.pairwise = original


def _rows(path):
  return label_stage.read_labels(path)


def test_labeling_writes_the_preference_rows(tmp_path, tiny):
  rows = _rows(_run(tmp_path, tiny))
  assert [int(r['index']) for r in rows] == list(range(len(PROMPTS)))
  assert all(0 < r['p_a_better'] < 1 for r in rows)
  assert {r['principle'] for r in rows} <= {'Be kind.', 'Be brief.', 'Be right.'}
  assert rows[0]['judge'] == 'tiny-judge' and rows[3]['prompt'] == PROMPTS[3]
  assert any(r['response_a'] != r['response_b'] for r in rows)  # two independent samples
  assert all(tuple(r) == labeling.ROW_FIELDS for r in rows)


def test_crash_mid_way_then_resume_gives_the_same_dataset(tmp_path, tiny):
  expected = _rows(_run(tmp_path / 'straight', tiny))
  with pytest.raises(RuntimeError, match='simulated crash'):
    _run(tmp_path / 'resumed', tiny, crash_after=2)
  chunks = sorted(p.name for p in (tmp_path / 'resumed' / 'label_chunks').iterdir())
  assert chunks == ['000000.jsonl', '000001.jsonl']  # finished batches kept, nothing half-written
  got = _rows(_run(tmp_path / 'resumed', tiny))
  assert len(got) == len(expected)
  for g, e in zip(got, expected):
    assert g.keys() == e.keys()
    for k in g:
      np.testing.assert_array_equal(g[k], e[k], err_msg=k)
