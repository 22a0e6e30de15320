"""sdft train on the tiny random llama: targets, label mask, weights, resume after kill -9, processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sdft.base.data import seeded_subset
from sdft.base.errors import ConfigError, SdftError
from sdft.train import data as train_data
from sdft.train.config import TrainConfig
from sdft.train.stage import prepare, train

ROOT = Path(__file__).resolve().parents[2]
QA = [("What is 2 + 3?", "The answer is 5."), ("Add 1 and 1.", "2"),
      ("Name a fruit.", "An apple."), ("Say hi.", "Hello!")]


def write_json(path: Path, records) -> Path:
    path.write_text(json.dumps(records))
    return path


@pytest.fixture
def repeated_data(tmp_path) -> Path:
    """Four examples, each four times: a model can fit them within a few steps."""
    return write_json(tmp_path / "data.json",
                      [{"instruction": q, "input": "", "output": a} for q, a in QA * 4])


def distilled_file(tmp_path: Path, n: int = 10) -> Path:
    """n records; even ones have an accepted rewrite, odd ones a rejected rewrite."""
    rows = []
    for i in range(n):
        accepted = i % 2 == 0
        rows.append({"id": f"r{i}", "instruction": f"question {i}", "input": "",
                     "output": f"rewrite {i}" if accepted else f"original {i}",
                     "sdft": {"accepted": accepted, "reason": "ok" if accepted else "banned",
                              "rewrite": f"rewrite {i}", "original": f"original {i}"}})
    path = tmp_path / "distilled.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def config(model, data, out, **kw) -> TrainConfig:
    base = dict(model=str(model), data=str(data), out=str(out), max_steps=12, batch_size=4, grad_accum=1,
                learning_rate=5e-2, lr_scheduler="constant", max_length=256, save_steps=100, logging_steps=100)
    base.update(kw)
    return TrainConfig(**base)


def mean(values):
    return sum(values) / len(values)


# ------------------------------------------------------------------------------- data choices (no model)

def test_mix_ratio_picks_rewrites_among_accepted_only(tmp_path):
    from sdft.base.data import load_examples

    examples = load_examples(distilled_file(tmp_path))
    picked = {}
    for ratio in (0.0, 0.5, 1.0):
        pairs, counts = train_data.choose_targets(examples, ratio, seed=1)
        picked[ratio] = {ex.id for ex, _, rewritten in pairs if rewritten}
        assert counts["accepted"] == 5 and counts["rewritten"] == round(5 * ratio)
        assert counts["original"] == 10 - counts["rewritten"]
        for ex, response, rewritten in pairs:
            number = ex.id[1:]
            assert response == (f"rewrite {number}" if rewritten else f"original {number}")
            assert not rewritten or int(number) % 2 == 0  # rejected rewrites are never used
    assert picked[0.0] == set() and picked[1.0] == {"r0", "r2", "r4", "r6", "r8"}
    assert picked[0.5] < picked[1.0]  # nested: a sweep over R changes one thing at a time
    # deterministic for a seed; the default (None) on distilled data is SDFT (R = 1)
    assert {e.id for e, _, r in train_data.choose_targets(examples, 0.5, seed=1)[0] if r} == picked[0.5]
    assert train_data.choose_targets(examples, None, seed=1)[1]["rewritten"] == 5


def test_training_prompts_follow_the_system_choice_and_records_keep_their_own(tiny_model):
    from transformers import AutoTokenizer

    from sdft.base.data import Example
    from sdft.base.templates import PROMPT_TEMPLATES

    tok = AutoTokenizer.from_pretrained(tiny_model)
    plain = Example(id="a", instruction="Say hi.", response="Hi")
    own = Example(id="b", instruction="Say yo.", response="Yo", system="Be terse.")
    pairs = [(plain, "Hi", False), (own, "Yo", False)]
    alpaca = PROMPT_TEMPLATES["alpaca"]
    paper, _ = train_data.build_targets(pairs, alpaca, tok, "chat", "template")
    assert paper[0].prompt.startswith(f"<|im_start|>system\n{alpaca.system}<|im_end|>")
    assert paper[1].prompt.startswith("<|im_start|>system\nBe terse.<|im_end|>")
    custom, _ = train_data.build_targets(pairs, alpaca, tok, "chat", "Be safe.")
    assert custom[0].prompt.startswith("<|im_start|>system\nBe safe.<|im_end|>")
    assert custom[1].prompt.startswith("<|im_start|>system\nBe terse.<|im_end|>")
    assert train_data.build_targets(pairs, alpaca, tok, "chat", "model")[0][0].prompt.startswith("<|im_start|>user")


def test_mix_ratio_on_original_data_is_refused(repeated_data):
    from sdft.base.data import load_examples

    with pytest.raises(ConfigError, match="distilled"):
        train_data.choose_targets(load_examples(repeated_data), 0.5, seed=0)


def test_limit_is_a_seeded_random_subset():
    items = list(range(100))
    first = seeded_subset(items, 10, seed=3)
    assert len(first) == 10 and first == sorted(first)
    assert first == seeded_subset(items, 10, seed=3)
    assert first != items[:10]
    assert first != seeded_subset(items, 10, seed=4)
    assert seeded_subset(items, 500, seed=3) == items


def test_batch_order_groups_lengths_and_covers_each_pass():
    lengths = [(i * 37) % 200 + 1 for i in range(64)]
    order = train_data.batch_order(lengths, 3 * 64, micro_batch=4, seed=0)
    assert order == train_data.batch_order(lengths, 3 * 64, micro_batch=4, seed=0)
    for p in range(3):  # every pass is a permutation of the data
        assert sorted(order[p * 64:(p + 1) * 64]) == list(range(64))
    assert order[:64] != order[64:128]  # passes are reshuffled
    grouped = train_data.padding_efficiency(lengths, order, 4)
    assert grouped > 0.9 > train_data.padding_efficiency(lengths, list(range(64)) * 3, 4)


class _Words:
    """Test double tokenizer: whitespace words."""

    def __call__(self, texts):
        from types import SimpleNamespace
        return SimpleNamespace(input_ids=[t.split() for t in texts])


def _arm_batches(examples, mix: float, how: str, seed: int = 3) -> list[list[str]]:
    """The example ids of each micro-batch (4 examples) over three passes for one arm's targets."""
    pairs, _ = train_data.choose_targets(examples, mix, seed)
    targets = [train_data.Target(ex.id, f"Question: {ex.instruction}" + " more" * (int(ex.id[1:]) % 5), response,
                                 rewritten) for ex, response, rewritten in pairs]
    lengths = [len((t.prompt + " " + t.response).split()) for t in targets]
    order = train_data.order_for(how, targets, lengths, _Words(), 3 * len(targets), 4, seed)
    return [[targets[i].id for i in order[s:s + 4]] for s in range(0, len(order), 4)]


def test_prompt_and_index_orders_give_vanilla_and_sdft_the_same_batches(tmp_path):
    from sdft.base.data import load_examples

    rows = [{"id": f"r{i}", "instruction": f"question {i}", "input": "", "output": f"original {i}",
             "sdft": {"accepted": True, "reason": "accepted", "rewrite": "a long rewrite " * (1 + 7 * (i % 3)),
                      "original": f"original {i}"}} for i in range(40)]
    path = tmp_path / "distilled.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    examples = load_examples(path)
    # The default groups by target length: vanilla and SDFT at one seed see different batches.
    assert _arm_batches(examples, 0.0, "length") != _arm_batches(examples, 1.0, "length")
    for how in ("prompt", "index"):
        vanilla = _arm_batches(examples, 0.0, how)
        assert vanilla == _arm_batches(examples, 1.0, how) == _arm_batches(examples, 0.5, how)
        flat = [i for batch in vanilla for i in batch]
        for p in range(3):  # every pass is a permutation of the data, passes reshuffled
            assert sorted(flat[p * 40:(p + 1) * 40]) == sorted(r["id"] for r in rows)
        assert flat[:40] != flat[40:80]
        assert vanilla != _arm_batches(examples, 0.0, how, seed=4)
    assert _arm_batches(examples, 0.0, "prompt") != _arm_batches(examples, 0.0, "index")
    # An example one arm lacks (an empty rewrite dropped) leaves the others in the same order.
    fewer = [ex for ex in examples if ex.id != "r7"]
    first_pass = [i for batch in _arm_batches(examples, 0.0, "index") for i in batch][:40]
    assert [i for batch in _arm_batches(fewer, 1.0, "index") for i in batch][:39] == [i for i in first_pass
                                                                                       if i != "r7"]


# ------------------------------------------------------------------------------------- training runs

def test_only_response_tokens_carry_loss(tiny_model, tmp_path):
    run = prepare(config(tiny_model, write_json(tmp_path / "d.json", [
        {"instruction": "Name a fruit.", "input": "", "output": "An apple."},
        {"instruction": "What is 2 + 3? Explain it at length please.", "input": "", "output": "5"}]),
        tmp_path / "out", max_steps=1, batch_size=2))
    tokenizer = run.trainer.processing_class
    batch = run.trainer.data_collator([run.trainer.train_dataset[i] for i in range(2)])
    for row in range(2):
        target = run.targets[run.order[row]]
        ids, labels, mask = batch["input_ids"][row], batch["labels"][row], batch["attention_mask"][row]
        n_prompt = len(tokenizer(target.prompt).input_ids)
        assert (labels[:n_prompt] == -100).all()  # the prompt carries no loss
        assert (labels[mask == 0] == -100).all()  # nor does padding
        learned = labels[labels != -100]
        assert tokenizer.decode(learned) == target.response  # exactly the response, EOS included
        assert target.response.endswith(tokenizer.eos_token)
        assert (ids[n_prompt:int(mask.sum())] == learned).all()


def test_lora_run_trains_adapter_and_writes_outputs(tiny_model, repeated_data, tmp_path):
    from safetensors.torch import load_file

    from sdft.models.adapters import lora_shift

    out = tmp_path / "lora"
    result = train(config(tiny_model, repeated_data, out, max_steps=15, lora_r=4, merge=True))
    losses = [p["loss"] for p in result["loss"]]
    assert len(losses) == 15 and mean(losses[-3:]) < mean(losses[:3]) - 0.05
    weights = load_file(out / "adapter_model.safetensors")
    lora_b = [t for k, t in weights.items() if "lora_B" in k]
    assert lora_b and all(t.abs().sum() > 0 for t in lora_b)  # B starts at zero: it trained
    record = json.loads((out / "train.json").read_text())
    assert record["data"]["sha256"] and record["data"]["original"] == 16 and record["data"]["rewritten"] == 0
    # The tiny model's chat template writes no default system turn, so "model" means none here.
    assert record["template"]["system_prompt"] == {"choice": "model", "mode": "chat", "text": None}
    assert record["throughput"]["train_tokens_per_s"] > 0 and record["versions"]["trl"]
    assert (out / "loss.png").stat().st_size > 0 and (out / "tokenizer_config.json").is_file()
    assert not (out / "checkpoints").exists()
    assert result["parameter_shift_l2"] > 0
    assert result["parameter_shift_l2"] == pytest.approx(lora_shift(out)["total"])
    # The merged weights differ from the base exactly by B @ A * scale.
    from sdft.models.adapters import full_shift

    merged = full_shift(tiny_model, out / "merged")
    assert merged["total"] == pytest.approx(result["parameter_shift_l2"], rel=1e-4)
    # The evaluation side loads base + adapter.
    from sdft.models.resolve import load_model_and_tokenizer

    model, _ = load_model_and_tokenizer(str(tiny_model), adapter=str(out))
    assert model is not None


def test_full_run_changes_weights_and_reduces_loss(tiny_model, repeated_data, tmp_path):
    from safetensors.torch import load_file

    out = tmp_path / "full"
    result = train(config(tiny_model, repeated_data, out, method="full", learning_rate=1e-2))
    losses = [p["loss"] for p in result["loss"]]
    assert mean(losses[-3:]) < mean(losses[:3]) - 0.05
    base, tuned = load_file(tiny_model / "model.safetensors"), load_file(out / "model.safetensors")
    assert set(base) == set(tuned)
    assert all(not tuned[k].equal(base[k]) for k in base if k.endswith("proj.weight"))
    assert result["training"]["trainable_parameters"] == result["training"]["total_parameters"]


def test_distilled_run_records_counts(tiny_model, tmp_path):
    result = train(config(tiny_model, distilled_file(tmp_path), tmp_path / "out", max_steps=2, mix_ratio=0.5,
                          limit=8))
    data = result["data"]
    assert data["distilled"] and data["examples"] == 8 and data["mix_ratio"] == 0.5
    assert data["rewritten"] + data["original"] == 8 and data["rewritten"] == round(0.5 * data["accepted"])


def test_index_order_is_recorded_and_shared_by_vanilla_and_sdft(tiny_model, tmp_path):
    data = distilled_file(tmp_path)
    runs = {mix: train(config(tiny_model, data, tmp_path / f"mix{mix}", max_steps=2, mix_ratio=mix,
                              batch_order="index"))["training"] for mix in (0.0, 1.0)}
    assert runs[0.0]["batch_order"] == runs[1.0]["batch_order"] == "index"
    assert runs[0.0]["batch_order_sha256"] == runs[1.0]["batch_order_sha256"]
    recorded = json.loads((tmp_path / "mix0.0" / "train.json").read_text())
    assert recorded["training"]["batch_order_sha256"] == runs[0.0]["batch_order_sha256"]


def test_prompts_longer_than_max_length_are_left_out_with_a_warning(tiny_model, tmp_path):
    rows = [{"instruction": "a long question " * 40 if i < 2 else f"question {i}", "input": "",
             "output": f"answer {i}"} for i in range(6)]
    with pytest.warns(UserWarning, match="2 of 6 prompts are at least --max-length 48"):
        result = train(config(tiny_model, write_json(tmp_path / "d.json", rows), tmp_path / "out", max_steps=1,
                              max_length=48))
    assert result["data"]["dropped_too_long"] == 2 and result["data"]["examples"] == 4


def test_qlora_on_cpu_is_a_clear_error(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(SdftError, match="GPU"):
        train(TrainConfig(data="x.json", out=str(tmp_path), method="qlora"))


def test_bad_settings_are_refused():
    with pytest.raises(ConfigError, match="mix_ratio"):
        TrainConfig(data="d", out="o", mix_ratio=1.5).validate()
    with pytest.raises(ConfigError, match="--data"):
        TrainConfig(out="o").validate()


# --------------------------------------------------------------------------------- several processes

@pytest.mark.slow
def test_two_process_runs_complete(tiny_model, repeated_data, tmp_path):
    accelerate = str(Path(sys.executable).with_name("accelerate"))
    flags = ["-m", "sdft", "train", "--model", tiny_model, "--data", repeated_data, "--max-steps", 3,
             "--batch-size", 2, "--grad-accum", 1, "--max-length", 256]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # The command. accelerate starts one process for --cpu unless mpirun runs it (we say so).
    plain = subprocess.run([accelerate, "launch", "--num_processes", "2", "--cpu", *map(str, flags),
                            "--out", tmp_path / "cpu"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert plain.returncode == 0, plain.stderr[-2000:]
    assert (tmp_path / "cpu" / "adapter_model.safetensors").is_file()
    # Two gloo processes on CPUs: accelerate's torchrun launcher (--multi_gpu needs no GPU).
    multi = subprocess.run([accelerate, "launch", "--multi_gpu", "--num_processes", "2", *map(str, flags),
                            "--out", tmp_path / "two"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert multi.returncode == 0, multi.stderr[-2000:]
    record = json.loads((tmp_path / "two" / "train.json").read_text())
    assert record["training"]["processes"] == 2 and record["training"]["global_batch"] == 4
    assert len(record["loss"]) == 3 and multi.stdout.count("trained lora") == 1  # main process reports


# ------------------------------------------------------------------------------------ embedded model

@pytest.mark.slow
def test_embedded_model_few_steps(shared_data, tmp_path):
    from sdft.models.adapters import lora_shift
    from sdft.models.resolve import load_model_and_tokenizer

    out = tmp_path / "smol"
    result = train(TrainConfig(model="smollm2-135m-instruct", data=str(shared_data / "alpaca_train.json"),
                               out=str(out), limit=16, max_steps=2, batch_size=2, grad_accum=1,
                               max_length=128))
    assert (out / "adapter_model.safetensors").is_file() and (out / "train.json").is_file()
    assert result["training"]["steps"] == 2 and result["data"]["examples"] == 16
    assert lora_shift(out)["total"] > 0
    model, tokenizer = load_model_and_tokenizer("smollm2-135m-instruct", adapter=str(out))
    ids = tokenizer("Name a color.", return_tensors="pt")
    assert model.generate(**ids, max_new_tokens=3, do_sample=False).shape[1] > ids["input_ids"].shape[1]


@pytest.mark.parametrize("logs, shown", [({"loss": 0.5, "num_tokens": 4000.0}, "400 tokens/s"),
                                         ({"loss": 0.5}, "5.0 s/step")])
def test_progress_line_shows_a_rate_even_when_the_trainer_counts_no_tokens(logs, shown, capsys, monkeypatch):
    """TRL's SDFTTrainer (onpolicy) logs no num_tokens: the line shows seconds per step, never '0 tokens/s'.
    The rate is this session's: a run resumed at step 2 that reaches step 4 in 10 s took 5 s a step."""
    from types import SimpleNamespace

    from sdft.train import output as train_output
    from sdft.train.output import progress_callback

    clock = iter([100.0, 110.0])  # train begins at 100 s, step 4 is logged at 110 s
    monkeypatch.setattr(train_output, "time", SimpleNamespace(perf_counter=lambda: next(clock)))
    progress = progress_callback(every=4, total=8)
    state = SimpleNamespace(global_step=2, is_world_process_zero=True)
    progress.on_train_begin(None, state, None)
    state.global_step = 4
    progress.on_log(None, state, None, logs=logs)
    line = capsys.readouterr().out.strip()
    assert line.startswith("step 4/8  loss 0.5000") and line.endswith(f"  {shown}"), line
    assert " 0 tokens/s" not in line
