"""Distillation methods. Importing this package registers all of them."""
from kdjax.methods import classic  # noqa: F401  (registers ce, kd)
from kdjax.methods import at, cid, crd, fitnet, icd  # noqa: F401  (register the rest)
from kdjax.methods.base import (Batch, InitContext, LossOutput, Method, MethodVars, ModelOutput,
                                get_method, method_names, register)

__all__ = ['Batch', 'InitContext', 'LossOutput', 'Method', 'MethodVars', 'ModelOutput',
           'get_method', 'method_names', 'register']
