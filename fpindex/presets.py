"""Named bundles of settings, so a whole published pipeline can be run (and compared) by name.

The `zoq-*` presets follow the ImageCLEFmed GAN 2025 runs of team ZOQ: Gaussian blur + histogram
equalisation, a CNN or ResNet-50 feature extractor, and a fixed threshold on one similarity. The paper's
exact thresholds and network details were not available to us; the thresholds are fpindex's documented
defaults (cosine 0.90, SSIM 0.50, Jaccard 0.60) and the CNN is fpindex's compact CNN with seeded random
weights. Explicit command-line options override a preset's values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .registry import Registry


@dataclass(frozen=True)
class Preset:
    embed: dict[str, Any] = field(default_factory=dict)    # EmbedConfig fields
    decide: dict[str, Any] = field(default_factory=dict)   # DecideConfig fields
    help: str = ""


PRESETS: Registry[Preset] = Registry("preset")

PRESETS.register("default", "fpindex's defaults: cnn trained self-supervised on the generated set (64 px), "
                 "calibrated decision")(Preset())
PRESETS.register("zoq-cnn-cosine", "ZOQ 2025: Gaussian+histogram equalisation, CNN, fixed cosine threshold")(
    Preset(embed={"model": "cnn", "weights": "random", "image_size": 128, "enhance": ("gaussian",)},
           decide={"method": "fixed", "score": "cosine"}))
PRESETS.register("zoq-cnn-ssim", "ZOQ 2025: Gaussian+histogram equalisation, CNN retrieval, fixed SSIM threshold")(
    Preset(embed={"model": "cnn", "weights": "random", "image_size": 128, "enhance": ("gaussian",)},
           decide={"method": "fixed", "score": "ssim"}))
PRESETS.register("zoq-resnet50-jaccard", "ZOQ 2025: Gaussian+histogram equalisation, ImageNet ResNet-50, fixed "
                 "Jaccard threshold (needs the ImageNet weights in the torch cache)")(
    Preset(embed={"model": "resnet50", "weights": "imagenet", "image_size": 224, "enhance": ("gaussian",)},
           decide={"method": "fixed", "score": "jaccard"}))
