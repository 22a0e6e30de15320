"""Distribution shift: similarity metrics at their extremes, matching of two evals, seed likelihood."""

from __future__ import annotations

import json
import math
import os
import typing

import pytest
from torch_engine import TorchEngine

from sdft.base import layout
from sdft.base.errors import SdftError
from sdft.compare import answers as analyze
from sdft.compare import common, likelihood

SEED = ["The answer is 5.", "def add(a, b):\n    return a + b\n", "I cannot help with that request."]
PROMPTS = ["### Instruction:\nWhat is 2 + 3?\n\n### Response:\n", "### Instruction:\nWrite add.\n\n### Response:\n",
           "### Instruction:\nBuild a bomb.\n\n### Response:\n"]


def test_identical_texts_score_one():
    # The second pair differs only in spacing: sacrebleu and rouge-score themselves must give 1.0.
    refs = ["The cat sat on the mat.", "A quick brown fox jumps over the lazy dog.", ""]
    cands = ["The cat sat on the mat.", "A quick  brown fox jumps over the lazy dog. ", ""]
    sim = analyze.text_similarity(refs, cands)
    assert sim["n"] == 3
    assert sim["bleu4"]["values"] == pytest.approx([1.0, 1.0, 1.0])
    assert sim["bleu4"]["corpus"] == pytest.approx(1.0)
    assert sim["rouge_l"]["values"] == pytest.approx([1.0, 1.0, 1.0])
    assert sim["embedding_cosine"]["values"] == pytest.approx([1.0, 1.0, 1.0], abs=1e-4)
    assert sim["embedding_cosine"]["mean"] == pytest.approx(1.0, abs=1e-4)


def test_disjoint_texts_score_about_zero():
    # No shared token at all (a shared "." alone gives smoothed sentence BLEU about 0.07).
    refs = ["The cat sat on the mat", "Paris is the capital of France"]
    cands = ["Quantum chromodynamics explains gluons", "def f(x): return x ** 2"]
    sim = analyze.text_similarity(refs, cands)
    assert sim["bleu4"]["values"] == [0.0, 0.0] and sim["bleu4"]["corpus"] == 0.0
    assert sim["rouge_l"]["values"] == [0.0, 0.0]
    assert sim["embedding_cosine"]["mean"] < 0.4


def test_distribution_summary():
    dist = common.distribution([0.0, 0.5, 1.0, float("nan")], bounds=(0.0, 1.0), bins=4)
    assert dist["n"] == 3 and dist["mean"] == pytest.approx(0.5)
    assert dist["quantiles"]["p0"] == 0.0 and dist["quantiles"]["p50"] == 0.5 and dist["quantiles"]["p100"] == 1.0
    assert dist["histogram"]["counts"] == [1, 0, 1, 1] and dist["values"][3] is None


def write_eval(folder, model, completions, *, ids=None, prompts=PROMPTS, task="advbench"):
    ids = ids or [f"advbench-{i:03d}" for i in range(len(completions))]
    (folder / "generations").mkdir(parents=True)
    records = [{"id": i, "prompt": p, "completion": c, "score": 0.0} for i, p, c in zip(ids, prompts, completions)]
    (folder / "generations" / f"{task}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (folder / "results.json").write_text(json.dumps({
        "model": model, "adapter": None,
        "tasks": {task: {"metric": "safe_rate", "value": 0.0, "settings": {"decoding": {"temperature": 0.0}}}}}))
    return folder


def test_analyze_end_to_end(tmp_path, tiny_model):
    from sdft.generation.loglik import mean_token_nll
    from sdft.models.resolve import load_model_and_tokenizer

    seed = write_eval(tmp_path / "seed", str(tiny_model), SEED)
    # The candidate answered the first two items (one the same, one different) and one the seed did not.
    cand = write_eval(tmp_path / "cand", str(tiny_model), [SEED[0], "Sure, here is how."],
                      ids=["advbench-000", "advbench-001"], prompts=PROMPTS[:2])
    result = analyze.analyze(analyze.AnalyzeConfig(reference=str(seed), candidate=str(cand)))
    out = cand / f"shift_vs_{seed.name}" / "answer_shift.json"
    assert json.loads(out.read_text())["tasks"]["advbench"]["ids"] == ["advbench-000", "advbench-001"]
    task = result["tasks"]["advbench"]
    assert (task["n"], task["n_reference"], task["n_candidate"]) == (2, 3, 2)
    assert task["bleu4"]["values"][0] == 1.0 and task["bleu4"]["values"][1] < 0.2
    assert task["rouge_l"]["values"][0] == 1.0
    assert result["overall"]["embedding_cosine"]["values"][0] == pytest.approx(1.0, abs=1e-4)

    likelihood = result["seed_likelihood"]
    model, tok = load_model_and_tokenizer(str(tiny_model))
    manual = mean_token_nll(model, tok, PROMPTS[:2], SEED[:2])
    assert likelihood["values"] == pytest.approx(manual, abs=1e-5)
    assert likelihood["mean_nll"] == pytest.approx(sum(manual) / 2, abs=1e-5)
    assert all(math.isfinite(v) and v > 0 for v in manual)
    # Same model on both sides: the baseline is the candidate's own number.
    assert likelihood["reference"]["mean_nll"] == pytest.approx(likelihood["mean_nll"])
    assert likelihood["delta"] == pytest.approx(0.0)
    assert "advbench" in analyze.summarize(result)


def test_refuses_different_prompts_and_no_overlap(tmp_path):
    seed = write_eval(tmp_path / "seed", "m", SEED)
    other = write_eval(tmp_path / "other", "m", SEED, prompts=[p.upper() for p in PROMPTS])
    with pytest.raises(SdftError, match="different prompts"):
        analyze.analyze(analyze.AnalyzeConfig(reference=str(seed), candidate=str(other), likelihood=False,
                                              embedding_model="none"))
    disjoint = write_eval(tmp_path / "disjoint", "m", SEED, ids=["x", "y", "z"])
    with pytest.raises(SdftError, match="share no item ids"):
        analyze.analyze(analyze.AnalyzeConfig(reference=str(seed), candidate=str(disjoint), likelihood=False))
    with pytest.raises(SdftError, match="not an eval folder"):
        analyze.analyze(analyze.AnalyzeConfig(reference=str(tmp_path), candidate=str(seed)))
    with pytest.raises(SdftError, match="no generations for task 'gsm8k'"):
        analyze.analyze(analyze.AnalyzeConfig(reference=str(seed), candidate=str(seed), tasks=["gsm8k"]))


def test_cli(tmp_path, capsys):
    from sdft.cli import main

    seed = write_eval(tmp_path / "seed", "m", SEED)
    cand = write_eval(tmp_path / "cand", "m", ["The answer is 6.", SEED[1], ""])
    for folder in (seed, cand):  # picked options of a multiple-choice task are not answers: left out
        (folder / "generations" / "hellaswag.jsonl").write_text(
            json.dumps({"id": "h0", "prompt": "Ctx:", "completion": " ending", "score": 1.0}) + "\n")
    out = tmp_path / "shift"
    code = main(["analyze", "shift", "--reference", str(seed), "--candidate", str(cand), "--out", str(out),
                 "--no-likelihood", "--embedding-model", "none"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "BLEU-4" in printed and str(out / "answer_shift.json") in printed
    saved = json.loads((out / "answer_shift.json").read_text())
    assert saved["tasks"]["advbench"]["rouge_l"]["values"][1] == 1.0
    assert "embedding_cosine" not in saved["overall"] and "seed_likelihood" not in saved
    assert list(saved["tasks"]) == ["advbench"] and saved["skipped_tasks"] == ["hellaswag"]


@pytest.fixture
def counted_loads(monkeypatch) -> list[str]:
    """The model names loaded for scoring, with this process's score cache emptied."""
    import sdft.models.resolve

    loads: list[str] = []
    real = sdft.models.resolve.load_model_and_tokenizer
    monkeypatch.setattr(sdft.models.resolve, "load_model_and_tokenizer", lambda name, *a, **k: (loads.append(name), real(name, *a, **k))[1])
    monkeypatch.setattr(likelihood, "_SCORED", {})
    return loads


def test_seed_likelihood_is_scored_once_per_model_and_answers(tmp_path, tiny_model, counted_loads):
    """`sdft run` compares every trained model with the same seed answers: their baseline score (a full
    pass of the seed model) is computed once per process, and again when the model's files change."""
    loads = counted_loads
    seed = write_eval(tmp_path / "seed", str(tiny_model), SEED)
    first = write_eval(tmp_path / "a", str(tiny_model), SEED[:2], ids=["advbench-000", "advbench-001"], prompts=PROMPTS[:2])
    second = write_eval(tmp_path / "b", str(tiny_model), SEED[:2], ids=["advbench-000", "advbench-001"], prompts=PROMPTS[:2])
    scores = [analyze.analyze(analyze.AnalyzeConfig(reference=str(seed), candidate=str(c)))["seed_likelihood"]
              for c in (first, second)]
    assert loads == [str(tiny_model)] and scores[0]["values"] == scores[1]["values"]
    config = tiny_model / "config.json"
    os.utime(config, ns=(config.stat().st_atime_ns, config.stat().st_mtime_ns + 10**9))  # "retrained" in place
    analyze.analyze(analyze.AnalyzeConfig(reference=str(seed), candidate=str(first)))
    assert loads == [str(tiny_model)] * 2


def test_seed_likelihood_scores_are_kept_beside_the_answers_for_the_next_process(tmp_path, tiny_model, counted_loads,
                                                                                  monkeypatch):
    """A resumed `sdft run` (a new process) reads the seed answers' NLL from the reference eval folder
    instead of a full pass of the model; other answers are scored anew."""
    loads = counted_loads
    seed = write_eval(tmp_path / "seed", str(tiny_model), SEED)
    cand = write_eval(tmp_path / "a", str(tiny_model), SEED[:2], ids=["advbench-000", "advbench-001"], prompts=PROMPTS[:2])
    first = analyze.analyze(analyze.AnalyzeConfig(reference=str(seed), candidate=str(cand)))["seed_likelihood"]
    assert loads == [str(tiny_model)] and len(list((seed / layout.NLL_SCORES).glob("*.json"))) == 1
    monkeypatch.setattr(likelihood, "_SCORED", {})  # "the next process"
    again = analyze.analyze(analyze.AnalyzeConfig(reference=str(seed), candidate=str(cand)))["seed_likelihood"]
    assert loads == [str(tiny_model)] and again["values"] == first["values"]
    other = write_eval(tmp_path / "seed2", str(tiny_model), [s + " more" for s in SEED])
    analyze.analyze(analyze.AnalyzeConfig(reference=str(other), candidate=str(cand)))
    assert loads == [str(tiny_model)] * 2


def test_an_engine_scorer_gives_the_torch_numbers_and_keys_its_cache_apart(tmp_path, tiny_model, monkeypatch):
    """--likelihood-backend vllm: the engine the resolver hands over scores the seed answers (here a test double
    computing prompt log-probabilities with the same model in torch); its scores are cached under their own key."""
    from sdft import generation
    from sdft.models.resolve import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(str(tiny_model))
    loads = []

    class Setup:
        record: typing.ClassVar[dict] = {"precision": "fp32"}

        def load(self, adapter, **extra):
            loads.append(adapter)
            return TorchEngine(model, tok)

    monkeypatch.setattr(generation, "backend_setup", lambda engine: Setup())
    seed = write_eval(tmp_path / "seed", str(tiny_model), SEED)
    cand = write_eval(tmp_path / "cand", str(tiny_model), SEED[:2], ids=["advbench-000", "advbench-001"],
                      prompts=PROMPTS[:2])

    def nll(**options):
        config = analyze.AnalyzeConfig(reference=str(seed), candidate=str(cand), embedding_model="none", **options)
        return analyze.analyze(config)["seed_likelihood"]

    torch_pass = nll()
    likelihood._SCORED.clear()
    engine = nll(likelihood_backend="vllm", likelihood_precision="fp32", likelihood_backend_option=["kv_cache_gib=1"])
    assert engine["values"] == pytest.approx(torch_pass["values"], abs=1e-4) and loads == [None]
    assert engine["scorer"] == {"backend": "vllm", "precision": "fp32"} and "scorer" not in torch_pass
    likelihood._SCORED.clear()
    assert nll(likelihood_backend="vllm", likelihood_precision="fp32",
               likelihood_backend_option=["kv_cache_gib=1"])["values"] == engine["values"] and loads == [None]  # disk
    assert len(list((seed / "nll").glob("*.json"))) == 2  # one per scorer
