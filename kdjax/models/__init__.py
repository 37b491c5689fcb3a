"""Model zoo. Importing this package registers every architecture."""
from kdjax.models import cifar_resnet  # noqa: F401  (registers models)
from kdjax.models.registry import create_model, model_names, register

__all__ = ['create_model', 'model_names', 'register']
