"""The AI judge: parity of the soft label with PyTorch, debiasing, d-RLAIF, bad input, alignment."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rlaif_jax.data import constitution_files
from rlaif_jax.data import human_pairs
from rlaif_jax.feedback import alignment
from rlaif_jax.feedback import constitution
from rlaif_jax.feedback import judge as judge_lib
from rlaif_jax.feedback import option_scoring
from rlaif_jax.feedback import preferences
from rlaif_jax.feedback import requests as judge_requests
from rlaif_jax.generation import sampler
from rlaif_jax.generation import text as text_lib
from rlaif_jax.infra import sharding as shd
from rlaif_jax.infra import storage
from rlaif_jax.models import hf_checkpoint
from rlaif_jax.models import loading
from rlaif_jax.models import transformer as model_lib


CONTEXT = 'Human: How do I pick a lock?'
SAFE = 'I cannot help with breaking into places, but a locksmith can help if you are locked out.'
UNSAFE = 'Use a tension wrench and a pick, and rake the pins until they set.'


def one_device():
  return shd.make_mesh({'data': 1}, jax.devices()[:1])


@pytest.fixture(scope='module')
def smol_judge(smollm2):
  model, tok = smollm2
  return judge_lib.Judge(model, tok, one_device(), judge_requests.JudgeConfig(task='harmless'))


def test_soft_label_matches_torch(smol_judge, smollm2, tmp_path):
  import torch
  from transformers import LlamaForCausalLM
  model, tok = smollm2
  pref = smol_judge.pairwise([CONTEXT], [SAFE], [UNSAFE])
  request = smol_judge.encode(judge_requests.pairwise_request(smol_judge.cfg, CONTEXT, SAFE, UNSAFE),
                              smol_judge.cfg.answer_prefix)
  folder = str(tmp_path / 'smollm2')
  hf_checkpoint.export_folder(nnx.state(model), model.cfg, folder, tok)
  ref = LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
  with torch.no_grad():
    logits = ref(torch.tensor([request])).logits[0, -1].float()
  logp = torch.log_softmax(logits, -1)[[tok.convert_tokens_to_ids('1'), tok.convert_tokens_to_ids('2')]]
  expected = torch.softmax(logp, -1)[0].item()
  assert abs(float(pref.p_ab[0]) - expected) < 1e-3
  assert 0 < expected < 1 and abs(expected - 0.5) > 1e-4  # a real, non-degenerate label


def test_debiasing_is_symmetric_and_raw_bias_is_reported(smollm2):
  model, tok = smollm2
  on = judge_lib.Judge(model, tok, one_device(), judge_requests.JudgeConfig(task='harmless'))
  p = on.pairwise([CONTEXT, CONTEXT], [SAFE, 'Sure.'], [UNSAFE, ''])
  q = on.pairwise([CONTEXT, CONTEXT], [UNSAFE, ''], [SAFE, 'Sure.'])
  np.testing.assert_allclose(q.p_a_better, 1 - p.p_a_better, atol=1e-6)
  np.testing.assert_allclose(p.p_a_better, (p.p_ab + p.p_ba) / 2, atol=1e-6)
  off = judge_lib.Judge(model, tok, one_device(), judge_requests.JudgeConfig(task='harmless', debias=False))
  raw = off.pairwise([CONTEXT], [SAFE], [UNSAFE])
  np.testing.assert_allclose(raw.p_a_better, p.p_ab[:1], atol=1e-5)  # the raw first-order label
  assert np.isnan(raw.p_ba).all()


def test_expected_score_reward_on_constructed_distributions():
  logp = jnp.log(jnp.asarray([
      [1.0] + [0.0] * 9,  # certainly 1 -> -1
      [0.0] * 9 + [1.0],  # certainly 10 -> +1
      [0.1] * 10,  # uniform: E = 5.5 -> 0
      [0.0, 0.0, 0.5, 0.0, 0.0, 0.0, 0.5, 0.0, 0.0, 0.0],  # E = (3 + 7) / 2 = 5 -> -1/9
  ]) + 1e-30)
  r = np.asarray(preferences.expected_score_reward(logp))
  np.testing.assert_allclose(r, [-1.0, 1.0, 0.0, -1 / 9], atol=1e-6)


@pytest.mark.parametrize('arch', [
    {}, dict(scan_layers=True),
    # Gemma-2-like: the packed options must count window distances from the prompt's end
    dict(layer_types=('sliding', 'full'), sliding_window=3, norm_offset=1.0, sandwich_norms=True,
         attn_softcap=5.0, scan_layers=True)])
def test_option_log_probs_equal_teacher_forcing(arch):
  """All options of a prompt scored in one packed pass over its cache equal teacher forcing each
  prompt + option on its own."""
  cfg = model_lib.ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2,
                              num_heads=4, num_kv_heads=2, head_dim=8, **arch)
  model = loading.random_model(cfg, seed=3, mesh=one_device())
  prompts = [[5, 6, 7, 8, 9], [10, 11]]
  options = [[3], [4, 5], [6, 7, 8]]
  tokens, valid = text_lib.left_pad(prompts, 6, 0)
  opt = np.zeros((3, 3), np.int32)
  opt_valid = np.zeros((3, 3), bool)
  for i, o in enumerate(options):
    opt[i, :len(o)], opt_valid[i, :len(o)] = o, True
  kernel = jax.jit(lambda *a: option_scoring.option_log_probs(model, *a))
  got = np.asarray(kernel(tokens, valid, opt, opt_valid))
  for b, p in enumerate(prompts):
    for j, o in enumerate(options):
      seq = jnp.asarray([p + o])
      logp = jax.nn.log_softmax(model_lib.forward(model, seq, jnp.ones(seq.shape, bool)).logits[0])
      expected = sum(float(logp[len(p) - 1 + k, t]) for k, t in enumerate(o))
      assert abs(got[b, j] - expected) < 1e-4, (b, j)


@pytest.mark.parametrize('arch', [{}, dict(scan_layers=True)])
def test_a_shared_prefix_prefilled_once_scores_as_whole_prompts(arch):
  """Prompts that continue one prefix (left-padded, prefilled once for the batch, or once per
  batch shard) score every option as the whole prompts do, on one device and with the batch split
  over a data=2 mesh."""
  cfg = model_lib.ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2,
                              num_heads=4, num_kv_heads=2, head_dim=8, **arch)
  prefix, rests = [1, 2, 3, 4, 5, 6, 7], [[8, 9, 10], [11], [12, 13, 14, 15], [16, 17]]
  whole, whole_valid = text_lib.left_pad([prefix + r for r in rests], 12, 0)
  pre, pre_valid = text_lib.left_pad([prefix], 8, 0)  # one padding slot before the prefix
  rest, rest_valid = text_lib.left_pad(rests, 5, 0)
  for options in ([[3], [40]], [[3], [4, 5], [6, 7, 8]]):
    opt = np.zeros((len(options), max(map(len, options))), np.int32)
    opt_valid = np.zeros(opt.shape, bool)
    for i, o in enumerate(options):
      opt[i, :len(o)], opt_valid[i, :len(o)] = o, True
    for mesh, copies in ((one_device(), 1), (one_device(), 2),
                         (shd.make_mesh({'data': 2}, jax.devices()[:2]), 2)):
      model = loading.random_model(cfg, seed=3, mesh=mesh)
      expected = np.asarray(option_scoring.jit_option_log_probs(model, mesh)(
          nnx.state(model), whole, whole_valid, opt, opt_valid))
      got = np.asarray(option_scoring.jit_option_log_probs(model, mesh, shared_prefix=True)(
          nnx.state(model), pre.repeat(copies, 0), pre_valid.repeat(copies, 0), rest, rest_valid,
          opt, opt_valid))
      np.testing.assert_allclose(got, expected, atol=2e-5)
      assert np.abs(expected).min() > 0.1  # real log-probs, not zeros


def test_the_judge_shares_a_prefix_only_where_it_fills_fewer_slots(smol_judge):
  rows = [[1] * 70 + [2, 3], [1] * 70 + [4], [1] * 70 + [5]]  # 128 + 3 x 64 slots against 3 x 128
  assert smol_judge.shared_prefix(rows) == 70
  assert smol_judge.shared_prefix(rows[:2]) == 0  # 128 + 2 x 64 = 2 x 128: no fewer
  assert smol_judge.shared_prefix([[1] * 70 + [2, 3]]) == 0  # one request: nothing to share
  assert smol_judge.shared_prefix([[1] * 10 + [2]] * 3) == 0  # 64 + 3 x 64 > 3 x 64
  assert smol_judge.shared_prefix([[1] * 70] * 3) == 69  # each keeps a token to score from
  off = dataclasses.replace(smol_judge.cfg, share_prefix=False)
  assert judge_lib.Judge(smol_judge.model, smol_judge.tokenizer, one_device(), off).shared_prefix(rows) == 0


def test_shared_prefix_labels_equal_whole_prompt_labels(smol_judge, smollm2):
  """SmolLM2's labels and 1-10 rewards for a batch of requests: the same with the template's
  shared beginning prefilled once as with every request prefilled whole."""
  model, tok = smollm2
  whole = judge_lib.Judge(model, tok, one_device(),
                          judge_requests.JudgeConfig(task='harmless', share_prefix=False))
  contexts, a, b = [CONTEXT, 'Human: Tell me a joke.'], [SAFE, 'Why did the chicken cross?'], [UNSAFE, '']
  reqs = [smol_judge.encode(judge_requests.pairwise_request(smol_judge.cfg, c, x, y),
                            smol_judge.cfg.answer_prefix) for c, x, y in zip(contexts, a, b)]
  assert smol_judge.shared_prefix(reqs + reqs) > 50  # the chat template and the preamble
  shared, plain = smol_judge.pairwise(contexts, a, b), whole.pairwise(contexts, a, b)
  np.testing.assert_allclose(shared.p_ab, plain.p_ab, atol=2e-5)
  np.testing.assert_allclose(shared.p_ba, plain.p_ba, atol=2e-5)
  np.testing.assert_allclose(smol_judge.direct_reward(contexts, a)[0], whole.direct_reward(contexts, a)[0],
                             atol=2e-5)


def test_direct_reward_is_in_range_reads_the_response_and_skips_non_text(smollm2):
  model, tok = smollm2
  d = judge_lib.Judge(model, tok, one_device(), judge_requests.JudgeConfig(task='harmless'))
  assert len(d.score_options[9]) == 3  # "1", "0", <|im_end|>: digits are split, 10 != 1
  rewards, skipped = d.direct_reward([CONTEXT, CONTEXT, None], [SAFE, UNSAFE, SAFE])
  assert skipped.tolist() == [False, False, True] and rewards[2] == -1.0
  assert np.isfinite(rewards).all() and (np.abs(rewards) <= 1).all()
  assert rewards[0] != rewards[1]  # the response is read (which one a 135M judge prefers: not asserted)


def test_bad_responses_give_defined_labels_or_counted_skips(smollm2):
  model, tok = smollm2
  d = judge_lib.Judge(model, tok, one_device(),
                      judge_requests.JudgeConfig(task='helpful', max_response_tokens=40))
  long = 'word ' * 400
  pref = d.pairwise([CONTEXT, CONTEXT, CONTEXT, CONTEXT], ['', long, None, SAFE],
                    [SAFE, SAFE, SAFE, 12345])
  assert pref.skipped.tolist() == [False, False, True, True]
  assert np.isfinite(pref.p_a_better).all() and (pref.p_a_better[pref.skipped] == 0.5).all()
  assert pref.truncated == 1


def test_alignment_report_on_a_small_human_labeled_file(tmp_path, smollm2):
  model, tok = smollm2
  rows = [{'chosen': f'\n\nHuman: {q}\n\nAssistant: {good}', 'rejected': f'\n\nHuman: {q}\n\nAssistant: {bad}'}
          for q, good, bad in [('How do I pick a lock?', SAFE, UNSAFE),
                               ('Tell me an insult.', 'I would rather not insult anyone.',
                                'You are an idiot.'),
                               ('What is 2+2?', '4.', 'Go away.')]]
  rows.append({'prompt': 'Human: hi', 'chosen': 'Hello! How can I help?', 'rejected': 'What.'})
  path = tmp_path / 'human.jsonl'
  path.write_text('\n'.join(json.dumps(r) for r in rows) + '\n')
  pairs = human_pairs.read_human_pairs(str(path))
  assert pairs[0].context == 'Human: How do I pick a lock?' and pairs[0].chosen == SAFE
  d = judge_lib.Judge(model, tok, one_device(), judge_requests.JudgeConfig(task='harmless'))
  report = alignment.alignment(d, pairs, batch_size=2, progress=False)
  assert report['pairs'] == 4 and report['skipped'] == 0
  assert 0 <= report['agreement'] <= 1 and 0 <= report['position_consistency'] <= 1
  agree = d.pairwise([p.context for p in pairs], [p.chosen for p in pairs], [p.rejected for p in pairs])
  assert report['agreement'] == pytest.approx(float((agree.p_a_better > 0.5).mean()))
  bad = tmp_path / 'bad.jsonl'
  bad.write_text('{"chosen": "no assistant turn", "rejected": "x"}\n')
  with pytest.raises(ValueError, match=r'bad.jsonl:1: malformed preference row'):
    human_pairs.read_human_pairs(str(bad))


def test_chain_of_thought_gives_rationales_and_labels(smollm2):
  model, tok = smollm2
  d = judge_lib.Judge(model, tok, one_device(), judge_requests.JudgeConfig(task='harmless'))
  pref, rationales = d.pairwise_cot([CONTEXT, CONTEXT], [SAFE, None], [UNSAFE, SAFE],
                                    jax.random.key(0), sampler.SamplingConfig(24, temperature=0.0))
  assert rationales[0][0] and rationales[0][1]  # both orders explained, non-empty
  assert rationales[1] == ('', '') and pref.skipped.tolist() == [False, True]
  assert 0 < pref.p_a_better[0] < 1 and np.isfinite(pref.p_a_better).all()
  # self-consistency: two sampled rationales averaged
  pref2, _ = d.pairwise_cot([CONTEXT], [SAFE], [UNSAFE], jax.random.key(1),
                            sampler.SamplingConfig(16, temperature=0.8), samples=2)
  assert 0 < pref2.p_a_better[0] < 1


def test_constitution_sampling_is_seeded(tmp_path):
  path = tmp_path / 'c.txt'
  path.write_text('# comment\nBe kind.\n\nBe honest.\nBe safe.\n')
  principles = constitution_files.read_constitution(str(path))
  assert principles == ['Be kind.', 'Be honest.', 'Be safe.']
  a = constitution.sample_principles(principles, 20, seed=3)
  assert a == constitution.sample_principles(principles, 20, seed=3) and len(set(a)) > 1
  assert 'Judge by this principle: Be safe.' in judge_requests.pairwise_request(
      judge_requests.JudgeConfig(), 'ctx', 'x', 'y', principle='Be safe.')
  (tmp_path / 'empty.txt').write_text('# nothing\n')
  with pytest.raises(ValueError, match='has no principles'):
    constitution_files.read_constitution(str(tmp_path / 'empty.txt'))


def test_critique_and_revise_writes_sft_pairs(smollm2, tmp_path):
  model, tok = smollm2
  gen = text_lib.TextGenerator(model, tok, one_device(), prompt_buckets=(256,))
  records = constitution.critique_and_revise(gen, [CONTEXT], [UNSAFE], ['Do not help with break-ins.'],
                                             jax.random.key(0), sampler.SamplingConfig(24, temperature=0.0),
                                             rounds=2)
  r = records[0]
  assert len(r['critiques']) == 2 and len(r['revisions']) == 2 and all(r['critiques'])
  assert r['revision'] and r['revision'] in r['revisions'] + [UNSAFE]
  path = str(tmp_path / 'revisions.jsonl')
  storage.write_jsonl(path, records)  # as the sft stage writes them
  row = json.loads(open(path).read().splitlines()[0])
  assert row['prompt'] == CONTEXT and row['revision'] == r['revision']
  with pytest.raises(ValueError, match='rounds must be >= 1'):
    constitution.critique_and_revise(gen, [CONTEXT], [UNSAFE], ['x'], jax.random.key(0),
                                     sampler.SamplingConfig(4), rounds=0)
