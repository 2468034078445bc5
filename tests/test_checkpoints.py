"""Parity with transformers' PyTorch Llama on checkpoint folders the tests write, and export both ways."""

import json
import os

import numpy as np
import pytest
from flax import nnx

from rlaif_jax.models import hf_checkpoint
from rlaif_jax.models import loading
from rlaif_jax.models import safetensors_io
from tests import helpers

TOL = 1e-4


def _check_parity(folder, seed=0):
  model, tok = loading.load_model(folder)
  tokens, valid = helpers.padded_batch(len(tok), seed)
  ours = helpers.our_log_probs(model, tokens, valid)
  ref = helpers.torch_log_probs(folder, tokens, valid)
  diff = helpers.masked_max_diff(ours, ref, valid)
  assert diff < TOL, f'max |log p diff| {diff} on {folder}'
  return model, tok, tokens, valid, ours


def test_log_probs_match_torch_with_padding(tiny_hf_folder):
  model, tok, tokens, valid, ours = _check_parity(tiny_hf_folder)
  assert np.isfinite(ours).all()
  assert len(tok) == model.cfg.vocab_size and tok.eos_token == '<|im_end|>'


@pytest.mark.parametrize('kw', [
    dict(tie_word_embeddings=True),
    dict(num_key_value_heads=8),  # plain multi-head attention
    dict(rope_scaling=dict(rope_type='llama3', factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                           original_max_position_embeddings=16), rope_theta=50000.0),
])
def test_variants_match_torch(tmp_path, tokenizer_dir, kw):
  folder = helpers.write_torch_llama(str(tmp_path / 'm'), tokenizer_dir, seed=1, **kw)
  model, *_ = _check_parity(folder, seed=1)
  if kw.get('rope_scaling'):
    assert dict(model.cfg.rope_scaling)['rope_type'] == 'llama3'


def test_sharded_safetensors_with_index(tmp_path, tokenizer_dir):
  folder = helpers.write_torch_llama(str(tmp_path / 'm'), tokenizer_dir, seed=2, max_shard_size='60KB')
  files = [f for f in os.listdir(folder) if f.endswith('.safetensors')]
  assert len(files) > 1 and os.path.exists(os.path.join(folder, 'model.safetensors.index.json'))
  _check_parity(folder, seed=2)


def test_export_loads_in_torch_and_back(tmp_path, tiny_hf_folder):
  model, tok = loading.load_model(tiny_hf_folder)
  out = str(tmp_path / 'export')
  hf_checkpoint.export_folder(nnx.state(model), model.cfg, out, tok, max_shard_bytes=80_000)
  assert os.path.exists(os.path.join(out, 'model.safetensors.index.json'))  # sharded export
  tokens, valid = helpers.padded_batch(len(tok), 3)
  ours = helpers.our_log_probs(model, tokens, valid)
  torch_from_export = helpers.torch_log_probs(out, tokens, valid)
  assert helpers.masked_max_diff(ours, torch_from_export, valid) < TOL
  reloaded, tok2 = loading.load_model(out)
  again = helpers.our_log_probs(reloaded, tokens, valid)
  np.testing.assert_array_equal(again, ours)  # bit-exact round trip of float32 weights
  assert tok2.encode('the cat sat') == tok.encode('the cat sat')
  with open(os.path.join(out, 'config.json')) as f:
    assert json.load(f)['architectures'] == ['LlamaForCausalLM']


def test_bfloat16_params_export_and_compute(tmp_path, tiny_hf_folder):
  model, tok = loading.load_model(tiny_hf_folder, param_dtype='bfloat16', dtype='bfloat16')
  assert model.layers[0].attn.q[...].dtype == np.dtype('bfloat16')
  tokens, valid = helpers.padded_batch(len(tok), 4)
  ours = helpers.our_log_probs(model, tokens, valid)
  ref = helpers.torch_log_probs(tiny_hf_folder, tokens, valid)
  assert helpers.masked_max_diff(ours, ref, valid) < 0.1  # bfloat16 rounding, not a layout error
  out = str(tmp_path / 'bf16')
  hf_checkpoint.export_folder(nnx.state(model), model.cfg, out, tok)
  with open(os.path.join(out, 'config.json')) as f:
    assert json.load(f)['torch_dtype'] == 'bfloat16'
  assert helpers.masked_max_diff(helpers.torch_log_probs(out, tokens, valid), ref, valid) < 0.1


def test_missing_tensors_are_listed(tmp_path, tiny_hf_folder):
  folder = tmp_path / 'broken'
  folder.mkdir()
  for name in ('config.json', 'tokenizer.json', 'tokenizer_config.json'):
    (folder / name).write_bytes(open(os.path.join(tiny_hf_folder, name), 'rb').read())
  tensors = dict(safetensors_io.read(os.path.join(tiny_hf_folder, 'model.safetensors')))
  del tensors['model.layers.1.mlp.up_proj.weight'], tensors['model.norm.weight']
  safetensors_io.write(str(folder / 'model.safetensors'), tensors)
  with pytest.raises(ValueError, match=r'missing tensors.*model\.norm\.weight.*up_proj'):
    loading.load_model(str(folder))


def test_bad_sources_give_clear_errors(tmp_path, tiny_hf_folder):
  with pytest.raises(FileNotFoundError, match='neither'):
    loading.load_model(str(tmp_path / 'nope'))
  pickled = tmp_path / 'pickled'
  pickled.mkdir()
  (pickled / 'config.json').write_text(open(os.path.join(tiny_hf_folder, 'config.json')).read())
  (pickled / 'pytorch_model.bin').write_bytes(b'not loaded')
  with pytest.raises(FileNotFoundError, match='pickle checkpoints are never loaded'):
    loading.load_model(str(pickled))
  other = tmp_path / 'gpt2'
  other.mkdir()
  (other / 'config.json').write_text(json.dumps({'model_type': 'gpt2', 'architectures': ['GPT2LMHeadModel']}))
  with pytest.raises(ValueError, match='unsupported architecture'):
    loading.load_model(str(other))
