"""Mixed-precision facts: the AMP API (``api``), autocast regions and delegated
precision (``facts``), GradScaler objects (``scalers``), training steps
(``steps``) and what fixes need to know about a scope (``scope``).
"""

from trainaudit.model.precision.api import (
    AUTOCAST_APIS,
    DEPRECATED_AMP,
    DEPRECATED_MODULES,
    NEW_PARAMETERS,
    OLD_PARAMETERS,
    AmpApi,
    DeprecatedAmpUse,
    deprecated_amp_uses,
    dotted,
    low_dtype_of,
    nodes_by_type,
)
from trainaudit.model.precision.facts import (
    DELEGATING_CALLS,
    AutocastSite,
    Delegation,
    PrecisionFacts,
)
from trainaudit.model.precision.scalers import ScalerFacts, ScalerObject
from trainaudit.model.precision.scope import device_type_code, related_paths, torch_alias
from trainaudit.model.precision.steps import TrainingStep

__all__ = [
    "AUTOCAST_APIS", "DELEGATING_CALLS", "DEPRECATED_AMP", "DEPRECATED_MODULES",
    "NEW_PARAMETERS", "OLD_PARAMETERS", "AmpApi", "AutocastSite", "Delegation",
    "DeprecatedAmpUse", "PrecisionFacts", "ScalerFacts", "ScalerObject",
    "TrainingStep", "deprecated_amp_uses", "device_type_code", "dotted", "low_dtype_of",
    "nodes_by_type", "related_paths", "torch_alias",
]
