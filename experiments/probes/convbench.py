# Probe behind results/conv_probe_cpu.md (issue 18): run as python experiments/probes/convbench.py
import time, sys, os
import jax, jax.numpy as jnp, numpy as np
from jax import lax
NHWC=('NHWC','HWIO','NHWC')
from timing import bench
B=int(os.environ.get('B',64))
shapes=[(32,32,64,64),(16,16,128,128),(8,8,256,256)]
k=jax.random.PRNGKey(0)
for H,W,ci,co in shapes:
  x=jax.random.normal(k,(B,H,W,ci)); w=jax.random.normal(k,(3,3,ci,co))*0.05
  g=jax.random.normal(k,(B,H,W,co))
  conv=lambda x,w: lax.conv_general_dilated(x,w,(1,1),((1,1),(1,1)),dimension_numbers=NHWC)
  fwd=bench(conv,x,w)
  dx=bench(lambda x,w,g: jax.vjp(lambda x: conv(x,w),x)[1](g)[0],x,w,g)
  dw=bench(lambda x,w,g: jax.vjp(lambda w: conv(x,w),w)[1](g)[0],x,w,g)
  # im2col fwd
  def im2col(x):
    xp=jnp.pad(x,((0,0),(1,1),(1,1),(0,0)))
    return jnp.concatenate([xp[:,i:i+H,j:j+W,:] for i in range(3) for j in range(3)],-1)
  fwd_mm=bench(lambda x,w: im2col(x)@w.reshape(9*ci,co),x,w)
  dw_mm=bench(lambda x,g: jnp.einsum('bhwk,bhwo->ko',im2col(x),g),x,g)
  # dw via nine matmuls
  def dw9(x,g):
    xp=jnp.pad(x,((0,0),(1,1),(1,1),(0,0)))
    return jnp.stack([jnp.einsum('bhwc,bhwo->co',xp[:,i:i+H,j:j+W,:],g) for i in range(3) for j in range(3)]).reshape(3,3,ci,co)
  dw_9=bench(dw9,x,g)
  # NCHW layouts
  xc=jnp.transpose(x,(0,3,1,2)); wc=jnp.transpose(w,(3,2,0,1))
  convc=lambda x,w: lax.conv_general_dilated(x,w,(1,1),((1,1),(1,1)),dimension_numbers=('NCHW','OIHW','NCHW'))
  fwd_c=bench(convc,xc,wc)
  gflop=2*B*H*W*ci*co*9/1e9
  print(f'{H}x{W} {ci}->{co}: {gflop:.2f} GFLOP fwd {fwd:.1f} dx {dx:.1f} dw {dw:.1f} | im2col fwd {fwd_mm:.1f} dw {dw_mm:.1f} dw9 {dw_9:.1f} | nchw fwd {fwd_c:.1f}',flush=True)
