"""RLAIF at pod scale, by published model shapes (written here; nothing is downloaded): what
`python -m rlaif_jax.plan` compiles for a TPU topology to tell whether a run fits and how long an
iteration takes. The same configs run the pipeline once model.source (and judge.source,
reward_model.source) point at the real checkpoints.

  pip install -e '.[tpu]'
  python -m rlaif_jax.plan --config=configs/pod_plans.py:llama8b --topology=v5e:8x8
  python -m rlaif_jax.plan --config=configs/pod_plans.py:llama8b --topology=v5p:2x4x4
  python -m rlaif_jax.plan --config=configs/pod_plans.py:llama1b --topology=v5e:4x4
  python -m rlaif_jax.plan --config=configs/pod_plans.py:llama1b --topology=v5p:2x2x1
  python -m rlaif_jax.plan --config=configs/pod_plans.py:qwen7b --topology=v5e:8x8 \
      --config.mesh.fsdp=16 --config.mesh.tensor=4
  python -m rlaif_jax.plan --config=configs/pod_plans.py:gemma4b --topology=v5e:4x4
  python -m rlaif_jax.plan --config=configs/pod_plans.py:tiny --topology=v5e:2x2      # seconds

Arg (after the colon): the policy, `llama1b` (Llama-3.2-1B shapes), `llama8b` (Llama-3.1-8B),
`qwen7b` (Qwen2.5-7B), `gemma4b` (Gemma-3-4B's language model) or `tiny` (a 2-layer model for
tests). The judge is Llama-3.1-8B-like for every real size; the reward model and the separate PPO
value model share the policy's shapes (the value model starts from the reward model, as
in TRL). Parameters and optimizer state are float32, matmuls bfloat16; FSDP over every chip.
"""

import ml_collections

from configs import common

LLAMA3_ROPE = dict(rope_type='llama3', low_freq_factor=1.0, high_freq_factor=4.0,
                   original_max_position_embeddings=8192)
# config.json of meta-llama/Llama-3.2-1B-Instruct and meta-llama/Llama-3.1-8B-Instruct (the fields
# the model reads)
LLAMA_3_2_1B = dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192,
                    num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8, head_dim=64,
                    rope_theta=500000.0, rope_scaling=dict(LLAMA3_ROPE, factor=32.0),
                    tie_word_embeddings=True, max_position_embeddings=131072, rms_norm_eps=1e-5)
LLAMA_3_1_8B = dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                    num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                    head_dim=128, rope_theta=500000.0, rope_scaling=dict(LLAMA3_ROPE, factor=8.0),
                    tie_word_embeddings=False, max_position_embeddings=131072, rms_norm_eps=1e-5)
# config.json of Qwen/Qwen2.5-7B-Instruct: q/k/v biases, untied head, a 152k vocabulary; 28 heads
# and 4 key/value heads (tensor parallelism of 4 divides both, 8 does not)
QWEN2_5_7B = dict(model_type='qwen2', vocab_size=152064, hidden_size=3584, intermediate_size=18944,
                  num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                  rope_theta=1000000.0, tie_word_embeddings=False, max_position_embeddings=32768,
                  rms_norm_eps=1e-6, use_sliding_window=False, hidden_act='silu')
# text_config of google/gemma-3-4b-it (Gemma3ForConditionalGeneration's language model): 5 local
# (1024-token window, rotary base 10k) : 1 global layers (base 1M, linear scaling x8), q/k norms,
# head_dim 256, a 262k vocabulary tied to the embedding
GEMMA_3_4B = dict(model_type='gemma3_text', vocab_size=262208, hidden_size=2560,
                  intermediate_size=10240, num_hidden_layers=34, num_attention_heads=8,
                  num_key_value_heads=4, head_dim=256, query_pre_attn_scalar=256,
                  sliding_window=1024, sliding_window_pattern=6, rope_theta=1000000.0,
                  rope_local_base_freq=10000.0, rope_scaling=dict(rope_type='linear', factor=8.0),
                  hidden_activation='gelu_pytorch_tanh', rms_norm_eps=1e-6,
                  tie_word_embeddings=True, max_position_embeddings=131072)
# config.json of Qwen/Qwen3-8B: q/k norms, 36 layers, 32 heads over 8 key/value heads, untied head
QWEN3_8B = dict(model_type='qwen3', vocab_size=151936, hidden_size=4096, intermediate_size=12288,
                num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                rope_theta=1000000.0, tie_word_embeddings=False, max_position_embeddings=40960,
                rms_norm_eps=1e-6, hidden_act='silu')
TINY = dict(vocab_size=1024, hidden_size=512, intermediate_size=1024, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=128, tie_word_embeddings=False)
SIZES = {'llama1b': LLAMA_3_2_1B, 'llama8b': LLAMA_3_1_8B, 'qwen7b': QWEN2_5_7B,
         'gemma4b': GEMMA_3_4B, 'tiny': TINY}
LONG = {'qwen3_8b_grpo_8k': (QWEN3_8B, 8192), 'tiny_grpo_long': (TINY, 2048)}  # (shapes, response)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  size = arg or 'llama8b'
  if size in LONG:
    return long_responses(*LONG[size])
  if size not in SIZES:
    raise ValueError(f'Unknown size {size!r}; choose one of {sorted(SIZES) + sorted(LONG)}.')
  tiny = size == 'tiny'
  c = common.pipeline('/path/to/policy_checkpoint')  # set the real folders to run, not to plan
  c.stages = ('label', 'reward_model', 'rl')
  c.model.architecture = SIZES[size]
  c.model.param_dtype = 'float32'
  c.model.dtype = 'bfloat16'
  c.model.remat = 'none' if tiny else 'full'
  c.mesh = common.mesh(data=1, fsdp=-1, tensor=1)
  c.judge.source = '/path/to/judge_checkpoint'
  c.judge.architecture = ml_collections.ConfigDict(TINY if tiny else LLAMA_3_1_8B)
  c.judge.max_context_tokens = 64 if tiny else 512
  c.judge.max_response_tokens = 64 if tiny else 256
  c.reward_model.source = '/path/to/reward_model_backbone'
  c.reward_model.architecture = ml_collections.ConfigDict(SIZES[size])

  rows = 8 if tiny else 64  # a multiple of the batch shards (data x fsdp)
  c.label.batch_size = rows // 2 if tiny else rows
  c.label.sampling = common.sampling(32 if tiny else 256, temperature=1.0)
  c.reward_model.batch_size = rows
  c.reward_model.max_length = 64 if tiny else 768
  c.rl.algorithm = 'ppo'
  c.rl.value_model = 'separate'
  c.rl.batch_size = rows
  c.rl.epochs = 2
  c.rl.minibatches = 1
  c.rl.prompt_length = 32 if tiny else 512
  c.rl.sampling = common.sampling(32 if tiny else 256, temperature=0.7)
  return c


def long_responses(shapes: dict, response_tokens: int) -> ml_collections.ConfigDict:
  """GRPO with long responses (reasoning RL): 8 prompts x 8 samples of `response_tokens` after
  512-token prompts, a programmatic reward (no reward model, no judge: a verifier's place), the k3
  KL to the bfloat16 reference in the loss, full rematerialization, FSDP over every chip. The
  attention kernel (model.attention; on TPU 'auto' is Pallas splash) is what keeps the update's
  temporaries linear in the sequence: compare --config.model.attention=xla."""
  c = common.pipeline('/path/to/policy_checkpoint')
  c.stages = ('rl',)
  c.model.architecture = ml_collections.ConfigDict(shapes)
  c.model.param_dtype, c.model.dtype, c.model.frozen_param_dtype = 'float32', 'bfloat16', 'bfloat16'
  c.model.remat = 'full'
  c.mesh = common.mesh(data=1, fsdp=-1, tensor=1)
  c.rl.algorithm, c.rl.samples_per_prompt, c.rl.batch_size = 'grpo', 8, 8
  c.rl.reward = 'check:brevity'  # stands in for a verifier; host-side, no weights
  c.rl.kl_in, c.rl.kl_estimator, c.rl.kl_coef = 'loss', 'k3', 0.001
  c.rl.epochs, c.rl.minibatches = 1, 1
  c.rl.prompt_length = 512 if response_tokens > 1024 else 64
  c.rl.sampling = common.sampling(response_tokens, temperature=1.0)
  return c
