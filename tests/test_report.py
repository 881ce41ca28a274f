"""submission.csv ids: file stems, unchanged for flat folders, refused when two real images share one."""

from __future__ import annotations

import numpy as np
import pytest

from fpindex.decide import Decision, Verdict
from fpindex.errors import FpindexError
from fpindex.report import AuditResult, submission_ids
from fpindex.utils import Timings
from fpindex.search import Neighbours
from fpindex.report.schema import Summary


def test_unique_stems_are_the_ids_in_order():
    assert submission_ids(["img3.png", "sub/img1.jpg", "deep/er/img2.tif", "a.b.png"]) == ["img3", "img1", "img2",
                                                                                              "a.b"]
    assert submission_ids([]) == []


@pytest.mark.parametrize("images,first,second,stem", [
    (["a/x.png", "c.png", "b/x.png"], "a/x.png", "b/x.png", "x"),
    (["x.png", "x.jpg"], "x.png", "x.jpg", "x"),                       # same folder, other suffix
])
def test_shared_stem_refused_naming_both(images, first, second, stem):
    with pytest.raises(FpindexError, match=f"^real images {first} and {second} share the id '{stem}' "
                                           r"\(submission\.csv uses file stems\); rename one or audit the folders "
                                           "separately$"):
        submission_ids(images)


def _result(images):
    n = len(images)
    decision = Decision(score=np.linspace(0, 1, n), label=np.arange(n) % 2, method="fixed",
                        verdict=Verdict(leakage=None, alpha=0.05))
    nb = Neighbours(ids=np.zeros((n, 1), np.int64), cosine=np.ones((n, 1), np.float32))
    return AuditResult.of(images, decision, nb, {}, np.array(["gen/0.png"] * n, dtype=object),
                          Summary.from_dict({}), Timings())


def test_save_submission_unchanged_for_flat_folders(tmp_path):
    _result(["p1.png", "p2.png", "p3.png"]).save(tmp_path)
    assert (tmp_path / "submission.csv").read_text() == "p1,0\np2,1\np3,0\n"


def test_save_refuses_shared_stems_before_writing(tmp_path):
    with pytest.raises(FpindexError, match="^real images a/x.png and b/x.png share the id 'x'"):
        _result(["a/x.png", "b/x.png"]).save(tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_result_in_memory_matches_the_files(tmp_path):
    r = _result(["p1.png", "p2.png"])
    r.save(tmp_path)
    assert list(r.predictions.columns) == ["image", "score", "label", "p_value", "flagged_by"]
    assert (tmp_path / "predictions.csv").read_text().splitlines()[1:] == ["p1.png,0.000000,0,,", "p2.png,1.000000,1,,"]
    assert set(r.summary["timings"]) >= {"write", "total"}
