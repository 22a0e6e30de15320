"""Per-item score lines (sdft.base.item_scores): one score per item, whatever file they come from."""

from sdft.base import item_scores


def test_an_items_samples_count_once_at_their_mean():
    lines = [{"id": "a", "sample": 0, "score": 1.0}, {"id": "a", "sample": 1, "score": 0.0},
             {"id": "b", "sample": 0, "score": 1.0}, {"id": "b", "sample": 1, "score": 1.0},
             {"id": "c", "score": None}]
    assert item_scores.by_id(lines) == {"a": 0.5, "b": 1.0}


def test_generated_lines_keep_no_text():
    records = [{"id": "x", "prompt": "PROMPT", "completion": "- a point", "score": 0.0, "reason": "why",
                "finish_reason": "stop", "completion_tokens": 3}]
    assert item_scores.generated(records, lambda reason: None) == [
        {"id": "x", "score": 0.0, "answer_tokens": 3, "finish_reason": "stop", "opening": "bulleted list"}]
    assert item_scores.generated(records, str.upper)[0]["verdict"] == "WHY"
