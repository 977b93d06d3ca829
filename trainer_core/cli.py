"""Command line: `python -m trainer_core COMMAND ...`.

    train CONFIG.yaml [key=value ...] [--key value ...]   train (a job writing a run folder)
    data check NAME [NAME ...] [--key value ...]          validate datasets and print statistics

A mistake in a config or a dataset ends the command with exit code 2 and one clear message;
a traceback, when there is one, goes to the run's console.log, not to the screen.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from pathlib import Path

from trainer_core.errors import UserError

USAGE = __doc__


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    commands = {"train": cmd_train, "data": cmd_data}
    if command not in commands:
        print(f"error: unknown command '{command}'\n{USAGE}", file=sys.stderr)
        return 2
    try:
        return commands[command](rest)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _split_config_and_overrides(args: list[str]) -> tuple[str | None, list[str], set[str]]:
    """The first argument ending in .yaml/.yml is the config; bare flags (--dry-run) are
    returned apart; everything else is an override."""
    config, overrides, flags = None, [], set()
    for item in args:
        if config is None and item.endswith((".yaml", ".yml")) and "=" not in item:
            config = item
        elif item in ("--dry-run",):
            flags.add(item)
        else:
            overrides.append(item)
    return config, overrides, flags


def cmd_train(args: list[str]) -> int:
    from trainer_core.config import config_to_yaml, load_config

    if args and args[0] in ("-h", "--help"):
        print("usage: python -m trainer_core train CONFIG.yaml [key=value ...] [--key value ...] [--dry-run]")
        return 0
    config_path, overrides, flags = _split_config_and_overrides(args)
    cfg = load_config(config_path, overrides)
    if "--dry-run" in flags:
        print(config_to_yaml(cfg), end="")
        return 0

    from trainer_core import runs
    from trainer_core.train import prepare_run_dir, run_training

    _quiet_libraries()
    run_dir = prepare_run_dir(cfg)
    console = None
    if os.environ.get("QIHUANG_CONSOLE_REDIRECTED") != "1" and os.environ.get("RANK", "0") == "0":
        console = runs.tee_console(run_dir)
    print(f"Run folder: {run_dir}")
    try:
        return run_training(cfg, argv=[sys.executable, "-m", "trainer_core", "train", *args], log=_log)
    except UserError:
        raise
    except BaseException as exc:  # noqa: BLE001 - reported, not swallowed: status.json and exit code
        _report_crash(exc, console, run_dir)
        return 130 if isinstance(exc, KeyboardInterrupt) else 1


def _report_crash(exc: BaseException, console, run_dir: Path) -> None:
    """The traceback goes to console.log; the screen gets the one-sentence reason."""
    from trainer_core.runs import read_status

    trace = "".join(traceback.format_exception(exc))
    if console is not None:
        console.write(trace)
        console.flush()
        sys.__stderr__.write(f"error: {read_status(run_dir).get('error') or exc}\n"
                             f"(traceback in {run_dir / 'console.log'})\n")
    else:
        sys.stderr.write(trace)


def _log(message: str) -> None:
    print(message, flush=True)


def _quiet_libraries() -> None:
    """Keep the console readable: library chatter below warnings is noise to a user."""
    import logging
    import warnings

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # bitsandbytes asks the (unreachable) hub for an optional CPU kernel and warns when it fails.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # skips DeepSpeed's "no GPU found" warning
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_warning()


def cmd_data(args: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer_core data check",
                                     description="Validate datasets and print their statistics.")
    parser.add_argument("action", choices=["check"])
    parser.add_argument("names", nargs="+", help="dataset names from dataset_info.json")
    parser.add_argument("--dataset_dir", default=None)
    parser.add_argument("--stage", default=None, choices=["sft", "pt"])
    parser.add_argument("--cutoff_len", type=int, default=None)
    parser.add_argument("--model_name_or_path", default=None)
    parser.add_argument("--template", default=None)
    parser.add_argument("--config", default=None, help="take the settings above from a run config")
    parser.add_argument("--no-tokens", action="store_true", help="skip token statistics (no tokenizer load)")
    opts = parser.parse_args(args)

    from trainer_core.config import load_config
    from trainer_core.datacheck import check_datasets, format_report

    overrides = {k: v for k in ("dataset_dir", "stage", "cutoff_len", "model_name_or_path", "template")
                 if (v := getattr(opts, k)) is not None}
    overrides["dataset"] = ",".join(opts.names)
    cfg = load_config(opts.config, overrides)
    reports = check_datasets(cfg, with_tokens=not opts.no_tokens, log=lambda m: print(m, file=sys.stderr))
    print(format_report(reports))
    return 2 if any(r["problems"] for r in reports) else 0


if __name__ == "__main__":
    sys.exit(main())
