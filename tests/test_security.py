"""Security: paths from the page stay inside the work folder, a public page needs a log-in and
says so, gradio serves no file from elsewhere, no shell strings or unsafe YAML in the code,
model code runs only with trust_remote_code, and secrets never reach the run folder."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import start_workbench, stop_workbench

from app import choices, form
from app.context import make_context
from app.tabs import data
from trainer_core import jobs, runs
from trainer_core.errors import UserError

REPO = Path(__file__).resolve().parent.parent
ESCAPES = ["/etc", "/etc/passwd.yaml", "../outside", "../../../../etc", "data/../../outside", "~/.ssh"]


@pytest.fixture()
def ctx(tmp_path, tiny_data_dir, tiny_model_dir):
    data_dir = tmp_path / "work" / "data"
    shutil.copytree(tiny_data_dir, data_dir)
    return make_context(tmp_path / "work", data_dir, str(tiny_model_dir))


def form_values(ctx, **changes):
    values = form.initial_values(ctx, choices.dataset_names(ctx.data_dir))
    values.update(changes)
    return values


@pytest.mark.parametrize("path", ESCAPES)
def test_a_path_from_the_page_cannot_leave_the_allowed_folders(ctx, path):
    with pytest.raises(UserError, match="outside the folders this workbench may"):
        ctx.page_path(path, "field")
    with pytest.raises(UserError, match="outside"):
        ctx.page_path(path, "field", write=True)


def test_inside_paths_resolve_against_the_work_folder_and_symlinks_are_followed(ctx, tmp_path):
    assert ctx.page_path("configs/run.yaml", "f", write=True) == ctx.workdir / "configs" / "run.yaml"
    assert ctx.page_path(str(ctx.data_dir), "f") == ctx.data_dir
    (ctx.workdir / "sneaky").symlink_to("/etc")
    with pytest.raises(UserError, match="outside"):
        ctx.page_path("sneaky/passwd", "f")
    # the built-in model cache and the launch model may be read, not written
    assert ctx.page_path(ctx.model, "model")
    with pytest.raises(UserError, match="may write"):
        ctx.page_path(ctx.model, "output_dir", write=True)
    extra = tmp_path / "models"
    extra.mkdir()
    allowed = make_context(ctx.workdir, ctx.data_dir, ctx.model, allowed_dirs=[extra])
    assert allowed.page_path(str(extra / "qwen"), "model") == extra / "qwen"


@pytest.mark.parametrize("path", ["/etc", "../outside"])
def test_every_path_field_of_the_form_is_confined(ctx, path):
    _, fields, _ = form.check(form_values(ctx, model_source="local", model_path=path), ctx)
    assert "outside" in fields["model_path"]
    _, fields, _ = form.check(form_values(ctx, output_dir=path), ctx)
    assert "outside" in fields["output_dir"]
    _, fields, general = form.check(form_values(ctx, dataset_dir=path), ctx)
    assert any("outside" in text for text in general)
    with pytest.raises(UserError, match="outside"):
        form.save(form_values(ctx), f"{path}/evil.yaml", ctx)
    with pytest.raises(UserError, match="outside"):
        form.resolve_config_path(f"{path}/run.yaml", ctx)
    with pytest.raises(UserError, match="outside"):
        form.preview(form_values(ctx, output_dir=path), ctx)
    assert choices.page_dataset_choices(ctx, path) == []
    for key in ("resume_from_checkpoint", "hostfile"):  # free text fields that reach the trainer and launcher
        _, fields, _ = form.check(form_values(ctx, **{key: path}), ctx)
        assert "outside" in fields[key], key
    assert not (ctx.workdir.parent / "outside").exists()


def test_allow_path_folders_are_read_only_from_the_page(ctx, tmp_path):
    extra = tmp_path / "models"
    extra.mkdir()
    allowed = make_context(ctx.workdir, ctx.data_dir, ctx.model, allowed_dirs=[extra])
    assert allowed.page_path(str(extra / "qwen"), "model") == extra / "qwen"
    with pytest.raises(UserError, match="may write"):
        allowed.page_path(str(extra / "run"), "output_dir", write=True)


def test_a_dataset_entry_pointing_outside_the_data_folder_is_refused_on_the_page(ctx, tmp_path):
    outside = ctx.workdir.parent / "outside"
    outside.mkdir()
    (outside / "secret.json").write_text('[{"instruction": "secret", "output": "secret"}]', encoding="utf-8")
    info_path = ctx.data_dir / "dataset_info.json"
    info = json.loads(info_path.read_text(encoding="utf-8"))
    info["leak"] = {"file_name": "../../outside/secret.json", "formatting": "alpaca"}
    info_path.write_text(json.dumps(info), encoding="utf-8")
    with pytest.raises(UserError, match="dataset 'leak' .*file_name '../../outside/secret.json' lies outside"):
        data.inspect_dataset("leak", str(ctx.data_dir), "sft", ctx.data_roots())
    cfg, _, general = form.check(form_values(ctx, datasets=["leak"]), ctx)
    assert cfg is None and any("lies outside the data folder" in g for g in general)
    # an --allow_path folder may hold data
    allowed = make_context(ctx.workdir, ctx.data_dir, ctx.model, allowed_dirs=[outside])
    examples, _, _ = data.inspect_dataset("leak", str(ctx.data_dir), "sft", allowed.data_roots())
    assert examples[0]["messages"][0]["content"] == "secret"


def test_uploads_land_in_the_data_folder_under_a_safe_name(ctx):
    target = data.safe_upload_name("../../../etc/cron.d/evil.json", ctx.data_dir)
    assert target.parent == ctx.data_dir and target.name == "evil.json"
    target = data.safe_upload_name("C:\\Windows\\x.jsonl", ctx.data_dir)
    assert target.parent == ctx.data_dir
    with pytest.raises(UserError, match="unsupported file type"):
        data.safe_upload_name("evil.sh", ctx.data_dir)


# ---- the running page ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def public_page(tmp_path_factory, tiny_data_dir, tiny_model_dir):
    """The workbench on all interfaces with a log-in, as an operator would start it."""
    work = tmp_path_factory.mktemp("public")
    shutil.copytree(tiny_data_dir, work / "data")
    proc, url = start_workbench(["--host", "0.0.0.0", "--auth", "doctor:s3cret-pass", "--workdir", str(work),
                                 "--model", str(tiny_model_dir)], subprocess.PIPE)
    yield url, proc, work
    stop_workbench(proc)


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_a_public_page_says_it_needs_a_log_in_and_refuses_strangers(public_page):
    url, proc, _ = public_page
    banner = ""
    while "Log-in required" not in banner:
        line = proc.stdout.readline()
        assert line, f"no log-in notice on start: {banner}"
        banner += line
    assert "doctor" in banner and "s3cret-pass" not in banner
    assert _status(url + "/config") == 401  # the app's layout and API only after logging in
    assert _status(url + "/gradio_api/info") == 401


def test_the_page_serves_no_file_from_outside(public_page):
    from gradio_client import Client

    url, _, work = public_page
    client = Client(url, auth=("doctor", "s3cret-pass"), verbose=False)
    for path in ["/etc/passwd", str(work / "data" / "dataset_info.json"), str(REPO / "launch.py")]:
        assert _status(f"{url}/gradio_api/file={path}") in (401, 403, 404)
    # A folder typed into the Data tab's path field is refused with a message, not listed.
    names = [name for name in client.view_api(print_info=False, return_format="dict")["named_endpoints"]
             if name == "/data_refresh"]
    assert names, "the Data tab's refresh endpoint is not exposed"
    message = client.predict("/etc", [], None, "en", api_name=names[0])[-1]
    assert "outside the folders this workbench may read" in message


# ---- the code itself ----------------------------------------------------------------------

def _sources() -> list[Path]:
    files = [REPO / "launch.py", *REPO.glob("app/**/*.py"), *REPO.glob("trainer_core/**/*.py"),
             *REPO.glob("scripts/*.py"), *REPO.glob("bench/*.py")]
    assert len(files) > 20
    return files


@pytest.mark.parametrize("pattern, why", [
    (r"shell\s*=\s*True", "a shell string"),
    (r"\bos\.system\(|\bos\.popen\(|subprocess\.getoutput\(|subprocess\.getstatusoutput\(", "a shell string"),
    (r"yaml\.(unsafe_)?load\((?![^)]*SafeLoader)", "unsafe YAML"),
    (r"yaml\.(full_load|load_all)\(|Loader\s*=\s*yaml\.(Unsafe)?Loader", "unsafe YAML"),
    (r"\bpickle\.loads?\(|torch\.load\((?![^)]*weights_only=True)", "unpickling"),
    (r"(?<![\w.])(eval|exec)\(", "code from strings"),
    (r"trust_remote_code\s*=\s*True", "model code switched on by default"),
])
def test_no_dangerous_call_in_the_code(pattern, why):
    found = [f"{path.relative_to(REPO)}:{n}: {line.strip()}" for path in _sources()
             for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
             if re.search(pattern, line) and not line.lstrip().startswith("#")]
    assert not found, f"{why}:\n" + "\n".join(found)


def test_remote_code_runs_only_when_asked(tiny_model_dir, monkeypatch):
    """The flag reaches transformers exactly as set; off unless the config says true."""
    import transformers

    from trainer_core.config import TrainConfig
    from trainer_core.models import load_for_inference, load_tokenizer

    assert TrainConfig().trust_remote_code is False
    seen = []
    real = transformers.AutoModelForCausalLM.from_pretrained

    def spy(*args, **kwargs):
        seen.append(kwargs.get("trust_remote_code"))
        return real(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", spy)
    load_for_inference(str(tiny_model_dir), log=lambda _: None)
    load_for_inference(str(tiny_model_dir), trust_remote_code=True, log=lambda _: None)
    assert seen == [False, True]
    assert load_tokenizer(str(tiny_model_dir), False) is not None


# ---- secrets ------------------------------------------------------------------------------

SECRETS = {"WANDB_API_KEY": "wandb-secret-0123456789", "HF_TOKEN": "hf_secret0123456789",
           "HUGGING_FACE_HUB_TOKEN": "hf_hub_secret0123456789", "QIHUANG_DB_PASSWORD": "pw-secret-0123456789"}


def test_command_txt_keeps_settings_and_drops_secrets(tmp_path):
    runs.write_command(tmp_path, ["python", "-m", "trainer_core", "train"],
                       {**SECRETS, "WANDB_MODE": "offline", "CUDA_VISIBLE_DEVICES": "0"})
    text = (tmp_path / runs.COMMAND_FILE).read_text()
    assert "WANDB_MODE=offline" in text and "CUDA_VISIBLE_DEVICES=0" in text
    for value in SECRETS.values():
        assert value not in text


@pytest.mark.train
def test_a_job_started_with_secrets_in_its_environment_writes_none(tiny_model_dir, tiny_data_dir, tmp_path,
                                                                    monkeypatch):
    from trainer_core.config import load_config

    for key, value in SECRETS.items():
        monkeypatch.setenv(key, value)
    cfg = load_config(None, [f"model_name_or_path={tiny_model_dir}", f"dataset_dir={tiny_data_dir}",
                             "dataset=qa", f"output_dir={tmp_path / 'run'}", "max_steps=2", "cutoff_len=64",
                             "logging_steps=1", "save_steps=1"])
    run_dir = jobs.start_job(cfg)
    deadline = time.time() + 180
    while time.time() < deadline and jobs.refresh_status(run_dir)["state"] == "running":
        time.sleep(0.3)
    assert runs.read_status(run_dir)["state"] == "finished", (run_dir / "console.log").read_text()[-2000:]
    written = [p for p in run_dir.rglob("*") if p.is_file() and p.stat().st_size < 50_000_000]
    assert any(p.name == "run.yaml" for p in written) and any(p.name == "console.log" for p in written)
    for path in written:
        content = path.read_bytes()
        for key, value in SECRETS.items():
            assert value.encode() not in content, f"{key} was written to {path.relative_to(run_dir)}"
