"""`--model torchscript --weights FILE`: a descriptor shipped as a graph, such as SSCD.

A `.pt2` file is a `torch.export` program (`torch.export.load`), anything else a TorchScript archive
(`torch.jit.load`, still supported for loading although torch deprecates scripting). Either way loading runs
the file's graph, so this is only for files the user trusts. The graph is used as it is (not trained): inputs
are grey images replicated to the channels it takes (3 for SSCD-like models, found by trying), normalised with
ImageNet's mean and std, at --image-size; the vector is its output, flattened.
"""

from __future__ import annotations

import warnings

import torch

from ..errors import FpindexError
from .base import EMBEDDERS, SELFSUP, Embedder, Spec
from .weights import IMAGENET_MEAN, IMAGENET_STD, ChannelAdapter, check_forward, file_id, weights_file

CHOICES = "a TorchScript .pt or torch.export .pt2 file"


def load_graph(path: str) -> torch.nn.Module:
    p = weights_file(path, "torchscript", CHOICES)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if p.suffix == ".pt2":
                return torch.export.load(str(p)).module()
            return torch.jit.load(str(p), map_location="cpu")
    except Exception as e:
        detail = (str(e).strip().splitlines() or [type(e).__name__])[0][:120]
        kind = "torch.export program" if p.suffix == ".pt2" else "TorchScript archive"
        raise FpindexError(f"weights {path}: not a loadable {kind} ({type(e).__name__}: {detail})") from None


@EMBEDDERS.register("torchscript")
class GraphEmbedder(Embedder):
    def __init__(self, spec: Spec) -> None:
        super().__init__(spec)
        if spec.weights in (SELFSUP, "random", "imagenet", "none"):
            raise FpindexError(f"model torchscript runs a graph from a file: pass --weights FILE ({CHOICES}), "
                               f"not {spec.weights!r}")
        graph = load_graph(spec.weights)
        self.weights_id = file_id(spec.weights)
        self.net = graph if spec.device.type == "cpu" else graph.to(spec.device)
        if isinstance(graph, torch.jit.ScriptModule):
            self.net.eval()           # an exported program's module has its mode fixed at export
        self.adapt, self.dim = self._adapter(spec)

    def _adapter(self, spec: Spec) -> tuple[ChannelAdapter, int]:
        """The channel count the graph takes: 3 (RGB) when it runs on 3, else 1, else the stacked channels."""
        errors = []
        for expects in dict.fromkeys((3, 1, spec.channels)):
            if spec.channels not in (1, expects):
                continue
            adapt = ChannelAdapter(spec.channels, expects, IMAGENET_MEAN, IMAGENET_STD, widened=False).to(spec.device)
            try:
                out = check_forward(spec.model, spec.size, lambda x: self._run(adapt(x)), spec.channels, spec.device,
                                    "try another --image-size; a torch.export program needs a dynamic batch "
                                    "dimension (torch.export.Dim)")
            except FpindexError as e:
                errors.append(str(e))
                continue
            return adapt, out.shape[1]
        raise FpindexError(errors[0] if errors else f"model torchscript takes neither 1 nor 3 channels; "
                           f"--enhance gives {spec.channels}: use one filter")

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        if isinstance(out, (tuple, list)):
            out = out[0]
        elif isinstance(out, dict):
            out = next(iter(out.values()))
        return out

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(self.adapt(x)).flatten(1)
