"""What ``sdft train`` shows and leaves besides the weights: progress lines, merged full weights (``--merge``),
the summary it prints."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from sdft.models import resolve


def progress_callback(every: int, total: int, bar: bool | None = None):
    """The Trainer callback that shows progress: a tqdm bar on a terminal (steps, loss, tokens/s, ETA), and
    one line every ``every`` steps where stdout is not a terminal (logs, ``sdft run ... > log``), as before
    the bar; ``bar`` None: a bar when stderr is a terminal."""
    from transformers import TrainerCallback

    show_bar = sys.stderr.isatty() if bar is None else bar
    show_lines = not (show_bar and sys.stdout.isatty())  # the bar says it all on a terminal

    class Progress(TrainerCallback):
        """The wall time of this session's training (for tokens/s), the bar and the progress lines, on the main
        process only; the Trainer's own printer would print every logged step as a dict."""

        def __init__(self):
            self.began = self.ended = None
            self.tokens = 0.0
            self.first_step = 0
            self.bar = None

        def on_train_begin(self, args, state, control, **kwargs):
            self.began = time.perf_counter()
            self.first_step = state.global_step  # a resumed run starts past 0
            if show_bar and state.is_world_process_zero:
                from tqdm.auto import tqdm

                self.bar = tqdm(total=total, initial=state.global_step, desc="training", unit="step",
                                dynamic_ncols=True)

        def on_step_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.update(state.global_step - self.bar.n)

        def on_train_end(self, args, state, control, **kwargs):
            self.ended = time.perf_counter()
            if self.bar is not None:
                self.bar.close()

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            self.tokens = logs.get("num_tokens", self.tokens)
            if "loss" not in logs or not state.is_world_process_zero:
                return
            elapsed = max(time.perf_counter() - self.began, 1e-9)
            # TRL's SDFTTrainer (the onpolicy arm) logs no token count: show the time per step instead.
            speed = (f"{self.tokens / elapsed:.0f} tokens/s" if self.tokens
                     else f"{elapsed / max(state.global_step - self.first_step, 1):.1f} s/step")
            if self.bar is not None:
                self.bar.set_postfix_str(f"loss {logs['loss']:.4f}, lr {logs.get('learning_rate', 0):.2e}, {speed}")
            if show_lines and (state.global_step % every == 0 or state.global_step == total):
                print(f"step {state.global_step}/{total}  loss {logs['loss']:.4f}  "
                      f"lr {logs.get('learning_rate', 0):.2e}  {speed}", flush=True)

    return Progress()


def merge(config, trained, tokenizer, target: Path) -> str:
    """Full weights with the adapter folded in, loadable without peft, in the base checkpoint's dtype."""
    import torch
    from transformers import AutoConfig

    if config.method == "qlora" or trained.get_base_model().dtype != torch.float32:
        # A 4-bit or bf16 base would be merged lossily: fold the saved adapter into a full-precision copy instead.
        from peft import PeftModel

        base, _ = resolve.load_model_and_tokenizer(config.model, dtype="float32", device="cpu")
        trained = PeftModel.from_pretrained(base, config.out)
    merged = trained.merge_and_unload()
    declared = getattr(AutoConfig.from_pretrained(resolve.resolve_model(config.model)), "dtype", None)
    declared = getattr(torch, declared) if isinstance(declared, str) else declared
    if declared in (torch.bfloat16, torch.float16):  # trained in fp32; saved as compact as the base
        merged = merged.to(declared)
    merged.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return str(target)


def summarize(result: dict) -> str:
    if not result.get("main_process", True):
        return ""
    data, tr, tp = result["data"], result["training"], result["throughput"]
    mix = (f"{data['rewritten']} rewritten + {data['original']} original targets (mix ratio {data['mix_ratio']})"
           if data["distilled"] else f"{data['original']} original targets")
    if data.get("replay_examples"):
        replay = data["replay"]
        mix += f" + {data['replay_examples']} replay ({replay['source']}: {replay['path']}, ratio {replay['ratio']})"
    dropped = f", {data['dropped_too_long']} dropped (prompt >= max length)" if data["dropped_too_long"] else ""
    if data.get("dropped_empty_rewrite"):
        dropped += f", {data['dropped_empty_rewrite']} dropped (empty accepted rewrite)"
    first = result["loss"][0]["loss"] if result["loss"] else float("nan")
    lines = [f"trained {result['method']} on {data['examples']} examples: {mix}{dropped}",
             f"  {tr['steps']} steps ({tr['epochs']} epochs, batch {tr['global_batch']}, {tr['processes']} process(es)); "
             f"loss {first:.4f} -> {result['final_loss']:.4f}",
             f"  {tp['train_tokens_per_s'] or 0:.0f} train tokens/s, {padding_summary(tp)}, wall time "
             f"{result['wall_time_s']:.1f} s"]
    if "onpolicy" in result:
        cost = result["onpolicy"]
        lines.append(f"  on-policy: {cost['answers_sampled']} answers sampled, {cost['generated_tokens']} tokens "
                     f"generated (mean {cost['mean_answer_tokens'] or 0:.1f} per answer), teacher "
                     f"{cost['settings']['teacher_model_kind']}, loss {cost['settings']['distillation_mode']}")
    if "parameter_shift_l2" in result:
        lines.append(f"  parameter shift (L2 of B@A*scale): {result['parameter_shift_l2']:.4g}")
    lines.append(f"  saved: {result['out']} (train.json, loss.png)"
                 + (f"; merged weights: {result['outputs']['merged']}" if result["outputs"]["merged"] else ""))
    return "\n".join(lines)


def padding_summary(throughput: dict) -> str:
    if throughput.get("padding_free"):
        return f"padding-free (padded batches would have been {throughput['padding_efficiency']:.0%} efficient)"
    return f"padding efficiency {throughput['padding_efficiency']:.0%}"
