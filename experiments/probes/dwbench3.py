# Probe behind results/conv_probe_cpu.md (issue 18): run as python experiments/probes/dwbench3.py
import time, os
import jax, jax.numpy as jnp, numpy as np
from jax import lax
from timing import bench
B=64;H=W=32;ci=co=64
k=jax.random.PRNGKey(0)
x=jax.random.normal(k,(B,H,W,ci)); g=jax.random.normal(k,(B,H,W,co))
xp=jnp.pad(x,((0,0),(1,1),(1,1),(0,0)))
G=g.reshape(-1,co)
print('one slice tap', bench(lambda xp,G: xp[:,1:33,0:32,:].reshape(-1,ci).T@G, xp,G))
print('slice only', bench(lambda xp: xp[:,1:33,0:32,:]*1.0, xp))
Xs=[jax.random.normal(jax.random.PRNGKey(i),(B*H*W,ci)) for i in range(9)]
print('9 param taps', bench(lambda Xs,G: jnp.stack([X.T@G for X in Xs]), Xs,G))
print('9 param taps seq', bench(lambda Xs,G: sum(X.T@G for X in Xs), Xs,G))
print('batched 9 taps einsum', bench(lambda X9,G: jnp.einsum('tkc,ko->tco',X9,G), jnp.stack(Xs),G))
print('one big: (k,576)^T G', bench(lambda X,G: X.T@G, jnp.concatenate(Xs,-1),G))
