"""The ``sdft`` command: a thin layer that turns flags (and ``--config`` YAML) into a stage config.

Each subcommand names a stage module, its config dataclass and its stage function, imported only when that
subcommand runs (so ``sdft --help`` stays fast and never imports torch). The config's own module may define
``PRESETS`` (named sets of config values for ``--preset``); the stage module may define
``summarize(result) -> str`` and ``help_epilog() -> str`` (text after the flags in ``--help``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import signal
import sys
import threading

from sdft import __version__
from sdft.base import hub, provenance, runlock
from sdft.base.config import add_arguments, resolve
from sdft.base.errors import SdftError, environment_problem, path_problem

COMMANDS: dict[str, tuple[str, str, str, str]] = {
    "setup": ("sdft.models.resolve", "SetupConfig", "setup", "provision the embedded seed model (offline)"),
    "distill": ("sdft.distill.stage", "DistillConfig", "distill", "rewrite a dataset's responses with the seed model"),
    "train": ("sdft.train.stage", "TrainConfig", "train",
              "fine-tune: original or distilled targets, replay mix, or on-policy self-distillation"),
    "shift": ("sdft.compare.weights", "ShiftConfig", "parameter_shift", "L2 norm of the weight change per module"),
    "eval": ("sdft.evaluate.stage", "EvalConfig", "evaluate", "evaluate a model on benchmark tasks"),
    "analyze": ("sdft.compare.answers", "AnalyzeConfig", "analyze",
                "distribution shift between two evaluations, or the two item by item"),
    "run": ("sdft.experiment.pipeline", "RunCommand", "run_command", "whole experiment from one YAML config"),
    "archive": ("sdft.experiment.archive", "ArchiveConfig", "archive",
                "copy a run folder without model weights or answer text (to commit, share, or resume elsewhere)"),
    "report": ("sdft.report.stage", "ReportConfig", "build_report", "rebuild a run's report from saved results"),
    "stats": ("sdft.report.paired", "StatsConfig", "stats",
              "recompute a run's paired comparisons from its per-item score files alone"),
}


def _load(command: str):
    module_name, config_name, function_name, _ = COMMANDS[command]
    module = importlib.import_module(module_name)
    return module, getattr(module, config_name), getattr(module, function_name)


def _presets(config_cls: type) -> dict | None:
    return getattr(sys.modules[config_cls.__module__], "PRESETS", None)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sdft", description="Self-Distillation Fine-Tuning toolkit")
    parser.add_argument("--version", action="version", version=f"sdft {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, _, _, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            module, config_cls, _ = _load(name)
            if "config" not in {f.name for f in dataclasses.fields(config_cls)}:
                p.add_argument("--config", help="YAML file of settings; flags given here override it")
            if _presets(config_cls):
                p.add_argument("--preset", choices=sorted(_presets(config_cls)),
                               help="named set of reference values (applied before --config and flags)")
            add_arguments(p, config_cls)
            epilog = getattr(module, "help_epilog", None)  # e.g. the keys of `sdft run`'s YAML file
            if epilog:
                p.epilog, p.formatter_class = epilog(), argparse.RawDescriptionHelpFormatter
        p.add_argument("--offline", action="store_true", default=None,
                       help="never contact the Hugging Face hub (also: SDFT_OFFLINE=1 or HF_HUB_OFFLINE=1)")
    return parser


class Terminated(BaseException):
    """SIGTERM (``kill PID``, ``timeout``, a job scheduler, a CI cancellation), raised in the main thread and
    handled as Ctrl-C is: progress kept, engines stopped, one line. Python's default for SIGTERM ends the
    process at once, which left vLLM's engine processes running. Not a KeyboardInterrupt: vLLM 0.32 swallows
    those while an engine starts (``zmq_socket_ctx``), and sdft then waited 10 minutes for an engine that had
    been told to stop."""


def _on_sigterm(signum, frame):
    signal.signal(signum, signal.SIG_DFL)  # a second SIGTERM ends the process at once
    raise Terminated


def main(argv: list[str] | None = None) -> int:
    handled = threading.current_thread() is threading.main_thread() \
        and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # not when a caller has its own handler
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if handled else None
    try:
        return _main(argv)
    finally:
        if handled:
            signal.signal(signal.SIGTERM, previous)


def _main(argv: list[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if a in COMMANDS), None)
    parser = build_parser(command)
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 1
    hub.configure(offline=bool(args.offline))  # before any HF library is imported
    config = None
    try:
        module, config_cls, function = _load(args.command)
        has_own_config = "config" in {f.name for f in dataclasses.fields(config_cls)}
        config = resolve(config_cls, args, None if has_own_config else getattr(args, "config", None),
                         _presets(config_cls), getattr(args, "preset", None))
        with _out_claimed(config):
            result = function(config)
        summarize = getattr(module, "summarize", None)
        text = summarize(result) if summarize else ""
        if text:  # non-main processes of a multi-process run summarize nothing
            print(text)
    except SdftError as exc:
        print(f"sdft {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, Terminated) as exc:
        note = getattr(sys.modules.get(COMMANDS[args.command][0]), "interrupted", None)
        what = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"
        print(f"\nsdft {args.command}: {what}; "
              + (note(config) if note and config else "progress is saved, rerun the same command to resume."),
              file=sys.stderr, flush=True)
        _release_engines()
        return 128 + signal.SIGTERM if isinstance(exc, Terminated) else 130
    except Exception as exc:  # the machine's fault (disk full, read-only): one line; anything else is a bug
        if path_problem(exc):  # a path the file system cannot hold: the command's mistake
            print(f"sdft {args.command}: error: {path_problem(exc)}", file=sys.stderr)
            return 2
        problem = environment_problem(exc)
        if problem is None:
            raise
        print(f"sdft {args.command}: error: {problem}; work finished so far is saved: fix this and rerun the "
              "same command to resume", file=sys.stderr)
        return 2
    return 0


def _release_engines() -> None:
    """Stop a warm vLLM engine now, while this process can still wait for it (its processes also end by
    themselves when this one does: ``generation.engine_processes``)."""
    if "sdft.generation" in sys.modules:
        with contextlib.suppress(Exception):  # an engine broken by the interruption: it ends with us anyway
            sys.modules["sdft.generation"].release_engines()


def _out_claimed(config):
    """The run folder (``out``) checked and locked for this process before the stage starts."""
    out = getattr(config, "out", None)
    if not isinstance(out, str) or out in ("", "-"):
        return contextlib.nullcontext()
    return runlock.claim(out, provenance.command_line())


if __name__ == "__main__":
    raise SystemExit(main())
