"""``sdft eval`` end to end: tiny random model over 2 items per task, resume, cache, judge, config errors."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sdft.base.config import from_dict
from sdft.base.errors import ConfigError
from sdft.evaluate.config import EvalConfig
from sdft.evaluate.stage import evaluate, summarize
from sdft.generation.fake import FakeBackend
from sdft.tasks import get_task


def contains_answer(record, completion):
    """A user checker for the custom task (imported as test_evaluate:contains_answer)."""
    return record["output"] in completion


@pytest.fixture
def small_data(tmp_path):
    gsm = tmp_path / "gsm.jsonl"
    gsm.write_text("\n".join(json.dumps({"question": f"What is {i} + 1?", "answer": f"{i}+1={i + 1}\n#### {i + 1}"})
                             for i in range(4)) + "\n")
    custom = tmp_path / "custom.json"
    custom.write_text(json.dumps([{"instruction": "Say hi", "output": "hi"}, {"instruction": "Say yo", "output": "yo"}]))
    return {"gsm": str(gsm), "custom": str(custom)}  # the custom file doubles as a winrate set


def test_tiny_model_end_to_end_every_generative_task(tiny_model, small_data, shared_data, tmp_path, capsys):
    from sdft.cli import main

    out = tmp_path / "eval"
    tasks = "gsm8k,advbench,advbench-jailbreak,openfunctions,humaneval,bfcl,mine,winrate"
    argv = ["eval", "--model", str(tiny_model), "--tasks", tasks, "--limit", "2", "--max-new-tokens", "8",
            "--data", f"gsm8k={small_data['gsm']}", "--data", f"openfunctions={shared_data / 'openfunction_test.json'}",
            "--data", f"mine={small_data['custom']}", "--checker", "mine=test_evaluate:contains_answer",
            "--data", f"winrate={small_data['custom']}", "--judge", str(tiny_model),  # a real (random) local judge
            "--out", str(out), "--no-progress", "--backend", "hf"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "safe_rate_paper_keywords" in printed and "safe_rate_strict" in printed and "pass@1" in printed
    results = json.loads((out / "results.json").read_text())
    assert list(results["tasks"]) == tasks.split(",")
    for name, entry in results["tasks"].items():
        assert entry["n"] == 2 and 0.0 <= entry["value"] <= 1.0, name
        low, high = entry["ci95"]
        assert 0.0 <= low <= entry["value"] <= high <= 1.0, name
        settings = entry["settings"]
        assert settings["model"] == str(tiny_model) and settings["decoding"]["max_new_tokens"] == 8
        assert settings["versions"]["torch"] and settings["data"], name
        lines = [json.loads(line) for line in (out / "generations" / f"{name}.jsonl").read_text().splitlines()]
        assert len(lines) == 2
        assert {"id", "prompt", "completion", "score", "finish_reason"} <= set(lines[0])
        assert "<|im_start|>assistant" in lines[0]["prompt"]  # auto mode used the chat template
    assert results["tasks"]["advbench"]["metrics"].keys() == {"safe_rate_paper_keywords", "safe_rate_strict"}
    assert "sha256" in results["tasks"]["gsm8k"]["settings"]["data"]
    assert results["tasks"]["winrate"]["judge"].startswith(str(tiny_model))


class CountingBackend(FakeBackend):
    """FakeBackend that counts constructions and prompts, and can crash after N batches."""

    def __init__(self, respond=None, crash_after=None):
        super().__init__("fake-model", respond=respond or (lambda p: "The answer is 2. I'm sorry."))
        self.prompts, self.crash_after = [], crash_after

    def generate(self, prompts, params):
        if self.crash_after is not None and len(self.calls) >= self.crash_after:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C mid-run
        self.prompts += prompts
        return super().generate(prompts, params)


@pytest.fixture
def fake_backends(monkeypatch):
    """Route load_backend to CountingBackends we control; records every instance made."""
    made = []
    plan = {}

    def load(name, model, adapter=None, **options):
        backend = plan.get(model, CountingBackend)()
        made.append((model, backend))
        return backend

    monkeypatch.setattr("sdft.generation.load_backend", load)
    return made, plan


def fake_config(tmp_path, **over):
    values = {"model": "fake-model", "backend": "fake", "tasks": ["gsm8k"], "out": str(tmp_path / "out"),
              "batch_size": 2, "progress": False, **over}
    return from_dict(EvalConfig, values)


def test_resume_after_crash_skips_finished_items_and_identical_rerun_generates_nothing(
        tmp_path, small_data, fake_backends):
    made, plan = fake_backends
    config = fake_config(tmp_path, data=[f"gsm8k={small_data['gsm']}"])
    plan["fake-model"] = lambda: CountingBackend(crash_after=1)
    with pytest.raises(KeyboardInterrupt):
        evaluate(config)
    first = made[-1][1]
    assert len(first.prompts) == 2  # one batch finished and was saved before the crash
    plan["fake-model"] = CountingBackend
    result = evaluate(config)
    second = made[-1][1]
    assert len(second.prompts) == 2 and not set(second.prompts) & set(first.prompts)  # only the missing two
    assert result["tasks"]["gsm8k"]["n"] == 4
    lines = (tmp_path / "out" / "generations" / "gsm8k.jsonl").read_text().splitlines()
    expected = [ex["id"] for ex in get_task("gsm8k", small_data["gsm"]).examples()]
    assert [json.loads(line)["id"] for line in lines] == expected  # input order, whatever order they ran
    count = len(made)
    again = evaluate(config)
    assert len(made) == count  # identical settings: the backend is not even loaded
    assert again["tasks"]["gsm8k"]["value"] == result["tasks"]["gsm8k"]["value"]
    # A setting that changes outputs means new generations, not stale ones; batch size does not.
    evaluate(fake_config(tmp_path, data=[f"gsm8k={small_data['gsm']}"], batch_size=4))
    assert len(made) == count
    evaluate(fake_config(tmp_path, data=[f"gsm8k={small_data['gsm']}"], max_new_tokens=5))
    assert len(made) == count + 1 and len(made[-1][1].prompts) == 4



def test_a_larger_limit_generates_only_the_new_items(tmp_path, small_data, fake_backends):
    made, _ = fake_backends
    evaluate(fake_config(tmp_path, data=[f"gsm8k={small_data['gsm']}"], limit=2))
    first = made[-1][1]
    result = evaluate(fake_config(tmp_path, data=[f"gsm8k={small_data['gsm']}"], limit=4))
    second = made[-1][1]
    assert len(second.prompts) == 2 and not set(second.prompts) & set(first.prompts)
    assert result["tasks"]["gsm8k"]["n"] == 4


def test_scores_are_recomputed_from_cached_text(tmp_path, small_data, fake_backends):
    made, plan = fake_backends
    plan["fake-model"] = lambda: CountingBackend(respond=lambda p: "The answer is 1.")
    config = fake_config(tmp_path, data=[f"gsm8k={small_data['gsm']}"])
    result = evaluate(config)
    assert result["tasks"]["gsm8k"]["value"] == 0.25  # only "0 + 1" has the answer 1
    text = summarize(result)
    assert "gsm8k" in text and "25.00" in text


def test_n_samples_give_pass_at_k(tmp_path, fake_backends):
    made, plan = fake_backends
    examples = get_task("humaneval").examples()[:2]
    good = {ex["prompt"]: ex["canonical_solution"] for ex in examples}
    state = {"n": 0}

    def respond(prompt):  # problem 0 solved in 1 of 2 samples, problem 1 in both
        solution = next(sol for code, sol in good.items() if prompt.endswith(code))
        if prompt.endswith(examples[0]["prompt"]):
            state["n"] += 1
            if state["n"] == 2:
                return "    return None\n"
        return solution

    plan["fake-model"] = lambda: CountingBackend(respond=respond)
    result = evaluate(fake_config(tmp_path, tasks=["humaneval"], limit=2, n_samples=2, temperature=0.8))
    entry = result["tasks"]["humaneval"]
    assert entry["metric"] == "pass@1" and entry["value"] == pytest.approx(0.75) and entry["samples_per_problem"] == 2
    lines = (tmp_path / "out" / "generations" / "humaneval.jsonl").read_text().splitlines()
    assert [(json.loads(x)["id"], json.loads(x)["sample"]) for x in lines] == \
        [("HumanEval/0", 0), ("HumanEval/0", 1), ("HumanEval/1", 0), ("HumanEval/1", 1)]
    seeds = [params.seed for _, params in made[-1][1].calls]  # sample j is drawn with seed + j
    assert sorted(set(seeds)) == [42, 43]


def test_winrate_asks_the_judge_both_orders(tmp_path, fake_backends):
    made, plan = fake_backends
    data = tmp_path / "eval_set.json"
    data.write_text(json.dumps([{"instruction": f"Task {i}", "output": f"REFERENCE {i}"} for i in range(3)]))

    def fair_judge(prompt):  # prefers the model's answer wherever it is shown
        return "Output (a)" if "### Response (a):\nMODEL" in prompt else "Output (b)"

    plan["fake-model"] = lambda: CountingBackend(respond=lambda p: "MODEL answer")
    plan["judge-model"] = lambda: CountingBackend(respond=fair_judge)
    config = fake_config(tmp_path, tasks=["winrate"], data=[f"winrate={data}"], judge="judge-model")
    entry = evaluate(config)["tasks"]["winrate"]
    judge = made[-1][1]
    assert made[-1][0] == "judge-model" and len(judge.prompts) == 6
    for i in range(3):
        asked = [p for p in judge.prompts if f"Task {i}" in p]
        assert any("(a):\nMODEL" in p and "(b):\nREFERENCE" in p for p in asked)
        assert any("(a):\nREFERENCE" in p and "(b):\nMODEL" in p for p in asked)
    assert entry["value"] == 1.0 and entry["wins"] == 3
    assert entry["metrics"]["position_consistency"]["value"] == 1.0
    # A judge that always says "(a)" is pure position bias: every item is a tie, consistency 0.
    plan["judge-model"] = lambda: CountingBackend(respond=lambda p: "Output (a)")
    entry = evaluate(fake_config(tmp_path, tasks=["winrate"], data=[f"winrate={data}"], judge="judge-model",
                                 out=str(tmp_path / "biased")))["tasks"]["winrate"]
    assert entry["value"] == 0.5 and entry["ties"] == 3
    assert entry["metrics"]["position_consistency"]["value"] == 0.0
    # Verdicts are cached: a rerun asks the judge nothing.
    count = len(made)
    evaluate(fake_config(tmp_path, tasks=["winrate"], data=[f"winrate={data}"], judge="judge-model",
                         out=str(tmp_path / "biased")))
    assert len(made) == count


@pytest.mark.parametrize("values, message", [
    ({"tasks": []}, "needs --tasks"),
    ({"tasks": ["nope"]}, "unknown task 'nope'"),
    ({"tasks": ["gsm8k"], "data": ["mmlu=x.json"]}, "not in --tasks"),
    ({"tasks": ["gsm8k"], "data": ["gsm8k"]}, "TASK=PATH"),
    ({"tasks": ["gsm8k"], "checker": ["gsm8k=m:f"]}, "built-in"),
    ({"tasks": ["mine"], "checker": ["mine=m:f"]}, "--data mine=FILE"),
    ({"tasks": ["winrate"]}, "--judge"),
    ({"tasks": ["humaneval"], "n_samples": 5}, "temperature"),
    ({"tasks": ["gsm8k"], "option": ["gsm8k-rule=paper"]}, "TASK.KEY=VALUE"),
])
def test_config_errors(values, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(EvalConfig, values)


def test_task_options_reach_the_task(tmp_path, small_data, fake_backends):
    made, plan = fake_backends
    plan["fake-model"] = lambda: CountingBackend(respond=lambda p: "The answer is 1.\n3")
    config = fake_config(tmp_path, data=[f"gsm8k={small_data['gsm']}"], option=["gsm8k.rule=paper"], limit=1)
    entry = evaluate(config)["tasks"]["gsm8k"]
    assert entry["settings"]["options"]["rule"] == "paper" and entry["value"] == 0.0  # "1.\n3" is the paper's flaw


def test_system_prompt_reaches_every_task_and_is_recorded(tmp_path, small_data, fake_backends, tiny_model):
    from transformers import AutoTokenizer

    made, plan = fake_backends
    tok = AutoTokenizer.from_pretrained(tiny_model)
    plan["fake-model"] = lambda: FakeBackend("fake-model", tokenizer=tok)
    adv = tmp_path / "adv.csv"
    adv.write_text("goal,target\nDo a bad thing,Sure\n")
    config = fake_config(tmp_path, tasks=["gsm8k", "advbench"], system_prompt="Be safe.",
                         data=[f"gsm8k={small_data['gsm']}", f"advbench={adv}"], limit=1)
    result = evaluate(config)
    assert result["system_prompt"] == {"choice": "Be safe.", "mode": "chat", "text": "Be safe."}
    for name in ("gsm8k", "advbench"):
        assert result["tasks"][name]["settings"]["options"]["system_prompt"] == "Be safe."
        line = json.loads((tmp_path / "out" / "generations" / f"{name}.jsonl").read_text().splitlines()[0])
        assert line["prompt"].startswith("<|im_start|>system\nBe safe.<|im_end|>\n<|im_start|>user\n"), name
    # Another choice is another cache key: new generations, never the old ones reused.
    count = len(made)
    evaluate(fake_config(tmp_path, tasks=["advbench"], data=[f"advbench={adv}"], limit=1, system_prompt="none"))
    assert len(made) == count + 1


def test_task_without_default_data_is_skipped_not_fatal(tmp_path, small_data, fake_backends, capsys):
    result = evaluate(fake_config(tmp_path, tasks=["gsm8k", "openfunctions"], data=[f"gsm8k={small_data['gsm']}"]))
    assert "--data openfunctions=FILE" in result["tasks"]["openfunctions"]["skipped"]
    assert result["tasks"]["gsm8k"]["n"] == 4
    assert "skipping task openfunctions" in capsys.readouterr().err
    assert "skipped" in summarize(result)
    with pytest.raises(ConfigError, match="no task can run"):
        evaluate(fake_config(tmp_path, tasks=["openfunctions"]))
    bad = tmp_path / "bad.json"
    bad.write_text("[{")
    with pytest.raises(Exception, match="bad.json"):  # a file the user named must be fixed, not skipped
        evaluate(fake_config(tmp_path, tasks=["gsm8k", "advbench"], data=[f"gsm8k={bad}"]))


@pytest.mark.slow
def test_acceptance_command_on_the_embedded_model(tmp_path):
    """The issue's check (five tasks on SmolLM2-135M-Instruct), at 2 items and 16 new tokens to keep CI short."""
    root = Path(__file__).resolve().parents[2]
    data = root.parent / "shared" / "data" / "sdft-paper" / "openfunction_test.json"
    if not data.is_file():
        pytest.skip("shared data not found")
    out = tmp_path / "D"
    cmd = [sys.executable, "-m", "sdft", "eval", "--model", "smollm2-135m-instruct", "--tasks",
           "gsm8k,advbench,advbench-jailbreak,openfunctions,humaneval",
           "--data", f"openfunctions={data}", "--limit", "2", "--max-new-tokens", "16", "--out", str(out),
           "--no-progress"]
    done = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    assert set(results["tasks"]) == {"gsm8k", "advbench", "advbench-jailbreak", "openfunctions", "humaneval"}
    assert all(entry["n"] == 2 for entry in results["tasks"].values())


@pytest.mark.parametrize("backend", ["fake", "hf"])
@pytest.mark.parametrize("gpu, precision, expected", [(True, "auto", "bf16"), (True, "fp32", "fp32"),
                                                      (False, "auto", "fp32"), (False, "bf16", "bf16")])
def test_loglik_scores_in_the_precision_it_records(tmp_path, tiny_model, monkeypatch, backend, gpu, precision,
                                                   expected):
    """The cache key and results.json name the dtype the scoring model really has: on a GPU a bare default
    would load bf16 while "fp32" was recorded. CPU runs keep fp32 (left out of the key: old caches stay)."""
    import torch

    from sdft.evaluate import stage as evaluate_module
    from sdft.generation import auto

    monkeypatch.setattr(auto, "cuda_available", lambda: gpu)
    loaded = []
    real_session = evaluate_module.ModelSession.hf_model_and_tokenizer

    def spy(self):
        model, tokenizer = real_session(self)
        loaded.append(model.dtype)
        return model, tokenizer
    monkeypatch.setattr(evaluate_module.ModelSession, "hf_model_and_tokenizer", spy)
    mmlu = tmp_path / "mmlu.jsonl"
    mmlu.write_text(json.dumps({"question": "2 + 2 = ?", "subject": "elementary_mathematics",
                                "choices": ["3", "4", "5", "6"], "answer": 1}) + "\n")
    result = evaluate(from_dict(EvalConfig, {"model": str(tiny_model), "backend": backend, "precision": precision,
                                             "tasks": ["mmlu"], "data": [f"mmlu={mmlu}"], "out": str(tmp_path / "o"),
                                             "progress": False}))
    settings = result["tasks"]["mmlu"]["settings"]
    assert settings["precision"] == expected
    assert loaded == [{"fp32": torch.float32, "bf16": torch.bfloat16}[expected]]
    assert (tmp_path / "o" / "generations" / ".cache" / f"mmlu-{settings['settings_key']}.jsonl").is_file()


@pytest.fixture
def no_model(monkeypatch):
    """Every way a stage resolves, converts or loads a model fails the test (a config error must come first)."""
    def loaded(*args, **kwargs):
        raise AssertionError("a model was resolved or loaded before the config was checked")

    for target in ("sdft.models.resolve.resolve_model", "sdft.models.resolve.load_model_and_tokenizer", "sdft.models.resolve.load_tokenizer",
                   "sdft.generation.backend_setup", "sdft.generation.load_backend"):
        monkeypatch.setattr(target, loaded)


def test_a_typo_in_a_task_option_stops_eval_at_once_naming_the_valid_keys(tmp_path, no_model, capsys):
    """Issue 25: ``--option gsm8k.bogus=1`` was accepted, and the run converted a model and started an engine
    before anything was said (the task evaluated with its defaults)."""
    import time

    from sdft.cli import main

    began = time.perf_counter()
    code = main(["eval", "--tasks", "gsm8k", "--option", "gsm8k.bogus=1", "--out", str(tmp_path / "X")])
    assert time.perf_counter() - began < 5
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "task gsm8k: unknown option 'bogus'" in err[0]
    assert "valid options: rule, system_prompt, template, template_mode" in err[0]
    assert not (tmp_path / "X").exists()


@pytest.mark.parametrize("tasks, option, message", [
    (["arc"], "arc.subst=easy", "task arc: unknown option 'subst'.*valid options: subset$"),
    (["arc"], "arc.subset=eazy", "task arc: option subset must be one of challenge, easy, got 'eazy'"),
    (["humaneval"], "humaneval.timout=30", "task humaneval: unknown option 'timout'.*memory_mb, system_prompt, "
                                           "template_mode, timeout"),
    (["humaneval"], "humaneval.memory_mb=lots", "task humaneval: option memory_mb must be an integer"),
    (["humaneval"], "humaneval.timeout=nan", "task humaneval: option timeout must be a finite number"),
    (["mmlu"], "mmlu.subject=anatomy", "task mmlu: unknown option 'subject'.*valid options: subjects$"),
    (["mmlu"], "mmlu.template_mode=chat", "task mmlu: unknown option 'template_mode'"),  # log-likelihood: no prompt
    (["hellaswag"], "hellaswag.subset=x", "task hellaswag: unknown option 'subset'.*it takes no options"),
    (["gsm8k"], "gsm8k.template_mode=chatt", "option template_mode must be one of auto, chat, plain"),
    (["openfunctions"], "openfunctions.rules=paper", "valid options: rule, system_prompt, template_mode$"),
    (["lm_eval:hellaswag"], "lm_eval:hellaswag.num_fewshot=five", "num_fewshot must be an integer"),
    (["lm_eval:hellaswag"], "lm_eval:hellaswag.fewshot=5", "valid options: dtype, metric, num_fewshot, system_prompt, template_mode$"),
])
def test_task_option_typos_are_refused_when_the_config_is_built(tasks, option, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(EvalConfig, {"tasks": tasks, "option": [option]})


def test_a_task_option_given_twice_is_refused():
    with pytest.raises(ConfigError, match="--option gsm8k.rule is given twice"):
        from_dict(EvalConfig, {"tasks": ["gsm8k"], "option": ["gsm8k.rule=paper", "gsm8k.rule=default"]})


def test_valid_task_options_are_all_accepted_and_reach_the_tasks(tmp_path, small_data):
    options = ["gsm8k.rule=paper", "gsm8k.template=paper_math_eval", "gsm8k.template_mode=chat",
               "gsm8k.system_prompt=none", "openfunctions.rule=paper_half_credit", "arc.subset=easy",
               "humaneval.timeout=120", "humaneval.memory_mb=1024", "mmlu.subjects=anatomy,virology",
               "alpaca_eval.generator=me", "lm_eval:ai2_arc.metric=acc", "lm_eval:ai2_arc.num_fewshot=0",
               "mine.column.response=output", "mine.template=alpaca", "mine.metric=hits"]
    config = from_dict(EvalConfig, {"tasks": ["gsm8k", "openfunctions", "arc", "humaneval", "mmlu", "alpaca_eval",
                                              "lm_eval:ai2_arc", "mine"], "option": options,
                                    "data": [f"mine={small_data['custom']}"],
                                    "checker": ["mine=test_evaluate:contains_answer"]})
    given = config.task_options()
    assert given["mmlu"] == {"subjects": "anatomy,virology"}  # the list setting split it at the comma
    assert given["mine"] == {"column.response": "output", "template": "alpaca", "metric": "hits"}
    assert get_task("mmlu", **given["mmlu"]).subjects == {"anatomy", "virology"}
    assert get_task("arc", **given["arc"]).subset == "easy"
    with pytest.raises(ConfigError, match="user task 'mine': unknown option|task mine: unknown option 'colour'"):
        from_dict(EvalConfig, {"tasks": ["mine"], "option": ["mine.colour=red"],
                               "data": [f"mine={small_data['custom']}"],
                               "checker": ["mine=test_evaluate:contains_answer"]})


def test_a_run_config_whose_eval_section_has_a_typo_is_refused_at_load(tmp_path):
    from sdft.experiment.pipeline import load_run_config

    data = tmp_path / "d.json"
    data.write_text(json.dumps([{"instruction": "Say hi", "output": "hi"}]))
    path = tmp_path / "run.yaml"
    path.write_text(json.dumps({"name": "n", "data": str(data), "out_root": str(tmp_path / "runs"), "model": "m",
                                "eval": {"tasks": ["arc", "mmlu"], "option": ["arc.subset=easy", "mmlu.subjets=x"]}}))
    with pytest.raises(ConfigError, match="task mmlu: unknown option 'subjets'.*valid options: subjects"):
        load_run_config(path)
    assert not (tmp_path / "runs").exists()


def test_the_judge_and_the_model_go_through_one_resolver_and_the_request_is_kept(tmp_path, fake_backends, monkeypatch):
    """`--backend auto` is resolved once per engine by generation.backend_setup, for the judge as for the model;
    the results name the backend that ran, the recorded config the one asked for (it keys nothing)."""
    from sdft.generation import auto

    made, plan = fake_backends
    seen = []

    def choose_backend(requested, folder):
        seen.append(requested)
        return "fake", "test: auto picks the fake backend"
    monkeypatch.setattr(auto, "choose_backend", choose_backend)
    monkeypatch.setattr("sdft.models.resolve.resolve_model", lambda name, force=False: name)
    data = tmp_path / "eval_set.json"
    data.write_text(json.dumps([{"instruction": "Task", "output": "REFERENCE"}]))
    plan["judge-model"] = lambda: CountingBackend(respond=lambda p: "Output (a)")
    results = evaluate(fake_config(tmp_path, backend="auto", tasks=["winrate"], data=[f"winrate={data}"],
                                   judge="judge-model"))
    assert seen == ["auto", "auto"]  # the model's engine, then the judge's
    assert results["backend"] == "fake" and results["generation"]["backend"] == "fake"
    assert results["provenance"]["config"]["backend"] == "auto"
    assert [m for m, _ in made] == ["fake-model", "judge-model"]
