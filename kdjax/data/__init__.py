"""Data sources (whole datasets as uint8 arrays) and on-device augmentation."""
from kdjax.data.augment import augment, normalize, random_crop_flip
from kdjax.data.sources import DATASETS, ArrayDataset, DataError, check_source, load_split

__all__ = ['ArrayDataset', 'DATASETS', 'DataError', 'augment', 'check_source', 'load_split',
           'normalize', 'random_crop_flip']
