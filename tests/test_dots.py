"""rlaif_jax.models.dots: bfloat16 matmuls through the CPU's bfloat16 kernels, float32 untouched."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlaif_jax.models import dots


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
  with_bf16, without = tmp_path / 'a', tmp_path / 'b'
  with_bf16.write_text('processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16 avx512_vnni\n')
  without.write_text('processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512bw\n')
  assert dots.cpu_has_bf16_dots(str(with_bf16))
  assert not dots.cpu_has_bf16_dots(str(without))
  assert not dots.cpu_has_bf16_dots(str(tmp_path / 'missing'))


def _dot_types(fn, *args):
  """(preferred element types, output dtypes) of the dot_generals fn traces to."""
  eqns = [e for e in jax.make_jaxpr(fn)(*args).jaxpr.eqns if e.primitive.name == 'dot_general']
  return [e.params['preferred_element_type'] for e in eqns], [e.outvars[0].aval.dtype for e in eqns]


def test_float32_dots_are_asked_as_before():
  x, w = jnp.ones((4, 8)), jnp.ones((8, 3))
  assert not dots.wide_accumulation(jnp.float32)
  assert _dot_types(dots.matmul, x, w) == _dot_types(lambda a, b: a @ b, x, w)
  assert (_dot_types(lambda a, b: dots.einsum('me,mf->ef', a, b), x, x)
          == _dot_types(lambda a, b: jnp.einsum('me,mf->ef', a, b), x, x))


@pytest.mark.skipif(not dots.wide_accumulation(jnp.bfloat16),
                    reason='this CPU has no bfloat16 dot instructions: bfloat16 dots stay plain')
def test_bfloat16_dots_accumulate_in_float32_and_round_once():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((64, 576)), jnp.bfloat16)
  w = jnp.asarray(rng.standard_normal((576, 384)), jnp.bfloat16)
  preferred, out = _dot_types(dots.matmul, x, w)
  assert preferred == [jnp.float32] and out == [jnp.float32]
  got = np.asarray(jax.jit(dots.matmul)(x, w).astype(jnp.float32))
  assert jax.jit(dots.matmul)(x, w).dtype == jnp.bfloat16
  # the reference: exact products of the bfloat16 operands summed in float64, rounded once
  exact = np.asarray(x, np.float64) @ np.asarray(w, np.float64)
  once = np.asarray(jnp.asarray(exact, jnp.float32).astype(jnp.bfloat16).astype(jnp.float32))
  ulp = np.abs(once) * 2.0 ** -7
  assert np.all(np.abs(got - once) <= ulp + 1e-30)
  assert np.mean(got == once) > 0.98
  e = jax.jit(lambda a, b: dots.einsum('me,mf->ef', a, b))(x, x[:, :32])
  np.testing.assert_allclose(np.asarray(e, np.float32),
                             np.asarray(x, np.float64).T @ np.asarray(x[:, :32], np.float64),
                             rtol=2 ** -7, atol=1e-2)
