"""Answers reused between one model's evaluation folders (sdft.experiment.answer_reuse): only where the cache name and
the folders' stamps (the weights behind the names, engine options, revisions) both match."""

import os
from pathlib import Path

from sdft.base import layout
from sdft.evaluate.config import EvalConfig
from sdft.experiment.answer_reuse import answers_stamp, start_from_siblings

KEY = "0123456789abcdef"


def _adapter(tmp_path: Path) -> Path:
    adapter = tmp_path / "train" / "vanilla-1111111111"
    adapter.mkdir(parents=True)
    (adapter / "adapter_model.safetensors").write_bytes(b"weights")
    return adapter


def _evaluated(folder: Path, config: EvalConfig) -> Path:
    """An evaluation folder as the pipeline leaves it: a stamp and the answer caches."""
    layout.write_answers_stamp(folder, answers_stamp(config))
    for name in (f"gsm8k-{KEY}", "winrate-judge-" + KEY):
        (layout.cache_dir(folder) / f"{name}.jsonl").write_text('{"key": "gsm8k-0001"}\n')
    return folder


def _copied(folder: Path) -> set[str]:
    return {p.name for p in layout.cache_dir(folder).glob("*.jsonl")}


def test_answers_are_reused_only_between_folders_of_the_same_weights(tmp_path, tiny_model):
    config = EvalConfig(model=str(tiny_model), adapter=str(_adapter(tmp_path)), tasks=["gsm8k", "winrate"],
                        judge="http://127.0.0.1:9/v1")
    run_eval = tmp_path / "eval"
    _evaluated(run_eval / "vanilla-aaaaaaaaaa", config)
    logs: list[str] = []
    start_from_siblings(run_eval / "vanilla-bbbbbbbbbb", config, logs.append)
    assert _copied(run_eval / "vanilla-bbbbbbbbbb") == {f"gsm8k-{KEY}.jsonl"}  # not the judge's verdicts
    assert logs and logs[0].startswith("[reuse]")

    # The adapter retrained at the same path: the answers at that path are not its answers any more.
    weights = Path(config.adapter) / "adapter_model.safetensors"
    weights.write_bytes(b"new weights")
    os.utime(weights, ns=(1, 1))
    start_from_siblings(run_eval / "vanilla-cccccccccc", config, logs.append)
    assert _copied(run_eval / "vanilla-cccccccccc") == set()

    # Another model label, a folder from before stamps, a remote server: never.
    other = _evaluated(run_eval / "sdft-dddddddddd", config)
    start_from_siblings(run_eval / "sdft-eeeeeeeeee", EvalConfig(model=str(tiny_model), tasks=["gsm8k"],
                                                                  endpoint=["http://127.0.0.1:9/v1"]), logs.append)
    assert _copied(run_eval / "sdft-eeeeeeeeee") == set()
    (layout.cache_dir(other) / layout.ANSWERS_STAMP).unlink()
    start_from_siblings(run_eval / "sdft-ffffffffff", config, logs.append)
    assert _copied(run_eval / "sdft-ffffffffff") == set()


def test_the_stamp_changes_with_batch_size_and_engine_options(tiny_model):
    base = EvalConfig(model=str(tiny_model), tasks=["gsm8k"])
    assert answers_stamp(base) == answers_stamp(EvalConfig(model=str(tiny_model), tasks=["gsm8k"], limit=5))
    assert answers_stamp(base) != answers_stamp(EvalConfig(model=str(tiny_model), tasks=["gsm8k"], batch_size=3))
    assert answers_stamp(base) != answers_stamp(EvalConfig(model=str(tiny_model), tasks=["gsm8k"],
                                                           backend_option=["dtype=bfloat16"]))
    assert answers_stamp(EvalConfig(model=str(tiny_model), tasks=["mmlu"]))["revisions"] == {"mmlu": 1}


def test_a_rewritten_model_card_does_not_stop_the_reuse(tmp_path, tiny_model):
    """sdft run rewrites the card beside an adapter with its results after each evaluation; stamps written
    before sdft wrote cards hold PEFT's README.md. Neither is a weight: the answers are still that model's."""
    adapter = _adapter(tmp_path)
    card = adapter / layout.MODEL_CARD
    card.write_text("---\nlibrary_name: peft\n---\nPEFT's card\n")
    config = EvalConfig(model=str(tiny_model), adapter=str(adapter), tasks=["gsm8k"])
    run_eval = tmp_path / "eval"
    old = _evaluated(run_eval / "vanilla-aaaaaaaaaa", config)
    stamp = answers_stamp(config)  # as written before: with the card's name, size and time
    stamp["adapter"] = sorted(stamp["adapter"] + [[card.name, card.stat().st_size, card.stat().st_mtime_ns]])
    layout.write_answers_stamp(old, stamp)
    card.write_text("---\nlibrary_name: peft\ntags: [sdft]\n---\nsdft's card, with the results\n")
    os.utime(card, ns=(2, 2))
    start_from_siblings(run_eval / "vanilla-bbbbbbbbbb", config, lambda line: None)
    assert _copied(run_eval / "vanilla-bbbbbbbbbb") == {f"gsm8k-{KEY}.jsonl"}
