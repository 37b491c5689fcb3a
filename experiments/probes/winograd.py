# Probe (issue 18): a 3x3 stride-1 convolution as Winograd F(2x2, 3x3) in plain jnp against
# XLA's own, forward and both gradients (autodiff of the Winograd form).
# Run as: python experiments/probes/winograd.py
import os

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from timing import bench

NHWC = ('NHWC', 'HWIO', 'NHWC')
B = int(os.environ.get('B', 64))


def winograd(x, w):
  n, h, wd, c = x.shape
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  rows = [xp[:, i:i + h:2] for i in range(4)]
  r = [rows[0] - rows[2], rows[1] + rows[2], rows[2] - rows[1], rows[1] - rows[3]]
  v = []
  for ri in r:
    cols = [ri[:, :, j:j + wd:2] for j in range(4)]
    v += [cols[0] - cols[2], cols[1] + cols[2], cols[2] - cols[1], cols[1] - cols[3]]
  v = jnp.stack(v)  # (16, n, h/2, w/2, c)
  g = jnp.array([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]], w.dtype)
  u = jnp.einsum('ai,ijco,bj->abco', g, w, g).reshape(16, c, -1)
  m = jnp.einsum('tnhwc,tco->tnhwo', v, u).reshape(4, 4, n, h // 2, wd // 2, -1)
  a0 = m[0] + m[1] + m[2]
  a1 = m[1] - m[2] - m[3]
  ys = []
  for aa in (a0, a1):
    ys.append(jnp.stack([aa[0] + aa[1] + aa[2], aa[1] - aa[2] - aa[3]], 3))  # n h/2 w/2 2 o
  y = jnp.stack(ys, 2)  # n h/2 2 w/2 2 o
  return y.reshape(n, h, wd, -1)


def conv(x, w):
  return lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=NHWC)


if __name__ == '__main__':
  k1, k2, k3 = jax.random.split(jax.random.PRNGKey(0), 3)
  for hh, ci, co in [(32, 64, 64), (16, 128, 128), (8, 256, 256), (32, 16, 16), (16, 32, 32),
                     (8, 64, 64)]:
    x = jax.random.normal(k1, (B, hh, hh, ci))
    w = jax.random.normal(k2, (3, 3, ci, co)) * (2 / (9 * co)) ** .5
    gy = jax.random.normal(k3, (B, hh, hh, co))
    ref = conv(x, w)
    got = winograd(x, w)
    err = float(jnp.max(jnp.abs(got - ref)) / jnp.max(jnp.abs(ref)))
    gr = jax.vjp(conv, x, w)[1](gy)
    gw = jax.vjp(winograd, x, w)[1](gy)
    gerr = [float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(a))) for a, b in zip(gr, gw)]
    row = []
    for f in (conv, winograd):
      row.append(bench(f, x, w))
      row.append(bench(lambda x, w, g: jax.vjp(f, x, w)[1](g), x, w, gy))
    print(f'{hh}x{hh} {ci}->{co}: xla fwd {row[0]:.1f} fwd+vjp {row[1]:.1f} | winograd fwd '
          f'{row[2]:.1f} fwd+vjp {row[3]:.1f} | rel err {err:.1e} dx {gerr[0]:.1e} dw {gerr[1]:.1e}',
          flush=True)
