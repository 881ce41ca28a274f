"""Writing an audit's outputs, each file atomically (temp file, then rename).

OUT/predictions.csv     image,score,label,p_value  (image: path relative to the real folder; p_value empty
                                                    when the decision method has no null, i.e. `fixed`)
OUT/submission.csv      <image id>,<0|1>           (ImageCLEF format: id = file stem, no header; two real
                                                    images with one stem are refused, see submission_ids)
OUT/neighbours.parquet  image, rank, generated_id, generated, cosine, ssim, ssim_aligned, jaccard
                        (one row per real image × neighbour; ssim_aligned is NaN when the decision method
                        does not read it: fixed and reference decisions on another score)
OUT/summary.json        counts, decision, settings, versions, timings per stage, bad files
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .decide import Decision
from .errors import FpindexError
from .index import IndexStore
from .search import Neighbours
from .utils import Timings, atomic_path, write_json_atomic, write_text_atomic


def _csv(rows, header: list[str] | None = None) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    if header:
        w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def submission_ids(images: list[str]) -> list[str]:
    """ImageCLEF ids are file stems, and evaluate joins on stems, so a shared stem (a/x.png, b/x.png) would
    silently give two rows one id; refused instead. Cheap: the pipeline can call it before embedding."""
    ids: list[str] = []
    first: dict[str, str] = {}
    for img in images:
        stem = Path(img).stem
        if stem in first:
            raise FpindexError(f"real images {first[stem]} and {img} share the id {stem!r} (submission.csv uses "
                               "file stems); rename one or audit the folders separately")
        first[stem] = img
        ids.append(stem)
    return ids


def write_outputs(out: Path, images: list[str], decision: Decision, nb: Neighbours,
                  pair: dict[str, np.ndarray], store: IndexStore) -> None:
    """pair: per-neighbour scores (n × k arrays), written as columns in their order after `cosine`."""
    ids = submission_ids(images)          # first, so a shared stem leaves no half-written outputs
    out.mkdir(parents=True, exist_ok=True)
    pvals = decision.p_value if decision.p_value is not None else [None] * len(images)
    write_text_atomic(out / "predictions.csv", _csv(
        ((img, f"{s:.6f}", int(lab), "" if p is None else f"{p:.6g}")
         for img, s, lab, p in zip(images, decision.score, decision.label, pvals)),
        header=["image", "score", "label", "p_value"]))
    write_text_atomic(out / "submission.csv", _csv((sid, int(lab))
                                                   for sid, lab in zip(ids, decision.label)))
    n, k = nb.ids.shape
    gen = np.array(store.paths(nb.ids), dtype=object).reshape(n, k) if n else np.empty((0, k), object)
    table = pa.table({
        "image": np.repeat(np.array(images, dtype=object), k).tolist(),
        "rank": np.tile(np.arange(1, k + 1, dtype=np.int32), n),
        "generated_id": nb.ids.ravel(),
        "generated": gen.ravel().tolist(),
        "cosine": nb.cosine.ravel(),
        **{name: values.ravel() for name, values in pair.items()},
    })
    with atomic_path(out / "neighbours.parquet") as tmp:
        pq.write_table(table, tmp)


def write_summary(out: Path, summary: dict[str, Any], timings: Timings) -> None:
    """Written last, so its timings include writing the other files."""
    summary["timings"] = timings.as_dict()
    write_json_atomic(out / "summary.json", summary)
