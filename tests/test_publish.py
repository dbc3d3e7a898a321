"""Publishing as latest only when not worse, on the same evaluation, with a history."""

from __future__ import annotations

from training.publish import history, publish_if_not_worse, read_latest


def metrics(score, sets=("mnist",), split="test"):
    return {"score": score, "sets": {name: {} for name in sets}, "split": split}


def headline(m):
    return m["score"]


def no_reevaluation(run):
    raise AssertionError("latest must not be re-evaluated when the evaluation is the same")


def test_publish_rules(tmp_path):
    first = publish_if_not_worse(tmp_path, tmp_path / "run1", metrics(0.50), headline, no_reevaluation)
    assert first["published"] and read_latest(tmp_path)["run"] == str(tmp_path / "run1")
    worse = publish_if_not_worse(tmp_path, tmp_path / "run2", metrics(0.49), headline, no_reevaluation)
    assert not worse["published"] and read_latest(tmp_path)["run"] == str(tmp_path / "run1")
    equal = publish_if_not_worse(tmp_path, tmp_path / "run3", metrics(0.50), headline, no_reevaluation)
    assert equal["published"] and read_latest(tmp_path)["run"] == str(tmp_path / "run3")  # not worse: published
    again = publish_if_not_worse(tmp_path, tmp_path / "run3", metrics(0.50), headline, no_reevaluation)
    assert not again["published"] and "already latest" in again["reason"]
    assert [h["published"] for h in history(tmp_path)] == [True, False, True, False]


def test_other_evaluation_re_evaluates_latest(tmp_path):
    publish_if_not_worse(tmp_path, tmp_path / "run1", metrics(0.9, sets=("mnist",)), headline, no_reevaluation)
    asked = []

    def reevaluate(run):
        asked.append(run)
        return metrics(0.3, sets=("mnist", "emoji"))  # latest on the new, harder evaluation

    decision = publish_if_not_worse(tmp_path, tmp_path / "run2", metrics(0.4, sets=("mnist", "emoji")),
                                    headline, reevaluate)
    assert asked == [str(tmp_path / "run1")]
    assert decision["published"] and decision["latest_headline"] == 0.3  # 0.4 >= 0.3, not 0.4 < 0.9
