"""UPOCR model definitions."""

from upocr_jax.models.inception import FIDInceptionV3
from upocr_jax.models.upocr import (UPOCR, ConfigError, task_ids_from_names,
                                    validate_model_config)
from upocr_jax.models.vgg import VGG16Features

__all__ = ["FIDInceptionV3", "UPOCR", "ConfigError", "VGG16Features",
           "task_ids_from_names", "validate_model_config"]
