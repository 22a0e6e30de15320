"""The report's cost table: what each arm spent to train, from the training records the run saved.

Arms differ in compute, not only in results: on-policy distillation samples an answer per example per
step, replay trains on more examples, SDFT pays for distillation once, interpolation costs seconds on top of
vanilla. A ranking of arms means little without this table beside it.
"""

from __future__ import annotations

from sdft.base.layout import Arm, Manifest

HEADER = ["model", "arm", "training examples", "steps", "train time (s)", "s/step", "tokens generated while training",
          "also"]


def _arm_name(arm: Arm) -> str:
    if arm.recipe != "mix":
        return arm.recipe
    return "vanilla" if not arm.mix_ratio else "sdft" if arm.mix_ratio == 1 else "mix"


def cost_row(arm: Arm) -> list[str]:
    """One table row from a trained model's stage record (the ``train.json`` summary, or interp's record)."""
    result = arm.train.result or {}
    name = _arm_name(arm)
    if arm.recipe == "interp":
        return [arm.label, name, "–", "0", f"{result.get('seconds', 0):.1f}", "–", "–",
                f"vanilla scaled by {arm.params.get('alpha')} (vanilla's training not repeated)"]
    data, training = result.get("data", {}), result.get("training", {})
    steps, seconds = training.get("steps") or 0, result.get("wall_time_s")
    examples = f"{data.get('task_examples', data.get('examples', '?'))}"
    if data.get("replay_examples"):
        examples += f" + {data['replay_examples']} replay"
    generated = result.get("onpolicy", {}).get("generated_tokens")
    notes = []
    if arm.recipe == "mix" and arm.mix_ratio or arm.recipe == "sdft+replay":
        notes.append("+ distillation (shared, caption)")
    if arm.params.get("distill"):  # sdft-guard, self-answer
        notes.append("+ its own distillation: rewrites and the seed's own answers (distillation section)")
    if (data.get("replay") or {}).get("source") == "seed":
        notes.append("+ seed answers to the replay prompts (cached, once)")
    per_step = f"{seconds / steps:.2f}" if seconds and steps else "–"
    return [arm.label, name, examples, str(steps), "–" if seconds is None else f"{seconds:.1f}", per_step,
            "–" if generated is None else str(generated), "; ".join(notes)]


def cost_table(manifest: Manifest) -> tuple[list[list[str]], str]:
    """The rows (one per trained model) and the caption."""
    rows = [cost_row(arm) for arm in manifest.trained()]
    stats = manifest.distill.result if manifest.distill else {}
    distill = (f" Distillation (shared by the rewrite arms) generated {stats.get('completion_tokens', '?')} tokens "
               f"in {stats.get('generation_seconds', '?')} s." if stats else "")
    caption = ("Wall time of each training stage on this run's machine, model loading included (a resumed stage "
               "counts only its last session), and for on-policy distillation the answer tokens the student "
               "sampled." + distill)
    return rows, caption
