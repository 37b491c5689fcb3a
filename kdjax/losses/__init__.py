"""Pure, jittable distillation losses: arrays in, arrays out (the learnable heads are in
``kdjax.models.heads``)."""
from kdjax.losses.at import adaptive_avg_pool, at_loss, at_pair_loss, attention_map
from kdjax.losses.cid import (ContextAccumulator,
                              cid_loss, class_gram_loss, class_gram_terms, context_accumulate,
                              context_finalize, init_context_accumulator,
                              normalized_mse)
from kdjax.losses.crd import (CRDMemory, contrast_loss, crd_loss, crd_scores,
                              init_crd_memory, negative_window, sample_negatives,
                              sample_negatives_exact, sample_negatives_other_class,
                              update_memory)
from kdjax.losses.datafree import (BNMomentum, MemoryBank, agreement_mask, bank_add,
                                   bank_init, bank_sample, batch_moments, bn_layer_losses,
                                   bn_stats_loss, dafl_objective, dafl_terms,
                                   deepinversion_objective, image_prior_tv, init_bn_mmt,
                                   instance_means, inversion_objective, jsdiv, kldiv,
                                   local_global_infonce, masked_adversarial, onehot_loss,
                                   update_bn_mmt)
from kdjax.losses.fitnet import hint_loss
from kdjax.losses.icd import icd_logits, icd_loss
from kdjax.losses.kd import cross_entropy, kl_div_loss
from kdjax.losses.kdci import entropy
from kdjax.losses.sp import similarity_loss

__all__ = [
    'adaptive_avg_pool', 'at_loss', 'at_pair_loss', 'attention_map',
    'ContextAccumulator', 'cid_loss',
    'class_gram_loss', 'class_gram_terms', 'context_accumulate', 'context_finalize',
    'init_context_accumulator', 'normalized_mse',
    'CRDMemory', 'contrast_loss', 'crd_loss', 'crd_scores', 'init_crd_memory',
    'negative_window', 'sample_negatives', 'sample_negatives_exact',
    'sample_negatives_other_class', 'update_memory',
    'BNMomentum', 'MemoryBank', 'agreement_mask', 'bank_add', 'bank_init',
    'bank_sample', 'batch_moments', 'bn_layer_losses', 'bn_stats_loss', 
    'dafl_objective', 'dafl_terms', 'deepinversion_objective', 'image_prior_tv', 'init_bn_mmt',
    'instance_means', 'inversion_objective', 'jsdiv', 'kldiv', 'local_global_infonce',
    'masked_adversarial', 'onehot_loss', 'update_bn_mmt',
    'hint_loss',
    'icd_logits', 'icd_loss',
    'cross_entropy', 'kl_div_loss',
    
    'similarity_loss',
]
