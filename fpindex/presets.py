"""Named audit configurations, so a whole published pipeline can be run (and compared) by name.

The `zoq-*` presets follow the ImageCLEFmed GAN 2025 runs of team ZOQ: Gaussian blur + histogram
equalisation, a CNN or ResNet-50 feature extractor, and a fixed threshold on one similarity. The paper's
exact thresholds and network details were not available to us; the thresholds are fpindex's documented
defaults (cosine 0.90, SSIM 0.50, Jaccard 0.60) and the CNN is fpindex's compact CNN with seeded random
weights. Explicit command-line options override a preset's values.
"""

from __future__ import annotations

from .config import AuditConfig, DecideConfig, EmbedConfig
from .registry import Registry

PRESETS: Registry[AuditConfig] = Registry("preset")

_ZOQ_CNN = EmbedConfig(model="cnn", weights="random", image_size=128, enhance=("gaussian",))

PRESETS.register("default", "fpindex's defaults: cnn trained self-supervised on the generated set (64 px), "
                 "calibrated decision")(AuditConfig())
PRESETS.register("zoq-cnn-cosine", "ZOQ 2025: Gaussian+histogram equalisation, CNN, fixed cosine threshold")(
    AuditConfig(embed=_ZOQ_CNN, decide=DecideConfig(method="fixed", score="cosine")))
PRESETS.register("zoq-cnn-ssim", "ZOQ 2025: Gaussian+histogram equalisation, CNN retrieval, fixed SSIM threshold")(
    AuditConfig(embed=_ZOQ_CNN, decide=DecideConfig(method="fixed", score="ssim")))
PRESETS.register("zoq-resnet50-jaccard", "ZOQ 2025: Gaussian+histogram equalisation, ImageNet ResNet-50, fixed "
                 "Jaccard threshold (needs the ImageNet weights in the torch cache)")(
    AuditConfig(embed=EmbedConfig(model="resnet50", weights="imagenet", image_size=224, enhance=("gaussian",)),
                decide=DecideConfig(method="fixed", score="jaccard")))
