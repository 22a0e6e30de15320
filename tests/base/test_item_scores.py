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
        {"id": "x", "score": 0.0, "answer_tokens": 3, "finish_reason": "stop", "opening": "bulleted list",
         "answer_hash": item_scores.answer_hash("- a point")}]
    assert item_scores.generated(records, str.upper)[0]["verdict"] == "WHY"
    assert len(item_scores.answer_hash("- a point")) == 16 and item_scores.answer_hash(None) == item_scores.answer_hash("")


def test_per_item_lines_read_as_answer_records_without_text():
    lines = [{"id": "x", "score": 1.0, "answer_tokens": 3, "finish_reason": "length", "opening": "code block",
              "answer_hash": "0123"}, {"id": "y", "score": 0.0, "choice": 2}]
    assert item_scores.as_answer_records(lines) == [
        {"id": "x", "score": 1.0, "completion_tokens": 3, "finish_reason": "length", "opening": "code block"},
        {"id": "y", "score": 0.0}]
