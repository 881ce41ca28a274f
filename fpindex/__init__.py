"""fpindex: find the real images a generative model was very probably trained on.

Stages, one module each: load → enhance → embed → index → search → rerank → decide → report,
wired together by `pipeline`; `evaluate` scores predictions against labels; `cli` is the command line.
"""

__version__ = "0.1.0"

from .errors import FpindexError  # noqa: E402

__all__ = ["FpindexError", "__version__"]
