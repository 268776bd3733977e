"""The depthwise implementations agree with lax.conv (forward and both gradients), validate their
input, split along a sharded batch, and the process setup (tcmalloc, native build) works."""
import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mnv3_jax import model, runtime
from mnv3_jax.ops import activations, depthwise, fused, native
from mnv3_jax.parallel import sharding
from tests.support import (F32_TOL, U, assert_close, assert_rounded_once,
                           assert_within_sum_bound, spatial_pads)

FAST = ('shifted', 'native')
# (H, W, k, stride, padding): odd and even sizes, TF "SAME" (asymmetric at stride 2 on even
# sizes) and symmetric padding.
CASES = [
    (8, 8, 3, 1, 'same'), (9, 7, 3, 1, 'symmetric'), (8, 8, 3, 2, 'same'),
    (9, 10, 3, 2, 'symmetric'), (8, 8, 5, 1, 'symmetric'), (10, 11, 5, 2, 'same'),
    (9, 9, 5, 2, 'same'), (2, 3, 5, 2, 'same'), (1, 2, 5, 1, 'same'),   # smaller than the kernel
]


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize('h,w,k,stride,padding', CASES)
def test_matches_conv(dtype, h, w, k, stride, padding):
  """y, dx and dk of 'shifted' and 'native' equal lax.conv's in float32 on the same values: in
  float32 to F32_TOL of max; in bfloat16 native y, dx, dk and shifted dk (float32 sums) to one
  bf16 rounding, shifted y and dx (bf16 arithmetic over the k*k taps) to gamma_{k*k} of the
  sum of |products| (measured: native at most 1.0 U |want|, shifted at most 0.33 of its
  bound)."""
  pads = spatial_pads(h, w, k, stride, padding)
  kx, kk, kd = jax.random.split(jax.random.key(h * 100 + w * 10 + k + stride), 3)
  x = jax.random.normal(kx, (3, h, w, 20)).astype(dtype)   # 20 channels: a partial vector too
  kernel = jax.random.normal(kk, (k, k, 1, 20)).astype(dtype)
  out_shape = (3, (h + sum(pads[0]) - k) // stride + 1, (w + sum(pads[1]) - k) // stride + 1, 20)
  dy = jax.random.normal(kd, out_shape).astype(dtype)

  @jax.jit
  def run(x, kernel, dy):
    results = {}
    for impl in ('conv', *FAST):
      a, b, d = (x, kernel, dy) if impl != 'conv' else (
          x.astype(jnp.float32), kernel.astype(jnp.float32), dy.astype(jnp.float32))
      y, vjp = jax.vjp(lambda u, v: depthwise.depthwise_conv(u, v, stride, pads, impl), a, b)
      results[impl] = (y, *vjp(d))
    # sum|products| of each output: the same convolution and gradients of |x|, |kernel|, |dy|.
    a, b, d = (jnp.abs(v.astype(jnp.float32)) for v in (x, kernel, dy))
    y, vjp = jax.vjp(lambda u, v: depthwise.depthwise_conv(u, v, stride, pads, 'conv'), a, b)
    results['abs'] = (y, *vjp(d))
    return results

  results = run(x, kernel, dy)
  for impl in FAST:
    assert [r.dtype for r in results[impl]] == [dtype] * 3
    assert results[impl][0].shape == out_shape
    for i, (got, want) in enumerate(zip(results[impl], results['conv'])):
      if dtype == jnp.float32:
        assert_close(got, want, F32_TOL)
      elif impl == 'shifted' and i < 2:   # y, dx
        assert_within_sum_bound(got, want, results['abs'][i], k * k)
      else:
        assert_rounded_once(got, want)


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
def test_fused_inference_matches_unfused_ops(dtype):
  """fused_depthwise_conv (input and output BatchNorm + activation inside the native kernel)
  equals the same ops done separately with lax.conv in float32: values, and in float32 the
  gradients (in bfloat16 a ReLU's derivative flips where rounding moves x*a+b across 0).
  Activations the kernel lacks (swish) fall back to XLA ops.

  bfloat16: the kernel works in float32 and rounds y once (`assert_rounded_once`); its pool
  sums come from y before that rounding, so they match to float32 accuracy. The swish fallback
  rounds after the input map, inside swish, after the convolution, the output map and
  hard-swish: y to 2 U of max (measured 1.11 U), its pool sums within a rounding of each term of that y's.
  """
  h, w, c, k, stride = 7, 21, 20, 3, 1   # 21 columns: 8- and 4-wide interior blocks, edges
  keys = jax.random.split(jax.random.key(7), 6)
  x = jax.random.normal(keys[0], (2, h, w, c)).astype(dtype)
  kernel = jax.random.normal(keys[1], (k, k, 1, c)).astype(dtype)
  affine = lambda key: tuple(jax.random.normal(kk, (c,)) for kk in jax.random.split(key))
  pads = spatial_pads(h, w, k, stride, 'same')
  combos = [(None, activations.hard_swish), (nn.relu, activations.identity),
            (activations.hard_swish, nn.relu), (nn.swish, activations.hard_swish)]

  @jax.jit
  def run(x, kernel):
    out = []
    for pre_act, post_act in combos:
      pre = None if pre_act is None else (*affine(keys[2]), pre_act)
      post = (*affine(keys[3]), post_act)
      for impl in ('native', 'conv'):
        f = lambda u, v, impl=impl, pre=pre, post=post: fused.fused_depthwise_conv(
            u, v, stride, pads, impl, pre, post)
        a, b = (x, kernel) if impl == 'native' else (x.astype(jnp.float32),
                                                     kernel.astype(jnp.float32))
        y, vjp = jax.vjp(f, a, b)
        # pool=True: the same y and its per-image channel sums (the squeeze-and-excite pool).
        y_pooled, sums = fused.fused_depthwise_conv(a, b, stride, pads, impl, pre, post,
                                                        pool=True)
        out.append((y, *vjp(jnp.ones_like(y)), y_pooled, sums))
    return out

  results = run(x, kernel)
  for (pre_act, post_act), got, want in zip(combos, results[0::2], results[1::2]):
    assert got[0].dtype == got[3].dtype == dtype
    assert got[4].shape == (2, c) and got[4].dtype == jnp.float32
    sums = jnp.sum(want[0], axis=(1, 2))
    if dtype == jnp.float32:
      assert_close(got[3], want[0], F32_TOL)
      assert_close(got[4], sums, F32_TOL)
      for g, r in zip(got[:3], want):
        assert_close(g, r, F32_TOL)
    elif post_act in fused.NATIVE_ACTIVATIONS and pre_act in (None, *fused.NATIVE_ACTIVATIONS):
      for g in (got[0], got[3]):
        assert_rounded_once(g, want[0])
      assert_close(got[4], sums, F32_TOL)
    else:   # XLA fallback: bf16 arithmetic
      for g in (got[0], got[3]):
        assert_close(g, want[0], 2 * U)
      y = got[3].astype(jnp.float32)   # sums of y before or after its last rounding
      assert_within_sum_bound(got[4], jnp.sum(y, axis=(1, 2)), jnp.sum(jnp.abs(y), axis=(1, 2)), 1)


def test_auto_picks_a_fast_cpu_impl_and_native_builds_here():
  assert depthwise.resolve_impl('auto') == 'native'   # this machine has a C++ compiler
  assert depthwise.resolve_impl('conv') == 'conv'


def test_auto_falls_back_to_shifted_without_native(monkeypatch):
  monkeypatch.setattr(native, 'native_depthwise', lambda: False)
  assert depthwise.resolve_impl('auto') == 'shifted'
  with pytest.raises(ValueError, match="'native'"):
    depthwise.resolve_impl('native')


@pytest.mark.parametrize('bad,match', [
    (dict(impl='fast'), 'Unknown depthwise_impl'),
    (dict(kernel_shape=(3, 3, 1, 5)), 'kernel shape'),
    (dict(kernel_shape=(3, 2, 1, 4)), 'kernel shape'),
    (dict(stride=0), 'stride'),
    (dict(stride=1.5), 'stride'),
    (dict(padding=((1, 1),)), 'padding'),
    (dict(padding=((3, 0), (1, 1))), 'padding'),
    (dict(padding=((-1, 1), (1, 1))), 'padding'),
])
def test_bad_input_raises_value_error(bad, match):
  x = jnp.zeros((1, 6, 6, 4))
  args = dict(kernel_shape=(3, 3, 1, 4), stride=1, padding=((1, 1), (1, 1)), impl='native')
  args.update(bad)
  with pytest.raises(ValueError, match=match):
    depthwise.depthwise_conv(x, jnp.zeros(args['kernel_shape']), args['stride'], args['padding'],
                             args['impl'])


@pytest.mark.parametrize('impl', FAST)
def test_batch_sharded_over_devices_matches_single_device(impl):
  """Under jit with the batch split over the 8 CPU devices, results equal the unsharded ones."""
  mesh = Mesh(np.array(jax.devices()[:8]), ('data',))
  pads = spatial_pads(9, 9, 3, 2, 'same')
  x = jax.random.normal(jax.random.key(0), (8, 9, 9, 16))
  kernel = jax.random.normal(jax.random.key(1), (3, 3, 1, 16))
  loss = lambda a, b: jnp.sum(jnp.sin(depthwise.depthwise_conv(a, b, 2, pads, impl)))
  grad = jax.grad(loss, argnums=(0, 1))
  want = jax.jit(grad)(x, kernel)
  xs = jax.device_put(x, NamedSharding(mesh, P('data')))
  got = jax.jit(grad)(xs, jax.device_put(kernel, NamedSharding(mesh, P())))
  for g, w in zip(got, want):
    assert_close(g, w, 2e-6)
  with sharding.in_mesh(mesh):   # the native kernels now run per device (sharding.per_shard)
    got = jax.jit(grad)(xs, jax.device_put(kernel, NamedSharding(mesh, P())))
  for g, w in zip(got, want):
    assert_close(g, w, 2e-6)


def _all_gathers(hlo: str) -> int:
  return len(re.findall(r' all-gather(?:-start)?\(', hlo))


def test_native_kernels_run_per_device_on_a_sharded_batch():
  """With the mesh active (`sharding.in_mesh`), every native kernel (depthwise forward, input
  and weight gradients; fused depthwise with pool; the stem) runs on its device's shard of a
  batch sharded over the 8 CPU devices: values and gradients equal one device's, and the
  compiled program all-gathers nothing, while without the mesh XLA all-gathers the batch."""
  from mnv3_jax.ops.activations import hard_swish  # pylint: disable=import-outside-toplevel
  mesh = Mesh(np.array(jax.devices()[:8]), ('data',))
  pads = spatial_pads(9, 9, 3, 2, 'same')
  keys = jax.random.split(jax.random.key(0), 8)
  c = 16
  kernel = jax.random.normal(keys[1], (3, 3, 1, c))
  vec = lambda i: jax.random.normal(keys[i], (c,))

  def depthwise_loss(x, kernel):
    return jnp.sum(jnp.sin(depthwise.depthwise_conv(x, kernel, 2, pads, 'native')))

  def fused_loss(x, kernel, a, b, s, t):
    y, sums = fused.fused_depthwise_conv(
        x, kernel, 2, pads, 'native', pre=(a, b, nn.relu), post=(s, t, hard_swish),
        pool=True)
    return jnp.sum(jnp.sin(y)) + jnp.sum(jnp.cos(sums))

  def stem_loss(x, kernel, s, t):
    return jnp.sum(jnp.sin(fused.fused_conv(x, kernel, 2, pads, True, (s, t, hard_swish))))

  cases = {
      'depthwise': (depthwise_loss, jax.random.normal(keys[0], (8, 9, 9, c)), (kernel,)),
      'fused': (fused_loss, jax.random.normal(keys[0], (16, 9, 9, c)),
                (kernel, vec(2), vec(3), vec(4), vec(5))),
      'stem': (stem_loss, jax.random.normal(keys[0], (8, 9, 9, 3)),
               (jax.random.normal(keys[6], (3, 3, 3, c)), vec(2), vec(3))),
  }
  for name, (loss, x, rest) in cases.items():
    f = jax.jit(jax.value_and_grad(loss, argnums=tuple(range(1 + len(rest)))))
    want = f(x, *rest)
    args = (jax.device_put(x, NamedSharding(mesh, P('data'))),
            *jax.device_put(rest, NamedSharding(mesh, P())))
    with sharding.in_mesh(mesh):
      got = f(*args)
      hlo = f.lower(*args).compile().as_text()
    # 2e-5: float32 sums in another order (one device's results at batch 2 and 16 differ so).
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      assert_close(g, w, 2e-5)
    calls = re.findall(r'= \(?\w+\[(\d+),[^=]*custom_call_target="Mnv3', hlo)
    assert calls and all(int(n) == x.shape[0] // 8 for n in calls), (name, calls)
    assert _all_gathers(hlo) == 0, (name, [l for l in hlo.splitlines() if 'all-gather' in l])
    # Without the mesh XLA cannot split the custom calls: the check above can fail.
    assert _all_gathers(f.lower(*args).compile().as_text()) > 0, name


def test_module_param_layout_and_model_equal_across_impls():
  """Same params for every impl; MobileNetV3-Small logits and parameter gradients of 'native'
  agree with 'conv' ('shifted' against 'conv': tests/model/test_model.py). (Inference mode: in training mode BatchNorm makes some gradients ~0, e.g. a BN bias
  followed by another BN, so their relative rounding error means nothing.)"""
  x = jax.random.uniform(jax.random.key(0), (1, 32, 32, 3), minval=-1, maxval=1)
  base = model.MobileNetV3(variant='small', num_classes=10, depthwise_impl='conv')
  variables = model.init_variables(base, jax.random.key(1), (32, 32))
  assert variables['params']['block_3']['depthwise']['conv']['kernel'].shape == (5, 5, 1, 96)
  # Running statistics away from (0, 1), so that the BatchNorm folds (into 1x1 weights, into the
  # native kernels) have something to get wrong.
  stats, tree = jax.tree.flatten(variables['batch_stats'])
  stats = [v + jnp.abs(jax.random.normal(k, v.shape)) for v, k in
           zip(stats, jax.random.split(jax.random.key(2), len(stats)))]
  variables = {**variables, 'batch_stats': jax.tree.unflatten(tree, stats)}

  def loss(params, impl):
    m = model.MobileNetV3(variant='small', num_classes=10, depthwise_impl=impl)
    logits = m.apply({'params': params, 'batch_stats': variables['batch_stats']}, x)
    return jnp.sum(logits ** 2), logits

  results = {impl: jax.jit(jax.grad(loss, has_aux=True), static_argnums=1)(
      variables['params'], impl) for impl in ('conv', 'native')}
  assert_close(results['native'][1], results['conv'][1], 1e-5)
  for g, w in zip(jax.tree.leaves(results['native'][0]), jax.tree.leaves(results['conv'][0])):
    assert_close(g, w, 3e-5)


def test_native_library_is_cached(tmp_path):
  """A second build with the same source and compiler reuses the cached library."""
  first = native._build(jax.ffi.include_dir())   # pylint: disable=protected-access
  assert first is not None and first.exists()
  mtime = first.stat().st_mtime_ns
  assert native._build(jax.ffi.include_dir()) == first   # pylint: disable=protected-access
  assert first.stat().st_mtime_ns == mtime


def test_use_tcmalloc_reexecs_with_the_allocator_preloaded():
  if runtime.find_tcmalloc() is None:
    pytest.skip('libtcmalloc-minimal4 is not installed')
  code = ('from mnv3_jax import runtime; import sys; '
          'print(runtime.tcmalloc_loaded(), runtime.use_tcmalloc(), runtime.tcmalloc_loaded(), '
          'sys.argv[1:])')
  env = {k: v for k, v in os.environ.items() if k not in ('LD_PRELOAD', 'MNV3_TCMALLOC_REEXEC')}
  root = Path(__file__).resolve().parents[2]
  out = subprocess.run([sys.executable, '-c', code, 'arg'], env={**env, 'PYTHONPATH': str(root)},
                       capture_output=True, text=True, check=True, cwd=root)
  # The first process is replaced by one that has tcmalloc mapped and the same arguments.
  assert out.stdout.split() == ['True', 'True', 'True', "['arg']"]
