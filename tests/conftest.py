"""Shared fixtures: a tiny random model and a tiny dataset folder, built once per test session."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from tiny_model import build_tiny_model  # noqa: E402

from trainer_core.procs import free_port  # noqa: E402, F401 - shared with the tests that import it from here

REPO = Path(__file__).resolve().parent.parent


# Every test has one kind (README, "Tests"): `browser` (tests/browser/), `dist` (several processes:
# torchrun, DeepSpeed), `train` (runs a training, evaluation or export, or loads a model beyond the
# tiny in-process ones), else `fast`. A module or test says `dist` or `train` itself; a test that
# uses a fixture which trains is `train` without saying so.
KINDS = ("browser", "dist", "train", "fast")
TRAINING_FIXTURES = {"tuned_run", "lora_run", "exported", "reference", "live_job"}


@pytest.hookimpl(tryfirst=True)  # before `-m` picks by these marks
def pytest_collection_modifyitems(config, items) -> None:  # noqa: ARG001 - pytest's hook signature
    for item in items:
        kinds = [kind for kind in KINDS if item.get_closest_marker(kind)]
        if "browser" in Path(str(item.path)).parts:
            kinds.append("browser")
        elif not kinds and TRAINING_FIXTURES & set(getattr(item, "fixturenames", ())):
            kinds.append("train")
        kinds = sorted(set(kinds), key=KINDS.index)
        assert len(kinds) <= 1, f"{item.nodeid} has two kinds {kinds}: give it one"
        item.add_marker(kinds[0] if kinds else "fast")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-data")
    qa = [{"instruction": f"黄芪的功效是什么？（{i}）", "input": "", "output": "黄芪补气升阳，固表止汗，利水消肿。"}
          for i in range(48)]
    dialog = [{"conversations": [
        {"from": "system", "value": "你是中医助手"},
        {"from": "human", "value": f"麻黄的性味？{i}"}, {"from": "gpt", "value": "辛、微苦，温。"},
        {"from": "human", "value": "归经呢？"}, {"from": "gpt", "value": "归肺、膀胱经。"}]} for i in range(16)]
    corpus = "\n\n".join("四君子汤由人参、白术、茯苓、甘草组成，功用益气健脾。" * 4 for _ in range(60))
    (folder / "qa.json").write_text(json.dumps(qa, ensure_ascii=False), encoding="utf-8")
    (folder / "dialog.json").write_text(json.dumps(dialog, ensure_ascii=False), encoding="utf-8")
    (folder / "corpus.txt").write_text(corpus, encoding="utf-8")
    info = {"qa": {"file_name": "qa.json", "formatting": "alpaca"},
            "dialog": {"file_name": "dialog.json", "formatting": "sharegpt"},
            "corpus": {"file_name": "corpus.txt", "formatting": "text"}}
    (folder / "dataset_info.json").write_text(json.dumps(info), encoding="utf-8")
    return folder


def run_cli(*args: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run `python -m trainer_core ...` as a user would, from the repository root."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "trainer_core", *args], cwd=REPO, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def cli():
    return run_cli


@pytest.fixture(scope="session")
def tuned_run(tmp_path_factory, tiny_model_dir, tiny_data_dir) -> Path:
    """A LoRA run on the tiny model, trained hard enough (lr 5e-2) that its answers differ from the
    base model's. Shared: tests only read it."""
    out = tmp_path_factory.mktemp("tuned") / "run"
    result = run_cli("train", f"model_name_or_path={tiny_model_dir}", f"dataset_dir={tiny_data_dir}", "dataset=qa",
                     f"output_dir={out}", "max_steps=6", "learning_rate=5e-2", "cutoff_len=96", "save_steps=100")
    assert result.returncode == 0, result.stderr[-2000:]
    return out



def start_workbench(args: list[str], output, timeout: float = 60) -> tuple[subprocess.Popen, str]:
    """`python launch.py --port P ARGS` in its own process group, once it answers HTTP (a log-in
    page's 401 counts); output is a file or subprocess.PIPE. Stop it with stop_workbench."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "launch.py", "--port", str(port), *args], cwd=REPO, stdout=output,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + timeout
    while True:
        try:
            urllib.request.urlopen(url + "/", timeout=2).close()
            return proc, url
        except urllib.error.HTTPError:
            return proc, url
        except OSError:
            if proc.poll() is not None:
                said = proc.stdout.read() if proc.stdout else "(see its log)"
                pytest.fail(f"launch.py exited with {proc.returncode}: {said}")
            if time.time() > deadline:
                stop_workbench(proc)
                pytest.fail(f"launch.py did not answer within {timeout:.0f} s")
            time.sleep(0.25)


def stop_workbench(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
