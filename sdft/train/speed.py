"""Training throughput settings for ``sdft train``: precision defaults, the response-only LM head, and
``torch.compile``. Profile and measurements: docs/performance.md.

Each choice here changes speed, not what is learned (within bf16 rounding where bf16 is chosen); each is
recorded in ``train.json`` (``training.precision``, ``training.base_weights_dtype``, ``training.compiled``,
and the config's ``response_only_logits``).
"""

from __future__ import annotations

import contextlib

from sdft.base import hardware


def auto_precision(cuda: bool) -> str:
    """``--precision auto``: bf16 (or fp16 on old GPUs) mixed precision on a GPU, bf16 on CPUs with native bf16
    matrix units measured faster than fp32 (``sdft.base.hardware``), fp32 on other CPUs."""
    import torch

    if cuda:
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if hardware.cpu_prefers_bf16() else "fp32"


def base_dtype(method: str, precision: str) -> str:
    """Storage dtype of the model's weights. Under LoRA the base is frozen, so storing it in bf16 loses nothing
    that autocast would not round away anyway, and saves autocast's copy of every weight in every forward and
    backward (the largest single cost of bf16 autocast over fp32 weights on a CPU). Trainable weights (LoRA
    adapters; everything under --method full) stay fp32 so that small optimizer updates are not rounded away."""
    if method == "qlora":
        return "nf4"  # bitsandbytes 4-bit, loaded by sdft.train.setup.load_model itself
    return "bfloat16" if method == "lora" and precision == "bf16" else "float32"


@contextlib.contextmanager
def response_only_lm_head(enabled: bool = True):
    """Project only the positions that carry a label through the LM head, on every device.

    TRL's fused LM head (``trl.trainer.utils.add_fused_lm_head``) computes the log-probabilities in vocabulary
    chunks without materializing the logits, but off Triton devices it scores every position, prompt and
    padding included, so that the tile shapes stay fixed for compilers that recompile per shape. In eager mode
    on a CPU the fixed shapes buy nothing, and the prompt positions are often half of a batch: selecting the
    label positions (what TRL does on CUDA) gives the same loss and gradients for less work. TRL decides this
    with its module-level ``_use_triton``; if a TRL version no longer has it, training is unchanged, only
    slower.
    """
    import trl.trainer.utils as trl_utils

    original = getattr(trl_utils, "_use_triton", None)
    if not enabled or original is None:
        yield
        return
    trl_utils._use_triton = lambda device: True  # "compact": score only the positions whose label is kept
    try:
        yield
    finally:
        trl_utils._use_triton = original


def sft_trainer_class(response_only_logits: bool):
    """TRL's ``SFTTrainer``, its loss computed under ``response_only_lm_head`` when asked: the choice travels
    with the trainer, so every caller of ``trainer.train()`` (sdft train, benchmarks, tests) gets it."""
    from trl import SFTTrainer

    if not response_only_logits:
        return SFTTrainer

    class ResponseOnlySFTTrainer(SFTTrainer):
        def compute_loss(self, *args, **kwargs):
            with response_only_lm_head():
                return super().compute_loss(*args, **kwargs)

    return ResponseOnlySFTTrainer


# Below these, compiling (about a minute on 2 CPU cores) costs more than it saves.
COMPILE_MIN_PARAMETERS = 10_000_000
COMPILE_MIN_EXAMPLES = 64


def has_cpu_compiler() -> bool:
    """Whether inductor finds the C++ compiler it builds CPU kernels with (``$CXX``, g++ or clang++)."""
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        return bool(get_cpp_compiler())
    except Exception:  # any failure to find one means: do not compile
        return False


def should_compile(setting: str, cuda: bool, parameters: int, examples: int) -> bool:
    """``--compile auto``: on a CPU with a C++ compiler, when the run is long enough to pay the compile time
    back. Off on GPUs unless asked for: not measured there."""
    if setting != "auto":
        return setting == "on"
    return (not cuda and parameters >= COMPILE_MIN_PARAMETERS and examples >= COMPILE_MIN_EXAMPLES
            and has_cpu_compiler())


def compile_body(model) -> bool:
    """``torch.compile`` each decoder layer of the transformer body, in place: PyTorch's regional compilation.
    The layers share one code path, so the first one's compiled graph serves them all and compile time does
    not grow with depth. What it buys on a CPU is fusion of the element-wise work (RMSNorm, rotary embedding,
    SiLU gate, residual adds, casts) that bf16 matmuls leave dominant. Not the LM head: its input size changes
    with every batch's response length. Sequence lengths vary, so shapes are dynamic from the start.
    Returns False (nothing compiled) for a model without a list of identical blocks."""
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) > 1 and len({type(m) for m in module}) == 1:
            for block in module:
                block.compile(dynamic=True)
            return True
    return False
