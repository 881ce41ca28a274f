"""fpindex: find the real images a generative model was very probably trained on.

The pipeline, one stage per module or sub-package: load → enhance → embed → index → search → evidence →
decide → report, composed by `pipeline`. The public API is below; the command line (`cli`) calls it.
The API's functions and registries are imported on first use, so that `import fpindex` (and `fpindex --help`)
does not import torch, FAISS or pandas.
"""

from __future__ import annotations

from ._version import __version__
from .lazy import lazy_attributes
from .errors import FpindexError, FpindexWarning
from .config import (AuditConfig, CanaryConfig, DecideConfig, EmbedConfig, EvidenceConfig, IndexConfig,
                     RunConfig)

_LAZY = {"audit": ".api", "build_index": ".api", "open_index": ".api", "sensitivity": ".api", "simulate": ".api",
         "Index": ".api", "AuditResult": ".report", "PRESETS": ".presets", "PLANTS": ".plants",
         "FEATURES": ".evidence", "Feature": ".evidence", "feature": ".evidence", "EMBEDDERS": ".embed",
         "Embedder": ".embed"}

__all__ = ["audit", "build_index", "open_index", "simulate", "sensitivity", "Index", "AuditResult", "AuditConfig",
           "EmbedConfig", "IndexConfig", "EvidenceConfig", "DecideConfig", "CanaryConfig", "RunConfig", "PRESETS",
           "PLANTS", "FEATURES", "Feature", "feature", "EMBEDDERS", "Embedder", "FpindexError", "FpindexWarning",
           "__version__"]


__getattr__ = lazy_attributes(__name__, _LAZY, globals())


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
