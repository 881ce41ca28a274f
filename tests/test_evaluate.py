"""Stage 8 — metrics against hand-computed values, and joining prediction and label files."""

from __future__ import annotations

import math

import pytest

from fpindex.errors import FpindexError
from fpindex.evaluate import METRICS, evaluate_files, format_table, metrics

# A tiny example worked by hand.
Y_TRUE = [1, 1, 1, 1, 0, 0, 0, 0]
Y_PRED = [1, 1, 1, 0, 1, 0, 0, 0]
Y_SCORE = [0.9, 0.8, 0.7, 0.3, 0.6, 0.2, 0.1, 0.4]


def undefined(v) -> bool:
    """An undefined metric is reported as None (JSON-safe) or NaN."""
    return v is None or (isinstance(v, float) and math.isnan(v))


def by_hand(y_true, y_pred, y_score):
    tp = sum(t == 1 and p == 1 for t, p in zip(y_true, y_pred))
    tn = sum(t == 0 and p == 0 for t, p in zip(y_true, y_pred))
    fp = sum(t == 0 and p == 1 for t, p in zip(y_true, y_pred))
    fn = sum(t == 1 and p == 0 for t, p in zip(y_true, y_pred))
    n = len(y_true)
    acc = (tp + tn) / n
    prec = tp / (tp + fp) if tp + fp else 0.0
    rec = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
    p_yes = ((tp + fn) / n) * ((tp + fp) / n)
    p_no = ((tn + fp) / n) * ((tn + fn) / n)
    pe = p_yes + p_no
    kappa = (acc - pe) / (1 - pe)
    pos = [s for s, t in zip(y_score, y_true) if t == 1]
    neg = [s for s, t in zip(y_score, y_true) if t == 0]
    auc = sum((p > q) + 0.5 * (p == q) for p in pos for q in neg) / (len(pos) * len(neg))
    return {"accuracy": acc, "precision": prec, "recall": rec, "f1": f1, "kappa": kappa, "auc": auc}


def test_metrics_tiny_example_by_hand():
    m = metrics(Y_TRUE, Y_PRED, Y_SCORE)
    # TP 3, FN 1, FP 1, TN 3.
    assert m["accuracy"] == 0.75 and m["precision"] == 0.75 and m["recall"] == 0.75 and m["f1"] == 0.75
    assert m["kappa"] == 0.5                 # (0.75 − 0.5) / (1 − 0.5)
    assert m["auc"] == 0.875                 # 14 of 16 (member, non-member) pairs ordered right
    assert m["tpr_at_5fpr"] == 0.75          # thresholds 0.9, 0.8, 0.7 catch 3 members before any non-member
    assert m["tpr_at_1fpr"] == 0.75          # the same three: no false positive at all is allowed at 1 % of 4
    for k, v in by_hand(Y_TRUE, Y_PRED, Y_SCORE).items():
        assert m[k] == pytest.approx(v, abs=1e-6), k
    assert set(m) == set(METRICS)


def test_metrics_unbalanced_with_ties():
    y_true = [1, 0, 0, 0, 1, 0]
    y_pred = [1, 1, 0, 0, 0, 0]
    y_score = [0.8, 0.8, 0.1, 0.3, 0.3, 0.2]
    m = metrics(y_true, y_pred, y_score)
    hand = by_hand(y_true, y_pred, y_score)
    # TP 1, FP 1, FN 1, TN 3: precision = recall = 1/2; pe = 2/6·2/6 + 4/6·4/6 = 5/9; kappa = (2/3 − 5/9)/(4/9)
    assert hand["kappa"] == pytest.approx(0.25)
    # AUC: 0.8 vs {0.8, 0.1, 0.3, 0.2} = 0.5+3; 0.3 vs {0.8, 0.1, 0.3, 0.2} = 0+1+0.5+1 → 6/8
    assert hand["auc"] == pytest.approx(0.75)
    for k, v in hand.items():
        assert m[k] == pytest.approx(v, abs=1e-6), k


def test_metrics_constant_answers():
    y = [1, 1, 0, 0]
    all_used = metrics(y, [1] * 4, [1.0] * 4)
    assert all_used["accuracy"] == 0.5 and all_used["precision"] == 0.5 and all_used["recall"] == 1.0
    assert all_used["f1"] == pytest.approx(2 / 3, abs=1e-6)
    assert all_used["kappa"] == 0.0 and all_used["auc"] == 0.5
    none = metrics(y, [0] * 4, [0.0] * 4)
    assert none["precision"] == 0.0 and none["recall"] == 0.0 and none["f1"] == 0.0 and none["kappa"] == 0.0
    # Only one class in the truth: AUC and TPR@5%FPR are undefined; kappa of two identical constants is 0.
    one = metrics([1, 1, 1], [1, 1, 1], [0.9, 0.8, 0.7])
    assert undefined(one["auc"]) and undefined(one["tpr_at_5fpr"]) and undefined(one["tpr_at_1fpr"])
    assert one["accuracy"] == 1.0 and one["kappa"] == 0.0


# ---- files -----------------------------------------------------------------------------------------

def write(path, text):
    path.write_text(text)
    return path


def test_evaluate_files_joins_on_stem(tmp_path):
    preds = write(tmp_path / "p.csv", "image,score,label\n" + "".join(
        f"sub/img{i}.png,{s},{p}\n" for i, (s, p) in enumerate(zip(Y_SCORE, Y_PRED))) + "extra.png,0.5,1\n")
    # Labels name the files differently (other folder, other suffix), in another order, some as words.
    words = {1: "used", 0: "not_used"}
    lab_rows = [f"img{i}.jpg,{words[t] if i % 2 else t}" for i, t in enumerate(Y_TRUE)][::-1]
    labels = write(tmp_path / "l.csv", "image,label\n" + "\n".join(lab_rows) + "\nmissing.png,1\n")
    r = evaluate_files(preds, labels)
    assert r["n"] == 8 and r["positives"] == 4
    assert r["unmatched_predictions"] == ["extra.png"]
    assert r["missing_predictions"] == 1
    assert r["method"] == metrics(Y_TRUE, Y_PRED, Y_SCORE)
    assert r["method"]["kappa"] == 0.5
    assert r["all_used"]["recall"] == 1.0 and r["all_not_used"]["recall"] == 0.0
    table = format_table(r)
    lines = table.splitlines()
    assert len(lines) == 2 + len(METRICS)
    assert lines[2].startswith("| accuracy | 0.750 | 0.500 | 0.500 |")


def test_format_table_shows_dash_for_undefined(tmp_path):
    preds = write(tmp_path / "p.csv", "image,score,label\na.png,0.9,1\nb.png,0.8,1\n")
    labels = write(tmp_path / "l.csv", "image,label\na,1\nb,1\n")
    table = format_table(evaluate_files(preds, labels))
    assert "| auc | — | — | — |" in table


@pytest.mark.parametrize("label", ["maybe", "2", "", "-1"])
def test_bad_label_value(tmp_path, label):
    preds = write(tmp_path / "p.csv", "image,score,label\na.png,0.9,1\n")
    labels = write(tmp_path / "l.csv", f"image,label\na.png,{label}\n")
    with pytest.raises(FpindexError, match=r"l\.csv:2: label"):
        evaluate_files(preds, labels)


def test_bad_prediction_label_and_score(tmp_path):
    labels = write(tmp_path / "l.csv", "image,label\na.png,1\nb.png,0\n")
    p1 = write(tmp_path / "p1.csv", "image,score,label\na.png,0.9,1\nb.png,0.1,yes-ish\n")
    with pytest.raises(FpindexError, match=r"p1\.csv:3: label"):
        evaluate_files(p1, labels)
    p2 = write(tmp_path / "p2.csv", "image,score,label\na.png,high,1\n")
    with pytest.raises(FpindexError, match=r"p2\.csv:2: score 'high' is not a number$"):
        evaluate_files(p2, labels)


@pytest.mark.parametrize("case,message", [
    ("missing_file", r"p\.csv: no such file$"),
    ("no_rows", r"p\.csv: no rows$"),
    ("missing_column", r"p\.csv: missing column\(s\) score \(has image, label\)$"),
    ("no_overlap", r"^no image of .*p\.csv appears in .*l\.csv \(images are matched by submission id: the file stem, with #k for image k of a multi-image file\)$"),
])
def test_bad_files(tmp_path, case, message):
    labels = write(tmp_path / "l.csv", "image,label\na.png,1\n")
    preds = tmp_path / "p.csv"
    if case == "no_rows":
        write(preds, "image,score,label\n")
    elif case == "missing_column":
        write(preds, "image,label\na.png,1\n")
    elif case == "no_overlap":
        write(preds, "image,score,label\nz.png,0.3,0\n")
    with pytest.raises(FpindexError, match=message):
        evaluate_files(preds, labels)


def test_two_predictions_with_one_id_refused_naming_both_rows(tmp_path):
    labels = write(tmp_path / "l.csv", "image,label\nx.png,1\ny.png,0\n")
    preds = write(tmp_path / "p.csv", "image,score,label\na/x.png,0.9,1\ny.png,0.1,0\nb/x.png,0.2,0\n")
    with pytest.raises(FpindexError, match=r"p\.csv:4: prediction for 'b/x\.png' has the id 'x' of line 2 "
                                           r"\('a/x\.png'\); images are matched by submission id: the file stem, with #k for image k of a multi-image file, so each needs its own$"):
        evaluate_files(preds, labels)
    # also when neither has a label: a duplicate is ambiguous whatever it would join to
    extra = write(tmp_path / "e.csv", "image,score,label\nx.png,0.9,1\nz.png,0.3,0\nq/z.jpg,0.4,0\n")
    with pytest.raises(FpindexError, match=r"e\.csv:4: prediction for 'q/z\.jpg' has the id 'z' of line 3"):
        evaluate_files(extra, labels)


def test_two_labels_with_one_id_refused_naming_both_rows(tmp_path):
    labels = write(tmp_path / "l.csv", "image,label\nx.png,1\ny.png,0\nx.jpg,0\n")
    preds = write(tmp_path / "p.csv", "image,score,label\nx.png,0.9,1\n")
    with pytest.raises(FpindexError, match=r"l\.csv:4: label of 'x\.jpg' has the id 'x' of line 2 \('x\.png'\)"):
        evaluate_files(preds, labels)
