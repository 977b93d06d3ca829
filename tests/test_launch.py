"""launch.py: refuses a public page without a log-in, and serves the workbench within seconds."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from trainer_core.procs import free_port

REPO = Path(__file__).resolve().parent.parent


def run_launch(*args: str, timeout: int = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "launch.py", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize("args, words", [
    (["--host", "0.0.0.0"], "--auth USER:PASSWORD"),
    (["--host", "192.168.1.5", "--port", "7999"], "--auth USER:PASSWORD"),
    (["--share"], "--share makes the workbench public"),
    (["--host", "0.0.0.0", "--auth", "admin"], "USER:PASSWORD, both non-empty"),
])
def test_public_page_needs_auth(args, words):
    started = time.time()
    result = run_launch(*args)
    assert result.returncode == 2
    assert words in result.stderr and "Traceback" not in result.stderr
    assert time.time() - started < 10  # refused before gradio is even imported



def test_page_answers_within_seconds(tmp_path, tiny_data_dir, tiny_model_dir):
    port = free_port()
    started = time.time()
    proc = subprocess.Popen([sys.executable, "launch.py", "--port", str(port), "--workdir", str(tmp_path),
                             "--data_dir", str(tiny_data_dir), "--model", str(tiny_model_dir), "--lang", "en"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        status, page = None, ""
        while time.time() - started < 60 and status is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as response:
                    status, page = response.status, response.read().decode("utf-8", errors="replace")
            except OSError:
                if proc.poll() is not None:
                    pytest.fail(f"launch.py exited with {proc.returncode}: {proc.stdout.read()}")
                time.sleep(0.25)
        elapsed = time.time() - started
        assert status == 200, f"no page after {elapsed:.0f} s"
        assert "ShuZhiQiHuang Tuner" in page  # the title, in the start language
        assert elapsed < 30, f"the page took {elapsed:.1f} s"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
