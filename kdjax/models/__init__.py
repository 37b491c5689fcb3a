"""Model zoo. Importing this package registers every architecture."""
from kdjax.models import (  # noqa: F401  (registers models)
    cifar_resnet, datafree_resnet, imagenet, mobilenetv2, resnet_bottleneck, shufflenet, vgg, wrn)
from kdjax.models.generator import Generator, create_generator
from kdjax.models.registry import create_model, model_names, register
from kdjax.models.torch_import import (CheckpointMismatchError, convert_state_dict,
                                       load_torch_checkpoint, load_torch_file, torch_to_flax)

__all__ = ['CheckpointMismatchError', 'Generator', 'convert_state_dict', 'create_generator',
           'create_model', 'load_torch_checkpoint', 'load_torch_file', 'model_names',
           'register', 'torch_to_flax']
