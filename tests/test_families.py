"""Every family we load against transformers' own PyTorch class, on tiny random folders written by
transformers: log-probs at every position of a padded batch, greedy KV-cache decoding against
`generate`, and export/reload both ways. The configs (helpers.FAMILY_CONFIGS) put sliding windows
shorter than the sequences and soft-caps low enough to bend."""

import json
import os

import numpy as np
import pytest
from flax import nnx

from rlaif_jax.infra.errors import UserError
from rlaif_jax.models import families, hf_checkpoint, loading
from tests import helpers

TOL = 1e-4
FAMILIES = sorted(helpers.FAMILY_CONFIGS)


@pytest.fixture(scope='module', params=FAMILIES)
def family_folder(request, tmp_path_factory, tokenizer_dir):
  folder = str(tmp_path_factory.mktemp(request.param))
  return request.param, helpers.write_torch_family(folder, tokenizer_dir, request.param, seed=7)


def test_log_probs_match_torch(family_folder):
  name, folder = family_folder
  model, tok = loading.load_model(folder)
  expected = json.load(open(os.path.join(folder, 'config.json')))['model_type']
  assert model.cfg.family == expected
  tokens, valid = helpers.padded_batch(len(tok), 1)
  diff = helpers.masked_max_diff(helpers.our_log_probs(model, tokens, valid),
                                 helpers.torch_log_probs(folder, tokens, valid), valid)
  assert diff < TOL, f'{name}: max |log p diff| {diff}'


def test_greedy_decoding_equals_transformers_generate(family_folder):
  """Batched, left-padded KV-cache greedy decoding against `generate` prompt by prompt, for longer
  than the sliding window."""
  name, folder = family_folder
  model, tok = loading.load_model(folder)
  rng = np.random.default_rng(3)
  prompts = [rng.integers(3, len(tok), n).tolist() for n in (5, 9, 3, 7)]
  helpers.assert_greedy_equals_generate(model, tok, prompts, 12, 14, helpers.torch_model(folder))


def test_export_loads_in_torch_and_back(family_folder, tmp_path):
  name, folder = family_folder
  model, tok = loading.load_model(folder)
  out = str(tmp_path / 'export')
  hf_checkpoint.export_folder(nnx.state(model), model.cfg, out, tok)
  tokens, valid = helpers.padded_batch(len(tok), 2)
  ours = helpers.our_log_probs(model, tokens, valid)
  assert helpers.masked_max_diff(helpers.torch_log_probs(out, tokens, valid), ours, valid) < TOL
  reloaded, _ = loading.load_model(out)
  assert reloaded.cfg == model.cfg
  np.testing.assert_array_equal(helpers.our_log_probs(reloaded, tokens, valid), ours)
  arch = json.load(open(os.path.join(out, 'config.json')))['architectures']
  assert arch == [f'{families.FAMILIES[model.cfg.family].prefix}ForCausalLM']


def test_multimodal_gemma3_folder_loads_its_language_model(tmp_path, tokenizer_dir):
  """A Gemma3ForConditionalGeneration folder (the published 4B+ checkpoints): text_config and the
  language model's tensors under model.language_model.*, the vision tower ignored."""
  folder = helpers.write_torch_family(str(tmp_path / 'text'), tokenizer_dir, 'gemma3', seed=2)
  from rlaif_jax.models import safetensors_io
  tensors = dict(safetensors_io.read(os.path.join(folder, 'model.safetensors')))
  renamed = {k.replace('model.', 'model.language_model.', 1): np.asarray(v) for k, v in tensors.items()}
  renamed['model.vision_tower.patch.weight'] = np.zeros((2, 2), np.float32)
  mm = tmp_path / 'mm'
  mm.mkdir()
  text_cfg = json.load(open(os.path.join(folder, 'config.json')))
  (mm / 'config.json').write_text(json.dumps({
      'model_type': 'gemma3', 'architectures': ['Gemma3ForConditionalGeneration'],
      'text_config': text_cfg, 'vision_config': {'model_type': 'siglip_vision_model'}}))
  (mm / 'model.safetensors').write_bytes(safetensors_io.to_bytes(renamed, {'format': 'pt'}))
  for f in os.listdir(folder):
    if f.startswith('tokenizer') or f.endswith('.jinja'):
      (mm / f).write_bytes(open(os.path.join(folder, f), 'rb').read())
  model, tok = loading.load_model(str(mm))
  tokens, valid = helpers.padded_batch(len(tok), 4)
  diff = helpers.masked_max_diff(helpers.our_log_probs(model, tokens, valid),
                                 helpers.torch_log_probs(folder, tokens, valid), valid)
  assert diff < TOL


@pytest.mark.parametrize('change, message', [
    (dict(model_type='phi3', architectures=['Phi3ForCausalLM']), 'unsupported architecture'),
    (dict(mlp_bias=True), 'mlp_bias'),
    (dict(hidden_act='relu2'), 'hidden_act'),
    (dict(rope_parameters={'rope_type': 'yarn', 'factor': 4.0, 'rope_theta': 1e6}), 'yarn'),
    (dict(layer_types=['chunked_attention', 'full_attention'], sliding_window=4), 'layer_types'),
])
def test_what_we_do_not_implement_is_a_clear_error(change, message):
  hf = {'model_type': 'qwen2', 'architectures': ['Qwen2ForCausalLM'], 'vocab_size': 96,
        'hidden_size': 64, 'intermediate_size': 96, 'num_hidden_layers': 2,
        'num_attention_heads': 4, 'use_sliding_window': True, **change}
  with pytest.raises(UserError, match=message):
    cfg = hf_checkpoint.config_from_hf(hf)
    from rlaif_jax.models import transformer
    transformer.rope_frequencies(cfg)


def test_end_tokens_and_chat_template_come_from_the_folder(tmp_path, tokenizer_dir):
  """generation_config.json's eos_token_id list (as Llama-3.1 ships three) is where generation stops,
  beside the tokenizer's eos; the export keeps the list; the chat template is read from
  chat_template.jinja when tokenizer_config.json has none."""
  from transformers import GenerationConfig
  from rlaif_jax.generation import text as text_lib
  folder = helpers.write_torch_family(str(tmp_path / 'm'), tokenizer_dir, 'qwen2', seed=1)
  gen = json.load(open(os.path.join(folder, 'generation_config.json')))
  gen['eos_token_id'] = [2, 0]
  (tmp_path / 'm' / 'generation_config.json').write_text(json.dumps(gen))
  assert 'chat_template' not in json.load(open(os.path.join(folder, 'tokenizer_config.json')))
  assert os.path.exists(os.path.join(folder, 'chat_template.jinja'))
  model, tok = loading.load_model(folder)
  assert text_lib.stop_tokens(tok) == (2, 0)
  chat = tok.apply_chat_template([{'role': 'user', 'content': 'hi'}], add_generation_prompt=True,
                                 tokenize=False)
  assert chat == '<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n'
  out = str(tmp_path / 'export')
  hf_checkpoint.export_folder(nnx.state(model), model.cfg, out, tok)
  assert GenerationConfig.from_pretrained(out).eos_token_id == [2, 0]
  assert text_lib.stop_tokens(loading.load_model(out)[1]) == (2, 0)
