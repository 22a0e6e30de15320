"""The acceptance run: every arm through `sdft run` on the embedded SmolLM2-135M with small limits."""

import pytest
import yaml

from sdft.experiment.pipeline import load_run_config, run

ARMS = ["vanilla", "sdft", "onpolicy", "replay", "interp"]


@pytest.mark.heavy
def test_every_arm_on_the_embedded_model(shared_data, tmp_path):
    config = {
        "name": "arms-embedded", "out_root": str(tmp_path / "runs"), "model": "smollm2-135m-instruct",
        "data": str(shared_data / "openfunction_train.json"), "task": "function_call", "arms": ARMS,
        "distill": {"limit": 8, "batch_size": 8, "max_new_tokens": 48, "progress": False},
        "train": {"max_steps": 2, "batch_size": 2, "grad_accum": 2, "max_length": 384, "learning_rate": 5e-4,
                  "lr_scheduler": "constant"},
        "replay": {"data": str(shared_data / "alpaca_train.json"), "ratio": 0.25, "source": "seed",
                   "max_new_tokens": 256},
        "onpolicy": {"max_new_tokens": 32},
        "interp": {"alphas": [0.5]},
        "eval": {"tasks": ["openfunctions", "advbench"], "limit": 4, "max_new_tokens": 32, "batch_size": 8,
                 "data": [f"openfunctions={shared_data / 'openfunction_test.json'}"], "progress": False},
    }
    path = tmp_path / "arms.yaml"
    path.write_text(yaml.safe_dump(config))
    manifest = run(load_run_config(path), log=lambda line: None)
    labels = ["seed", "vanilla", "sdft", "onpolicy", "replay", "interp-a0.5"]
    assert list(manifest.arms) == labels
    report = (tmp_path / "runs" / "arms-embedded" / "report.md").read_text()
    for label in labels:
        assert f"| {label} |" in report
    onpolicy = manifest.arms["onpolicy"].train.result
    assert onpolicy["onpolicy"]["generated_tokens"] > 0 and onpolicy["parameter_shift_l2"] > 0
