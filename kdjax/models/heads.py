"""The small learnable heads the methods train beside the student (flax modules), and the
functions that apply them; the losses they feed (``kdjax.losses``) take arrays only.

  SampleRegressor, InterventionalHead   CID (methods.md §3)
  Embed                                 CRD's student / teacher embeddings (methods.md §2)
  ConvRegressor                         FitNet's hint regressor (methods.md §2)
  ICDHeads                              ICD's projections and similarity scalars (methods.md §4)
  DeconfoundedHead                      KDCI's backdoor-adjusted head (methods.md §6)
  CMIHead                               CMI's projection head (methods.md §5)
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from kdjax.losses.datafree import _f32, l2_normalize, local_global_infonce
from kdjax.losses.icd import _l2_normalize
from kdjax.models.layers import BatchNorm, linear, torch_padding


class SampleRegressor(nn.Module):
  """``W f_s + b``: Linear(d_s -> d_t) with bias and torch init (reference ``Reg``;
  torch ``linear.weight`` -> ``linear/kernel``). Exclude it from weight decay."""
  features: int

  @nn.compact
  def __call__(self, f_s: jax.Array) -> jax.Array:
    return linear(self.features, f_s.shape[-1], name='linear')(f_s)


class InterventionalHead(nn.Module):
  """``z_do = Linear_{2 d_s -> C}([f_s ; p @ D])`` with ``p = softmax(sg(z_s) / T)`` and no
  gradient into ``D`` (methods.md §3). Torch ``fc_new.linear.*`` -> ``linear/*``."""
  num_classes: int

  @nn.compact
  def __call__(self, f_s: jax.Array, student_logits: jax.Array, dictionary: jax.Array,
               temperature: float) -> jax.Array:
    p = jax.nn.softmax(jax.lax.stop_gradient(student_logits).astype(jnp.float32) / temperature,
                       axis=-1)
    context = p @ jax.lax.stop_gradient(dictionary).astype(jnp.float32)
    f_new = jnp.concatenate([f_s.astype(jnp.float32), context], axis=-1)
    return linear(self.num_classes, f_new.shape[-1], name='linear')(f_new)


def interventional_logits(head_params, f_s: jax.Array, student_logits: jax.Array,
                          dictionary: jax.Array, temperature: float) -> jax.Array:
  """Functional form of ``InterventionalHead``: ``head_params`` are its ``params``
  collection (``{'linear': {'kernel', 'bias'}}``); C is read from them."""
  num_classes = head_params['linear']['bias'].shape[-1]
  return InterventionalHead(num_classes).apply({'params': head_params}, f_s, student_logits,
                                               dictionary, temperature)


class Embed(nn.Module):
  """``Linear(d -> dim)`` then division by the L2 norm WITHOUT epsilon (methods.md §7).
  The torch weights ``linear.weight/bias`` map to ``linear/kernel`` (transposed) and
  ``linear/bias``."""
  dim: int = 128

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.reshape(x.shape[0], -1)
    x = linear(self.dim, x.shape[-1], name='linear')(x)
    return x / jnp.sqrt(jnp.sum(x * x, axis=1, keepdims=True))


def _torch_uniform(fan_in: int):
  """torch's default Conv/ConvTranspose init for weight and bias: U(+-1/sqrt(fan_in))."""
  bound = 1.0 / float(fan_in) ** 0.5

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


class ConvRegressor(nn.Module):
  """Maps the student's hint map (NHWC) to the teacher's shape: conv, BN, ReLU.

  The conv is chosen from the spatial sizes exactly as the reference does:
  ``s_H == 2 t_H`` -> 3x3 stride-2 conv (padding 1); ``2 s_H == t_H`` -> 4x4
  stride-2 transposed conv (torch padding 1); otherwise a valid conv with kernel
  ``(1 + s_H - t_H, 1 + s_W - t_W)``. All convs have a bias and torch's default init.
  Parameter names mirror the torch state dict: ``conv/kernel`` (``conv.weight``;
  ``(kh, kw, I, O)`` for convs, ``(kh, kw, O, I)`` for the transposed conv, i.e. the
  torch ``(I, O, kh, kw)`` weight transposed by ``(2, 3, 1, 0)`` in both cases),
  ``conv/bias``, ``bn/scale``, ``bn/bias``, ``batch_stats/bn/{mean,var}``.
  During distillation call it with ``train=True`` (batch statistics, methods.md §7).
  """
  s_shape: Sequence[int]  # student map, NHWC
  t_shape: Sequence[int]  # teacher map, NHWC
  use_relu: bool = True

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    _, s_h, s_w, s_c = self.s_shape
    _, t_h, t_w, t_c = self.t_shape
    if s_h == 2 * t_h:
      x = nn.Conv(t_c, (3, 3), strides=(2, 2), padding=torch_padding(3, 1),
                  kernel_init=_torch_uniform(s_c * 9), bias_init=_torch_uniform(s_c * 9),
                  name='conv')(x)
    elif 2 * s_h == t_h:
      # torch ConvTranspose2d(k=4, s=2, p=1) == dilated conv with padding k-1-p = 2.
      x = nn.ConvTranspose(t_c, (4, 4), strides=(2, 2), padding=((2, 2), (2, 2)),
                           transpose_kernel=True, kernel_init=_torch_uniform(t_c * 16),
                           bias_init=_torch_uniform(t_c * 16), name='conv')(x)
    elif s_h >= t_h:
      k = (1 + s_h - t_h, 1 + s_w - t_w)
      fan_in = s_c * k[0] * k[1]
      x = nn.Conv(t_c, k, padding='VALID', kernel_init=_torch_uniform(fan_in),
                  bias_init=_torch_uniform(fan_in), name='conv')(x)
    else:
      raise NotImplementedError(f'student/teacher map shapes {self.s_shape}, {self.t_shape}')
    x = BatchNorm(name='bn')(x, train)
    return nn.relu(x) if self.use_relu else x


class ICDHeads(nn.Module):
  """Student and teacher projection heads plus the learnable similarity scalars.

  Returns ``(e_s, e_t, log_scale, bias)``: ``e = l2normalize(Linear_{d -> dim}(f))``
  (eps 1e-12) for each side (the teacher head is trained), ``log_scale`` = theta
  (init 1.0, a LOG scale: default scale e) and ``bias`` = b (init 0.0), both scalars.
  Torch ``embed_s.weight`` -> ``embed_s/kernel`` (transposed), ``tau`` -> ``log_scale``.
  """
  dim: int = 128
  init_log_scale: float = 1.0
  init_bias: float = 0.0

  @nn.compact
  def __call__(self, f_s: jax.Array, f_t: jax.Array):
    f_s = f_s.reshape(f_s.shape[0], -1)
    f_t = f_t.reshape(f_t.shape[0], -1)
    e_s = _l2_normalize(linear(self.dim, f_s.shape[-1], name='embed_s')(f_s))
    e_t = _l2_normalize(linear(self.dim, f_t.shape[-1], name='embed_t')(f_t))
    log_scale = self.param('log_scale', nn.initializers.constant(self.init_log_scale), (),
                           jnp.float32)
    bias = self.param('bias', nn.initializers.constant(self.init_bias), (), jnp.float32)
    return e_s, e_t, log_scale, bias


ATTENTIONS = ('additive', 'dot')


class DeconfoundedHead(nn.Module):
  """KDCI's de-confounded student head (methods.md §6): the NWGM approximation of the
  backdoor adjustment ``P(S | do(X)) = sum_z P(S | X, z) P(z)`` as one forward pass.

    lambda_i = softmax_i(w^T tanh(W_q h_s + W_k z_i))          (additive, hidden 256)
            or softmax_i((W_q h_s) . (W_k z_i) / sqrt(hidden))  (option 'dot')
    F        = sum_i lambda_i P(z_i) z_i
    u        = h_s W_h + F W_g
    z_do     = Linear(u)

  ``h_s`` is the student's pooled penultimate feature (B, d_s), ``z_i`` the prototypes
  (N, d_z) and ``P(z_i)`` their prior (N,). The fused width is d_s (ours: the adjusted
  classifier then has the shape of the plain one). All layers are torch-style
  initialised ``Dense``; W_q, W_k, w, W_h, W_g have no bias (as the formulas), the final
  classifier has one.
  """
  num_classes: int
  hidden: int = 256
  attention: str = 'additive'

  @nn.compact
  def __call__(self, h: jax.Array, prototypes: jax.Array, prior: jax.Array,
               attention_logits: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """``(z_do (B, C), lambda (B, N))``. ``attention_logits`` (B, N), when given,
    replace the learned scores (the random-attention ablation); the attention
    parameters still exist, so the parameter tree does not depend on the ablation."""
    if self.attention not in ATTENTIONS:
      raise ValueError(f'attention {self.attention!r}; accepted: {", ".join(ATTENTIONS)}')
    h = h.astype(jnp.float32)
    d_s, d_z = h.shape[-1], prototypes.shape[-1]
    q = linear(self.hidden, d_s, use_bias=False, name='query')(h)              # (B, H)
    k = linear(self.hidden, d_z, use_bias=False, name='key')(prototypes)       # (N, H)
    if self.attention == 'additive':
      act = jnp.tanh(q[:, None, :] + k[None, :, :])                            # (B, N, H)
      scores = linear(1, self.hidden, use_bias=False, name='score')(act)[..., 0]
    else:
      scores = q @ k.T / jnp.sqrt(float(self.hidden))
    if attention_logits is not None:
      scores = attention_logits
    lam = jax.nn.softmax(scores, axis=-1)                                      # (B, N)
    compensation = (lam * prior[None, :]) @ prototypes                         # F (B, d_z)
    u = (linear(d_s, d_s, use_bias=False, name='fuse_h')(h)
         + linear(d_s, d_z, use_bias=False, name='fuse_f')(compensation))
    return linear(self.num_classes, d_s, name='classifier')(u), lam


class CMIHead(nn.Module):
  """CMI projection head (``MLPHead``): Linear(D, D) - ReLU - Linear(D, 256), then L2
  row normalisation. ``hidden`` defaults to the input width, as in the reference."""
  features: int = 256
  hidden: int | None = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    d_in = x.shape[-1]
    hidden = self.hidden or d_in
    x = nn.relu(linear(hidden, d_in, name='head_0')(_f32(x)))
    return l2_normalize(linear(self.features, hidden, name='head_2')(x))


def cmi_contrastive_loss(head_params: Any, local_feat: jax.Array, global_feat: jax.Array,
                         bank_feats: jax.Array | None = None,
                         bank_valid: jax.Array | None = None, *,
                         head: CMIHead = CMIHead(), temperature: float = 0.2) -> jax.Array:
  """CMI's contrastive term between local and global views of a synthetic batch.

  ``local_feat`` / ``global_feat``: (N, D) ``instance_means`` of the teacher on the two
  views; ``bank_feats`` (M, 2D): ``bank_sample`` rows ``[local, global]`` (what the
  synthesizer adds with ``bank_add(bank, concat([local, global], -1))``), ``bank_valid``
  its mask. The head projects all rows (its parameters get gradients through the local
  side only; the global projections are detached, as in the reference).
  """
  n, d = local_feat.shape
  if bank_feats is None:
    bank_feats = jnp.zeros((0, 2 * d), jnp.float32)
    bank_valid = jnp.zeros((0,), bool)
  rows = jnp.concatenate([_f32(local_feat), _f32(bank_feats[:, :d]),
                          _f32(global_feat), _f32(bank_feats[:, d:])], axis=0)
  proj = head.apply({'params': head_params}, rows)
  proj_local, proj_global = jnp.split(proj, 2, axis=0)
  return local_global_infonce(proj_local, proj_global, n, bank_valid, temperature)
