"""Distillation methods. Importing this package registers all of them."""
from kdjax.methods import classic  # noqa: F401  (registers ce, kd)
from kdjax.methods import at, cid, crd, fitnet, icd, sp  # noqa: F401  (register the rest)
from kdjax.methods.base import (Batch, InitContext, LossOutput, Method, MethodVars, ModelOutput,
                                get_method, method_names, register)
# the KDCI transformer (not a registered method) and its config section
from kdjax.methods.kdci import default_config as kdci_config
from kdjax.methods.kdci import kdci, resolve
from kdjax.methods.kdci import validate as validate_kdci

__all__ = ['Batch', 'InitContext', 'LossOutput', 'Method', 'MethodVars', 'ModelOutput',
           'get_method', 'kdci', 'kdci_config', 'method_names', 'register',
           'resolve', 'validate_kdci']
