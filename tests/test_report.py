"""submission.csv ids: file stems, unchanged for flat folders, refused when two real images share one."""

from __future__ import annotations

import numpy as np
import pytest

from fpindex.decide import Decision, Verdict
from fpindex.errors import FpindexError
from fpindex.report import submission_ids, write_outputs
from fpindex.search import Neighbours


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


class _Store:
    def paths(self, ids):
        return [f"gen/{i}.png" for i in np.asarray(ids).ravel()]


def _decision(n):
    return Decision(score=np.linspace(0, 1, n), label=np.arange(n) % 2, method="fixed",
                    verdict=Verdict(leakage=None, alpha=0.05))


def _neighbours(n):
    return Neighbours(ids=np.zeros((n, 1), np.int64), cosine=np.ones((n, 1), np.float32))


def test_write_outputs_submission_unchanged_for_flat_folders(tmp_path):
    write_outputs(tmp_path, ["p1.png", "p2.png", "p3.png"], _decision(3), _neighbours(3), {}, _Store())
    assert (tmp_path / "submission.csv").read_text() == "p1,0\np2,1\np3,0\n"


def test_write_outputs_refuses_shared_stems_before_writing(tmp_path):
    with pytest.raises(FpindexError, match="^real images a/x.png and b/x.png share the id 'x'"):
        write_outputs(tmp_path / "out", ["a/x.png", "b/x.png"], _decision(2), _neighbours(2), {}, _Store())
    assert not (tmp_path / "out").exists()
