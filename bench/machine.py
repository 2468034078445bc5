"""The machine a benchmark ran on, for its table: results hold only where they were measured (the
same benchmark gives other ratios on AMD EPYC and Intel Xeon hosts)."""

import os
import platform


def cpu_model() -> str:
  """The CPU's model name (/proc/cpuinfo, else the platform's processor string)."""
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.lower().startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or 'unknown CPU'


def describe() -> str:
  """'CPU <model>, N cores' for a table's header line."""
  return f'CPU {cpu_model()}, {os.cpu_count()} cores'


def timings(fn, repeats: int) -> list[float]:
  """Seconds of `repeats` calls of fn, after one warm-up call (compilation for JAX)."""
  import time
  fn()
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return times


def cpu_ceiling() -> tuple[float, float] | None:
  """(float32 FMA peak GFLOP/s, memory read GB/s) of this CPU on all cores, measured by
  bench/ceiling.c built with the system C compiler (-march=native); None without a compiler. The
  hardware's own bound, above any library's: a target that needs more than it is out of reach."""
  import shutil
  import subprocess
  import tempfile
  cc = shutil.which(os.environ.get('CC', 'cc')) or shutil.which('gcc')
  if cc is None:
    return None
  source = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'ceiling.c')
  with tempfile.TemporaryDirectory() as folder:
    binary = os.path.join(folder, 'ceiling')
    subprocess.run([cc, '-O2', '-march=native', '-pthread', source, '-o', binary], check=True)
    out = subprocess.run([binary, str(os.cpu_count())], check=True, capture_output=True, text=True)
  fma, read = (float(x) for x in out.stdout.split())
  return fma, read


def describe_ceiling(ceiling: tuple[float, float] | None) -> str:
  if ceiling is None:
    return 'CPU ceiling: not measured (no C compiler for bench/ceiling.c)'
  return (f'CPU ceiling (bench/ceiling.c, {os.cpu_count()} threads): float32 FMA peak '
          f'{ceiling[0]:.0f} GFLOP/s, memory read {ceiling[1]:.1f} GB/s')


def layer_weights(cfg) -> int:
  """Weights of one decoder layer's matmuls (q, k, v, o and the gated MLP): each is 2 FLOPs per
  token and is read once per decode step."""
  e = cfg.hidden_size
  return e * cfg.head_dim * (2 * cfg.num_heads + 2 * cfg.num_kv_heads) + 3 * e * cfg.intermediate_size


MATMUL_SHAPES = ((2048, 576, 1536), (16, 576, 1536))  # SmolLM2's MLP: a training batch, a decode step


def matmul_rates(shapes=MATMUL_SHAPES, repeats: int = 20) -> str:
  """'float32 matmul GFLOP/s, XLA / PyTorch: MxKxN a / b, ...', measured now on all cores (median
  of `repeats`): the two libraries' own ceiling on this host, for reading a bench's ratio."""
  import statistics

  import jax
  import jax.numpy as jnp
  import numpy as np
  import torch
  torch.set_num_threads(os.cpu_count())
  matmul = jax.jit(lambda a, b: a @ b)

  def rate(fn, m, k, n):
    return 2 * m * k * n / statistics.median(timings(fn, repeats)) / 1e9

  parts = []
  for m, k, n in shapes:
    a, b = np.random.default_rng(0).standard_normal((2, max(m, k), max(k, n)), np.float32)
    a, b = a[:m, :k].copy(), b[:k, :n].copy()
    ja, jb, ta, tb = jnp.asarray(a), jnp.asarray(b), torch.from_numpy(a), torch.from_numpy(b)
    ours = rate(lambda: matmul(ja, jb).block_until_ready(), m, k, n)
    theirs = rate(lambda: ta @ tb, m, k, n)
    parts.append(f'{m}x{k}x{n} {ours:.0f} / {theirs:.0f}')
  return 'float32 matmul GFLOP/s, XLA / PyTorch: ' + ', '.join(parts)


def decode_floor(batch: int = 16, layers: int = 30, hidden: int = 576, mlp: int = 1536,
                 qkv: int = 960, repeats: int = 5) -> str:
  """'decode matmuls alone, cold weights, ...': the trunk matmuls of one decode step (SmolLM2's
  shapes, `layers` layers with weights of their own, so each is read from memory once per step, as
  in a real step), timed in both libraries (best of `repeats`): the floor of a decode step's time on
  this host, which the hot-cache matmul rate above (one weight reused) overstates."""

  import jax
  import jax.numpy as jnp
  import numpy as np
  import torch
  torch.set_num_threads(os.cpu_count())
  rng = np.random.default_rng(0)
  shapes = ((hidden, qkv), (hidden, hidden), (hidden, mlp), (hidden, mlp), (mlp, hidden))
  weights = [[(rng.standard_normal(s, np.float32) * 0.02) for s in shapes] for _ in range(layers)]
  flops = 2 * batch * sum(w.size for layer in weights for w in layer)

  def step(x, ws, mm, silu):
    for wqkv, wo, wg, wu, wd in ws:
      x = x + mm(mm(x, wqkv)[:, :hidden], wo)
      x = x + mm(silu(mm(x, wg)) * mm(x, wu), wd)
    return x

  ours = jax.jit(lambda x, ws: step(x, ws, jnp.matmul, jax.nn.silu))
  jx, jws = jnp.full((batch, hidden), 0.1), jax.tree.map(jnp.asarray, weights)
  tx, tws = torch.full((batch, hidden), 0.1), [[torch.from_numpy(w) for w in layer] for layer in weights]

  t_ours = min(timings(lambda: ours(jx, jws).block_until_ready(), repeats))
  with torch.inference_mode():
    t_theirs = min(timings(lambda: step(tx, tws, torch.matmul, torch.nn.functional.silu), repeats))
  weight_bytes = 4 * sum(w.size for layer in weights for w in layer)
  return (f'decode matmuls alone ({layers} layers x 5 matmuls, {batch} rows, cold weights), XLA / '
          f'PyTorch: {t_ours * 1e3:.1f} / {t_theirs * 1e3:.1f} ms a step ({flops / t_ours / 1e9:.0f} / '
          f'{flops / t_theirs / 1e9:.0f} GFLOP/s, weights streamed at {weight_bytes / t_ours / 1e9:.1f} / '
          f'{weight_bytes / t_theirs / 1e9:.1f} GB/s)')
