"""The eval and export job configs (trainer_core/jobconfig.py): validated like the run config,
problems by key, every key on the command line and in the job's YAML, and the launcher writing
JOB_DIR/eval.yaml (export.yaml) and starting `python -m trainer_core eval JOB_DIR/eval.yaml`.
No model is loaded and no process is started."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest
import yaml

from trainer_core import evaluate, export, jobconfig, jobs, runs
from trainer_core.config import ConfigError, config_from_dict, config_to_yaml, validate
from trainer_core.errors import UserError
from trainer_core.jobconfig import (
    CONFIG_FILES,
    SCHEMAS,
    EvalConfig,
    ExportConfig,
    config_from_args,
    load_job_config,
    save_job_config,
)


def problems_by_key(raw: dict, schema: type) -> dict[tuple[str, ...], str]:
    cfg, problems = validate(raw, schema)
    assert cfg is None
    return {p.keys: p.message for p in problems}


def test_eval_config_problems_by_key():
    found = problems_by_key({"model": "default", "dataset": "qa", "n_shot": -1, "split": "test",
                             "datasets": "qa", "task": "ppl,bleu"}, EvalConfig)
    assert found[("n_shot",)] == "n_shot: -1 is out of range (an integer >= 0)"
    assert found[("split",)] == "split: 'test' is not allowed; choose one of validation, all"
    assert found[()] == "unknown key 'datasets'; did you mean 'dataset'?"
    assert found[("task",)] == "unknown task 'bleu': choose from ppl, generate, mcq, preference"
    # Rules over several keys, each under all of its keys.
    assert problems_by_key({"run": "r", "model": "m"}, EvalConfig) == {
        ("run", "model"): "give either --run RUN_DIR or --model PATH, not both"}
    found = problems_by_key({"model": "m", "base_only": True, "split": "validation"}, EvalConfig)
    assert set(found) == {("base_only", "run"), ("split", "run")}
    assert problems_by_key({"model": "m"}, EvalConfig) == {
        ("dataset",): "no dataset: name one with --dataset NAME (from dataset_info.json)"}
    assert problems_by_key({}, EvalConfig)[("run", "model")].startswith("nothing to evaluate")
    assert problems_by_key({"run": "r", "adapter": "a"}, EvalConfig) == {
        ("adapter", "run"): "--adapter goes with --model; with --run the run's own adapter/ is used"}
    # With a run and no dataset: the run's validation split, no problem.
    assert config_from_dict({"run": "r"}, EvalConfig) == EvalConfig(run="r")


def test_export_config_problems_by_key():
    found = problems_by_key({"run": "r", "dtype": "float8", "gguff": "f16", "overwrite": "maybe"}, ExportConfig)
    assert found == {("dtype",): "dtype: 'float8' is not allowed; choose one of float32, bfloat16, float16",
                     (): "unknown key 'gguff'; did you mean 'gguf'?",
                     ("overwrite",): "overwrite: 'maybe' is not a valid bool (true or false)"}
    found = problems_by_key({"run": "r", "model": "m", "gguf": "q4", "max_shard_size": "big"}, ExportConfig)
    assert found == {
        ("run", "model", "adapter"): "give either --run RUN_DIR or --model BASE [--adapter DIR], not both",
        ("gguf",): "--gguf q4: unknown ['q4']; choose none, f16, q8_0 or f16,q8_0",
        ("max_shard_size",): "--max_shard_size 'big' is not a size; write it like 2GB, 500MB or 5000000"}
    assert problems_by_key({}, ExportConfig)[("run", "model")].startswith("nothing to export")
    # An adapter alone is enough (its own record names the base); sizes in bytes are sizes.
    assert config_from_dict({"adapter": "a", "max_shard_size": 5000000}, ExportConfig).max_shard_size == "5000000"


def test_a_config_built_in_code_is_checked_too(tmp_path):
    with pytest.raises(ConfigError, match="not both"):
        jobconfig.checked(EvalConfig(run="r", model="m"))
    with pytest.raises(ConfigError, match="max_new_tokens: 0 is out of range"):
        jobconfig.checked(EvalConfig(model="m", dataset="qa", max_new_tokens=0))
    # The jobs' bodies check it before anything loads.
    with pytest.raises(ConfigError, match=r"batch_size: 0 is out of range \(an integer >= 1\)"):
        evaluate.run_eval(EvalConfig(model="m", dataset="qa", batch_size=0, output_dir=str(tmp_path / "e")))
    with pytest.raises(ConfigError, match="not both"):
        export.run_export(ExportConfig(run="r", model="m", output_dir=str(tmp_path / "x")))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kind", sorted(SCHEMAS))
def test_every_job_key_has_help_a_flag_and_round_trips_through_yaml(kind, tmp_path):
    """By schema: a key added to EvalConfig or ExportConfig is tested the day it is added."""
    schema = SCHEMAS[kind]
    fields = dataclasses.fields(schema)
    assert all(f.metadata["help"].strip() for f in fields), [f.name for f in fields if not f.metadata["help"]]
    flags = {a.dest: a.help for a in jobconfig.job_parser(kind)._actions if a.option_strings}
    assert {f.name: f.metadata["help"] for f in fields}.items() <= flags.items()  # one flag per key, same help

    base = {"eval": {"model": "default", "dataset": "qa"}, "export": {"run": "outputs/r"},
            "lr_find": {"run_config": "presets/sft_lora.yaml"}}[kind]
    for raw in ({}, _changed_values(schema)):
        cfg = config_from_dict({**base, **raw}, schema)
        path = tmp_path / CONFIG_FILES[kind]
        save_job_config(cfg, path)
        assert list(yaml.safe_load(path.read_text(encoding="utf-8"))) == [f.name for f in fields]  # every key
        assert load_job_config(kind, path) == cfg
        assert config_from_args(kind, [str(path)]) == cfg
        assert path.read_text(encoding="utf-8") == config_to_yaml(cfg)


def _changed_values(schema: type) -> dict:
    """A value other than the default for every key that allows one without breaking a rule."""
    keep = {"run", "model", "adapter", "base_only", "split"}
    values = {}
    for f in dataclasses.fields(schema):
        if f.name in keep:
            continue
        meta, kind = f.metadata, str(f.type)
        if meta["choices"]:
            values[f.name] = next(c for c in meta["choices"] if c != f.default)
        elif kind.startswith("bool"):
            values[f.name] = not f.default
        elif kind.startswith("int"):
            values[f.name] = (f.default or 1) + 1
        elif kind.startswith("float"):
            values[f.name] = (f.default or 0) / 2
        else:
            values[f.name] = {"task": "ppl,generate", "max_shard_size": "500MB", "gguf": "f16,q8_0"}.get(
                f.name, f"some {f.name}")
    return values


def test_flags_become_the_config_and_override_a_job_yaml(tmp_path):
    cfg = config_from_args("eval", ["--run", "R", "--task", "ppl", "--task", "generate,ppl", "--base-only",
                                    "--max-samples", "3", "--n_shot", "1", "--detach"])
    assert cfg == EvalConfig(run="R", task="ppl,generate,ppl", base_only=True, max_samples=3, n_shot=1)
    with pytest.raises(ConfigError) as err:  # every problem at once, values checked by the schema
        config_from_args("eval", ["--run", "R", "--model", "M", "--n_shot", "x", "--dtype", "f8"])
    assert [p.keys for p in err.value.problems] == [("n_shot",), ("dtype",), ("run", "model")]
    path = tmp_path / "eval.yaml"
    save_job_config(cfg, path)
    assert config_from_args("eval", [str(path), "--n_shot", "2"]) == dataclasses.replace(cfg, n_shot=2)
    with pytest.raises(UserError, match="is not a job config"):
        config_from_args("eval", ["outputs/run"])
    assert config_from_args("export", ["--run", "R", "--gguf", "none", "--overwrite"]) == ExportConfig(
        run="R", gguf="none", overwrite=True)


@pytest.fixture
def finished_run(tmp_path) -> Path:
    """A run folder that looks finished (run.yaml and an adapter config), no weights."""
    run = tmp_path / "outputs" / "run"
    (run / "adapter").mkdir(parents=True)
    (run / runs.CONFIG_FILE).write_text("model_name_or_path: default\nstage: sft\n", encoding="utf-8")
    (run / "adapter" / "adapter_config.json").write_text("{}", encoding="utf-8")
    return run


@pytest.mark.parametrize("kind", ["eval", "export"])
def test_the_launcher_writes_the_job_config_and_starts_it_from_the_yaml(kind, finished_run, monkeypatch):
    started = []
    monkeypatch.setattr(jobs, "launch", lambda job_dir, argv, devices, launcher: started.append((job_dir, argv))
                        or job_dir)
    cfg = EvalConfig(run=str(finished_run), task="ppl") if kind == "eval" else ExportConfig(
        run=str(finished_run), gguf="none")
    job_dir = jobs.start_task(kind, cfg)
    assert job_dir.parent == finished_run / ("eval" if kind == "eval" else "jobs")
    config_file = job_dir / CONFIG_FILES[kind]
    assert started == [(job_dir, [sys.executable, "-m", "trainer_core", kind, str(config_file)])]
    assert started[0][1] == jobs.task_command(kind, config_file)
    # The job's folder is in its config: an eval's results go there, an export's progress.
    saved = load_job_config(kind, config_file)
    folder = {"output_dir": str(job_dir)} if kind == "eval" else {"job_dir": str(job_dir)}
    assert saved == dataclasses.replace(cfg, **folder)
    assert jobs.task_job_dir(kind, saved) == job_dir  # `eval JOB_DIR/eval.yaml` runs in the same folder


@pytest.mark.parametrize("kind, cfg, message", [
    ("eval", EvalConfig(run="missing"), "not a training run folder"),
    ("export", ExportConfig(run="missing"), "not a training run folder"),
    ("eval", EvalConfig(run="RUN", model="default"), "not both"),
    ("export", ExportConfig(run="RUN", gguf="q4"), "--gguf q4"),
    ("eval", ExportConfig(run="RUN"), "eval jobs take an EvalConfig, not an ExportConfig"),
])
def test_the_launcher_refuses_before_any_folder_is_made(kind, cfg, message, finished_run, monkeypatch):
    monkeypatch.chdir(finished_run.parent.parent)
    cfg = dataclasses.replace(cfg, run=str(finished_run)) if cfg.run == "RUN" else cfg
    before = sorted(finished_run.parent.parent.rglob("*"))
    with pytest.raises(UserError, match=message):
        jobs.start_task(kind, cfg)
    assert sorted(finished_run.parent.parent.rglob("*")) == before
