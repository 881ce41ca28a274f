"""Stage 8 — the audit's result in memory (`AuditResult`), and its files when asked (`save`), each atomically.

OUT/predictions.csv     image,score,label,p_value,flagged_by  (image: path relative to the real folder; p_value
                        empty when the decision method has no null (`fixed`, `copies`); flagged_by: the channel(s)
                        that labelled the image, 'fused' and/or 'copy:<feature>' (decide/copies.py))
OUT/submission.csv      <image id>,<0|1>           (ImageCLEF format, no header; id: see `submission_ids`)
OUT/neighbours.parquet  image, rank, generated_id, generated, cosine, then every other pair-level evidence
                        feature (one row per real image × neighbour; NaN where the feature was not computed
                        because the decision does not read it)
OUT/generated.parquet   one row per generated image among some real image's neighbours: its best-matching real
                        image, the copy features, and its replication grade (exact / near copy / partial copy /
                        not a copy; decide/replication.py); empty when the decision reads no copy feature (`fixed`)
OUT/patients.csv        patient,source,images,score,p_value,label,top_image,flagged_images: the real images'
                        patients, most exposed first (decide/patients.py); only the header when no patient is known
OUT/summary.json        counts, verdict, decision, settings and config, versions, timings per stage, bad files,
                        run_id
OUT/fpindex-run.json    the run id and the sha256 of each file above, written last (outputs.py)
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ..decide import Decision, Verdict
from ..decide.patients import Patients
from ..evidence import Evidence
from ..errors import FpindexError
from ..load import image_id
from ..search import Neighbours
from .schema import Summary
from ..safeio import WriteError, json_default, reason, pause_for_tests
from ..utils import Timings
from . import outputs

OUTPUTS = outputs.OUTPUTS


def empty_generated() -> pd.DataFrame:
    from ..decide.replication import COLUMNS

    return pd.DataFrame({c: [] for c in COLUMNS})


def submission_ids(images: list[str]) -> list[str]:
    """ImageCLEF ids are file stems, and evaluate joins on stems, so a shared stem (a/x.png, b/x.png) would
    silently give two rows one id; refused instead. Cheap: the pipeline calls it before embedding."""
    seen: dict[str, str] = {}
    ids = []
    for img in images:
        stem = image_id(img)
        if stem in seen:
            raise FpindexError(f"real images {seen[stem]} and {img} share the id {stem!r} (submission.csv uses "
                               "file stems); rename one or audit the folders separately")
        seen[stem] = img
        ids.append(stem)
    return ids


@dataclass
class AuditResult:
    """What an audit found: per-image predictions, the neighbours with their evidence, the set-level verdict
    and the summary (what summary.json holds). Files are written only by `save`."""

    predictions: pd.DataFrame        # image, score, label, p_value (NaN when the method has no null), flagged_by
    neighbours: pd.DataFrame         # image, rank, generated_id, generated, cosine, <pair-level evidence…>
    verdict: Verdict
    summary: Summary                 # what summary.json holds (schema.py)
    decision: Decision
    timings: Timings
    # Every folder's per-image evidence ('real', and 'used', 'not_used', 'reference' when given), in file order:
    # what the decision read, so it can be re-decided or studied without recomputing anything.
    evidence: dict[str, Evidence] = field(default_factory=dict)
    # Per generated image among some real image's neighbours: its best-matching real image and replication
    # grade (decide/replication.py; generated.parquet). None: not graded (the `fixed` decision reads no copy feature).
    generated: pd.DataFrame | None = None
    # The real images' patients and the patient-level verdict (decide/patients.py); None: not computed.
    patients: Patients | None = None

    @classmethod
    def of(cls, images: list[str], decision: Decision, nb: Neighbours, pair: dict[str, np.ndarray],
           generated: np.ndarray, summary: Summary, timings: Timings,
           evidence: dict[str, Evidence] | None = None, sha256: list[str] | None = None,
           generated_sha256: list[str] | None = None, generated_answer: pd.DataFrame | None = None,
           patients: Patients | None = None) -> "AuditResult":
        """`sha256`, `generated_sha256`: content ids of each real image and each neighbour, kept in
        neighbours.parquet so `fpindex report` shows an image only while its bytes are still the scored ones."""
        n, k = nb.ids.shape
        predictions = pd.DataFrame({
            "image": images, "score": np.asarray(decision.score, np.float64),
            "label": np.asarray(decision.label, np.int8),
            "p_value": decision.p_value if decision.p_value is not None else np.full(n, np.nan),
            "flagged_by": decision.flagged_by if decision.flagged_by is not None else [""] * n})
        neighbours = pd.DataFrame({
            "image": np.repeat(np.array(images, dtype=object), k), "rank": np.tile(np.arange(1, k + 1, dtype=np.int32), n),
            "generated_id": nb.ids.ravel(), "generated": generated.ravel(), "cosine": nb.cosine.ravel(),
            **{name: values.ravel() for name, values in pair.items() if name != "cosine"}})
        if sha256 is not None and generated_sha256 is not None:
            neighbours["sha256"] = np.repeat(np.array(sha256, dtype=object), k)
            neighbours["generated_sha256"] = np.array(generated_sha256, dtype=object)
        summary = replace(summary, timings=timings.as_dict())
        return cls(predictions, neighbours, decision.verdict, summary, decision, timings, dict(evidence or {}),
                   generated_answer, patients)

    def save(self, out: str | Path, run_id: str | None = None) -> Path:
        """Write the four output files into `out` (created if needed) as one run (outputs.py): all or none of
        them replace the previous run's; summary.json last, with its timings including the writing."""
        out = Path(out)
        outputs.check_folder(out)
        ids = submission_ids(list(self.predictions["image"]))   # first: a shared stem leaves nothing half-written
        self.summary.run_id = run_id = run_id or outputs.new_run_id()
        staged: dict[str, Path] = {}
        try:
            with self.timings.stage("write"):
                out.mkdir(parents=True, exist_ok=True)
                outputs.recover(out)
                has_p = self.decision.p_value is not None
                p = self.predictions
                self._text(out, staged, "predictions.csv", _csv(
                    ((img, f"{s:.6f}", int(lab), f"{pv:.6g}" if has_p else "", by)
                     for img, s, lab, pv, by in zip(p["image"], p["score"], p["label"], p["p_value"],
                                                    p["flagged_by"])),
                    header=["image", "score", "label", "p_value", "flagged_by"]))
                self._text(out, staged, "submission.csv", _csv(zip(ids, p["label"].astype(int))))
                if self.patients is not None:
                    self._text(out, staged, "patients.csv", self.patients.csv())
                staged["neighbours.parquet"] = tmp = outputs.stage(out, "neighbours.parquet")
                # Column by column from numpy: pandas conversion would turn NaN ("not computed") into null.
                pq.write_table(pa.table({c: self.neighbours[c].to_numpy() for c in self.neighbours.columns}), tmp)
                # Always written (empty when not graded), so no earlier run's answer outlives its run.
                staged["generated.parquet"] = tmp = outputs.stage(out, "generated.parquet")
                g = self.generated if self.generated is not None else empty_generated()
                pq.write_table(pa.Table.from_pandas(g, preserve_index=False), tmp)
            self.summary.timings = self.timings.as_dict()
            self._text(out, staged, "summary.json", json.dumps(self.summary.to_dict(), indent=2, default=json_default) + "\n")
            pause_for_tests("outputs-staged")
            outputs.commit(out, run_id, staged)
        except OSError as e:
            raise WriteError(out, reason(e)) from None
        finally:
            for tmp in staged.values():
                tmp.unlink(missing_ok=True)
        return out

    @staticmethod
    def _text(out: Path, staged: dict[str, Path], name: str, text: str) -> None:
        staged[name] = tmp = outputs.stage(out, name)
        try:
            tmp.write_text(text, encoding="utf-8")
        except OSError as e:
            raise WriteError(out / name, reason(e)) from None


def _csv(rows, header: list[str] | None = None) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    if header:
        w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()
