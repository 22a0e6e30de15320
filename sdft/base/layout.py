"""The run folder contract: every file name a stage writes, where it goes, and typed records of what the
stages write and the report reads.

Nothing else in sdft spells a run-folder file name: stages and the report import the names and path
helpers from here. ``sdft run`` lays a run out as::

    RUN/config.json  manifest.json  report.md  report.html  plots/
    RUN/distill/distill-KEY/    run.json stats.json distilled.jsonl progress.jsonl stage.json
                                self_answers.jsonl (the sdft-guard / self-answer arms' own distillations)
    RUN/train/LABEL-KEY/        adapter (or weights) README.md train.json loss.png checkpoints/ tensorboard/ stage.json
    RUN/eval/LABEL-KEY/         results.json item_scores/TASK.jsonl generations/TASK.jsonl generations/.cache/
                                stage.json
    RUN/eval/LABEL-KEY/compare/ answer_shift.json weight_shift.json stage.json
    RUN/eval/seed-KEY/nll/      the seed answers' NLL under each scoring model (sdft.compare.likelihood's disk cache)
    RUN/interp/LABEL-KEY/       a scaled copy of vanilla's adapter, README.md, interp.json, stage.json (the interp arm)

The manifest has one :class:`Arm` per model (the seed and every trained arm, named), so a new kind of
training arm adds entries, not keys. Manifests written before this module (no ``schema``) are read by
:meth:`Manifest.from_json`, which maps their keys onto the records.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from sdft.base import userfiles
from sdft.base.config import changed_settings
from sdft.base.errors import ConfigError, DataError
from sdft.base.provenance import recordable
from sdft.base.stats import Metric
from sdft.base.store import write_json

SCHEMA = 2  # manifest.json format; 1 = the nested dicts of sdft before this module (no "schema" key)

# ---------------------------------------------------------------- file and folder names
RUN_CONFIG = "config.json"        # the run's config, as loaded
MANIFEST = "manifest.json"        # the Manifest below
REPORT_MD, REPORT_HTML, PLOTS = "report.md", "report.html", "plots"
STAGE = "stage.json"              # a finished (or keyed) stage: key, settings, result
RUN_RECORD = "run.json"           # a stage's provenance (model, template, decoding, data hash, versions)
DISTILLED, DISTILL_STATS, DISTILL_PROGRESS = "distilled.jsonl", "stats.json", "progress.jsonl"
DISTILL_SELF_ANSWERS = "self_answers.jsonl"  # the seed's own answers (format guard, self-answer mode)
TRAIN_RECORD, LOSS_PLOT, CHECKPOINTS, MERGED = "train.json", "loss.png", "checkpoints", "merged"
RESULTS, GENERATIONS, CACHE = "results.json", "generations", ".cache"
ITEM_SCORES = "item_scores"       # beside results.json: ITEM_SCORES/TASK.jsonl, per item its score, no answer text
ANSWERS_STAMP = "answers-stamp.json"  # in an eval folder's cache: what its answers came from (sibling reuse)
COMPARE = "compare"               # a trained model's distance from the seed, inside its eval folder
ANSWER_SHIFT = "answer_shift.json"  # how far the answers moved (BLEU, ROUGE, cosine, seed likelihood)
WEIGHT_SHIFT = "weight_shift.json"  # how far the weights moved (L2 of the change)
NLL_SCORES = "nll"                # in the reference eval folder: its answers' NLL, one file per scoring model
RUN_GUARD = "sdft-run.json"       # in checkpoints/: the key a resumed training run must share with the first
DISTILL, TRAIN, EVAL = "distill", "train", "eval"  # the stage folders of a run
INTERP, INTERP_RECORD = "interp", "interp.json"  # the interp arm's scaled adapters (sdft.train.interp)
MODEL_CARD = "README.md"          # beside every adapter and merged model: Hugging Face's model card
TENSORBOARD = "tensorboard"       # in a training folder: TensorBoard event files (--report-to tensorboard)
PLOT_FILES = {"mix_ratio": "mix_ratio.png", "shift_vs_mix": "shift_vs_mix.png", "sample_size": "sample_size.png",
              "similarity": "similarity.png", "loss": LOSS_PLOT, "arms": "arms.png", "interp": "interp.png"}


def stage_dir(run_dir: Path, stage: str, label: str, key: str) -> Path:
    """``RUN/<stage>/<label>-<key>``: one folder per stage and settings."""
    return Path(run_dir) / stage / f"{label}-{key}"


def generations_file(eval_dir: Path, task: str) -> Path:
    return Path(eval_dir) / GENERATIONS / f"{task}.jsonl"


def item_scores_file(eval_dir: Path, task: str) -> Path:
    """One task's per-item scores (:mod:`sdft.base.item_scores`)."""
    return Path(eval_dir) / ITEM_SCORES / f"{task}.jsonl"


def nll_scores_file(eval_dir: Path, key_digest: str) -> Path:
    """The NLL of an eval folder's answers under one scoring model (``key_digest`` names model and answers)."""
    return Path(eval_dir) / NLL_SCORES / f"{key_digest}.json"


def cache_dir(eval_dir: Path) -> Path:
    return Path(eval_dir) / GENERATIONS / CACHE


def cache_file(eval_dir: Path, task: str, key: str) -> Path:
    return cache_dir(eval_dir) / f"{task}-{key}.jsonl"


def write_answers_stamp(eval_dir: Path, stamp: dict) -> None:
    """What the answers in this folder's cache were generated from beyond their cache names (see below)."""
    cache_dir(eval_dir).mkdir(parents=True, exist_ok=True)
    write_json(cache_dir(eval_dir) / ANSWERS_STAMP, stamp)


def sibling_answer_caches(eval_dir: Path, tasks: list[str], stamp: dict) -> list[Path]:
    """The answer caches of ``tasks`` in the other ``RUN/eval/LABEL-*`` folders of the same model label with
    the same stamp, newest folder first. A cache file is named by every setting that changes its task's
    answers (``sdft.evaluate.run.task_settings``); the stamp adds what the names leave out (the weights behind a
    model name or adapter path, engine options, task revisions), so a cache that passes both holds valid
    answers whichever folder it is in. Other files of the cache folder (a judge's verdicts) are left out."""
    eval_dir = Path(eval_dir)
    label = eval_dir.name.rsplit("-", 1)[0]
    stamp = _without_cards(stamp)
    siblings = [d for d in eval_dir.parent.glob(f"{label}-*")
                if d != eval_dir and d.name.rsplit("-", 1)[0] == label and _without_cards(_stamp_of(d)) == stamp]
    siblings.sort(key=lambda d: d.stat().st_mtime, reverse=True)
    return [f for d in siblings for f in sorted(cache_dir(d).glob("*.jsonl")) if _answer_cache_of(f.name, tasks)]


def _stamp_of(eval_dir: Path) -> dict | None:
    try:
        return json.loads((cache_dir(eval_dir) / ANSWERS_STAMP).read_text())
    except (OSError, ValueError):
        return None  # a folder from before stamps: its answers are not reused


def _without_cards(stamp: dict | None) -> dict | None:
    """A stamp without the model folders' model cards: stamps written before sdft wrote its own cards hold
    PEFT's, and ``sdft run`` rewrites the card with the results after each evaluation; neither is a weight."""
    if not stamp:
        return stamp
    return {k: [f for f in v if f[0] != MODEL_CARD] if k in ("model", "adapter") and isinstance(v, list) else v
            for k, v in stamp.items()}


def _answer_cache_of(name: str, tasks: list[str]) -> bool:
    stem, _, key = name.removesuffix(".jsonl").rpartition("-")
    return stem in tasks and len(key) == 16 and all(c in "0123456789abcdef" for c in key)


def locate(run_dir: Path, stored: str) -> Path:
    """A stage folder of ``run_dir``: the manifest's ``stage/name`` found inside ``run_dir`` (so a moved or
    copied run reads its own folders), else the stored path as written (relative to where the run was started)."""
    path = Path(stored)
    # The copy inside run_dir first: a report rebuilt from a copied run folder must read the copy, even
    # while the original still exists where the run was started.
    for depth in (3, 2):  # eval/LABEL-KEY/compare first, then stage/LABEL-KEY
        inside = Path(run_dir).joinpath(*path.parts[-depth:])
        if len(path.parts) >= depth and inside.exists():
            return inside
    if path.exists():  # a folder outside the run (e.g. an adapter trained elsewhere)
        return path
    return Path(run_dir).joinpath(*path.parts[-2:])


# ---------------------------------------------------------------- typed records

@dataclass
class StageRecord:
    """A finished stage: its folder (as written at run time) and the result its function returned."""

    dir: str
    result: dict = field(default_factory=dict)

    def path(self, run_dir: Path) -> Path:
        return locate(run_dir, self.dir)

    def to_json(self) -> dict:
        return {"dir": self.dir, "result": self.result}


def task_metrics(results: dict) -> dict[str, Metric]:
    """``{"task/metric": Metric}`` from an eval's results.json (skipped tasks left out)."""
    flat = {}
    for task, entry in results.get("tasks", {}).items():
        for name, m in entry.get("metrics", {}).items():
            if isinstance(m, dict) and m.get("value") is not None:
                flat[f"{task}/{name}"] = Metric.from_json(m)
    return flat


@dataclass
class Arm:
    """One model of the comparison: the seed, or a model trained by a named arm with its parameters.

    ``recipe`` names how the model was made ("seed"; "mix": vanilla, SDFT and mixtures of the distilled
    file; other training arms add their own); ``params`` holds what distinguishes this model within its
    recipe (``mix_ratio``, ``sample_size``, ...). ``answer_shift`` and ``weight_shift`` compare a trained
    model with the seed. ``seed`` is the training seed (``sdft train --seed``) of a trained or interpolated
    model when the run trained several (``train_seeds``); None otherwise (every model then has the train
    section's seed, recorded in its stage.json). The same arm at another training seed is another
    ``Arm`` with the same recipe and params (:mod:`sdft.base.seeds` names and groups them)."""

    label: str
    recipe: str
    eval: StageRecord
    params: dict = field(default_factory=dict)
    train: StageRecord | None = None
    answer_shift: dict | None = None
    weight_shift: dict | None = None
    seed: int | None = None

    @property
    def trained(self) -> bool:
        return self.train is not None

    @property
    def mix_ratio(self) -> float | None:
        return self.params.get("mix_ratio")

    @property
    def sample_size(self) -> int | None:
        return self.params.get("sample_size")

    def metrics(self) -> dict[str, Metric]:
        return task_metrics(self.eval.result)

    def to_json(self) -> dict:
        seed = {} if self.seed is None else {"seed": self.seed}  # the seed model has none
        return {"label": self.label, "recipe": self.recipe, "params": self.params, **seed,
                "eval": self.eval.to_json(), "train": self.train.to_json() if self.train else None,
                "answer_shift": self.answer_shift, "weight_shift": self.weight_shift}

    @classmethod
    def from_json(cls, label: str, data: dict) -> "Arm":
        if "recipe" not in data:
            data = _arm_v1(label, data)
        train = data.get("train")
        return cls(label=label, recipe=data["recipe"], params=dict(data.get("params") or {}),
                   eval=StageRecord(**data["eval"]), train=StageRecord(**train) if train else None,
                   answer_shift=data.get("answer_shift"), weight_shift=data.get("weight_shift"),
                   seed=data.get("seed"))


def _arm_v1(label: str, old: dict) -> dict:
    """A schema-1 model entry: ``eval.results``, ``train.result``, ``shift.{text,parameters}``, the mix
    parameters at top level."""
    shift = old.get("shift") or {}
    params = {k: old[k] for k in ("mix_ratio", "sample_size") if k in old}
    return {"recipe": "seed" if label == "seed" and "train" not in old else "mix", "params": params,
            "eval": {"dir": old["eval"]["dir"], "result": old["eval"].get("results", {})},
            "train": old.get("train"), "answer_shift": shift.get("text"), "weight_shift": shift.get("parameters")}


@dataclass
class Manifest:
    """What ``sdft run`` made: the seed model, the distillation, and one :class:`Arm` per model."""

    name: str
    model: str
    data: str
    task: str
    arms: dict[str, Arm] = field(default_factory=dict)
    distill: StageRecord | None = None
    system_prompt: dict[str, str] = field(default_factory=dict)  # each stage's --system-prompt

    @property
    def seed(self) -> Arm:
        return self.arms["seed"]

    def trained(self) -> list[Arm]:
        return [arm for arm in self.arms.values() if arm.trained]

    @property
    def has_other_arms(self) -> bool:
        """Whether models of arms other than vanilla / SDFT / their mixtures are in the comparison (the report
        then adds what only such runs need: each arm against vanilla, costs, an all-arms plot)."""
        return any(arm.recipe not in ("seed", "mix") for arm in self.arms.values())

    def to_json(self) -> dict:
        return {"schema": SCHEMA, "name": self.name, "model": self.model, "data": self.data, "task": self.task,
                "system_prompt": self.system_prompt, "distill": self.distill.to_json() if self.distill else None,
                "models": {label: arm.to_json() for label, arm in self.arms.items()}}

    @classmethod
    def from_json(cls, data: dict) -> "Manifest":
        distill = data.get("distill")
        if distill and "stats" in distill:  # schema 1
            distill = {"dir": distill["dir"], "result": distill["stats"]}
        return cls(name=data["name"], model=data["model"], data=data["data"], task=data["task"],
                   distill=StageRecord(**distill) if distill else None,
                   system_prompt=data.get("system_prompt", {}),  # absent before the option existed
                   arms={label: Arm.from_json(label, m) for label, m in data.get("models", {}).items()})

    def write(self, run_dir: Path) -> Path:
        path = Path(run_dir) / MANIFEST
        write_json(path, self.to_json())
        return path

    @classmethod
    def read(cls, run_dir: Path) -> "Manifest":
        """A damaged manifest (cut short by a full disk, edited by hand) is one DataError naming it."""
        path = Path(run_dir) / MANIFEST
        userfiles.check_regular(path)
        try:
            return cls.from_json(userfiles.loads_json(path.read_text(encoding="utf-8")))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:  # JSON and Unicode errors are ValueErrors
            what = f"missing key {exc}" if isinstance(exc, KeyError) else str(exc).splitlines()[0][:200]
            raise DataError(path, f"damaged, not a manifest sdft can read ({what}); rerunning `sdft run` with "
                                  "this run's config writes it again") from None


# ---------------------------------------------------------------- the resume policy, for every stage

def read_stage(folder: Path) -> dict | None:
    try:
        return json.loads((Path(folder) / STAGE).read_text())
    except (OSError, ValueError):
        return None


def claim_stage(folder: Path, key: str, settings: dict, *, overwrite: bool = False) -> None:
    """Start or resume a stage in ``folder``: refuse when the folder holds work of another key (naming the
    settings that differ), unless ``overwrite``; then record this key. Same key: the stage resumes."""
    settings = _recordable(settings)
    if not overwrite:
        refuse_other_key(Path(folder) / STAGE, read_stage(folder), key, settings)
    write_json(Path(folder) / STAGE, {"key": key, "settings": settings})


def refuse_other_key(where: Path, before: dict | None, key: str, settings: dict) -> None:
    """The resume check shared by every stage: work recorded under another key is never continued."""
    if before and before.get("key") not in (None, key):
        changed = changed_settings(before.get("settings", {}), settings) or ["inputs"]
        raise ConfigError(f"{where.parent} holds work done with different settings; these differ: "
                          f"{', '.join(changed)} (see {where}); rerun with the same settings, use another "
                          "output folder, or start over")


def finish_stage(folder: Path, key: str, settings: dict, result: dict, seconds: float | None = None) -> None:
    """Mark the stage in ``folder`` done: a rerun with the same key returns ``result`` without work.
    ``seconds``: the wall time of the session that finished it (``sdft run --dry-run`` estimates from it)."""
    timing = {} if seconds is None else {"seconds": round(seconds, 2)}
    write_json(Path(folder) / STAGE, {"key": key, "settings": _recordable(settings), "result": result, **timing})


def _recordable(settings: dict) -> dict:
    """Settings as a stage folder records them: a URL's query values and user info hidden (a judge
    ``https://...?api-key=...`` is a keyed setting; its key must not reach a file). The key is hashed from
    the settings as given, so two URLs that differ only there still get different keys."""
    return recordable(settings)


def finished_result(folder: Path, key: str | None = None) -> dict | None:
    """The recorded result of a finished stage (of ``key`` when given; records older than keys match)."""
    record = read_stage(folder)
    if not record or "result" not in record:
        return None
    if key is not None and record.get("key") not in (None, key):
        return None
    return record["result"]
