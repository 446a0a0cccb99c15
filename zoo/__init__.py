"""hpt-zoo: pretrained self-supervised vision backbones by name, verified.

    import zoo
    model = zoo.load("sup-imagenet-mnv2")            # backbone, eval mode
    model = zoo.load("sup-imagenet-mnv2", bn="animals")  # same trunk, animal BN statistics
"""
from .bn import apply_bn, extract_bn, recalibrate_bn
from .catalog import list_models
from .errors import (CatalogError, CheckpointFormatError, IncompatibleOverlayError, IntegrityError,
                     InvalidArgumentError, NotCachedError, NotPublishedError, UnknownNameError, UnknownRevisionError,
                     UnknownVariantError, UnpinnedRevisionWarning, UnsafeCheckpointError, UnverifiedCheckpointWarning,
                     ZooError)
from .loader import card, info, load, preprocessing, transforms
from .names import canonical, format_name, parse_name
from .recommend import Ranking, recommend

__version__ = "0.1.0"
__all__ = ["load", "list_models", "info", "transforms", "preprocessing", "card", "recalibrate_bn", "extract_bn",
           "apply_bn", "recommend", "Ranking", "parse_name", "format_name", "canonical", "ZooError", "UnknownNameError",
           "NotPublishedError", "NotCachedError", "IntegrityError", "UnknownVariantError",
           "IncompatibleOverlayError", "CheckpointFormatError", "UnsafeCheckpointError", "InvalidArgumentError",
           "UnknownRevisionError", "CatalogError", "UnpinnedRevisionWarning", "UnverifiedCheckpointWarning"]
