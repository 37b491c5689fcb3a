"""Pure, jittable distillation losses and the small learnable heads they need."""
from kdjax.losses.at import adaptive_avg_pool, at_loss, at_pair_loss, attention_map
from kdjax.losses.cid import (ContextAccumulator, InterventionalHead, SampleRegressor,
                              cid_loss, class_gram_loss, class_gram_terms, context_accumulate,
                              context_finalize, init_context_accumulator, interventional_logits,
                              normalized_mse)
from kdjax.losses.crd import (CRDMemory, Embed, contrast_loss, crd_loss, crd_scores,
                              init_crd_memory, negative_window, sample_negatives,
                              sample_negatives_exact, sample_negatives_other_class,
                              update_memory)
from kdjax.losses.datafree import (BNMomentum, CMIHead, MemoryBank, agreement_mask, bank_add,
                                   bank_init, bank_sample, batch_moments, bn_layer_losses,
                                   bn_stats_loss, cmi_contrastive_loss, dafl_objective, dafl_terms,
                                   deepinversion_objective, image_prior_tv, init_bn_mmt,
                                   instance_means, inversion_objective, jsdiv, kldiv,
                                   local_global_infonce, masked_adversarial, onehot_loss,
                                   update_bn_mmt)
from kdjax.losses.fitnet import ConvRegressor, hint_loss
from kdjax.losses.icd import ICDHeads, icd_logits, icd_loss
from kdjax.losses.kd import cross_entropy, kl_div_loss
from kdjax.losses.kdci import DeconfoundedHead
from kdjax.losses.sp import similarity_loss

__all__ = [
    'adaptive_avg_pool', 'at_loss', 'at_pair_loss', 'attention_map',
    'ContextAccumulator', 'InterventionalHead', 'SampleRegressor', 'cid_loss',
    'class_gram_loss', 'class_gram_terms', 'context_accumulate', 'context_finalize',
    'init_context_accumulator', 'interventional_logits', 'normalized_mse',
    'CRDMemory', 'Embed', 'contrast_loss', 'crd_loss', 'crd_scores', 'init_crd_memory',
    'negative_window', 'sample_negatives', 'sample_negatives_exact',
    'sample_negatives_other_class', 'update_memory',
    'BNMomentum', 'CMIHead', 'MemoryBank', 'agreement_mask', 'bank_add', 'bank_init',
    'bank_sample', 'batch_moments', 'bn_layer_losses', 'bn_stats_loss', 'cmi_contrastive_loss',
    'dafl_objective', 'dafl_terms', 'deepinversion_objective', 'image_prior_tv', 'init_bn_mmt',
    'instance_means', 'inversion_objective', 'jsdiv', 'kldiv', 'local_global_infonce',
    'masked_adversarial', 'onehot_loss', 'update_bn_mmt',
    'ConvRegressor', 'hint_loss',
    'ICDHeads', 'icd_logits', 'icd_loss',
    'cross_entropy', 'kl_div_loss',
    'DeconfoundedHead',
    'similarity_loss',
]
