"""Answers reused between the evaluation folders of one model in an ``sdft run`` folder.

A changed evaluation setting gives every model a new ``RUN/eval/LABEL-KEY`` folder. Generating every task
again there would cost hours for a task added or a limit raised, so a new folder starts with copies of the
answer caches of the same model's other evaluation folders. That is safe when two things match: the cache
file's name (every setting that changes a task's answers, ``sdft.evaluate.run.task_settings``) and the folders'
stamps (:func:`answers_stamp`: what those names leave out).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from sdft.base import layout
from sdft.base.errors import SdftError
from sdft.base.provenance import folder_stamp
from sdft.models import resolve
from sdft.tasks import task_revisions


def start_from_siblings(folder: Path, config, log) -> None:
    """Start an evaluation folder from the same model's answers in its other evaluation folders: a changed
    evaluation setting (another task added, a limit raised) then generates only the answers whose settings
    changed, instead of every task's again. Only between folders with the same :func:`answers_stamp`."""
    stamp = answers_stamp(config)
    if stamp is None:
        return
    layout.write_answers_stamp(folder, stamp)
    copied = 0
    for cache in layout.sibling_answer_caches(folder, config.tasks, stamp):
        target = layout.cache_dir(folder) / cache.name
        if not target.exists():  # the newest folder's copy wins; any other holds the same answers
            shutil.copyfile(cache, target)
            copied += 1
    if copied:
        log(f"[reuse] {folder}: {copied} answer cache(s) from the same model's other evaluation folders")


def answers_stamp(config) -> dict | None:
    """What an evaluation's answers depend on beyond their cache names: the files of the model folder and of
    the adapter (a name or path can point to new weights: a re-provisioned alias, a retrained adapter), the
    engine's options, the batch size (batched padding can change greedy answers), the tasks' revisions and
    data folders. None (no reuse) for a remote server, whose weights cannot be seen from here."""
    if config.endpoint or config.backend == "openai":
        return None
    try:
        model = resolve.resolve_model(config.model)
    except SdftError:
        return None  # the stage itself reports it
    data = [entry.split("=", 1) for entry in config.data if "=" in entry]
    card = (layout.MODEL_CARD,)  # rewritten with the results after each evaluation; no weight changes with it
    return json.loads(json.dumps({  # JSON-plain, as it reads back from the stamp file
        "model": folder_stamp(model, skip=card),
        "adapter": folder_stamp(config.adapter, skip=card) if config.adapter and Path(config.adapter).is_dir()
        else None,
        "backend_option": sorted(config.backend_option), "batch_size": config.batch_size,
        "revisions": task_revisions(config.tasks),
        "data_folders": {name: folder_stamp(path) for name, path in data if Path(path).is_dir()},
    }))
