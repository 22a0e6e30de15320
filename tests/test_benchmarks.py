"""The benchmarks reach into sdft by name: a function they time must still exist where they look for it."""

from __future__ import annotations

import ast
import importlib
import json
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
BENCH_ARM = BENCHMARKS / "bench_arm.py"


def _table(name: str, bench: Path = BENCH_ARM):
    """One of a benchmark's tables, read without importing it (bench_arm instruments sdft when run)."""
    for node in ast.parse(bench.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"{bench.name} defines no {name}")


def _resolve(module_name: str, attribute: str):
    owner = importlib.import_module(module_name)
    for name in attribute.split("."):
        assert hasattr(owner, name), f"bench_arm names {module_name}:{attribute}, which no longer exists"
        owner = getattr(owner, name)
    return owner


@pytest.mark.parametrize("module_name, attribute, label", _table("PARTS"))
def test_every_timed_part_exists(module_name, attribute, label):
    assert callable(_resolve(module_name, attribute))


@pytest.mark.parametrize("setting", sorted({key for settings in _table("CONFIGS").values() for key in settings
                                            if ":" in key}))
def test_every_patched_attribute_exists(setting):
    _resolve(*setting.split(":"))


@pytest.mark.parametrize("setting", sorted({key for settings in _table("CONFIGS", BENCHMARKS / "bench_distill.py")
                                            .values() for key in settings}))
def test_every_distill_setting_compared_exists(setting):
    import dataclasses

    from sdft.distill.config import DistillConfig

    assert setting in {f.name for f in dataclasses.fields(DistillConfig)}


def test_nll_token_count_reads_prompts_and_texts_where_seed_likelihood_takes_them(monkeypatch):
    """bench_arm's NLL MFU counts prompt + answer tokens of each call, passed by position or by name."""
    import importlib.util
    import inspect

    from sdft.compare.likelihood import seed_likelihood

    assert list(inspect.signature(seed_likelihood).parameters)[2:4] == ["prompts", "texts"]
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # as when run as a script: bench_train beside it
    spec = importlib.util.spec_from_file_location("bench_arm_under_test", BENCH_ARM)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)  # defines only; main() is what instruments sdft
    bench.TOKENIZER.append(lambda text, add_special_tokens: {"input_ids": text.split()})
    prompts, texts = ["a b", "c"], [" d", " e f"]
    assert bench.scored_tokens((None, None, prompts, texts), {}) == 6
    assert bench.scored_tokens((None, None), {"prompts": prompts, "texts": texts}) == 6


def test_eval_mfu_counts_prompt_and_new_tokens_over_the_stream_seconds(tmp_path, monkeypatch):
    import importlib.util

    monkeypatch.syspath_prepend(str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location("eval_mfu_under_test", BENCHMARKS / "eval_mfu.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    (tmp_path / "generations").mkdir()
    (tmp_path / "generations" / "gsm8k.jsonl").write_text(
        '{"id": "1", "prompt_tokens": 10, "completion_tokens": 5}\n{"id": "2", "prompt_tokens": 20, '
        '"completion_tokens": 7}\n')
    results = {"model": "m", "generation": {"precision": "fp32"}, "stream": {"seconds": 4.0},
               "tasks": {"gsm8k": {"seconds": 99.0}}}
    (tmp_path / "results.json").write_text(json.dumps(results))
    load = bench.generation_load(tmp_path)
    assert (load["prompt_tokens"], load["new_tokens"], load["seconds"], load["streamed"]) == (30, 12, 4.0, True)
    del results["stream"]  # task by task: the tasks' seconds
    (tmp_path / "results.json").write_text(json.dumps(results))
    assert bench.generation_load(tmp_path)["seconds"] == 99.0
    (tmp_path / "generations" / "gsm8k.jsonl").write_text("")  # an archive: no answers to count
    with pytest.raises(SystemExit, match="no generated tokens"):
        bench.generation_load(tmp_path)
