"""The sampler: exact greedy decoding, the right distributions, log-probs, compiles, sharding."""

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
from rlaif_jax.models import loading
from rlaif_jax.models import transformer as model_lib

CFG = model_lib.ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2,
                            num_heads=8, num_kv_heads=4, head_dim=8, rope_theta=500.0)
PROMPTS = [[5, 9, 11, 3, 7, 8, 21], [4, 6], [30, 31, 32, 33], [12]]  # mixed lengths


def one_device_mesh():
  return shd.make_mesh({'data': 1}, jax.devices()[:1])


@pytest.fixture(scope='module')
def tiny():
  return loading.random_model(CFG, seed=1, mesh=one_device_mesh())


def greedy_without_cache(model, prompt, n):
  """Reference: append the argmax of a full forward pass, n times (no cache, no padding)."""
  ids = list(prompt)
  f = jax.jit(lambda t: model_lib.forward(model, t, jnp.ones(t.shape, bool)).logits[0, -1])
  for _ in range(n):
    ids.append(int(jnp.argmax(f(jnp.asarray([ids], jnp.int32)))))
  return ids[len(prompt):]


def test_greedy_with_cache_equals_full_forward_decoding(tiny):
  n = 12
  tokens, valid = text_lib.left_pad(PROMPTS, 8, pad_id=0)
  run = sampler.make_sampler(tiny, one_device_mesh(), sampler.SamplingConfig(n, temperature=0.0))
  out = run(nnx.state(tiny), tokens, valid, jax.random.key(0))
  for row, prompt in enumerate(PROMPTS):
    assert out.tokens[row].tolist() == greedy_without_cache(tiny, prompt, n), row
  assert np.asarray(out.mask).all()


def test_stop_tokens_end_rows_and_mask(tiny):
  tokens, valid = text_lib.left_pad(PROMPTS, 8, pad_id=0)
  free = greedy_without_cache(tiny, PROMPTS[0], 10)
  stop = free[3]  # row 0 emits this token at step 3 (maybe earlier too)
  first = free.index(stop)
  run = sampler.make_sampler(tiny, one_device_mesh(),
                             sampler.SamplingConfig(10, temperature=0.0, stop_tokens=(stop,)),
                             pad_id=0)
  out = jax.device_get(run(nnx.state(tiny), tokens, valid, jax.random.key(0)))
  assert out.tokens[0, :first + 1].tolist() == free[:first + 1]
  assert out.mask[0].tolist() == [True] * (first + 1) + [False] * (9 - first)
  assert (out.tokens[0, first + 1:] == 0).all() and (out.log_probs[0, first + 1:] == 0).all()


def fixed_logits_model(logits: np.ndarray) -> model_lib.Transformer:
  """A tiny model whose next-token logits are `logits` whatever the input: every embedding row is
  e_0, attention and MLP outputs are zero, and row 0 of the untied head holds the logits."""
  cfg = CFG.replace(vocab_size=len(logits), tie_word_embeddings=False, rms_norm_eps=0.0)
  model = loading.random_model(cfg, seed=0, mesh=one_device_mesh())
  e = cfg.hidden_size
  embed = np.zeros((cfg.vocab_size, e), np.float32)
  embed[:, 0] = 1.0
  model.embed[...] = jnp.asarray(embed)
  for layer in model.layers:
    layer.attn.o[...] = jnp.zeros_like(layer.attn.o[...])
    layer.mlp.down[...] = jnp.zeros_like(layer.mlp.down[...])
  model.final_norm.scale[...] = jnp.full((e,), 1 / np.sqrt(e), jnp.float32)  # rmsnorm(e_0) = sqrt(E) e_0
  head = np.zeros((e, cfg.vocab_size), np.float32)
  head[0] = logits
  model.lm_head[...] = jnp.asarray(head)
  return model


LOGITS = np.array([2.0, 1.0, 0.5, 0.0, -0.5, -1.0, 1.5, 0.2], np.float32)


def draws(settings: sampler.SamplingConfig, rows=512):
  model = fixed_logits_model(LOGITS)
  prompt = np.full((rows, 2), 3, np.int32)
  run = sampler.make_sampler(model, one_device_mesh(), settings)
  out = jax.device_get(run(nnx.state(model), prompt, np.ones_like(prompt, bool), jax.random.key(7)))
  return out.tokens.reshape(-1), out.log_probs.reshape(-1)


@pytest.mark.parametrize('temperature', [1.0, 0.6])
def test_token_frequencies_match_softmax(temperature):
  tokens, logp = draws(sampler.SamplingConfig(8, temperature=temperature))
  p = np.exp(LOGITS / temperature - np.logaddexp.reduce(LOGITS / temperature))
  counts = np.bincount(tokens, minlength=len(LOGITS))
  expected = p * len(tokens)
  chi2 = float(((counts - expected) ** 2 / expected).sum())
  assert chi2 < 29.9, (chi2, counts, expected)  # 99.99th percentile of chi-square with 7 dof
  np.testing.assert_allclose(logp, np.log(p)[tokens], rtol=1e-5, atol=1e-5)


def test_top_k_and_top_p_keep_only_their_sets():
  order = np.argsort(-LOGITS)
  tokens, _ = draws(sampler.SamplingConfig(8, temperature=1.0, top_k=3))
  assert set(tokens.tolist()) == set(order[:3].tolist())
  p = np.exp(LOGITS - np.logaddexp.reduce(LOGITS))
  mass_before = np.cumsum(p[order]) - p[order]
  nucleus = set(order[mass_before < 0.7].tolist())  # smallest top set with mass >= 0.7
  tokens, _ = draws(sampler.SamplingConfig(8, temperature=1.0, top_p=0.7))
  assert set(tokens.tolist()) == nucleus and len(nucleus) < len(LOGITS)


def test_returned_log_probs_equal_score(tiny):
  settings = sampler.SamplingConfig(10, temperature=0.8, top_k=20)
  tokens, valid = text_lib.left_pad(PROMPTS, 8, pad_id=0)
  mesh = one_device_mesh()
  out = sampler.make_sampler(tiny, mesh, settings)(nnx.state(tiny), tokens, valid, jax.random.key(3))
  scores = scoring.jit_token_scores(tiny, mesh, temperature=0.8)(
      nnx.state(tiny), tokens, valid, out.tokens, out.mask)
  np.testing.assert_allclose(np.asarray(scores.log_probs), np.asarray(out.log_probs), atol=2e-5)
  assert (np.asarray(scores.entropy)[np.asarray(out.mask)] > 0).all()


def test_one_compile_per_bucket(tiny):
  run = sampler.make_sampler(tiny, one_device_mesh(), sampler.SamplingConfig(4, temperature=1.0))
  state = nnx.state(tiny)
  for i in range(3):
    for length in (8, 16):
      lists = [p * (i + 1) for p in PROMPTS]
      tokens, valid = text_lib.left_pad([x[:length] for x in lists], length, 0)
      run(state, tokens, valid, jax.random.key(i))
  assert run.jitted._cache_size() == 2  # one compile per prompt-length bucket, 6 calls


def test_sharded_sampler_matches_one_device():
  cfg = CFG.replace(vocab_size=256, hidden_size=64)
  single = loading.random_model(cfg, seed=2, mesh=one_device_mesh())
  prompts = [list(range(3 + i, 3 + i + n)) for i, n in enumerate([5, 9, 2, 7, 12, 1, 4, 10])]
  tokens, valid = text_lib.left_pad(prompts, 16, 0)
  settings = sampler.SamplingConfig(10, temperature=0.0)
  expected = sampler.make_sampler(single, one_device_mesh(), settings)(
      nnx.state(single), tokens, valid, jax.random.key(0))
  mesh = shd.make_mesh({'data': 2, 'fsdp': 2, 'tensor': 2})
  sharded = loading.place(cfg, hf_checkpoint.host_arrays(nnx.state(single)), mesh)
  got = sampler.make_sampler(sharded, mesh, settings)(nnx.state(sharded), tokens, valid,
                                                      jax.random.key(0))
  assert got.tokens.sharding.spec[0] == ('data', 'fsdp')
  np.testing.assert_array_equal(np.asarray(got.tokens), np.asarray(expected.tokens))
  np.testing.assert_allclose(np.asarray(got.log_probs), np.asarray(expected.log_probs), atol=1e-4)


def grouped(prompts, g):
  return [p for p in prompts for _ in range(g)]


@pytest.mark.parametrize('mesh_axes', [{'data': 1}, {'data': 2, 'fsdp': 2, 'tensor': 2}])
def test_group_prefill_samples_as_repeated_prompts(tiny, mesh_axes):
  """GRPO's G rows of a prompt prefilled once (group=G) sample what G separately prefilled rows
  sample: the same tokens at T=0.7 from the same key, the same log-probs; on one device and with the
  batch sharded over 4 devices (8 rows, 2 distinct prompts per device-pair)."""
  mesh = shd.make_mesh(mesh_axes, jax.devices()[:int(np.prod(list(mesh_axes.values())))])
  model = loading.place(CFG, hf_checkpoint.host_arrays(nnx.state(tiny)), mesh)
  tokens, valid = text_lib.left_pad(grouped(PROMPTS, 4), 8, pad_id=0)  # 16 rows
  settings = sampler.SamplingConfig(12, temperature=0.7)
  key = jax.random.key(5)
  separate = sampler.make_sampler(model, mesh, settings)(nnx.state(model), tokens, valid, key)
  run = sampler.make_sampler(model, mesh, settings, group=4)
  shared = run(nnx.state(model), tokens, valid, key)
  np.testing.assert_array_equal(np.asarray(shared.tokens), np.asarray(separate.tokens))
  np.testing.assert_allclose(np.asarray(shared.log_probs), np.asarray(separate.log_probs), atol=1e-5)
  rows = np.asarray(shared.tokens).reshape(4, 4, -1)
  assert any(len({tuple(r) for r in g}) > 1 for g in rows)  # a group's rows sample apart
  prefill = [e for e in run.jitted.lower(nnx.state(model), tokens, valid, key).as_text().splitlines()
             if 'dot_general' in e and 'x8x' in e]
  assert prefill  # ... and the prompt pass runs on 4 rows, not 16
  assert not [e for e in prefill if 'tensor<16x8x' in e]
  with pytest.raises(Exception, match='not whole groups'):
    sampler.make_sampler(model, mesh, settings, group=3)(nnx.state(model), tokens, valid, key)


@pytest.mark.parametrize('chunk', [3, 8])
def test_decode_chunks_and_early_exit_keep_the_samples(tiny, chunk):
  """Stop tests every `chunk` steps, or none (early_exit=False), leave every sample as it is."""
  tokens, valid = text_lib.left_pad(PROMPTS, 8, pad_id=0)
  run = lambda **kw: jax.device_get(sampler.make_sampler(
      tiny, one_device_mesh(), sampler.SamplingConfig(10, temperature=1.0, **kw))(
          nnx.state(tiny), tokens, valid, jax.random.key(2)))
  free = run(decode_chunk=1)
  stop = tuple(int(t) for t in free.tokens[:, 4])  # every row stops by its 5th token
  one = run(decode_chunk=1, stop_tokens=stop)
  ends = one.mask.sum(1)
  assert (ends <= 5).all() and not one.mask[:, 5:].any()
  assert int(one.steps) == ends.max()  # the loop ran no step after the last row stopped
  np.testing.assert_array_equal(one.tokens[:, :5] * one.mask[:, :5], free.tokens[:, :5] * one.mask[:, :5])
  chunked, full = run(decode_chunk=chunk, stop_tokens=stop), run(early_exit=False, stop_tokens=stop)
  assert int(chunked.steps) == 1 + -(-(ends.max() - 1) // chunk) * chunk and int(full.steps) == 10
  for got in (chunked, full):
    assert got.tokens.shape == (4, 10)
    np.testing.assert_array_equal(got.tokens, one.tokens)
    np.testing.assert_array_equal(got.mask, one.mask)
    np.testing.assert_allclose(got.log_probs, one.log_probs, atol=1e-6)


def test_early_exit_stops_the_loop_when_every_row_has_stopped():
  """A model that always emits the stop token: the loop ends after the prefill's token, or after
  the chunk that holds it, or runs all 50 steps with early_exit=False; the samples are the same."""
  logits = np.full(5, -5.0, np.float32)
  logits[2] = 5.0  # token 2 whatever the input
  model = fixed_logits_model(logits)
  tokens, valid = text_lib.left_pad([[1, 1], [1, 1]], 2, pad_id=0)
  for chunk, early, steps in ((1, True, 1), (4, True, 1), (1, False, 50), (4, False, 53)):
    settings = sampler.SamplingConfig(50, temperature=0.0, stop_tokens=(2,), decode_chunk=chunk,
                                      early_exit=early)
    out = jax.device_get(sampler.make_sampler(model, one_device_mesh(), settings)(
        nnx.state(model), tokens, valid, jax.random.key(0)))
    assert out.mask.tolist() == [[True] + [False] * 49] * 2
    assert out.tokens[:, 0].tolist() == [2, 2] and (out.tokens[:, 1:] == 0).all()
    assert int(out.steps) == steps, (chunk, early)


def test_bucketing_and_padding_helpers():
  assert text_lib.bucket_length(65, (64, 128)) == 128
  with pytest.raises(ValueError, match='exceeds the largest prompt bucket 128'):
    text_lib.bucket_length(129, (64, 128))
  tokens, valid = text_lib.left_pad([[1, 2], [3]], 4, pad_id=9)
  assert tokens.tolist() == [[9, 9, 1, 2], [9, 9, 9, 3]]
  assert valid.tolist() == [[False, False, True, True], [False, False, False, True]]


def test_score_values_come_from_the_state_before_each_response_token():
  cfg = CFG.replace(scalar_head=True)
  model = loading.random_model(cfg, seed=4, mesh=one_device_mesh())
  model.scalar_head[...] = jax.random.normal(jax.random.key(1), (cfg.hidden_size,))
  tokens, valid = text_lib.left_pad(PROMPTS, 8, pad_id=0)
  response = np.array([[5, 6, 7], [8, 9, 0], [1, 2, 3], [4, 0, 0]], np.int32)
  rmask = response > 0
  scores = scoring.jit_token_scores(model, one_device_mesh())(nnx.state(model), tokens, valid, response,
                                                              rmask)
  full = model_lib.forward(model, jnp.concatenate([tokens, response], 1),
                           jnp.concatenate([valid, rmask], 1))
  expected = np.asarray(full.values)[:, 7:10] * rmask  # value of the state that predicts each token
  np.testing.assert_allclose(np.asarray(scores.values), expected, atol=1e-5)
  assert np.abs(expected[rmask]).min() > 0 and (np.asarray(scores.values)[~rmask] == 0).all()


@pytest.mark.parametrize('softcap, chunk', [(0.0, None), (0.0, 4), (2.5, 4), (2.5, 6)])
def test_head_log_probs_gradient_equals_autodiff(softcap, chunk):
  """The chunked head (rows in chunks, logits recomputed in the backward pass, a ragged last chunk
  padded) equals autodiff of the plain log-softmax, with Gemma 2's logit soft-cap too."""
  kh, kw, kt, kg = jax.random.split(jax.random.key(0), 4)
  hidden, w = jax.random.normal(kh, (6, 8)), jax.random.normal(kw, (11, 8))
  targets = jax.random.randint(kt, (6,), 0, 11)
  scale = jnp.float32(1 / 0.7)
  d_logp, d_ent = jax.random.normal(kg, (2, 6))

  def plain(h, w):
    raw = h @ w.T
    logits = softcap * jnp.tanh(raw / softcap) if softcap else raw
    logp_all = jax.nn.log_softmax(logits * scale, axis=-1)
    return (jnp.take_along_axis(logp_all, targets[:, None], axis=-1)[:, 0],
            -jnp.sum(jnp.exp(logp_all) * logp_all, axis=-1))

  ours = lambda h, w: scoring.head_log_probs(h, w, targets, scale, softcap, chunk)
  for a, b in zip(ours(hidden, w), plain(hidden, w)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
  got = jax.vjp(ours, hidden, w)[1]((d_logp, d_ent))
  want = jax.vjp(plain, hidden, w)[1]((d_logp, d_ent))
  for a, b in zip(got, want):  # both the log-prob and the entropy paths
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)


def test_chunked_head_keeps_no_full_logits_for_the_backward_pass():
  """What the PPO update's memory rests on: the residuals the head's backward pass keeps are the
  inputs and per-row statistics, never a [rows, vocab] array."""
  rows, vocab, embed = 4096, 8192, 16
  hidden = jnp.ones((rows, embed))
  w = jnp.ones((vocab, embed))
  targets = jnp.zeros((rows,), jnp.int32)
  f = lambda h, w: scoring.head_log_probs(h, w, targets, jnp.float32(1.0), chunk=512)
  _, residuals = jax.vjp(f, hidden, w)
  shapes = [x.shape for x in jax.tree.leaves(residuals)]
  assert all(vocab not in s or s == (vocab, embed) for s in shapes), shapes
  assert scoring.chunk_rows(rows, 128256) < rows  # a Llama-3 vocabulary is chunked
