"""Export: merged safetensors, model card, GGUF round trips through transformers' GGUF loader,
atomic output folders, and the seed-style merge script (tiny models; the built-in one once)."""

import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import torch
from conftest import REPO, current_umask
from transformers import AutoModelForCausalLM, AutoTokenizer

from trainer_core import export, runs
from trainer_core.errors import UserError
from trainer_core.jobconfig import ExportConfig
from trainer_core.models import load_for_inference, resolve_model_path

CONVERSATION = [{"role": "user", "content": "黄芪的功效是什么？What does it do?"},
                {"role": "assistant", "content": "黄芪补气升阳，固表止汗。 The quick brown fox."}]


def _opts(**kwargs) -> ExportConfig:
    """The export job's config; GGUF off unless asked for (the job's default is f16)."""
    return ExportConfig(**{"gguf": "none", **kwargs})


@pytest.fixture(scope="module")
def lora_run(tiny_model_dir, tiny_data_dir, tmp_path_factory) -> Path:
    """A tiny LoRA SFT run with a large learning rate, so the adapter visibly changes the model."""
    from conftest import run_cli

    out = tmp_path_factory.mktemp("export-run") / "run"
    result = run_cli("train", f"model_name_or_path={tiny_model_dir}", f"dataset_dir={tiny_data_dir}", "dataset=qa",
                     f"output_dir={out}", "cutoff_len=96", "logging_steps=1", "learning_rate=5e-2", "max_steps=6",
                     "per_device_train_batch_size=4", "val_size=8", "eval_steps=3", "save_steps=100")
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def exported(lora_run, tmp_path_factory) -> dict:
    """One full export of the run: tiny shards, f16 and q8_0 GGUF, progress in a job folder."""
    job_dir = tmp_path_factory.mktemp("export-job")
    eval_dir = lora_run / "eval" / "20260101-000000"
    eval_dir.mkdir(parents=True)
    (eval_dir / "status.json").write_text(json.dumps({"state": "finished"}))
    (eval_dir / "results.json").write_text(json.dumps({"task": "mcq", "dataset": "tcm_mcq", "split": "test",
                                                       "metrics": {"accuracy": 0.625, "n": 48}}))
    out = lora_run / "export"
    result = export.run_export(_opts(run=str(lora_run), output_dir=str(out), max_shard_size="20KB",
                                     gguf="f16,q8_0", job_dir=str(job_dir)), log=lambda m: None)
    return {**result, "job_dir": job_dir}


def _prompt_ids(tokenizer) -> torch.Tensor:
    text = tokenizer.apply_chat_template(CONVERSATION, tokenize=False)
    return tokenizer(text, return_tensors="pt")["input_ids"]


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


def _gguf_alone(gguf_file: Path, tmp_path: Path) -> Path:
    """The GGUF file in a folder of its own, as llama.cpp or Ollama users get it."""
    folder = tmp_path / f"gguf-{gguf_file.stem}"
    folder.mkdir()
    shutil.copy(gguf_file, folder / gguf_file.name)
    return folder


def test_merged_model_matches_base_plus_adapter(exported, lora_run, tiny_model_dir):
    reference, tokenizer = load_for_inference(str(tiny_model_dir), str(lora_run / "adapter"), "float32")
    ids = _prompt_ids(tokenizer)
    tuned = _logits(reference, ids)
    with reference.disable_adapter():
        base = _logits(reference, ids)
    assert (tuned - base).abs().max() > 1e-2  # the adapter is not a no-op
    merged = AutoModelForCausalLM.from_pretrained(exported["export_dir"], dtype=torch.float32)
    assert torch.allclose(_logits(merged, ids), tuned, atol=1e-5)
    assert merged.config.use_cache is True


def test_export_folder_has_shards_tokenizer_and_progress(exported):
    folder = Path(exported["export_dir"])
    shards = sorted(folder.glob("model-*-of-*.safetensors"))
    assert len(shards) >= 3 and (folder / "model.safetensors.index.json").is_file()
    assert set(exported["files"]) >= {"config.json", "generation_config.json", "tokenizer.json", "README.md",
                                      "loss.png", "model-f16.gguf", "model-q8_0.gguf", "Modelfile", "export.json"}
    assert exported["files"]["model-f16.gguf"] == (folder / "model-f16.gguf").stat().st_size
    tokenizer = AutoTokenizer.from_pretrained(folder)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert json.loads((folder / "generation_config.json").read_text())["eos_token_id"] in (im_end, [im_end])
    assert "<|im_start|>" in tokenizer.chat_template
    assert not folder.with_name(folder.name + ".partial").exists()
    assert {p.stat().st_mode & 0o777 for p in folder.iterdir()} == {0o666 & ~current_umask()}  # safetensors: 0600
    progress = runs.read_log(exported["job_dir"])
    assert [e["step"] for e in progress] == list(range(1, 8)) and {e["total_steps"] for e in progress} == {7}


def test_model_card_and_loss_curve(exported, lora_run, tiny_model_dir):
    folder = Path(exported["export_dir"])
    card = (folder / "README.md").read_text(encoding="utf-8")
    final_loss = [e["loss"] for e in runs.read_log(lora_run) if e["loss"] is not None][-1]
    eval_loss = [e["eval_loss"] for e in runs.read_log(lora_run) if e["eval_loss"] is not None][-1]
    assert str(tiny_model_dir) in card and "qa (48 records)" in card
    assert f"{final_loss:.4f}" in card and f"{eval_loss:.4f}" in card
    assert "LoRA rank 8" in card and "| `learning_rate` | 0.05 |" in card
    assert "mcq / tcm_mcq / test: accuracy = 0.625, n = 48" in card and "status.json" not in card
    assert "不构成医疗建议" in card and "not medical advice" in card and "licensed clinician" in card
    png = (folder / "loss.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and png[12:16] == b"IHDR"


def test_loss_curve_without_matplotlib_is_still_a_png(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import fails as if not installed
    entries = [{"step": 1, "loss": 3.0}, {"step": 2, "loss": 2.5, "eval_loss": None}, {"step": 3, "eval_loss": 2.2}]
    assert export.write_loss_curve(entries, tmp_path / "loss.png")
    data = (tmp_path / "loss.png").read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    width, height = struct.unpack(">II", data[16:24])
    idat_length = struct.unpack(">I", data[33:37])[0]
    assert data[37:41] == b"IDAT" and (width, height) == (640, 360)
    assert len(zlib.decompress(data[41:41 + idat_length])) == height * (1 + width * 3)
    assert not export.write_loss_curve([], tmp_path / "none.png")


@pytest.mark.parametrize("outtype, tolerance", [("f16", 2e-3), ("q8_0", 2e-2)])
def test_gguf_round_trip_through_transformers(exported, outtype, tolerance, tmp_path):
    folder = Path(exported["export_dir"])
    merged = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = _prompt_ids(tokenizer)
    alone = _gguf_alone(folder / f"model-{outtype}.gguf", tmp_path)
    gguf_model = AutoModelForCausalLM.from_pretrained(alone, gguf_file=f"model-{outtype}.gguf", dtype=torch.float32)
    gguf_tokenizer = AutoTokenizer.from_pretrained(alone, gguf_file=f"model-{outtype}.gguf")
    text = tokenizer.apply_chat_template(CONVERSATION, tokenize=False)
    assert gguf_tokenizer(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert gguf_tokenizer.eos_token == "<|im_end|>" and gguf_tokenizer.chat_template == tokenizer.chat_template
    expected = _logits(merged, ids)
    assert (_logits(gguf_model, ids) - expected).abs().max() <= tolerance * expected.abs().max() + 1e-4


def test_modelfile_for_ollama(exported):
    modelfile = (Path(exported["export_dir"]) / "Modelfile").read_text()
    assert "FROM ./model-f16.gguf" in modelfile and "# or: FROM ./model-q8_0.gguf" in modelfile
    assert "{{ .System }}" in modelfile and "{{ .Prompt }}" in modelfile
    assert 'PARAMETER stop "<|im_end|>"' in modelfile


def test_qwen2_gguf_round_trip(tiny_model_dir, tmp_path):
    """Qwen2: q/k/v biases, untied output head, embedding rows past the tokenizer, no Q/K permutation."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=len(tokenizer) + 8, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=False, rope_theta=1e6, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    model = Qwen2ForCausalLM(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.normal_(0, 0.5)
    model.save_pretrained(tmp_path / "qwen")
    tokenizer.save_pretrained(tmp_path / "qwen")
    (tmp_path / "gguf").mkdir()
    export.write_gguf(tmp_path / "qwen", tmp_path / "gguf" / "qwen.gguf", "f16", log=lambda m: None)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "gguf", gguf_file="qwen.gguf", dtype=torch.float32)
    assert type(loaded).__name__ == "Qwen2ForCausalLM" and loaded.config.tie_word_embeddings is False
    ids = _prompt_ids(tokenizer)
    expected = _logits(model, ids)
    assert (_logits(loaded, ids) - expected).abs().max() <= 2e-3 * expected.abs().max() + 1e-4


def test_pre_tokenizer_names_for_llama_cpp():
    from tokenizers import Regex, pre_tokenizers
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    qwen2 = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
                                     pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    smollm = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                      pre_tokenizers.ByteLevel(add_prefix_space=False)])
    gpt2 = pre_tokenizers.ByteLevel(add_prefix_space=False)
    names = [export._pre_tokenizer_name(json.loads(p.__getstate__())) for p in (qwen2, smollm, gpt2)]
    assert names == ["qwen2", "smollm", "gpt-2"]


def test_full_finetuning_run_is_resaved(lora_run, tiny_model_dir, tmp_path):
    """A full run's model/ is re-saved (no merge) in the chosen dtype, with its card and GGUF."""
    import yaml

    run = tmp_path / "full-run"
    run.mkdir()
    cfg = yaml.safe_load((lora_run / "run.yaml").read_text())
    (run / "run.yaml").write_text(yaml.safe_dump({**cfg, "finetuning_type": "full", "output_dir": str(run)}))
    shutil.copytree(tiny_model_dir, run / "model")
    result = export.run_export(_opts(run=str(run), gguf="f16"), log=lambda m: None)
    assert result["export_dir"] == str((run / "export").resolve())
    card = (run / "export" / "README.md").read_text(encoding="utf-8")
    assert "full fine-tuning" in card and "lora_rank" not in card
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids = _prompt_ids(tokenizer)
    original = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    resaved = AutoModelForCausalLM.from_pretrained(run / "export", dtype=torch.float32)
    assert torch.equal(_logits(original, ids), _logits(resaved, ids))


@pytest.mark.train
def test_builtin_model_gguf_f16_round_trip(tmp_path):
    """The built-in SmolLM2-135M (Llama: GQA 9/3 heads, tied embeddings), base only, f16."""
    base = resolve_model_path("default", log=lambda m: None)
    (tmp_path / "gguf").mkdir()
    export.write_gguf(base, tmp_path / "gguf" / "smollm2-f16.gguf", "f16", log=lambda m: None)
    tokenizer = AutoTokenizer.from_pretrained(base)
    text = tokenizer.apply_chat_template([{"role": "user", "content": "黄芪的功效是什么？"}], tokenize=False,
                                         add_generation_prompt=True)
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    # (The GGUF tokenizer round trip is checked on the tiny model: parsing this 49k vocabulary
    # through transformers' GGUF reader costs ~10 s per load.)
    expected = _logits(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), ids)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "gguf", gguf_file="smollm2-f16.gguf", dtype=torch.float32)
    got = _logits(loaded, ids)
    assert (got - expected).abs().max() <= 5e-3 * expected.abs().max()
    assert torch.equal(got[0].argmax(-1), expected[0].argmax(-1))


def test_interrupted_export_leaves_nothing_that_looks_complete(lora_run, tmp_path, monkeypatch):
    out = tmp_path / "export"

    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(export, "write_model_card", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        export.run_export(_opts(run=str(lora_run), output_dir=str(out)), log=lambda m: None)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()

    # A killed export leaves its .partial folder; the next one removes it before starting.
    stale = tmp_path / "export.partial"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half a file")
    result = export.run_export(_opts(run=str(lora_run), output_dir=str(out)), log=lambda m: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]
    assert (out / export.MARKER_FILE).is_file() and result["files"]["model.safetensors"] > 1000

    with pytest.raises(UserError, match="already holds an export"):
        export.run_export(_opts(run=str(lora_run), output_dir=str(out)), log=lambda m: None)
    export.run_export(_opts(run=str(lora_run), output_dir=str(out), overwrite=True, dtype="bfloat16"),
                      log=lambda m: None)
    assert json.loads((out / export.MARKER_FILE).read_text())["dtype"] == "bfloat16"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


def test_bad_input_is_a_user_error(lora_run, tiny_model_dir, tmp_path):
    from transformers import GPT2Config

    with pytest.raises(UserError, match="not a run folder"):
        export.run_export(_opts(run=str(tmp_path)))
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    shutil.copy(lora_run / "run.yaml", unfinished / "run.yaml")
    with pytest.raises(UserError, match="no finished adapter"):
        export.run_export(_opts(run=str(unfinished)))
    with pytest.raises(UserError, match="not a LoRA adapter folder"):
        export.run_export(_opts(model=str(tiny_model_dir), adapter=str(tmp_path)))
    with pytest.raises(UserError, match="--gguf"):
        export.run_export(_opts(run=str(lora_run), output_dir=str(tmp_path / "x"), gguf="q4"))
    with pytest.raises(UserError, match="run or adapter folder"):
        export.run_export(_opts(run=str(lora_run), output_dir=str(lora_run)))
    GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=64).save_pretrained(tmp_path / "gpt2")
    with pytest.raises(UserError, match="not 'gpt2'.*merged safetensors still work"):
        export.run_export(_opts(model=str(tmp_path / "gpt2"), output_dir=str(tmp_path / "y"), gguf="f16"))
    assert not (tmp_path / "y").exists() and not (tmp_path / "y.partial").exists()


@pytest.mark.train
def test_merge_script_runs_the_export_job(lora_run, tmp_path):
    script = REPO / "scripts" / "merge_lora_shuzhiqihuang.sh"
    settings = ("RUN_DIR", "BASE_MODEL_PATH", "ADAPTER_PATH", "OUTPUT_DIR", "DTYPE", "GGUF", "OVERWRITE")
    env = {**{k: v for k, v in os.environ.items() if k not in settings}, "PYTHONUNBUFFERED": "1"}
    missing = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "RUN_DIR" in missing.stderr
    out = tmp_path / "merged"
    env.update(RUN_DIR=str(lora_run), OUTPUT_DIR=str(out), GGUF="q8_0")
    result = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (out / "model-q8_0.gguf").is_file() and (out / "Modelfile").is_file()
    assert json.loads((out / export.MARKER_FILE).read_text())["dtype"] == "bfloat16"
    assert AutoModelForCausalLM.from_pretrained(out).dtype == torch.bfloat16
