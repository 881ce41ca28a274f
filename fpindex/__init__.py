"""fpindex: find the real images a generative model was very probably trained on.

The pipeline, one stage per module or sub-package: load → enhance → embed → index → search → evidence →
decide → report, composed by `pipeline`. The public API is below; the command line (`cli`) calls it.
"""

from ._version import __version__
from .errors import FpindexError, FpindexWarning  # noqa: E402
from .config import (AuditConfig, CanaryConfig, DecideConfig, EmbedConfig, EvidenceConfig,  # noqa: E402
                     IndexConfig, RunConfig)
from .api import Index, audit, build_index, open_index, sensitivity, simulate  # noqa: E402
from .report import AuditResult  # noqa: E402
from .presets import PRESETS  # noqa: E402
from .plants import PLANTS  # noqa: E402
from .evidence import FEATURES, Feature, feature  # noqa: E402

__all__ = ["audit", "build_index", "open_index", "simulate", "sensitivity", "Index", "AuditResult", "AuditConfig",
           "EmbedConfig", "IndexConfig", "EvidenceConfig", "DecideConfig", "CanaryConfig", "RunConfig", "PRESETS",
           "PLANTS", "FEATURES", "Feature", "feature", "FpindexError", "FpindexWarning", "__version__"]
