"""PyTorch state dict -> Flax variables for the kdjax model zoo.

Pure numpy/JAX: only ``load_torch_file`` needs torch (an optional dependency).

Naming: a torch key is split at '.', and every purely numeric part is folded into
the part before it (``layer1.0.downsample.1.weight`` -> module ``layer1_0/downsample_1``,
leaf ``weight``). The kdjax modules are named so that this lands on their variables.
What a module *is* (conv, transposed conv, linear, BatchNorm) is read from the target
model itself -- the module classes seen while tracing ``init`` -- never guessed from
torch names, so a renamed torch layer cannot be silently mis-transposed.
"""
from __future__ import annotations

import re
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from kdjax.models.layers import BatchNorm
from kdjax.models.registry import create_model

_BN_LEAVES = {'weight': ('params', 'scale'), 'bias': ('params', 'bias'),
              'running_mean': ('batch_stats', 'mean'), 'running_var': ('batch_stats', 'var')}
_SHOW = 5  # entries listed per category in error messages


class CheckpointMismatchError(ValueError):
  """The torch state dict does not fit the model; the message lists every kind of mismatch."""

  def __init__(self, missing: list[str], unexpected: list[str],
               misshaped: list[tuple[str, tuple, tuple]]):
    self.missing, self.unexpected, self.misshaped = missing, unexpected, misshaped
    parts = []
    if missing:
      parts.append(_listing('missing', missing))
    if unexpected:
      parts.append(_listing('unexpected', unexpected))
    if misshaped:
      shown = [f'{k} (expected {tuple(e)}, got {tuple(g)})' for k, e, g in misshaped]
      parts.append(_listing('mis-shaped', shown))
    super().__init__('state dict does not match the model: ' + '; '.join(parts))


def _listing(what: str, items: list[str]) -> str:
  more = f', ... (+{len(items) - _SHOW} more)' if len(items) > _SHOW else ''
  return f'{len(items)} {what} key(s): ' + ', '.join(items[:_SHOW]) + more


def split_torch_key(key: str) -> tuple[tuple[str, ...], str]:
  """``'blocks.0.1.conv.3.weight'`` -> ``(('blocks_0_1', 'conv_3'), 'weight')``."""
  parts: list[str] = []
  for p in key.split('.'):
    if p.isdigit() and parts:
      parts[-1] = f'{parts[-1]}_{p}'
    else:
      parts.append(p)
  return tuple(parts[:-1]), parts[-1]


def _module_kinds(model: nn.Module, *sample_args: Any, **sample_kwargs: Any):
  """Variable shapes and {module path: (kind, module)} from an abstract ``init``."""
  kinds: dict[tuple[str, ...], tuple[str, nn.Module]] = {}

  def record(next_fun, args, kwargs, context):
    mod = context.module
    if context.method_name == '__call__' and mod.scope is not None:
      path = tuple(mod.scope.path)
      if isinstance(mod, nn.ConvTranspose):
        kinds[path] = ('conv_transpose', mod)
      elif isinstance(mod, (nn.Conv, nn.ConvLocal)):
        kinds[path] = ('conv', mod)
      elif isinstance(mod, nn.Dense):
        kinds[path] = ('linear', mod)
      elif isinstance(mod, (BatchNorm, nn.BatchNorm)):
        kinds[path] = ('bn', mod)
    return next_fun(*args, **kwargs)

  def init():
    with nn.intercept_methods(record):
      return model.init(jax.random.key(0), *sample_args, **sample_kwargs)

  shapes = jax.eval_shape(init)
  return shapes, kinds


def _flatten(tree: Mapping, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
  out = {}
  for k, v in tree.items():
    if isinstance(v, Mapping):
      out.update(_flatten(v, prefix + (k,)))
    else:
      out[prefix + (k,)] = v
  return out


def _convert_leaf(kind: str, module: nn.Module, leaf: str,
                  w: np.ndarray) -> tuple[tuple[str, str], np.ndarray] | None:
  """Target (collection, name) and the re-laid-out array, or None if the leaf is foreign."""
  if kind == 'bn':
    return (_BN_LEAVES[leaf], w) if leaf in _BN_LEAVES else None
  if leaf == 'bias':
    return ('params', 'bias'), w
  if leaf != 'weight':
    return None
  if kind == 'linear' and w.ndim == 2:
    return ('params', 'kernel'), w.T  # (out, in) -> (in, out)
  if kind == 'conv' and w.ndim == 4:
    return ('params', 'kernel'), w.transpose(2, 3, 1, 0)  # OIHW -> HWIO (I already / groups)
  if kind == 'conv_transpose' and w.ndim == 4:
    # torch (I, O, kh, kw) is the kernel of the conv this layer is the adjoint of.
    if getattr(module, 'transpose_kernel', False):
      return ('params', 'kernel'), w.transpose(2, 3, 1, 0)  # Flax (kh, kw, O, I)
    # Plain Flax ConvTranspose convolves the dilated input: flip space, (kh, kw, I, O).
    return ('params', 'kernel'), w[:, :, ::-1, ::-1].transpose(2, 3, 0, 1)
  return ('params', 'kernel'), w  # wrong rank: reported as mis-shaped below


def torch_to_flax(model: nn.Module, state_dict: Mapping[str, Any], *sample_args: Any,
                  **sample_kwargs: Any) -> dict[str, Any]:
  """Converts ``state_dict`` into ``{'params', 'batch_stats'}`` for ``model``.

  ``sample_args`` is an example input (only its shape matters) used to build the
  target variable tree abstractly. Raises ``CheckpointMismatchError`` listing missing,
  unexpected and mis-shaped keys; ``num_batches_tracked`` buffers are dropped.
  """
  shapes, kinds = _module_kinds(model, *sample_args, **sample_kwargs)
  targets = {(col,) + path: s for col, tree in shapes.items()
             for path, s in _flatten(tree).items()}
  out: dict[tuple[str, ...], np.ndarray] = {}
  unexpected, misshaped, misshaped_dests = [], [], set()
  for key, value in state_dict.items():
    path, leaf = split_torch_key(key)
    kind, module = kinds.get(path, (None, None))
    if kind == 'bn' and leaf == 'num_batches_tracked':
      continue
    converted = None if kind is None else _convert_leaf(kind, module, leaf, np.asarray(value))
    if converted is None or (converted[0][0],) + path + (converted[0][1],) not in targets:
      unexpected.append(key)
      continue
    (col, name), arr = converted
    dest = (col,) + path + (name,)
    want = targets[dest]
    if arr.shape != tuple(want.shape):
      # Report in torch layout so the user can compare with their checkpoint.
      misshaped.append((key, _torch_shape(kind, module, tuple(want.shape)), np.shape(value)))
      misshaped_dests.add(dest)
      continue
    out[dest] = np.asarray(arr, dtype=want.dtype)
  # Named in Flax terms: a missing variable has no torch key to show.
  missing = ['/'.join(k[1:]) + f' ({k[0]})' for k in targets
             if k not in out and k not in misshaped_dests]
  if missing or unexpected or misshaped:
    raise CheckpointMismatchError(missing, unexpected, misshaped)
  variables: dict[str, Any] = {}
  for (col, *path), arr in out.items():
    node = variables.setdefault(col, {})
    for p in path[:-1]:
      node = node.setdefault(p, {})
    node[path[-1]] = jnp.asarray(arr)
  return variables


def _torch_shape(kind: str | None, module: nn.Module | None, flax_shape: tuple) -> tuple:
  if kind in ('conv', 'conv_transpose') and len(flax_shape) == 4:
    h, w, a, b = flax_shape
    if kind == 'conv_transpose' and not getattr(module, 'transpose_kernel', False):
      return (a, b, h, w)
    return (b, a, h, w)
  if kind == 'linear' and len(flax_shape) == 2:
    return flax_shape[::-1]
  return flax_shape


def convert_state_dict(name: str, state_dict: Mapping[str, Any], num_classes: int,
                       dtype: Any = jnp.float32,
                       image_size: int = 32) -> tuple[nn.Module, dict[str, Any]]:
  """(model, variables) for the registered model ``name`` from a torch state dict."""
  model = create_model(name, num_classes=num_classes, dtype=dtype)
  sample = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
  return model, torch_to_flax(model, state_dict, sample, train=False)


class UnsafeCheckpointError(ValueError):
  """A torch file that PyTorch's weights-only reader refuses (it needs code to load)."""


def load_torch_file(path: str, allow_pickle: bool = False) -> dict[str, np.ndarray]:
  """Reads a torch checkpoint into ``{key: numpy array}``.

  Accepts a bare state dict or one nested under ``'model'`` / ``'state_dict'`` (the
  RepDistiller and Fast-Datafree checkpoint formats) and strips the ``module.``
  prefix that ``DataParallel`` adds.

  The file is read with ``weights_only=True``: tensors, containers and numbers only, so
  a crafted file cannot run code. A checkpoint that pickled other objects (e.g. an
  argparse Namespace of its options) is refused with ``UnsafeCheckpointError`` unless
  ``allow_pickle``, which unpickles it fully: that runs whatever code the file holds,
  so only for files from a source you trust.
  """
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError('reading torch checkpoints needs PyTorch: pip install kdjax[torch]') from e
  try:
    obj = torch.load(path, map_location='cpu', weights_only=not allow_pickle)
  except Exception as e:  # noqa: BLE001 - torch raises UnpicklingError, RuntimeError, ...
    text = ' '.join(str(e).split())
    if not allow_pickle and 'Weights only load failed' in text:
      # torch names the refused global; keep that part of its long explanation
      refused = re.search(r'GLOBAL ([\w.]+)', text)
      what = f' (it refers to {refused.group(1)})' if refused else ''
      raise UnsafeCheckpointError(
          f'holds more than tensors{what}, and loading it would run code from the file; '
          'refused. If it comes from a source you trust, pass --allow_pickle') from None
    raise ValueError(f'not a readable torch checkpoint ({type(e).__name__}: {text[:200]})'
                     ) from None
  for nest in ('model', 'state_dict'):
    if isinstance(obj, Mapping) and isinstance(obj.get(nest), Mapping):
      obj = obj[nest]
      break
  if not isinstance(obj, Mapping):
    raise ValueError(f'{path}: expected a state dict, got {type(obj).__name__}')
  out = {}
  for k, v in obj.items():
    if k.startswith('module.'):
      k = k[len('module.'):]
    if hasattr(v, 'detach'):
      v = v.detach().cpu()
      v = (v.float() if v.is_floating_point() else v).numpy()  # numpy has no bfloat16
    out[k] = np.asarray(v)
  return out


def load_torch_checkpoint(name: str, path: str, num_classes: int, dtype: Any = jnp.float32,
                          allow_pickle: bool = False) -> tuple[nn.Module, dict[str, Any]]:
  """``convert_state_dict(name, load_torch_file(path, allow_pickle), ...)``."""
  return convert_state_dict(name, load_torch_file(path, allow_pickle), num_classes, dtype)
