"""FitNet hint regressor and loss (methods.md §2, RepDistiller ``ConvReg`` / ``HintLoss``)."""
from __future__ import annotations


import jax
import jax.numpy as jnp



def hint_loss(f_s: jax.Array, f_t: jax.Array) -> jax.Array:
  """FitNet hint loss: MSE averaged over every element (``nn.MSELoss()``)."""
  return jnp.mean(jnp.square(f_s.astype(jnp.float32) - f_t.astype(jnp.float32)))
