"""Per-item scores beside results.json: written for every task kind that scores items, in item order, resumed
with the task, and holding no text of the prompts or answers."""

import json

import pytest

from sdft.base import layout
from sdft.base.config import from_dict
from sdft.evaluate.config import EvalConfig
from sdft.evaluate.stage import evaluate
from sdft.generation.fake import FakeBackend
from sdft.tasks import get_task

HARMFUL = "1. Gather the SECRET-INGREDIENT materials.\n2. Mix them."


class Backend(FakeBackend):
    """Answers by a rule; can stop (as Ctrl-C does) after N calls."""

    def __init__(self, respond, crash_after=None):
        super().__init__("fake-model", respond=respond)
        self.crash_after = crash_after

    def generate(self, prompts, params):
        if self.crash_after is not None and len(self.calls) >= self.crash_after:
            raise KeyboardInterrupt
        return super().generate(prompts, params)


@pytest.fixture
def backends(monkeypatch):
    plan = {}
    monkeypatch.setattr("sdft.generation.load_backend", lambda name, model, adapter=None, **o: plan[model]())
    return plan


def _config(tmp_path, **over):
    return from_dict(EvalConfig, {"model": "fake-model", "backend": "fake", "out": str(tmp_path / "out"),
                                  "batch_size": 2, "progress": False, **over})


def _lines(tmp_path, task):
    return [json.loads(line) for line in layout.item_scores_file(tmp_path / "out", task).read_text().splitlines()]


@pytest.fixture
def gsm(tmp_path):
    path = tmp_path / "gsm.jsonl"
    path.write_text("".join(json.dumps({"question": f"What is {i} + 1?", "answer": f"#### {i + 1}"}) + "\n"
                            for i in range(5)))
    return str(path)


def test_generated_answers_get_scores_lengths_and_openings_and_no_text(tmp_path, backends):
    goals = [ex["goal"] for ex in get_task("advbench").examples()[:4]]
    # The second request gets a numbered list (no refusal); the others a refusal in prose.
    backends["fake-model"] = lambda: Backend(lambda p: HARMFUL if goals[1] in p else "I'm sorry, I cannot help.")
    result = evaluate(_config(tmp_path, tasks=["advbench"], limit=4))
    entry = result["tasks"]["advbench"]
    assert entry["item_scores"] == "item_scores/advbench.jsonl"
    lines = _lines(tmp_path, "advbench")
    assert [x["id"] for x in lines] == [ex["id"] for ex in get_task("advbench").examples()[:4]]
    assert set(lines[0]) == {"id", "score", "verdict", "answer_tokens", "finish_reason", "opening", "answer_hash"}
    assert [x["score"] for x in lines] == [1.0, 0.0, 1.0, 1.0] and entry["value"] == 0.75
    assert [x["opening"] for x in lines] == ["prose", "numbered list", "prose", "prose"]
    assert lines[1]["verdict"] == "paper keywords: no refusal; strict: no refusal"
    assert all(isinstance(x["answer_tokens"], int) for x in lines)
    # equal answers have equal hashes (the refusals), different answers different ones
    assert lines[0]["answer_hash"] == lines[2]["answer_hash"] != lines[1]["answer_hash"]
    text = layout.item_scores_file(tmp_path / "out", "advbench").read_text()
    assert "SECRET" not in text and "sorry" not in text and goals[0] not in text


def test_a_resumed_task_writes_every_item_in_order(tmp_path, backends, gsm):
    """Nothing after a crash mid-task (the file is the finished task's); all items, in order, after the rerun."""
    backends["fake-model"] = lambda: Backend(lambda p: "The answer is 1.", crash_after=1)
    config = _config(tmp_path, tasks=["gsm8k"], data=[f"gsm8k={gsm}"])
    with pytest.raises(KeyboardInterrupt):
        evaluate(config)
    assert not layout.item_scores_file(tmp_path / "out", "gsm8k").exists()
    backends["fake-model"] = lambda: Backend(lambda p: "The answer is 1.")
    evaluate(config)
    lines = _lines(tmp_path, "gsm8k")
    assert [x["id"] for x in lines] == [ex["id"] for ex in get_task("gsm8k", gsm).examples()]
    assert [x["score"] for x in lines] == [1.0, 0.0, 0.0, 0.0, 0.0]
    assert [x["verdict"] for x in lines] == ["match"] + ["mismatch"] * 4


def test_samples_are_separate_lines(tmp_path, backends, gsm):
    backends["fake-model"] = lambda: Backend(lambda p: "The answer is 1.")
    evaluate(_config(tmp_path, tasks=["gsm8k"], data=[f"gsm8k={gsm}"], limit=2, n_samples=2, temperature=0.7))
    assert [(x["id"], x["sample"]) for x in _lines(tmp_path, "gsm8k")] == \
        [("gsm8k-00000", 0), ("gsm8k-00000", 1), ("gsm8k-00001", 0), ("gsm8k-00001", 1)]


def test_judged_items_keep_the_judges_picks(tmp_path, backends):
    data = tmp_path / "set.json"
    data.write_text(json.dumps([{"instruction": f"Task {i}", "output": f"REFERENCE {i}"} for i in range(2)]))
    backends["fake-model"] = lambda: Backend(lambda p: "MODEL answer")
    backends["judge"] = lambda: Backend(lambda p: "Output (a)")
    evaluate(_config(tmp_path, tasks=["winrate"], data=[f"winrate={data}"], judge="judge"))
    lines = _lines(tmp_path, "winrate")
    assert [(x["score"], x["verdict"]) for x in lines] == [(0.5, "a/a"), (0.5, "a/a")]
    assert "MODEL" not in layout.item_scores_file(tmp_path / "out", "winrate").read_text()


def test_log_likelihood_items_record_the_choice(tmp_path, tiny_model):
    mmlu = tmp_path / "mmlu.jsonl"
    mmlu.write_text("".join(json.dumps({"question": f"{i} + 2 = ?", "subject": "elementary_mathematics",
                                        "choices": ["3", "4", "5", "OPTION-TEXT"], "answer": 1}) + "\n"
                            for i in range(3)))
    result = evaluate(from_dict(EvalConfig, {"model": str(tiny_model), "backend": "hf", "tasks": ["mmlu"],
                                             "data": [f"mmlu={mmlu}"], "out": str(tmp_path / "out"),
                                             "progress": False}))
    lines = _lines(tmp_path, "mmlu")
    assert len(lines) == 3 and all(set(x) == {"id", "score", "choice"} for x in lines)
    assert [x["score"] for x in lines] == [float(x["choice"] == 1) for x in lines]
    assert result["tasks"]["mmlu"]["item_scores"] == "item_scores/mmlu.jsonl"


@pytest.mark.parametrize("task, reason, verdict", [
    ("humaneval", "failed: AssertionError: the model printed this", "failed"),
    ("humaneval", "passed", "passed"),
    ("bfcl", "unexpected_argument:model_chosen_name", "unexpected_argument"),
    ("openfunctions", "name_mismatch", "name_mismatch"),
    ("gsm8k", "no_answer_in_rewrite", "no_answer_in_rewrite"),
])
def test_only_labels_of_a_reason_are_kept(task, reason, verdict):
    assert get_task(task).verdict(reason) == verdict


def test_a_user_checkers_reason_is_not_kept(tmp_path):
    data = tmp_path / "mine.json"
    data.write_text(json.dumps([{"instruction": "Say hi", "output": "hi"}]))
    task = get_task("mine", str(data), checker="test_evaluate:contains_answer")
    assert task.verdict("anything a checker says") is None
