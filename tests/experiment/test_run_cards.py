"""`sdft run` keeps a Hugging Face model card beside every model it trains or interpolates, rewritten with the
model's evaluation results (and the seed's) once it is evaluated, without costing the answer reuse between
that model's evaluation folders."""

import json
from pathlib import Path

import yaml

from sdft.experiment.pipeline import load_run_config, run


def _config(tmp_path: Path, tiny_model) -> Path:
    rows = [{"instruction": f"Call the weather tool for city number {i}.", "input": "",
             "output": f'weather.get(city="City{i}")'} for i in range(4)]
    data = tmp_path / "calls.json"
    data.write_text(json.dumps(rows))
    config = {"name": "cards", "out_root": str(tmp_path / "runs"), "model": str(tiny_model), "data": str(data),
              "task": "function_call", "distill": {"max_new_tokens": 8, "progress": False, "backend": "fake"},
              "train": {"max_steps": 1, "batch_size": 2, "grad_accum": 1, "max_length": 320},
              "eval": {"tasks": ["openfunctions"], "limit": 2, "max_new_tokens": 8, "data": [f"openfunctions={data}"],
                       "progress": False, "backend": "fake"},
              "arms": ["vanilla", "interp"], "interp": {"alphas": [0.5]}}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_each_models_card_gets_its_results_and_answers_are_still_reused(tmp_path, tiny_model):
    from huggingface_hub import ModelCard

    path = _config(tmp_path, tiny_model)
    manifest = run(load_run_config(path), log=lambda line: None)
    for label, tag in (("vanilla", "vanilla"), ("interp-a0.5", "interp")):
        arm = manifest.arms[label]
        model_card = ModelCard((Path(arm.train.dir) / "README.md").read_text())
        assert {"sdft", tag} <= set(model_card.data.tags) and model_card.data.datasets == ["calls.json"]
        [result] = model_card.data.eval_results
        value = arm.metrics()["openfunctions/accuracy"].value
        assert (result.dataset_name, result.metric_type, result.metric_value) == ("openfunctions", "accuracy", value)
        assert f"| openfunctions/accuracy | {value:.3f}" in model_card.text and "| seed model |" in model_card.text

    # A changed evaluation: every model's new folder starts from its earlier answers, although the cards
    # beside the adapters were rewritten after those answers were generated.
    config = yaml.safe_load(path.read_text())
    config["eval"]["limit"] = 1
    path.write_text(yaml.safe_dump(config))
    logs: list[str] = []
    run(load_run_config(path), log=logs.append)
    reused = [line for line in logs if line.startswith("[reuse]")]
    assert len(reused) == 3, logs
