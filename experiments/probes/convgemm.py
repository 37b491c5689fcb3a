# Probe (issue 18): a 3x3 convolution written as GEMMs (im2col, kernel-row concat) in
# float32 and in bf16 with float32 accumulation, against XLA's own. Run as:
# python experiments/probes/convgemm.py
import os
import sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import jax, jax.numpy as jnp
from jax import lax
from timing import bench
NHWC=('NHWC','HWIO','NHWC')
k=jax.random.PRNGKey(0)
def im2col_conv(x,w,dt):
  n,h,wd,c=x.shape
  xp=jnp.pad(x.astype(dt),((0,0),(1,1),(1,1),(0,0)))
  p=jnp.concatenate([xp[:,i:i+h,j:j+wd,:] for i in range(3) for j in range(3)],-1)
  return jnp.einsum('nhwk,ko->nhwo',p,w.reshape(-1,w.shape[-1]).astype(dt),preferred_element_type=jnp.float32)
def rows_conv(x,w,dt):
  n,h,wd,c=x.shape
  xp=jnp.pad(x.astype(dt),((0,0),(1,1),(1,1),(0,0)))
  out=0
  for i in range(3):
    p=jnp.concatenate([xp[:,i:i+h,j:j+wd,:] for j in range(3)],-1)
    out=out+jnp.einsum('nhwk,ko->nhwo',p,w[i].reshape(-1,w.shape[-1]).astype(dt),preferred_element_type=jnp.float32)
  return out
for H,ci in [(32,64),(16,128),(8,256),(32,32)]:
  co=ci if ci!=32 else 64
  x=jax.random.normal(k,(64,H,H,ci)); w=jax.random.normal(k,(3,3,ci,co))*0.05
  conv=lambda x,w: lax.conv_general_dilated(x,w,(1,1),((1,1),(1,1)),dimension_numbers=NHWC)
  ref=conv(x,w)
  r=[bench(conv,x,w)]
  for f in (im2col_conv, rows_conv):
    for dt in (jnp.float32, jnp.bfloat16):
      g=lambda x,w: f(x,w,dt)
      err=float(jnp.max(jnp.abs(g(x,w)-ref))/jnp.max(jnp.abs(ref)))
      r.append(bench(g,x,w)); r.append(err)
  print(H,ci,co,'xla %.1f | im2col f32 %.1f (%.0e) bf16 %.1f (%.0e) | rows f32 %.1f (%.0e) bf16 %.1f (%.0e)'%tuple(r), flush=True)
