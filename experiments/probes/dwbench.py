# Probe behind results/conv_probe_cpu.md (issue 18): run as python experiments/probes/dwbench.py
import time, os
import jax, jax.numpy as jnp, numpy as np
from jax import lax
from timing import bench
B=64;H=W=32;ci=co=64
k=jax.random.PRNGKey(0)
x=jax.random.normal(k,(B,H,W,ci)); g=jax.random.normal(k,(B,H,W,co))
X=x.reshape(-1,ci); G=g.reshape(-1,co)
print('one tap XtG', bench(lambda X,G: X.T@G, X,G))
print('one tap dot_general', bench(lambda X,G: lax.dot_general(X,G,(((0,),(0,)),((),()))), X,G))
for P in (2,4,8,16,64):
  print('chunked',P, bench(lambda X,G: jnp.einsum('pkc,pko->co',X.reshape(P,-1,ci),G.reshape(P,-1,co)), X,G),
        bench(lambda X,G: jnp.einsum('pkc,pko->pco',X.reshape(P,-1,ci),G.reshape(P,-1,co)).sum(0), X,G))
print('Xt materialised then matmul', bench(lambda X,G: jnp.transpose(X)@G, X,G))
print('G^T X (co x ci)', bench(lambda X,G: (G.T@X).T, X,G))
# full dw via 9 taps on chunked batched matmul
def dw9(x,g,P=8):
  xp=jnp.pad(x,((0,0),(1,1),(1,1),(0,0)))
  out=[]
  for i in range(3):
    for j in range(3):
      xs=xp[:,i:i+H,j:j+W,:].reshape(P,-1,ci)
      out.append(jnp.einsum('pkc,pko->pco',xs,g.reshape(P,-1,co)).sum(0))
  return jnp.stack(out).reshape(3,3,ci,co)
print('dw9 chunked', bench(dw9,x,g))
def dwcat(x,g,P=8):
  xp=jnp.pad(x,((0,0),(1,1),(1,1),(0,0)))
  pt=jnp.concatenate([xp[:,i:i+H,j:j+W,:] for i in range(3) for j in range(3)],-1).reshape(P,-1,9*ci)
  return jnp.einsum('pkc,pko->pco',pt,g.reshape(P,-1,co)).sum(0).reshape(3,3,ci,co)
print('dwcat chunked', bench(dwcat,x,g))
