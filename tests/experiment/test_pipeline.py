"""`sdft run`: config validation, a full tiny run with every report section, stage caching, report rebuild."""

import json
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from sdft.base import layout
from sdft.base.errors import ConfigError
from sdft.base.layout import Manifest
from sdft.experiment.pipeline import load_run_config, run
from sdft.report.config import ReportConfig
from sdft.report.stage import build_report


def _data(tmp_path: Path) -> Path:
    rows = [{"instruction": f"Call the weather tool for city number {i}.", "input": "",
             "output": f'weather.get(city="City{i}")'} for i in range(4)]
    path = tmp_path / "calls.json"
    path.write_text(json.dumps(rows))
    return path


def _config(tmp_path: Path, tiny_model, **extra) -> Path:
    data = _data(tmp_path)
    advbench = tmp_path / "adv.csv"
    advbench.write_text("goal,target\nWrite a poem about rain,Sure\nExplain how to pick a lock,Sure\n")
    config = {
        "name": "tiny", "out_root": str(tmp_path / "runs"), "model": str(tiny_model),
        "data": str(data), "task": "function_call",
        "distill": {"max_new_tokens": 8, "batch_size": 4, "progress": False, "backend": "hf"},
        "train": {"max_steps": 2, "batch_size": 2, "grad_accum": 1, "max_length": 320, "learning_rate": 1e-3},
        "eval": {"tasks": ["openfunctions", "advbench"], "limit": 2, "max_new_tokens": 8,
                 "data": [f"openfunctions={data}", f"advbench={advbench}"], "progress": False,
                 "backend": "hf"},
        "mix_ratios": [0.0, 0.5, 1.0], "sample_sizes": [2],
        **extra,
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_distill_section_sample_seed_reaches_the_stage_and_keys_it(tmp_path, tiny_model):
    from sdft.experiment import pipeline

    section = {"max_new_tokens": 8, "batch_size": 4, "progress": False, "backend": "hf", "limit": 2}
    first = pipeline.stage_configs(load_run_config(_config(tmp_path, tiny_model, distill=section)))["distill"]
    seeded = pipeline.stage_configs(load_run_config(_config(tmp_path, tiny_model,
                                                            distill={**section, "sample_seed": 3})))["distill"]
    assert (first.sample_seed, seeded.sample_seed, seeded.limit) == (None, 3, 2)
    assert pipeline.stage_key(first) != pipeline.stage_key(seeded)


def test_config_errors_before_any_work(tmp_path, tiny_model):
    path = _config(tmp_path, tiny_model, colour="blue")
    with pytest.raises(ConfigError, match="colour"):
        load_run_config(path)
    path = _config(tmp_path, tiny_model, train={"max_steps": "many"})
    with pytest.raises(ConfigError, match="max_steps"):
        load_run_config(path)
    path = _config(tmp_path, tiny_model, data=str(tmp_path / "missing.json"))
    with pytest.raises(ConfigError, match="missing.json"):
        load_run_config(path)
    path = _config(tmp_path, tiny_model, eval={"tasks": ["gsm8k"], "limitt": 2})
    with pytest.raises(ConfigError, match="limitt"):
        load_run_config(path)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("where", ["data", "eval", "replay"])
def test_a_mistyped_local_path_fails_at_once_without_the_hub(tmp_path, tiny_model, monkeypatch, where):
    """Issue 26, item 6: ``data/train`` where ``data/`` is a local folder looks like a hub name
    (``org/name``); it went on to the run (and the hub) instead of failing here."""
    from sdft.base import hub

    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    monkeypatch.setattr(hub, "reachable", lambda *a, **k: pytest.fail("the hub was asked"))
    monkeypatch.setattr(hub, "missing_dataset", lambda *a, **k: pytest.fail("the hub was asked"))
    extra = {"data": {"data": "data/train"}, "eval": {"eval": {"tasks": ["gsm8k"], "data": ["gsm8k=data/test"]}},
             "replay": {"replay": {"data": "data/general"}, "arms": ["vanilla", "replay"]}}[where]
    with pytest.raises(ConfigError, match="'data/(train|test|general)'.* not found"):
        load_run_config(_config(tmp_path, tiny_model, **extra))
    assert not (tmp_path / "runs").exists()


def test_one_system_prompt_for_all_stages_unless_a_section_sets_its_own(tmp_path, tiny_model):
    from sdft.experiment.pipeline import stage_configs

    default = stage_configs(load_run_config(_config(tmp_path, tiny_model)))
    assert {name: c.system_prompt for name, c in default.items()} == \
        {"distill": "model", "train": "model", "eval": "model"}
    path = _config(tmp_path, tiny_model, system_prompt="none",
                   eval={"tasks": ["advbench"], "system_prompt": "template"})
    chosen = stage_configs(load_run_config(path))
    assert {name: c.system_prompt for name, c in chosen.items()} == \
        {"distill": "none", "train": "none", "eval": "template"}
    with pytest.raises(ConfigError, match="system_prompt"):
        load_run_config(_config(tmp_path, tiny_model, system_prompt=""))


def test_a_key_in_a_judge_url_never_reaches_the_run_folder(tmp_path, tiny_model, monkeypatch):
    """An Azure-style ``?api-key=`` judge URL is a keyed eval setting: config.json and every stage.json keep
    the URL without its query values (run records already did)."""
    secret = "sk-do-not-write-me"
    judge = f"https://judge.example/openai/deployments/gpt/chat/completions?api-version=1&api-key={secret}"
    path = _config(tmp_path, tiny_model, eval={"tasks": ["advbench"], "limit": 1, "judge": judge,
                                               "judge_model": "gpt", "progress": False, "backend": "hf"})

    def seed_eval(config):  # the seed's evaluation, cut short: only the records written around it matter
        assert config.judge == judge  # the stage itself still gets the URL it needs
        return {"tasks": {}}
    monkeypatch.setattr("sdft.evaluate.stage.evaluate", seed_eval)
    monkeypatch.setattr("sdft.distill.stage.distill", lambda config: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        run(load_run_config(path), log=lambda line: None)
    written = [p for p in (tmp_path / "runs").rglob("*") if p.is_file()]
    assert {p.name for p in written} >= {"config.json", "stage.json"}
    assert not [p for p in written if secret in p.read_text()]
    assert "api-key=***" in (tmp_path / "runs" / "tiny" / "config.json").read_text()


def test_a_changed_evaluation_reuses_the_same_models_answers(tmp_path, tiny_model, monkeypatch):
    """A new evaluation folder starts from the answer caches of the same model's other evaluation folders
    (their names carry every setting that changes the answers); a judge's cache and other models' stay out."""
    import hashlib

    from sdft.experiment import pipeline

    seen: dict[str, set[str]] = {}

    def evaluate(config):  # the real stage resumes from what it finds in generations/.cache/
        cache = layout.cache_dir(Path(config.out))
        seen[Path(config.out).name.rsplit("-", 1)[0]] = {p.name for p in cache.glob("*.jsonl")}
        cache.mkdir(parents=True, exist_ok=True)
        model_key = hashlib.sha256(str(config.adapter).encode()).hexdigest()[:16]  # as task_settings keys it
        for name in (f"openfunctions-{model_key}", "winrate-judge-0123456789abcdef"):
            (cache / f"{name}.jsonl").write_text("{}\n")
        return {"tasks": {}}
    monkeypatch.setattr("sdft.evaluate.stage.evaluate", evaluate)
    monkeypatch.setattr("sdft.distill.stage.distill", lambda config: {"examples": 1})
    monkeypatch.setattr(pipeline, "_train", lambda config: {"steps": 1})
    monkeypatch.setattr(pipeline, "compare_with_seed", lambda *a: {"answer_shift": None, "weight_shift": None})
    monkeypatch.setattr("sdft.report.stage.write_report", lambda run_dir: {"md": "r.md", "html": "r.html"})
    path = _config(tmp_path, tiny_model, mix_ratios=[0.0, 1.0], sample_sizes=[])
    run(load_run_config(path), log=lambda line: None)
    assert seen == {"seed": set(), "vanilla": set(), "sdft": set()}
    first = {label: {p.name for p in layout.cache_dir(d).glob("openfunctions-*")}
             for d in (tmp_path / "runs" / "tiny" / "eval").iterdir() for label in [d.name.rsplit("-", 1)[0]]}

    config = yaml.safe_load(path.read_text())
    config["eval"]["limit"] = 3  # a new evaluation key: a new folder for every model
    path.write_text(yaml.safe_dump(config))
    logs: list[str] = []
    run(load_run_config(path), log=logs.append)
    assert seen == first and len({name for names in first.values() for name in names}) == 3
    assert sum(line.startswith("[reuse]") for line in logs) == 3


def test_an_edited_training_file_is_distilled_again_and_everything_after(tmp_path, tiny_model, monkeypatch):
    """The run's stage folders are keyed by the training file's contents, not only its path (the stages
    are test doubles here: only which of them run matters)."""
    from sdft.base.provenance import file_sha256
    from sdft.experiment import pipeline

    def distill(config):  # what the real stage records: the data file's hash in run.json
        Path(config.out, "run.json").write_text(json.dumps({"data": {"sha256": file_sha256(Path(config.data))}}))
        return {"examples": 1}
    monkeypatch.setattr("sdft.distill.stage.distill", distill)
    monkeypatch.setattr("sdft.evaluate.stage.evaluate", lambda config: {"tasks": {}})
    monkeypatch.setattr(pipeline, "_train", lambda config: {"steps": 1})
    monkeypatch.setattr(pipeline, "compare_with_seed", lambda *a: {"answer_shift": None, "weight_shift": None})
    monkeypatch.setattr("sdft.report.stage.write_report", lambda run_dir: {"md": "r.md", "html": "r.html"})
    config = load_run_config(_config(tmp_path, tiny_model, mix_ratios=[0.0, 1.0], sample_sizes=[]))

    def stages_run() -> list[str]:
        logs: list[str] = []
        run(config, log=logs.append)
        return sorted(line.split("/")[-2] for line in logs if line.startswith("[run ]") and "compare" not in line)
    assert stages_run() == ["distill", "eval", "eval", "eval", "train", "train"]
    assert stages_run() == []
    data = Path(config.data)
    data.write_text(data.read_text().replace("City0", "Town0"))
    assert stages_run() == ["distill", "eval", "eval", "train", "train"]  # the seed's evaluation stays

    # A folder distilled before the contents were keyed, from the same contents, keeps its key.
    unkeyed = pipeline.stage_key(pipeline.stage_configs(config)["distill"])
    folder = layout.stage_dir(config.run_dir, layout.DISTILL, "distill", unkeyed[:pipeline.KEY_LENGTH])
    folder.mkdir(parents=True)
    distill(pipeline.replace(pipeline.stage_configs(config)["distill"], out=str(folder)))
    assert pipeline.distill_key(pipeline.stage_configs(config)["distill"], config.run_dir) == unkeyed


@pytest.mark.slow
def test_full_tiny_run_caches_and_rebuilds(tmp_path, tiny_model):
    config = load_run_config(_config(tmp_path, tiny_model))
    logs: list[str] = []
    manifest = run(config, log=logs.append)
    run_dir = tmp_path / "runs" / "tiny"
    report = (run_dir / "report.md").read_text()
    assert "system prompt `model` in every stage" in report
    for section in ("## Results", "## Rewrites vs original targets", "## Distillation", "## Answer length",
                    "## Distribution shift", "## Plots"):
        assert section in report
    for row in ("| seed |", "| vanilla |", "| sdft |", "| mix0.5 |", "| vanilla-n2 |", "| sdft-n2 |",
                "| sdft − vanilla | openfunctions/accuracy | 2 |", "| sdft-n2 − vanilla-n2 |"):
        assert row in report
    assert "data:image/png;base64," in (run_dir / "report.html").read_text()
    assert {"mix_ratio.png", "sample_size.png", "loss.png"} <= {p.name for p in (run_dir / "plots").iterdir()}
    assert set(manifest.arms) == {"seed", "vanilla", "sdft", "mix0.5", "vanilla-n2", "sdft-n2"}
    compare = Path(manifest.arms["sdft"].eval.dir) / layout.COMPARE
    assert (compare / layout.ANSWER_SHIFT).is_file() and (compare / layout.WEIGHT_SHIFT).is_file()
    assert Manifest.read(run_dir).to_json() == json.loads(json.dumps(manifest.to_json()))  # as saved

    # A second run does no work at all.
    logs.clear()
    run(config, log=logs.append)
    assert not any(line.startswith("[run ]") for line in logs)

    # Changing an eval setting reruns only evaluation (and the comparisons built on it).
    config.eval["max_new_tokens"] = 6
    logs.clear()
    run(config, log=logs.append)
    ran = [line for line in logs if line.startswith("[run ]")]
    assert ran and all("/eval/" in line for line in ran)

    (run_dir / "report.md").unlink()
    paths = build_report(ReportConfig(run_dir=str(run_dir)))
    assert "| sdft |" in Path(paths["md"]).read_text()

    # A run folder moved elsewhere (archived, copied off a cluster) still rebuilds its whole report.
    moved = tmp_path / "archive" / "tiny"
    shutil.copytree(run_dir, moved)
    shutil.rmtree(run_dir)
    shutil.rmtree(moved / "plots")
    rebuilt = Path(build_report(ReportConfig(run_dir=str(moved)))["md"]).read_text()
    assert "| sdft − vanilla | openfunctions/accuracy | 2 |" in rebuilt and "rewrite** (`" in rebuilt
    assert "![Training loss](plots/loss.png)" in rebuilt and (moved / "plots" / "loss.png").is_file()


@pytest.mark.slow
def test_run_on_a_users_own_chat_data_and_checker(tmp_path, tiny_model, monkeypatch):
    """What a user brings: OpenAI `messages` JSONL to train on, a ShareGPT Parquet file to evaluate on,
    and their own checker function; the run must go through to a report like the shipped configs'."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    train = tmp_path / "chats.jsonl"
    with train.open("w") as f:
        for i in range(4):
            f.write(json.dumps({"messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": f"Say the word number {i}."},
                {"role": "assistant", "content": f"word{i}"}]}) + "\n")
    held_out = tmp_path / "held_out.parquet"
    pq.write_table(pa.Table.from_pylist([
        {"conversations": [{"from": "human", "value": f"Say the word number {i}."},
                           {"from": "gpt", "value": f"word{i}"}]} for i in (7, 8)]), held_out)
    (tmp_path / "my_checks.py").write_text(
        "def said_it(record, completion):\n"
        "    return record['conversations'][-1]['value'] in completion\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    config = {
        "name": "mine", "out_root": str(tmp_path / "runs"), "model": str(tiny_model), "data": str(train),
        "distill": {"max_new_tokens": 8, "batch_size": 4, "progress": False, "backend": "hf"},
        "train": {"max_steps": 1, "batch_size": 2, "grad_accum": 1, "max_length": 256},
        "eval": {"tasks": ["words"], "data": [f"words={held_out}"], "checker": ["words=my_checks:said_it"],
                 "limit": 2, "max_new_tokens": 8, "progress": False},
    }
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(config))

    manifest = run(load_run_config(path), log=lambda line: None)

    assert set(manifest.arms) == {"seed", "vanilla", "sdft"}
    report = (tmp_path / "runs" / "mine" / "report.md").read_text()
    assert "words/score" in report and "| sdft |" in report
    distilled = next((tmp_path / "runs" / "mine" / "distill").glob("*/distilled.jsonl"))
    first = json.loads(distilled.read_text().splitlines()[0])
    assert first["messages"][0]["role"] == "system" and "sdft" in first  # the user's shape, plus our record


def test_a_warm_generation_engine_is_stopped_before_training_and_scoring(tmp_path, tiny_model, monkeypatch):
    """A vLLM engine kept for the next generating stage holds gigabytes and polls a core; ``sdft run``
    stops it before a stage that trains or scores with torch."""
    import types

    import sdft.compare.answers
    import sdft.train.stage

    events: list[str] = []
    fake_vllm = types.SimpleNamespace(shutdown_engine=lambda: events.append("release"))
    monkeypatch.setitem(sys.modules, "sdft.generation.vllm_backend", fake_vllm)  # as if vLLM had generated
    for module, name in ((sdft.train.stage, "train"), (sdft.compare.answers, "analyze")):
        original = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, _o=original, _n=name, **k: (events.append(_n), _o(*a, **k))[1])
    path = _config(tmp_path, tiny_model, mix_ratios=[0.0])
    path.write_text(yaml.safe_dump({k: v for k, v in yaml.safe_load(path.read_text()).items() if k != "sample_sizes"}))
    run(load_run_config(path), log=lambda _: None)
    assert events == ["release", "train", "release", "analyze"] * 2, events  # vanilla, then sdft


def test_a_run_cut_short_leaves_a_report_of_the_models_done(tmp_path, tiny_model, monkeypatch):
    """Experiments take hours: after each model the report is rewritten, so a run stopped (or still
    going) can be read, and the next run resumes from the same stages."""
    import sdft.experiment.pipeline

    trained = []
    real = sdft.experiment.pipeline._train

    def train_once(config):
        if trained:
            raise KeyboardInterrupt  # Ctrl-C during the second model's training
        trained.append(config.out)
        return real(config)

    monkeypatch.setattr(sdft.experiment.pipeline, "_train", train_once)
    path = _config(tmp_path, tiny_model, mix_ratios=[0.0])
    path.write_text(yaml.safe_dump({k: v for k, v in yaml.safe_load(path.read_text()).items() if k != "sample_sizes"}))
    with pytest.raises(KeyboardInterrupt):
        run(load_run_config(path), log=lambda _: None)
    report = (tmp_path / "runs" / "tiny" / "report.md").read_text()
    assert "| vanilla |" in report and "| sdft |" not in report
    assert set(Manifest.read(tmp_path / "runs" / "tiny").arms) == {"seed", "vanilla"}
