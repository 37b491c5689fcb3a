"""Data-free distillation: synthesizers (DAFL, DeepInversion, CMI, FastDFKD) and the pool."""
from kdjax.datafree import cmi, dafl, deepinv, fast  # noqa: F401  (registration)
from kdjax.datafree.base import (SynthContext, Synthesizer, build_synthesize, get_synthesizer,
                                 synthesizer_names, uses_batchnorm)
from kdjax.datafree.pool import Pool, add, class_histogram, init_pool, to_uint8, valid_mask

__all__ = ['Pool', 'SynthContext', 'Synthesizer', 'add', 'build_synthesize', 'class_histogram',
           'get_synthesizer', 'init_pool', 'synthesizer_names', 'to_uint8', 'uses_batchnorm',
           'valid_mask']
