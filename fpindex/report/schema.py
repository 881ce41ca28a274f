"""The audit's summary (OUT/summary.json) as one declared, typed schema: built once by the pipeline, and read
by the CLI's summary lines, `AuditResult.save` and the HTML report alike, so none of them re-interprets a
dict of its own.

The JSON keys are those of schema 1 (fpindex before the schema was declared), so older files still read;
schema 2 adds `schema_version`, the decision's labelling rule (`decision.rule`), the per-generated-image
answer (`generated`) and room for the patient-level answer (`patients`). `Summary.from_dict` reads both.
Sections whose shape belongs to another module (the canaries' table, the build record, the settings'
embedder manifest) stay plain JSON objects inside the typed record.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Iterator

from ..decide.base import LabelRule, Verdict

SCHEMA_VERSION = 2


@dataclass
class FolderCounts:
    files: int
    embedded: int
    bad: int


@dataclass
class Counts:
    """Per folder ('real', and 'used', 'not_used', 'reference' when given) its files, and the totals."""

    folders: dict[str, FolderCounts]
    generated_indexed: int
    predicted_used: int

    def to_dict(self) -> dict[str, Any]:
        return {n: asdict(c) for n, c in self.folders.items()} | {
            "generated_indexed": self.generated_indexed, "predicted_used": self.predicted_used}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Counts":
        folders = {k: FolderCounts(**{f: int(v.get(f, 0)) for f in ("files", "embedded", "bad")})
                   for k, v in d.items() if isinstance(v, dict)}
        return cls(folders, int(d.get("generated_indexed", 0)), int(d.get("predicted_used", 0)))

    @property
    def real(self) -> FolderCounts:
        return self.folders["real"]


@dataclass
class DecisionRecord:
    """The decision method, its labelling rule and what it reports of itself (weights, cross-validation, …)."""

    method: str
    rule: LabelRule | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, **self.details} | ({"rule": self.rule.as_dict()} if self.rule else {})

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DecisionRecord":
        details = {k: v for k, v in d.items() if k not in ("method", "rule")}
        rule = LabelRule.from_dict(d["rule"]) if isinstance(d.get("rule"), dict) else None
        return cls(str(d.get("method", "")), rule, details)


@dataclass
class Settings:
    k: int
    decide: dict[str, Any]
    embedder: dict[str, Any]
    index: dict[str, Any]
    folders: dict[str, str]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Settings":
        return cls(int(d.get("k", 0)), dict(d.get("decide") or {}), dict(d.get("embedder") or {}),
                   dict(d.get("index") or {}), dict(d.get("folders") or {}))


@dataclass
class GeneratedSummary:
    """The per-generated-image answer (decide/replication.py): how many generated images were graded, per grade, the
    calibrated levels behind the grades and where they came from."""

    graded: int                         # generated images among some real image's neighbours
    grades: dict[str, int]              # grade → number of generated images
    withhold: int                       # graded exact or near copy, or partial copy: what `filter` withholds
    levels: dict[str, Any]              # the calibration (replication.Levels.as_dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "GeneratedSummary":
        return cls(int(d.get("graded", 0)), dict(d.get("grades") or {}), int(d.get("withhold", 0)),
                   dict(d.get("levels") or {}))


@dataclass
class Summary:
    """What summary.json holds. Read access by JSON key (`summary["verdict"]["text"]`) gives the JSON form, for
    code written against the file; fpindex itself reads the typed fields."""

    counts: Counts
    verdict: Verdict
    decision: DecisionRecord
    settings: Settings
    config: dict[str, Any]
    evidence: dict[str, dict[str, Any]]
    bad_files: dict[str, list[dict[str, str]]]
    warnings: list[str]
    versions: dict[str, Any]
    canaries: dict[str, Any] | None = None
    build: dict[str, Any] | None = None
    generated: GeneratedSummary | None = None
    patients: dict[str, Any] | None = None     # decide.patients.Patients.to_dict(); None: not computed
    timings: dict[str, float] = field(default_factory=dict)
    run_id: str | None = None
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"schema_version": self.schema_version, "counts": self.counts.to_dict(),
                               "verdict": self.verdict.as_dict(), "decision": self.decision.to_dict(),
                               "settings": asdict(self.settings), "config": self.config,
                               "evidence": self.evidence, "bad_files": self.bad_files, "warnings": self.warnings,
                               "versions": self.versions}
        for name in ("canaries", "build", "generated", "patients"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value.to_dict() if hasattr(value, "to_dict") else (
                    asdict(value) if hasattr(value, "__dataclass_fields__") else value)
        out["timings"] = self.timings
        if self.run_id is not None:
            out["run_id"] = self.run_id
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Summary":
        """summary.json of schema 1 or 2; a missing optional section stays None."""
        gen = d.get("generated")
        return cls(counts=Counts.from_dict(d.get("counts") or {}), verdict=Verdict.from_dict(d.get("verdict") or {}),
                   decision=DecisionRecord.from_dict(d.get("decision") or {}),
                   settings=Settings.from_dict(d.get("settings") or {}), config=dict(d.get("config") or {}),
                   evidence=dict(d.get("evidence") or {}), bad_files=dict(d.get("bad_files") or {}),
                   warnings=list(d.get("warnings") or []), versions=dict(d.get("versions") or {}),
                   canaries=d.get("canaries"), build=d.get("build"),
                   generated=GeneratedSummary.from_dict(gen) if isinstance(gen, dict) else None,
                   patients=d.get("patients"), timings=dict(d.get("timings") or {}), run_id=d.get("run_id"),
                   schema_version=int(d.get("schema_version", 1)))

    # Read access by JSON key (the file's view), for code written against summary.json.
    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.to_dict().get(key, default)

    def __contains__(self, key: object) -> bool:
        return key in self.to_dict()

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_dict())

    def keys(self):
        return self.to_dict().keys()


REQUIRED = tuple(f.name for f in fields(Summary) if f.name in ("counts", "verdict", "decision", "settings"))
