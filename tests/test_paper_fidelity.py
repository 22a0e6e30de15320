"""The paper presets reproduce the reference code (github sail-sg/sdft, branches main and reproduce, and
its LLaMA-Factory fork); each test pins one row of docs/paper-fidelity.md."""

import json
from pathlib import Path

import pytest
import yaml

from sdft.base.config import from_dict
from sdft.base.data import load_examples
from sdft.tasks import get_task

ROOT = Path(__file__).resolve().parents[1]
LLAMA2_PRESETS = ["gsm8k.yaml", "openfunctions.yaml", "alpaca.yaml"]
# The fork's GeneratingArguments defaults (src/llmtuner/hparams/generating_args.py), used by every
# do_predict run of the reference scripts since they pass no decoding flags; HF's default seed 42.
FORK_DECODING = {"temperature": 0.95, "top_p": 0.7, "top_k": 50, "max_new_tokens": 512, "seed": 42}


def write_json(path: Path, rows) -> str:
    path.write_text(json.dumps(rows))
    return str(path)


def paper_config(name: str) -> dict:
    return yaml.safe_load((ROOT / "configs" / "paper" / name).read_text())


@pytest.mark.parametrize("name", LLAMA2_PRESETS + ["llama3-openfunctions.yaml", "llama3-alpaca.yaml"])
def test_the_yaml_presets_and_the_cli_presets_agree(name):
    """`sdft distill|train|eval --preset paper` and configs/paper/*.yaml give the same values."""
    from sdft.distill import config as distill
    from sdft.evaluate import config as evaluate
    from sdft.train import config as train

    config = paper_config(name)
    for section, module in (("distill", distill), ("train", train), ("eval", evaluate)):
        preset = module.PRESETS["paper"]
        assert {k: config[section].get(k) for k in preset} == preset, (name, section)


# ------------------------------------------------------------------------ 1. MultiArith from the hub

def test_multiarith_hub_shape_question_final_ans(tmp_path):
    rows = [{"question": "There are 7 boxes with 8 pens each. How many pens?", "final_ans": "56"},
            {"question": "Tom had 5 and lost 2. How many now?", "final_ans": 3}]
    task = get_task("multiarith", write_json(tmp_path / "m.json", rows), rule="paper")
    first, second = task.examples()
    assert first["question"].startswith("There are 7") and task.score(first, "So 7 x 8 = 56. The answer is 56.") == 1.0
    assert task.score(second, "The answer is 3.") == 1.0 and task.score(second, "The answer is 4.") == 0.0


# ---------------------------------------------------------------- 2. empty accepted rewrites (paper filter)

def test_empty_accepted_rewrite_is_dropped_from_training_and_counted(tmp_path):
    from sdft.train.data import choose_targets

    def row(i, rewrite):
        return {"instruction": f"Q{i}", "input": "", "output": rewrite if rewrite is not None else f"A{i}",
                "sdft": {"id": str(i), "accepted": rewrite is not None, "reason": "accepted",
                         "rewrite": rewrite, "original": f"A{i}"}}
    path = tmp_path / "distilled.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [row(0, ""), row(1, "  "), row(2, "B2"), row(3, None)]))
    examples = load_examples(path)  # the file training used to refuse as a whole
    pairs, counts = choose_targets(examples, 1.0, seed=0)
    assert [p[1] for p in pairs] == ["B2", "A3"] and counts["dropped_empty_rewrite"] == 2
    pairs, counts = choose_targets(examples, 0.0, seed=0)  # vanilla trains on the originals: nothing dropped
    assert len(pairs) == 4 and counts["dropped_empty_rewrite"] == 0


# ---------------------------------------------------------------------------- 3. evaluation decoding

def test_eval_paper_preset_samples_like_the_fork_and_humaneval_stays_greedy():
    from sdft.evaluate.config import PRESETS, EvalConfig

    preset = PRESETS["paper"]
    assert {k: preset[k] for k in FORK_DECODING} == FORK_DECODING and preset["greedy_tasks"] == ["humaneval"]
    assert EvalConfig(tasks=["gsm8k"]).temperature == 0.0  # greedy stays our default (configs validate when built)
    # The CLI preset works with any task list (greedy_tasks may name tasks not run).
    assert from_dict(EvalConfig, {**preset, "tasks": ["gsm8k"]}).greedy_tasks == ["humaneval"]
    with pytest.raises(Exception, match="humanevl"):
        from_dict(EvalConfig, {**preset, "tasks": ["gsm8k"], "greedy_tasks": ["humanevl"]})
    for name in LLAMA2_PRESETS + ["llama3-openfunctions.yaml"]:
        section = paper_config(name)["eval"]
        assert {k: section[k] for k in FORK_DECODING} == FORK_DECODING, name
        assert section["greedy_tasks"] == ["humaneval"], name


def test_greedy_tasks_override_the_run_decoding(tmp_path, monkeypatch):
    """gsm8k samples at the run's temperature, humaneval is greedy: what reaches the backend."""
    from sdft.evaluate.config import EvalConfig
    from sdft.evaluate.stage import evaluate
    from sdft.generation.fake import FakeBackend

    seen = {}

    class Recording(FakeBackend):
        def generate(self, prompts, params):
            seen.setdefault("gsm8k" if "math" in prompts[0] else "humaneval", params)
            return super().generate(prompts, params)

    monkeypatch.setattr("sdft.generation.load_backend", lambda name, model, adapter=None, **kw: Recording("m"))
    gsm = write_json(tmp_path / "g.json", [{"question": "2+3?", "answer": "#### 5"}])
    config = from_dict(EvalConfig, {"model": "fake-model", "backend": "fake", "tasks": ["gsm8k", "humaneval"],
                                    "data": [f"gsm8k={gsm}"], "limit": 1, "progress": False, "out": str(tmp_path / "o"),
                                    "temperature": 0.95, "top_p": 0.7, "greedy_tasks": ["humaneval"]})
    results = evaluate(config)
    if "skipped" in results["tasks"]["humaneval"]:
        pytest.skip("no HumanEval carrier installed")
    assert seen["gsm8k"].temperature == 0.95 and seen["humaneval"].greedy


# ----------------------------------------------------------------------------------- 4. prompt details

def test_right_side_cut_keeps_the_start(tiny_model):
    from transformers import AutoTokenizer

    from sdft.generation.prompts import encode_prompts

    tok = AutoTokenizer.from_pretrained(tiny_model)
    text = "Below is an instruction. " * 20 + "### Response:\n"
    full = encode_prompts(tok, [text], 10_000)[0][0]
    (left,), _ = encode_prompts(tok, [text], 12)
    (right,), (cut,) = encode_prompts(tok, [text], 12, side="right")
    assert cut and right == full[:12] and left[-3:] == full[-3:] and right != left


def test_reference_llama2_math_layout():
    from sdft.base.templates import DISTILL_TEMPLATES, PROMPT_TEMPLATES, render

    system = ("You are an expert in math. Below is a math question. Write a response that appropriately "
              "answers the question.")
    # The fork's gsm8k_infer: "<<SYS>>...<</SYS>>\n\n" then "[INST] {query} [/INST]", nothing after.
    assert render(PROMPT_TEMPLATES["paper_math_eval"], "Q?", mode="plain") == (
        f"<<SYS>>\n{system} Your final answer should be an integer at the end of your response, formatted as: "
        "The answer is {answer}.\n<</SYS>>\n\n[INST] Q? [/INST]")
    # gsm8k_distill: the reference after a blank line, then the pre-filled "Great! Let's think step by step. "
    assert render(DISTILL_TEMPLATES["paper_math"], "Q?", reference="R.", mode="plain").endswith(
        "<</SYS>>\n\n[INST] Q?\n\nR. [/INST] Great! Let's think step by step. ")
    # Ours stays the default: system inside [INST], a trailing space.
    assert render(PROMPT_TEMPLATES["math_eval"], "Q?", mode="plain").startswith("[INST] <<SYS>>")
    for name in ("gsm8k.yaml",):
        config = paper_config(name)
        assert config["distill"]["template"] == "paper_math" and config["train"]["template"] == "paper_math"
    for name in LLAMA2_PRESETS:
        section = paper_config(name)["eval"]
        assert {"gsm8k.template=paper_math_eval", "multiarith.template=paper_math_eval"} <= set(section["option"])
        assert section["max_prompt_tokens"] == 1024 and section["truncation_side"] == "right"


def test_alpaca_input_joined_by_one_newline_in_the_presets(tmp_path):
    path = write_json(tmp_path / "a.json", [{"instruction": "Translate.", "input": "Bonjour", "output": "Hello"}])
    assert load_examples(path)[0].instruction == "Translate.\n\nBonjour"  # ours
    assert load_examples(path, input_separator="\n")[0].instruction == "Translate.\nBonjour"  # reference
    for name in LLAMA2_PRESETS + ["llama3-openfunctions.yaml"]:
        config = paper_config(name)
        assert config["distill"]["input_separator"] == config["train"]["input_separator"] == "\n"


# --------------------------------------------------------------------------------- 6. scoring variants

def test_openfunctions_half_credit_rule():
    from sdft.tasks.function_call import paper_half_credit_score

    ref = 'weather.get(city="Paris", unit="C")'
    assert paper_half_credit_score('weather.get(city="Paris", unit="C")', ref) == 1.0
    assert paper_half_credit_score('weather.get("Paris", "C")', ref) == 0.5  # positional: half credit
    assert paper_half_credit_score('other.fn("Paris", "C")', ref) == 0.5  # looser: the name is not checked
    assert paper_half_credit_score('weather.get(unit="C", city="Paris")', ref) == 0.0  # reordered keywords
    assert paper_half_credit_score('weather.get("Paris")', ref) == 0.0
    task = get_task("openfunctions", rule="paper_half_credit")
    assert task.score_with_reason({"reference": ref}, 'weather.get("Paris", "C")') == (0.5, "positional_half_credit")
    with pytest.raises(Exception, match="paper_half_credit"):
        get_task("openfunctions", rule="half")


def test_lm_eval_acc_of_a_tag_is_the_size_weighted_mean_of_its_members():
    from sdft.tasks.lm_eval import metrics_from_output

    # lm-eval >= 0.4.3: ai2_arc is a tag, its members reported alone.
    output = {"results": {"arc_easy": {"acc,none": 0.75, "acc_stderr,none": 0.01, "acc_norm,none": 0.7},
                          "arc_challenge": {"acc,none": 0.45, "acc_stderr,none": 0.02}},
              "n-samples": {"arc_easy": {"effective": 2376}, "arc_challenge": {"effective": 1172}}}
    entry = metrics_from_output(output, "ai2_arc", "acc")
    assert entry["metric"] == "acc" and entry["n"] == 3548
    assert entry["value"] == pytest.approx((0.75 * 2376 + 0.45 * 1172) / 3548)
    # A group row of its own (lm-eval 0.4.0) is used as is.
    output = {"results": {"truthfulqa": {"acc,none": 0.4, "acc_stderr,none": 0.01, "bleu_max,none": 20.0}}}
    assert metrics_from_output(output, "truthfulqa", "acc")["value"] == 0.4
    for name in LLAMA2_PRESETS:
        options = set(paper_config(name)["eval"]["option"])
        assert {"lm_eval:ai2_arc.metric=acc", "lm_eval:truthfulqa.metric=acc"} <= options


@pytest.mark.parametrize("name", LLAMA2_PRESETS + ["llama3-openfunctions.yaml", "llama3-alpaca.yaml"])
def test_paper_presets_give_lm_eval_plain_text_zero_shot_as_the_reference_did(name, tiny_model):
    """The reference's eval_general_knowledge.py ran lm-eval without a chat template or system text; our
    lm_eval tasks follow the template mode, which the presets set to plain (a chat tokenizer here)."""
    from sdft.evaluate.config import EvalConfig
    from sdft.models.resolve import load_tokenizer

    section = paper_config(name)["eval"]
    config = from_dict(EvalConfig, {k: v for k, v in section.items() if k in ("tasks", "option", "template_mode",
                                                                            "system_prompt")})
    tokenizer = load_tokenizer(str(tiny_model))
    names = [t for t in config.tasks if t.startswith("lm_eval:")]
    assert len(names) >= 4
    for task_name in names:
        options = {"template_mode": config.template_mode, "system_prompt": config.system_prompt,
                   **config.task_options().get(task_name, {})}  # as sdft.evaluate.stage builds them
        args = get_task(task_name, **options).build_arguments("/m", None, config, tokenizer)
        assert args["apply_chat_template"] is False and "system_instruction" not in args, task_name
        assert "num_fewshot" not in args  # lm-eval's default for these tasks: 0-shot


# ------------------------------------------------------------------------------ 7. what we lacked

def test_alpaca_eval_export_in_the_cli_format(tmp_path, monkeypatch):
    from sdft.evaluate.config import EvalConfig
    from sdft.evaluate.stage import evaluate
    from sdft.generation.fake import FakeBackend

    monkeypatch.setattr("sdft.generation.load_backend",
                        lambda name, model, adapter=None, **kw: FakeBackend("m", respond=lambda p: "An answer."))
    rows = [{"instruction": "Name a fish.", "output": "Trout."},
            {"instruction": "Say hi.", "output": "Hi.", "dataset": "helpful_base"}]
    config = from_dict(EvalConfig, {"model": "fake-model", "backend": "fake", "tasks": ["alpaca_eval"],
                                    "data": [f"alpaca_eval={write_json(tmp_path / 'ae.json', rows)}"],
                                    "option": ["alpaca_eval.generator=llama2-sdft"], "progress": False,
                                    "out": str(tmp_path / "eval")})
    entry = evaluate(config)["tasks"]["alpaca_eval"]
    exported = json.loads((tmp_path / "eval" / "alpaca_eval_outputs.json").read_text())
    assert exported == [{"instruction": "Name a fish.", "output": "An answer.", "generator": "llama2-sdft"},
                        {"instruction": "Say hi.", "output": "An answer.", "generator": "llama2-sdft",
                         "dataset": "helpful_base"}]
    assert entry["metric"] == "answered" and entry["value"] == 1.0 and "alpaca_eval --model_outputs" in entry["next_step"]


def test_llama3_preset_uses_the_chat_template_for_math_only():
    config = paper_config("llama3-openfunctions.yaml")
    assert config["model"] == "meta-llama/Meta-Llama-3-8B-Instruct"
    # scripts_llama3/openfunction: distillation and training in the Alpaca text format, math evaluation
    # through llama3_gsm8k_infer (the chat template), knowledge (MMLU included) through lm-eval.
    assert config["distill"]["template_mode"] == config["train"]["template_mode"] == "plain"
    assert {"gsm8k.template_mode=chat", "multiarith.template_mode=chat", "lm_eval:mmlu.metric=acc"} <= set(
        config["eval"]["option"])
