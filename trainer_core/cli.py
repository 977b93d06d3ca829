"""Command line: `python -m trainer_core COMMAND ...`.

    train CONFIG.yaml [key=value ...] [--key value ...]   train: starts a job and follows it
          [--flag ...]                                    a bare --flag is true; no CONFIG: defaults
                                                          (LLaMA-Factory YAMLs and flags: README)
          [--detach]                                      start it and return at once
          [--dry-run]                                     print the command and DeepSpeed JSON only
    plan CONFIG.yaml [key=value ...] [--gpus 4xA100-40GB]  memory per GPU, fits or not, time, cost, the fix
         [--price 2.5] [--mfu 0.4|planner_gpu.json] [--no-data] [--json]
    runs [--root outputs]                                 list runs: state, progress, final loss
    runs --follow RUN_DIR                                 follow a run's log and progress
    runs --abort RUN_DIR                                  stop a run (it saves a checkpoint first)
    data check NAME [NAME ...] [--key value ...]          validate datasets and print statistics
    chat [RUN_DIR | MODEL] [--adapter DIR] [--compare]    chat in the terminal (streaming)
    eval --run RUN_DIR [--task mcq|ppl|generate] ...      evaluate (a job; results in RUN_DIR/eval/)
    eval JOB_DIR/eval.yaml [--key value ...]              run an eval job again from its config
    eval --compare RESULT [RESULT ...]                    base vs tuned, side by side
    export --run RUN_DIR [--gguf f16,q8_0] ...            merge + model card + GGUF (a job)
    export JOB_DIR/export.yaml [--key value ...]          run an export job again from its config
    lr-find CONFIG.yaml [key=value ...] [--num_steps 40] [--start_lr 1e-7] [--end_lr 1] [--max_samples N]
                                                          learning-rate range test (a job): a suggested learning_rate
    lr-find JOB_DIR/lr_find.yaml [--num_steps N ...]      run an LR range test again from its config
    models                                                the known base models: name, hub id, template

A mistake in a config or a dataset ends the command with exit code 2 and one clear message;
a traceback, when there is one, goes to the run's console.log, not to the screen.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from pathlib import Path

from trainer_core.errors import UserError

USAGE = __doc__


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # `deepspeed --module trainer_core ...` without --no_local_rank passes --local_rank=N first.
    argv = [a for a in argv if not a.startswith("--local_rank=")]
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    commands = {"train": cmd_train, "plan": cmd_plan, "runs": cmd_runs, "data": cmd_data, "chat": cmd_chat,
                "eval": cmd_eval, "export": cmd_export, "models": cmd_models, "lr-find": cmd_lr_find,
                "lr_find": cmd_lr_find}
    if command not in commands:
        print(f"error: unknown command '{command}'\n{USAGE}", file=sys.stderr)
        return 2
    try:
        return commands[command](rest)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _split_config_and_overrides(args: list[str]) -> tuple[str | None, list[str], set[str]]:
    """The first argument ending in .yaml/.yml is the config; bare flags (--dry-run, --detach,
    also spelled --dry_run) are returned apart; everything else is an override."""
    config, overrides, flags = None, [], set()
    for item in args:
        if config is None and item.endswith((".yaml", ".yml")) and "=" not in item:
            config = item
        elif item.replace("_", "-") in ("--dry-run", "--detach"):
            flags.add(item.replace("_", "-"))
        else:
            overrides.append(item)
    return config, overrides, flags


def cmd_train(args: list[str]) -> int:
    from trainer_core.config import read_config

    if args and args[0] in ("-h", "--help"):
        print("usage: python -m trainer_core train [CONFIG.yaml] [key=value ...] [--key value ...] [--flag ...] "
              "[--detach] [--dry-run]\n(a LLaMA-Factory YAML or command line works too: README, \"From "
              "LLaMA-Factory\")")
        return 0
    config_path, overrides, flags = _split_config_and_overrides(args)
    cfg, notices = read_config(config_path, overrides)
    for notice in notices:  # LLaMA-Factory keys taken as harmless or read as ours
        print(f"note: {notice}", file=sys.stderr)
    # Inside a job (started by our launcher, or by deepspeed/torchrun directly): train here.
    if os.environ.get("QIHUANG_LAUNCHED") == "1" or "LOCAL_RANK" in os.environ:
        return _train_in_this_process(cfg, args)

    from trainer_core import jobs

    if not cfg.batch_is_auto():  # auto's own line says whether the plan fits
        _warn_if_it_will_not_fit(cfg)
    if "--dry-run" in flags:
        return _dry_run(cfg)
    run_dir = jobs.start_job(cfg, log=_log)
    print(f"Started {run_dir} (pid {jobs.runs.read_status(run_dir)['pid']})", flush=True)
    if "--detach" in flags:
        print(f"Follow it with:  python -m trainer_core runs --follow {run_dir}\n"
              f"Stop it with:    python -m trainer_core runs --abort {run_dir}")
        return 0
    return _follow(run_dir, abort_on_interrupt=True, printed=(jobs.LAUNCHER_PREFIX,))


def _warn_if_it_will_not_fit(cfg) -> None:
    """A warning before a launch that the planner says will not fit on this machine's hardware. Never a
    refusal (the plan is an estimate) and never a traceback: a model the planner cannot read is
    simply not judged. Reads config.json without transformers, and asks torch about GPUs only where
    an NVIDIA driver is installed, so the launch stays fast."""
    from trainer_core.planner import detect_hardware, format_bytes, load_model_shape, plan

    try:
        hardware = detect_hardware(cfg.num_gpus)
        result = plan(cfg, hardware, shape=load_model_shape(cfg.model_name_or_path, light=True))
    except Exception:  # noqa: BLE001 - the warning is a courtesy: anything it cannot judge, it leaves alone
        return
    if result.fits:
        return
    device = "GPU" if hardware.gpu else "the CPU's RAM"
    fix = ""
    if result.fixes:
        changes = " ".join(f"{k}={v}" for k, v in result.fixes[0]["changes"].items())
        fix = f"; the planner's fix ({result.fixes[0]['why']}): {changes}"
    print(f"warning: the planner estimates {format_bytes(result.total)} per {device} against "
          f"{format_bytes(result.capacity)} on {hardware.label()}: this run may run out of memory{fix} "
          "(python -m trainer_core plan CONFIG shows the parts)", file=sys.stderr)


def cmd_plan(args: list[str]) -> int:
    """Memory per GPU, whether it fits, time and cost of a run, before it starts (trainer_core/planner.py)."""
    import dataclasses

    from trainer_core.config import read_config
    from trainer_core.planner import (
        auto_batch_here,
        data_statistics,
        detect_hardware,
        format_plan,
        measured_mfu,
        parse_gpus,
        plan,
        resolve_auto_batch,
    )

    if args and args[0] in ("-h", "--help"):
        print("usage: python -m trainer_core plan [CONFIG.yaml] [key=value ...] [--key value ...] "
              "[--gpus [NODESx]COUNTxKIND] [--price PER_GPU_HOUR] [--mfu SHARE|planner_gpu.json] [--no-data] [--json]\n"
              "kinds: " + ", ".join(_gpu_kinds()) + "; without --gpus: this machine's GPUs (or its CPU)\n"
              "--mfu: the time estimate's utilisation, measured: 0.42, 42% or the GPU check's planner_gpu.json\n"
              "model_name_or_path may name a shipped config: presets/models/qwen2.5-14b")
        return 0
    options, rest = _take_options(args, ("--gpus", "--price", "--mfu"), ("--no-data", "--json"))
    config_path, overrides, flags = _split_config_and_overrides(rest)
    if flags:
        raise UserError(f"plan does not take {', '.join(sorted(flags))}")
    cfg, notices = read_config(config_path, overrides)
    for notice in notices:
        print(f"note: {notice}", file=sys.stderr)
    price = None
    if options.get("--price") is not None:
        try:
            price = float(options["--price"])
        except ValueError:
            raise UserError(f"--price '{options['--price']}' is not a number (a price per GPU-hour)") from None
    if options.get("--gpus"):
        hardware = parse_gpus(options["--gpus"])
        if hardware.gpu and cfg.num_gpus != hardware.gpus:
            cfg = dataclasses.replace(cfg, num_gpus=hardware.gpus)  # the plan is for the GPUs named
    else:
        hardware = detect_hardware(cfg.num_gpus)
    if options.get("--mfu") is not None:
        mfu, source = measured_mfu(str(options["--mfu"]), cfg.finetuning_type, hardware.kind)
        hardware = dataclasses.replace(hardware, mfu=mfu, mfu_source=source)
    if cfg.batch_is_auto():  # decided as the launch decides it (rows of cutoff_len), for these GPUs
        chosen = auto_batch_here(cfg) if not options.get("--gpus") else resolve_auto_batch(cfg, hardware)
        assert chosen is not None
        cfg = chosen.config
        print(chosen.line, file=sys.stderr if "--json" in options else sys.stdout)
    data = None
    if "--no-data" not in options:
        data, data_notes = data_statistics(cfg, log=lambda m: print(m, file=sys.stderr))
        for note in data_notes:
            print(f"note: {note}", file=sys.stderr)
    result = plan(cfg, hardware, data=data, price_per_gpu_hour=price)
    if "--json" in options:
        print(json.dumps(dataclasses.asdict(result), indent=1))
    else:
        print(format_plan(result))
    return 0


def _gpu_kinds() -> list[str]:
    from trainer_core.planner import CPU, GPU_KINDS

    return [*GPU_KINDS, CPU]


def _take_options(args: list[str], valued: tuple[str, ...], bare: tuple[str, ...]) -> tuple[dict, list[str]]:
    """Pull a command's own options (`--gpus X`, `--gpus=X`, `--json`) out of the config overrides."""
    options: dict[str, str | None] = {}
    rest: list[str] = []
    i = 0
    while i < len(args):
        name, _, value = args[i].partition("=")
        spelled = name.replace("_", "-")
        if spelled in valued:
            if not value:
                if i + 1 >= len(args):
                    raise UserError(f"{spelled} needs a value")
                value, i = args[i + 1], i + 1
            options[spelled] = value
        elif spelled in bare and not value:
            options[spelled] = None
        else:
            rest.append(args[i])
        i += 1
    return options, rest


def _dry_run(cfg) -> int:
    import json

    from trainer_core import jobs
    from trainer_core.config import default_output_dir

    cfg, _ = jobs.resolve_batch(cfg, log=_log)  # per_device_train_batch_size auto: as the launch decides
    output_dir = cfg.output_dir or default_output_dir(cfg)
    print("# command")
    print(" ".join(jobs.build_command(cfg, f"{output_dir}/run.yaml")))
    if cfg.deepspeed:
        from trainer_core.train import deepspeed_config

        print(f"# DeepSpeed config ({cfg.deepspeed})")
        print(json.dumps(deepspeed_config(cfg.deepspeed), indent=2))
    return 0


def _follow(run_dir: Path, abort_on_interrupt: bool = False, printed: tuple[str, ...] = ()) -> int:
    """Print the job's console as it grows (tracebacks stay in console.log), then its outcome.
    `printed`: prefixes of console lines this command printed itself already (the launcher's)."""
    import signal

    from trainer_core import jobs

    def interrupt(signum, frame):  # noqa: ARG001 - SIGTERM to the follower stops the job like Ctrl-C
        raise KeyboardInterrupt

    if abort_on_interrupt:
        signal.signal(signal.SIGTERM, interrupt)
    in_traceback = False
    try:
        for update in jobs.watch(run_dir, poll_seconds=0.5):
            for line in update["console"]:
                if line.startswith("Traceback (most recent call last)"):
                    in_traceback = True
                elif in_traceback and line and not line.startswith((" ", "\t")):
                    in_traceback = False
                    continue
                # The job's own "error:" line is printed once, from status.json, below.
                if not in_traceback and not line.startswith(("[supervisor]", "error: ", *printed)):
                    print(line, flush=True)
    except KeyboardInterrupt:
        if not abort_on_interrupt:
            return 130
        print("\nStopping the job (it saves a checkpoint first) ...", file=sys.stderr)
        jobs.abort_job(run_dir)
    status = jobs.refresh_status(run_dir)
    if status.get("state") == "finished":
        return 0
    print(f"error: {status.get('error') or status.get('state')}\n(state: {status.get('state')}; full log in "
          f"{run_dir / 'console.log'})", file=sys.stderr)
    code = status.get("exit_code")
    return code if isinstance(code, int) and 0 < code < 256 else 1


def cmd_runs(args: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer_core runs", description="List, follow or abort runs.")
    parser.add_argument("--root", default="outputs", help="folder holding run folders")
    parser.add_argument("--follow", metavar="RUN_DIR")
    parser.add_argument("--abort", metavar="RUN_DIR")
    parser.add_argument("--grace", type=float, default=120, help="seconds to wait for a checkpoint on abort")
    opts = parser.parse_args(args)
    from trainer_core import jobs

    if opts.abort:
        status = jobs.abort_job(_existing_run(opts.abort), grace_seconds=opts.grace)
        print(f"{opts.abort}: {status.get('state')}" + (f" — {status['error']}" if status.get("error") else ""))
        return 0
    if opts.follow:
        return _follow(_existing_run(opts.follow))
    rows = jobs.list_runs(opts.root)
    if not rows:
        print(f"no runs under {opts.root}/")
        return 0
    print(f"{'run':50} {'state':9} {'progress':>12} {'loss':>8} {'eval':>8}  started")
    for r in rows:
        done = f"{r['step']}/{r['total_steps']}" if r["total_steps"] else "-"
        loss = f"{r['loss']:.4f}" if r["loss"] is not None else "-"
        ev = f"{r['eval_loss']:.4f}" if r["eval_loss"] is not None else "-"
        print(f"{r['run_dir']:50} {r['state']:9} {done:>12} {loss:>8} {ev:>8}  {r['started_at'] or ''}")
    return 0


def _existing_run(path: str) -> Path:
    run_dir = Path(path)
    if not (run_dir / "status.json").is_file():
        raise UserError(f"'{path}' is not a run folder (no status.json)")
    return run_dir


def _train_in_this_process(cfg, args: list[str]) -> int:
    from trainer_core import jobs, runs
    from trainer_core.train import run_training

    if cfg.finetuning_type != "qlora":
        _skip_unused_imports()
    _quiet_libraries()
    launched = os.environ.get("QIHUANG_LAUNCHED") == "1"
    # per_device_train_batch_size auto is still there only when no launcher of ours decided it
    # (torchrun or deepspeed started directly): decided the same way here, and the ranks then agree.
    cfg, auto_line = jobs.resolve_batch(cfg, _log)
    # A launched job's folder was prepared by its launcher (jobs.start_job); run.yaml names it.
    run_dir = Path(cfg.output_dir) if launched and cfg.output_dir else runs.prepare_run_dir(cfg)
    console = None
    if not launched and os.environ.get("RANK", "0") == "0":
        console = runs.tee_console(run_dir)
    print(f"Run folder: {run_dir}", flush=True)
    try:
        return run_training(cfg, argv=[sys.executable, "-m", "trainer_core", "train", *args], log=_log,
                            run_dir=run_dir, auto_line=auto_line)
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
        terminal = sys.__stderr__ or sys.stderr  # sys.stderr is the console tee by now
        terminal.write(f"error: {read_status(run_dir).get('error') or exc}\n"
                       f"(traceback in {run_dir / 'console.log'})\n")
    else:
        sys.stderr.write(trace)


def _log(message: str) -> None:
    print(message, flush=True)


def _skip_unused_imports() -> None:
    """For a job that quantizes nothing. peft imports bitsandbytes whenever it is installed, and
    that import (it compiles its CPU ops with torch.compile) costs over a second of the start;
    transformers imports scipy.optimize for its object-detection losses (half a second), and
    bitsandbytes is the only part of a job that uses scipy. None in sys.modules makes find_spec
    say 'not installed', so peft and transformers skip them."""
    for name in ("bitsandbytes", "scipy"):
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]


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


def cmd_eval(args: list[str]) -> int:
    if args and args[0] == "--compare":
        from trainer_core.evaluate import compare

        if len(args) < 2:
            raise UserError("eval --compare needs result files or eval folders")
        print(compare(args[1:]))
        return 0
    return _task_command("eval", args)


def cmd_export(args: list[str]) -> int:
    return _task_command("export", args)


def _task_command(kind: str, args: list[str]) -> int:
    """eval and export: the flags (or a job's eval.yaml / export.yaml, flags on top) become the
    job's config (jobconfig.config_from_args); then either do the work here (inside a job) or
    start the job and follow it, exactly like train."""
    from trainer_core.jobconfig import EvalConfig, config_from_args

    cfg = config_from_args(kind, args)
    if os.environ.get("QIHUANG_LAUNCHED") == "1":
        if kind == "export":  # merging and saving never quantize
            _skip_unused_imports()
        _quiet_libraries()
        if isinstance(cfg, EvalConfig):
            from trainer_core.evaluate import run_eval

            result = run_eval(cfg, log=_log)
        else:
            from trainer_core.export import run_export
            from trainer_core.jobconfig import ExportConfig

            assert isinstance(cfg, ExportConfig)  # lr_find has a command of its own (cmd_lr_find)
            result = run_export(cfg, log=_log)
        print(json.dumps(result, ensure_ascii=False, indent=1, default=str), flush=True)
        return 0

    from trainer_core import jobs

    # Mistakes that need no model are reported by start_task, before a job folder exists.
    run_dir = jobs.start_task(kind, cfg)
    print(f"Started {kind} job {run_dir}", flush=True)
    if "--detach" in args:
        print(f"Follow it with:  python -m trainer_core runs --follow {run_dir}")
        return 0
    return _follow(run_dir, abort_on_interrupt=True)


LR_FIND_FLAGS = ("--num-steps", "--start-lr", "--end-lr", "--max-samples", "--smooth-beta", "--job-dir")


def cmd_lr_find(args: list[str]) -> int:
    """The learning-rate range test (trainer_core/lr_find.py) of a run config, as a job: started,
    followed, and its suggestion printed. A job's own lr_find.yaml runs it again (flags on top)."""
    import dataclasses

    from trainer_core.config import ConfigError, ConfigProblem, read_config, read_yaml, schema_keys
    from trainer_core.jobconfig import LrFindConfig

    if args and args[0] in ("-h", "--help"):
        print("usage: python -m trainer_core lr-find [CONFIG.yaml | JOB_DIR/lr_find.yaml] [key=value ...] "
              "[--num_steps 40] [--start_lr 1e-7] [--end_lr 1] [--max_samples N] [--smooth_beta 0.6] [--job_dir DIR] "
              "[--detach]\n"
              "key=value (or --key value) overrides the run config's keys; the job folder is "
              "outputs/jobs/lr-find-<time>/")
        for f in dataclasses.fields(LrFindConfig):
            if f.name != "run_config":  # CONFIG.yaml, the first argument
                print(f"  --{f.name:12} {f.metadata['help']}")
        return 0
    options, rest = _take_options(args, LR_FIND_FLAGS, ("--detach",))
    own = {name[2:].replace("-", "_"): value for name, value in options.items() if name != "--detach"}
    config_path, overrides, flags = _split_config_and_overrides(rest)
    if "--dry-run" in flags:
        raise UserError("lr-find does not take --dry-run")
    job_raw = read_yaml(Path(config_path)) if config_path else {}  # a missing file: its own clear message
    lr_keys = schema_keys(LrFindConfig)
    is_job = bool(job_raw) and "run_config" in job_raw and set(job_raw) <= set(lr_keys)
    if os.environ.get("QIHUANG_LAUNCHED") == "1":  # inside the job: do the work here
        from trainer_core.config import config_from_dict
        from trainer_core.lr_find import run_lr_find

        if not is_job:
            raise UserError(f"an lr-find job runs from its JOB_DIR/lr_find.yaml, not '{config_path}'")
        job_cfg = config_from_dict({**job_raw, **own}, LrFindConfig)
        if _run_finetuning_type(job_cfg.run_config) != "qlora":
            _skip_unused_imports()
        _quiet_libraries()
        result = run_lr_find(job_cfg, log=_log)
        return 143 if result.get("stop_reason") and "SIGTERM" in result["stop_reason"] else 0

    from trainer_core import jobs
    from trainer_core.config import config_from_dict

    if not config_path:
        raise UserError("lr-find needs a run config: python -m trainer_core lr-find CONFIG.yaml [key=value ...] "
                        "(e.g. presets/sft_lora.yaml)")
    problems: list[ConfigProblem] = []  # the test's and the run config's, every one at once
    cfg: LrFindConfig | None = None
    run = None
    try:
        cfg = config_from_dict({**(job_raw if is_job else {"run_config": config_path}), **own}, LrFindConfig)
    except ConfigError as exc:
        problems += exc.problems
    try:
        run, notices = read_config(job_raw["run_config"] if is_job else config_path, overrides)
    except ConfigError as exc:  # an unknown key may be a misspelt flag of the test's own
        problems += [ConfigProblem(p.keys, _unknown_lr_key(p.message, lr_keys)) for p in exc.problems]
    if problems or cfg is None or run is None:
        raise ConfigError(problems)
    for notice in notices:
        print(f"note: {notice}", file=sys.stderr)
    if run.num_gpus > 1 or run.deepspeed:
        print(f"note: the range test runs in one process; a run on {run.num_gpus} processes has a global batch "
              f"{run.num_gpus} times larger, which usually takes a larger learning rate", file=sys.stderr)
    job_dir = jobs.start_lr_find(run, dataclasses.replace(cfg, run_config=""), None)
    print(f"Started lr-find job {job_dir}", flush=True)
    if "--detach" in options:
        print(f"Follow it with:  python -m trainer_core runs --follow {job_dir}")
        return 0
    code = _follow(job_dir, abort_on_interrupt=True)
    _print_lr_find_result(job_dir)
    return code


def _run_finetuning_type(path: str) -> str:
    from trainer_core.config import read_yaml

    return str(read_yaml(Path(path)).get("finetuning_type", ""))


def _unknown_lr_key(message: str, lr_keys: dict) -> str:
    """'unknown key X; did you mean Y?' with the test's own keys among the candidates."""
    import difflib

    from trainer_core.config import KEYS

    if not message.startswith("unknown key '"):
        return message
    name = message.split("'")[1]
    candidates = {**KEYS, **{k: v for k, v in lr_keys.items() if k not in ("run_config", "job_dir")}}
    close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    if not close:
        return message
    spelled = f"--{close[0]}" if close[0] in lr_keys else close[0]
    return f"unknown key '{name}'; did you mean '{spelled}'?"


def _print_lr_find_result(job_dir: Path) -> None:
    from trainer_core.lr_find import PLOT_FILE, RESULT_FILE

    path = job_dir / RESULT_FILE
    if not path.is_file():
        return
    print(f"files: {path}  {job_dir / PLOT_FILE}")  # the suggestion itself was the job's last console line


def cmd_chat(args: list[str]) -> int:
    from trainer_core import chat

    parser = argparse.ArgumentParser(prog="python -m trainer_core chat", description="Chat with a model.")
    chat.add_arguments(parser)
    opts = parser.parse_args(args)
    _quiet_libraries()
    return chat.run_chat(opts)


def cmd_models(args: list[str]) -> int:
    """The base models the workbench knows by name (presets/models.yaml), one a line."""
    argparse.ArgumentParser(prog="python -m trainer_core models",
                            description="List the known base models (presets/models.yaml).").parse_args(args)
    from trainer_core.catalog import KNOWN_MODELS

    rows = [(str(m.get("name") or "-"), str(m.get("hub_id") or "-"), str(m.get("template") or "-"))
            for m in KNOWN_MODELS]
    widths = [max((len(row[i]) for row in rows), default=0) for i in range(2)]
    for name, hub_id, template in rows:
        print(f"{name:{widths[0]}}  {hub_id:{widths[1]}}  {template}")
    return 0


def cmd_data(args: list[str]) -> int:
    from trainer_core.config import KEYS

    parser = argparse.ArgumentParser(prog="python -m trainer_core data check",
                                     description="Validate datasets and print their statistics.")
    parser.add_argument("action", choices=["check"])
    parser.add_argument("names", nargs="+", help="dataset names from dataset_info.json")
    parser.add_argument("--dataset_dir", default=None)
    parser.add_argument("--stage", default=None, choices=list(KEYS["stage"].metadata["choices"]))
    parser.add_argument("--cutoff_len", type=int, default=None)
    parser.add_argument("--model_name_or_path", default=None)
    parser.add_argument("--template", default=None)
    parser.add_argument("--data_engine", default=None, choices=["auto", "memory", "arrow"],
                        help="arrow: check in worker processes without holding the data (auto: from 32 MiB on)")
    parser.add_argument("--config", default=None, help="take the settings above from a run config")
    parser.add_argument("--no-tokens", action="store_true", help="skip token statistics (no tokenizer load)")
    opts = parser.parse_args(args)

    from trainer_core.config import load_config
    from trainer_core.datacheck import check_datasets, format_report

    overrides = {k: v for k in ("dataset_dir", "stage", "cutoff_len", "model_name_or_path", "template", "data_engine")
                 if (v := getattr(opts, k)) is not None}
    overrides["dataset"] = ",".join(opts.names)
    cfg = load_config(opts.config, overrides)
    reports = check_datasets(cfg, with_tokens=not opts.no_tokens, log=lambda m: print(m, file=sys.stderr))
    print(format_report(reports))
    return 2 if any(r["problems"] for r in reports) else 0


if __name__ == "__main__":
    sys.exit(main())
