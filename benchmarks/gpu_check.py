"""GPU path check for the FAISS index layer — short, self-contained, meant for a lent GPU machine.

    python benchmarks/gpu_check.py [--n 500000] [--dim 256] [--out DIR]

Needs a FAISS build with GPU support (`pip uninstall -y faiss-cpu && pip install 'fpindex[gpu]'`); with a CPU-only
FAISS it says so and exits 3 without measuring anything. Checks, on seeded synthetic vectors:
1. device detection: `--device auto` resolves to cuda;
2. the same IndexStore code builds IVF-Flat and IVF-SQ8 on the GPU (trained there) and on the CPU from that same
   trained quantizer; the GPU answers agree with the CPU answers (recall of GPU ids against CPU ids), and a GPU
   IVF index is recognised as tunable (nprobe);
3. a GPU index saves through IndexStore.save and loads back on the CPU with the same neighbours;
4. build time and batch queries per second on GPU vs CPU, exact (Flat) search included.
Writes gpu_check.json (and prints it) with the GPU named.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

import faiss  # noqa: E402
import numpy as np  # noqa: E402

from common import machine  # noqa: E402
from fpindex.devices import faiss_device, faiss_gpus  # noqa: E402
from fpindex.index import IndexStore  # noqa: E402
from fpindex.index.bench import Synthetic  # noqa: E402
from fpindex.index.tuning import recall_at, tunable  # noqa: E402
from fpindex.utils import write_json_atomic  # noqa: E402

ID = {"model": "synthetic", "weights": None, "weights_id": "synthetic", "enhance": ["none"], "image_size": None,
      "seed": 0}


def rows(n):
    import pyarrow as pa

    return pa.table({"root": [""] * n, "path": [str(i) for i in range(n)], "sha256": [""] * n, "bytes": [0] * n})


def build(factory, x, device, params, trained=None):
    """Build on `device`; with `trained` (an empty trained CPU index) the training is skipped and its quantizer
    and codebooks reused, so the GPU and CPU answers can be compared list for list. Returns the store, the
    build seconds and the empty trained index."""
    s = IndexStore.create(factory, x.shape[1], dict(ID, dim=x.shape[1]), device=device)
    t = time.perf_counter()
    if trained is not None:
        s.index = faiss.clone_index(trained)
    elif not s.index.is_trained:
        s.train(x)                                  # on the GPU side: k-means through gpu_clustering
    empty = faiss.clone_index(s.index)              # still on the CPU: add() moves the index
    s.add(x, rows(len(x)))
    build_s = time.perf_counter() - t
    s.set_search_params(params)
    return s, build_s, empty


def qps(store, q, k=10, repeats=5):
    store.search(q, k)
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        store.search(q, k)
        ts.append(time.perf_counter() - t)
    return len(q) / float(np.median(ts))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=500_000)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = ap.parse_args()
    info = {"faiss": faiss.__version__, "faiss_gpus": faiss_gpus(), "machine": machine()}
    if faiss_gpus() == 0:
        print(json.dumps(dict(info, ok=False, reason="this FAISS has no GPU support or sees no GPU")))
        sys.exit(3)
    assert faiss_device("auto") == "cuda", "auto did not pick the GPU"
    syn = Synthetic(args.dim, seed=0)
    x, q = syn.take(args.n, 0), syn.take(args.queries, 2)
    rows_out = []
    for factory, params in (("Flat", {}), ("IVF1024,Flat", {"nprobe": 16}), ("IVF1024,SQ8", {"nprobe": 16})):
        gpu, gpu_build, trained = build(factory, x, "cuda", params)
        cpu, cpu_build, _ = build(factory, x, "cpu", params, trained)      # CPU build time: adding only
        assert gpu.device == "cuda", f"{factory} did not move to the GPU"
        if factory.startswith("IVF"):
            assert tunable(gpu.index) == "nprobe", f"{factory} on the GPU is not seen as an IVF index"
        _, ic = cpu.search(q, 10)
        _, ig = gpu.search(q, 10)
        with tempfile.TemporaryDirectory() as d:
            back = IndexStore.load(gpu.save(Path(d) / "idx"))
            _, ib = back.search(q, 10)
        rows_out.append({"factory": factory, "params": params, "gpu_vs_cpu_recall_at_10": recall_at(ig, ic, 10),
                         "saved_from_gpu_vs_gpu_recall_at_10": recall_at(ib, ig, 10),
                         "build_s_cpu": round(cpu_build, 2), "build_s_gpu": round(gpu_build, 2),
                         "qps_cpu": round(qps(cpu, q), 1), "qps_gpu": round(qps(gpu, q), 1),
                         "reconstruct_ok": bool(np.isfinite(gpu.reconstruct(np.arange(5))).all())})
        print(json.dumps(rows_out[-1]), flush=True)
    ok = all(r["gpu_vs_cpu_recall_at_10"] >= 0.95 and r["saved_from_gpu_vs_gpu_recall_at_10"] >= 0.95
             and r["reconstruct_ok"] for r in rows_out)
    result = dict(info, ok=ok, n=args.n, dim=args.dim, queries=args.queries, rows=rows_out)
    args.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out / "gpu_check.json", result)
    print(json.dumps({"ok": ok, "gpu": info["machine"]["gpu"]}))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
