"""Builders for the tests' own small checkpoints and tokenizers (nothing comes from a hub)."""

from __future__ import annotations


import numpy as np

WORDS = ('the cat sat on the mat while a dog ran in the park and the sun was warm ; people like '
         'to read books , write code , and talk about the weather 0123456789 ? ! .').split()


def write_tokenizer(folder: str, vocab_size: int = 96) -> str:
  """Train a small byte-level BPE tokenizer on a few sentences; save it as a HF tokenizer folder."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  from transformers import PreTrainedTokenizerFast
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  specials = ['<|endoftext|>', '<|im_start|>', '<|im_end|>']
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  rng = np.random.default_rng(0)
  tok.train_from_iterator([' '.join(rng.choice(WORDS, 12)) for _ in range(200)], trainer)
  template = ("{% for m in messages %}{{'<|im_start|>' + m['role'] + '\n' + m['content'] + "
              "'<|im_end|>\n'}}{% endfor %}{% if add_generation_prompt %}{{'<|im_start|>assistant\n'}}"
              "{% endif %}")
  fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token='<|im_start|>',
                                 eos_token='<|im_end|>', pad_token='<|im_end|>',
                                 unk_token='<|endoftext|>', chat_template=template)
  fast.save_pretrained(folder)
  return folder


def tiny_torch_config(vocab_size: int, **kw):
  from transformers import LlamaConfig
  base = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
              num_attention_heads=8, num_key_value_heads=4, head_dim=8, max_position_embeddings=128,
              rms_norm_eps=1e-5, rope_theta=500.0, tie_word_embeddings=False, bos_token_id=1,
              eos_token_id=2, pad_token_id=2)
  base.update(kw)
  return LlamaConfig(**base)


def write_torch_llama(folder: str, tokenizer_dir: str, seed: int = 0, max_shard_size=None, **kw) -> str:
  """Random LlamaForCausalLM (PyTorch, float32) saved with save_pretrained, plus the tokenizer."""
  import torch
  from transformers import AutoTokenizer, LlamaForCausalLM
  tok = AutoTokenizer.from_pretrained(tokenizer_dir)
  torch.manual_seed(seed)
  model = LlamaForCausalLM(tiny_torch_config(len(tok), **kw)).float()
  with torch.no_grad():  # norms away from 1 so a swapped or missing norm weight shows
    for name, p in model.named_parameters():
      if 'norm' in name:
        p.copy_(1 + 0.2 * torch.randn_like(p))
  kwargs = {} if max_shard_size is None else {'max_shard_size': max_shard_size}
  model.save_pretrained(folder, safe_serialization=True, **kwargs)
  tok.save_pretrained(folder)
  return folder


# Tiny configs of every family we load, each exercising what makes the family differ: biases, q/k
# norms, head_dim != hidden / heads, sliding windows shorter than the tests' 24-token sequences,
# soft-capping low enough that tanh bends, local/global rotary bases, linear rope scaling.
FAMILY_CONFIGS = {
    'llama': ('LlamaConfig', {}),
    'qwen2': ('Qwen2Config', dict(tie_word_embeddings=False)),
    'qwen2_tied_window': ('Qwen2Config', dict(tie_word_embeddings=True, use_sliding_window=True,
                                              sliding_window=6, max_window_layers=1)),
    'qwen3': ('Qwen3Config', dict(head_dim=16)),
    'mistral': ('MistralConfig', dict(sliding_window=7)),
    'gemma2': ('Gemma2Config', dict(head_dim=16, query_pre_attn_scalar=12, sliding_window=6,
                                    attn_logit_softcapping=3.0, final_logit_softcapping=4.0,
                                    tie_word_embeddings=True)),
    'gemma3': ('Gemma3TextConfig', dict(
        head_dim=16, query_pre_attn_scalar=12, sliding_window=6, num_hidden_layers=3,
        layer_types=['sliding_attention', 'full_attention', 'sliding_attention'],
        rope_parameters={'full_attention': {'rope_type': 'linear', 'factor': 2.0, 'rope_theta': 5000.0},
                         'sliding_attention': {'rope_type': 'default', 'rope_theta': 100.0}},
        tie_word_embeddings=True)),
}


def write_torch_family(folder: str, tokenizer_dir: str, family: str, seed: int = 0, **kw) -> str:
  """A random tiny model of one family (FAMILY_CONFIGS), written by transformers' own PyTorch class
  as a HF folder. Weights drawn at std 0.1 and norms/biases moved off their init, so a wrong
  layout, a missing bias or norm, or an unapplied soft-cap changes the log-probs."""
  import torch
  import transformers
  from transformers import AutoModelForCausalLM, AutoTokenizer
  tok = AutoTokenizer.from_pretrained(tokenizer_dir)
  class_name, extra = FAMILY_CONFIGS[family]
  base = dict(vocab_size=len(tok), hidden_size=64, intermediate_size=96, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
              rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, pad_token_id=2,
              initializer_range=0.1)
  if 'rope_parameters' not in extra:
    base['rope_theta'] = 500.0
  base.update(extra, **kw)
  config = getattr(transformers, class_name)(**base)
  torch.manual_seed(seed)
  model = AutoModelForCausalLM.from_config(config, attn_implementation='eager').float()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if 'norm' in name or name.endswith('bias'):
        p.add_(0.2 * torch.randn_like(p))
  model.save_pretrained(folder, safe_serialization=True)
  tok.save_pretrained(folder)
  return folder


def torch_model(folder: str):
  import torch
  from transformers import AutoModelForCausalLM
  return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32,
                                              attn_implementation='eager').eval()


def torch_log_probs(folder_or_model, tokens: np.ndarray, valid: np.ndarray) -> np.ndarray:
  """Reference: transformers' PyTorch model, log-prob of each next token [B, T-1], float32."""
  import torch
  model = folder_or_model
  if isinstance(model, str):
    model = torch_model(model)
  model.eval()
  positions = np.maximum(np.cumsum(valid, axis=1) - 1, 0)
  with torch.no_grad():
    logits = model(input_ids=torch.tensor(tokens, dtype=torch.long),
                   attention_mask=torch.tensor(valid.astype(np.int64)),
                   position_ids=torch.tensor(positions, dtype=torch.long)).logits.float()
  logp = torch.log_softmax(logits[:, :-1], dim=-1)
  return torch.gather(logp, -1, torch.tensor(tokens[:, 1:], dtype=torch.long)[..., None])[..., 0].numpy()


def our_log_probs(model, tokens: np.ndarray, valid: np.ndarray) -> np.ndarray:
  import jax
  import jax.numpy as jnp
  from rlaif_jax.models import transformer as model_lib

  @jax.jit
  def f(tokens, valid):
    logits = model_lib.forward(model, tokens, valid).logits
    return model_lib.token_log_probs(logits[:, :-1], tokens[:, 1:])

  return np.asarray(f(jnp.asarray(tokens), jnp.asarray(valid)))


def padded_batch(vocab_size: int, seed: int = 0, batch: int = 4, length: int = 24):
  """Random tokens with mixed padding: full rows, right-padded rows and left-padded rows."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(3, vocab_size, (batch, length)).astype(np.int32)
  valid = np.ones((batch, length), bool)
  valid[1, length - 7:] = False  # right padding
  valid[2, :5] = False  # left padding
  if batch > 3:
    valid[3, :2] = False
    valid[3, length - 3:] = False
  tokens[~valid] = 2
  return tokens, valid


def masked_max_diff(a: np.ndarray, b: np.ndarray, valid: np.ndarray) -> float:
  """Max |a - b| over next-token positions whose context and target are both real tokens."""
  both = valid[:, :-1] & valid[:, 1:]
  return float(np.abs(a - b)[both].max())


def assert_greedy_equals_generate(model, tok, prompts, pad_to: int, new: int, reference) -> None:
  """Our batched, left-padded KV-cache greedy decoding of token-id prompts equals transformers'
  `generate` on `reference` (a PyTorch causal LM) prompt by prompt, token for token."""
  import jax
  import torch
  from flax import nnx
  from rlaif_jax.generation import sampler
  from rlaif_jax.generation import text as text_lib
  from rlaif_jax.infra import sharding as shd
  tokens, valid = text_lib.left_pad(prompts, pad_to, tok.pad_token_id)
  mesh = shd.make_mesh({'data': 1}, jax.devices()[:1])
  settings = sampler.SamplingConfig(new, temperature=0.0, stop_tokens=(tok.eos_token_id,))
  run = sampler.make_sampler(model, mesh, settings, pad_id=tok.pad_token_id)
  out = jax.device_get(run(nnx.state(model), tokens, valid, jax.random.key(0)))
  for row, prompt in enumerate(prompts):
    with torch.no_grad():
      gen = reference.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=new,
                               eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    ours, expected = out.tokens[row][out.mask[row]].tolist(), gen[0, len(prompt):].tolist()
    assert ours == expected, (row, tok.decode(ours), tok.decode(expected))


TIMING = ('time_', 'share_', 'seconds')  # metrics that differ between two runs of the same work


def without_timing(rows: list[dict]) -> list[dict]:
  """Metric rows without their wall-clock fields, for comparing two runs."""
  return [{k: v for k, v in r.items() if not k.startswith(TIMING)} for r in rows]


def metric_rows(workdir, stage: str) -> list[dict]:
  """A stage's rows of WORKDIR/metrics.jsonl without the wall-clock fields."""
  from rlaif_jax.infra import metrics
  return without_timing(metrics.read(str(workdir), stage))
