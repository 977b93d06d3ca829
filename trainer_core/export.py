"""Export a training run for use outside the workbench: merged weights, a model card, GGUF files.

A LoRA run is merged into its full-precision base (also after QLoRA: the adapter goes into the
original weights, never into the 4-bit ones used in training) and saved as a plain transformers
folder; a full fine-tuning run is re-saved in the chosen dtype and shard size. Beside the weights
go a model card with the loss curve, GGUF files for llama.cpp / Ollama and an Ollama Modelfile:

    RUN_DIR/export/
        config.json  generation_config.json  model-0000N-of-0000M.safetensors (+ index)
        tokenizer.json  tokenizer_config.json  chat_template.jinja
        README.md  loss.png  model-f16.gguf  model-q8_0.gguf  Modelfile  export.json

Everything is written into `<output_dir>.partial` and renamed into place at the very end, so a
folder with the export's name is always complete.
"""

from __future__ import annotations

import json
import re
import shutil
import struct
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer_core import runs
from trainer_core.errors import UserError
from trainer_core.jobconfig import (  # noqa: F401 - the job's config and its checks
    DTYPES,
    GGUF_TYPES,
    ExportConfig,
    check_shard_size,
    checked,
    parse_gguf_types,
)
from trainer_core.models import load_for_inference, resolve_model_path, run_base_model
from trainer_core.paths import REPO_ROOT
from trainer_core.tokenization import end_of_turn_id, stop_token_ids

Log = Callable[[str], None]

GGUF_ARCHITECTURES = ("llama", "qwen2")
MARKER_FILE = "export.json"  # written last: a folder holding it is a complete export


# ---------------------------------------------------------------------------------------------
# What to export
# ---------------------------------------------------------------------------------------------

@dataclass
class ExportSource:
    """A base model with a LoRA adapter on top, or a whole model (adapter None)."""

    model: str  # the base for a LoRA adapter ('default', a folder or a hub id); else the model folder
    adapter: Path | None = None
    run_dir: Path | None = None

    def describe(self) -> str:
        return f"{self.model} + LoRA {self.adapter}" if self.adapter else self.model


def source_from_run(run_dir: str | Path) -> ExportSource:
    """A finished training run: its base + adapter/, or its full model/."""
    run_dir = Path(run_dir)
    if not (run_dir / runs.CONFIG_FILE).is_file():
        raise UserError(f"'{run_dir}' is not a run folder (no run.yaml); give a training run's folder with "
                        "--run, or --model BASE --adapter ADAPTER_DIR")
    if (run_dir / "adapter" / "adapter_config.json").is_file():
        return ExportSource(run_base_model(run_dir), run_dir / "adapter", run_dir)
    if (run_dir / "model" / "config.json").is_file():
        return ExportSource(str(run_dir / "model"), None, run_dir)
    raise UserError(f"'{run_dir}' holds no finished adapter/ or model/ (has the run finished?)")


def source_from_paths(model: str | None, adapter: str | Path | None) -> ExportSource:
    """--model BASE [--adapter DIR]; without --model the adapter's own record of its base is used."""
    adapter_dir = Path(adapter) if adapter else None  # an empty --adapter "" means none, not a folder ""
    if adapter_dir is not None:
        config = adapter_dir / "adapter_config.json"
        if not config.is_file():
            raise UserError(f"'{adapter_dir}' is not a LoRA adapter folder (no adapter_config.json)")
        model = model or json.loads(config.read_text(encoding="utf-8")).get("base_model_name_or_path")
    if not model:
        raise UserError("nothing to export: give --run RUN_DIR, or --model BASE (with --adapter DIR for a "
                        "LoRA adapter)")
    return ExportSource(str(model), adapter_dir)


def _as_source(source: ExportSource | str | Path | tuple) -> ExportSource:
    if isinstance(source, ExportSource):
        return source
    if isinstance(source, tuple):
        return source_from_paths(*source)
    return source_from_run(source)


def _model_config(source: ExportSource) -> Any:
    """The (base) model's config, read before any weights are loaded."""
    from transformers import AutoConfig

    path = resolve_model_path(source.model)
    try:
        return AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read the model config of '{source.model}': {exc}") from exc


# ---------------------------------------------------------------------------------------------
# Merged safetensors
# ---------------------------------------------------------------------------------------------

def merge_and_save(source: ExportSource | str | Path | tuple, out_dir: str | Path, dtype: str = "float32",
                   max_shard_size: str | int = "2GB", log: Log = print,
                   on_step: Callable[[str], None] | None = None) -> Path:
    """Load the full-precision base, apply the adapter, merge it in and save a plain model folder.

    `source` is a run folder, an ExportSource or a (base, adapter) pair. The weights are loaded in
    `dtype` (float32 | bfloat16 | float16) and saved in shards of at most `max_shard_size`, with the
    adapter's tokenizer (it carries the chat template used in training) and a generation config
    that stops on the template's end-of-turn token. `on_step` hears "load", "merge" and "save".
    """
    source = _as_source(source)
    check_dtype(dtype)
    config = _model_config(source)
    if getattr(config, "quantization_config", None):
        raise UserError(f"'{source.model}' is a quantized checkpoint; merging into quantized weights loses the "
                        "adapter's precision. Export from the full-precision base model (--model BASE).")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    log(f"Loading {source.describe()} in {dtype} ...")
    model, tokenizer = load_for_inference(source.model, str(source.adapter) if source.adapter else None,
                                          dtype, log=log)
    _step(on_step, "load")
    if source.adapter is not None:
        log("Merging the LoRA adapter into the base weights ...")
        model = model.merge_and_unload()
    _step(on_step, "merge")

    model.config.use_cache = True
    generation = model.generation_config
    eos_ids = generation_eos_ids(tokenizer, generation.eos_token_id)
    generation.eos_token_id = eos_ids[0] if len(eos_ids) == 1 else eos_ids
    generation.pad_token_id = tokenizer.pad_token_id
    log(f"Saving the merged model to {out_dir} (shards of at most {max_shard_size}) ...")
    model.save_pretrained(out_dir, max_shard_size=max_shard_size)
    tokenizer.save_pretrained(out_dir)
    runs.honour_umask(out_dir)
    _step(on_step, "save")
    del model
    return out_dir


def check_dtype(dtype: str) -> None:
    if dtype not in DTYPES:
        raise UserError(f"dtype '{dtype}' is unknown; choose {', '.join(DTYPES)}")


def generation_eos_ids(tokenizer: Any, model_eos: int | list[int] | None) -> list[int]:
    """The eos ids an export writes to generation_config.json: the template's end-of-turn token
    first (what a reader taking a single eos should take), then every stop id chat and evaluation
    stop on (tokenization.stop_token_ids, eos among them), then the model's own, each once. So
    the exported model stops wherever the workbench's chat stopped it."""
    eos_ids = [end_of_turn_id(tokenizer), *stop_token_ids(tokenizer), *_as_list(model_eos)]
    return list(dict.fromkeys(i for i in eos_ids if i is not None))


def _as_list(value: Any) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def _step(on_step: Callable[[str], None] | None, name: str) -> None:
    if on_step is not None:
        on_step(name)


# ---------------------------------------------------------------------------------------------
# Model card
# ---------------------------------------------------------------------------------------------

HYPERPARAMETERS = ("stage", "finetuning_type", "quantization_bit", "lora_rank", "lora_alpha", "lora_dropout",
                   "lora_target", "template", "cutoff_len", "packing", "learning_rate", "lr_scheduler_type",
                   "warmup_steps", "warmup_ratio", "num_train_epochs", "max_steps", "per_device_train_batch_size",
                   "gradient_accumulation_steps", "weight_decay", "max_grad_norm", "val_size", "max_samples",
                   "seed", "bf16", "fp16", "deepspeed", "num_gpus")
LORA_ONLY = ("lora_rank", "lora_alpha", "lora_dropout", "lora_target")

DISCLAIMER = """## 预期用途与免责声明 / Intended use and disclaimer

**中文：** 本模型仅供科研与教学使用（中西医结合与中医药知识的研究、教学和技术评估）。模型输出可能不准确、\
不完整或已经过时，不构成医疗建议、诊断或治疗方案，不能替代执业医师的专业判断。任何与诊疗、用药（包括\
中药处方与剂量）相关的内容，都必须由具备资质的执业医师核实后方可参考。如有身体不适，请及时就医。

**English:** This model is for research and education only (studying, teaching and evaluating
language models on Traditional Chinese and integrated medicine). Its outputs can be wrong,
incomplete or outdated. They are not medical advice, diagnosis or treatment, and do not replace
the judgement of a licensed clinician. Anything concerning diagnosis, treatment or medication
(including herbal prescriptions and doses) must be checked by a licensed clinician before any
use. If you feel unwell, see a doctor.
"""


def write_model_card(export_dir: str | Path, source: ExportSource, settings: dict, log: Log = print) -> Path:
    """README.md (and loss.png when the run logged losses) for the export folder."""
    export_dir = Path(export_dir)
    cfg = _read_run_config(source.run_dir)
    log_entries = runs.read_log(source.run_dir) if source.run_dir else []
    has_curve = write_loss_curve(log_entries, export_dir / "loss.png")
    base = cfg.get("model_name_or_path", source.model if source.adapter else None)
    title = _export_name(source)

    lines = [f"# {title} — 数智岐黄 ShuZhiQiHuang fine-tune", "",
             f"Exported by 数智岐黄 Tuner on {time.strftime('%Y-%m-%d %H:%M')}.", "",
             "| | |", "|---|---|",
             f"| Base model | {_base_description(base) if base else 'not recorded (exported from a model folder)'} |",
             f"| Method | {_method(cfg, source)} |"]
    if cfg:
        lines.append(f"| Training data | {_datasets_line(cfg, 'dataset')} |")
        if cfg.get("eval_dataset"):
            lines.append(f"| Evaluation data | {_datasets_line(cfg, 'eval_dataset')} |")
    lines += _loss_rows(log_entries)
    if source.run_dir:
        lines.append(f"| Run folder | `{source.run_dir}` |")
    lines.append(f"| Saved as | {settings['dtype']} safetensors (shards of at most {settings['max_shard_size']})"
                 + (", GGUF " + ", ".join(settings["gguf"]) if settings["gguf"] else "") + " |")
    lines.append("")

    if cfg:
        lines += ["## Training hyperparameters", "", "| key | value |", "|---|---|"]
        for key in HYPERPARAMETERS:
            if key in cfg and not _irrelevant(key, cfg):
                lines.append(f"| `{key}` | {'—' if cfg[key] in (None, '') else cfg[key]} |")
        lines.append("")
    evals = _eval_headlines(source.run_dir)
    if evals:
        lines += ["## Evaluation", "", *[f"- {line}" for line in evals], ""]
    if has_curve:
        lines += ["## Loss curve", "", "![training and evaluation loss](loss.png)", ""]
    lines += _usage(settings)
    lines.append(DISCLAIMER)
    path = export_dir / "README.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def _read_run_config(run_dir: Path | None) -> dict:
    if run_dir is None:
        return {}
    import yaml

    try:
        return yaml.safe_load((run_dir / runs.CONFIG_FILE).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return {}


def _base_description(base: str) -> str:
    if base in ("", "default"):
        from trainer_core.models import DEFAULT_MODEL_NAME

        return f"{DEFAULT_MODEL_NAME} (the built-in model, `default`)"
    return f"`{base}`"


def _method(cfg: dict, source: ExportSource) -> str:
    if not cfg:
        return "LoRA adapter merged into the base" if source.adapter else "full model"
    stage = {"sft": "supervised fine-tuning (SFT)", "pt": "continued pre-training"}.get(cfg.get("stage", ""), "")
    kind = cfg.get("finetuning_type", "lora")
    if kind == "full":
        return f"full fine-tuning, {stage}"
    what = f"LoRA rank {cfg.get('lora_rank')}, alpha {cfg.get('lora_alpha')}, {stage}"
    if kind == "qlora":
        bits = cfg.get("quantization_bit")
        return f"Q{what} on a {bits}-bit base; adapter merged into the full-precision base weights"
    return f"{what}; adapter merged into the weights"


def _irrelevant(key: str, cfg: dict) -> bool:
    kind = cfg.get("finetuning_type")
    return (key in LORA_ONLY and kind == "full") or (key == "quantization_bit" and kind != "qlora")


def _datasets_line(cfg: dict, key: str) -> str:
    """Each dataset with its number of records, when its files can still be read."""
    names = [n.strip() for n in str(cfg.get(key) or "").split(",") if n.strip()]
    stage = cfg.get("stage", "sft")
    parts = []
    for name in names:
        count = _dataset_records(name, cfg.get("dataset_dir", "data"), stage)
        if count is None:
            parts.append(f"{name}")
            continue
        used = f", at most {cfg['max_samples']} used" if cfg.get("max_samples") and cfg["max_samples"] < count else ""
        parts.append(f"{name} ({count:,} records{used})")
    return ", ".join(parts) or "none recorded"


def _dataset_records(name: str, dataset_dir: str, stage: str) -> int | None:
    from trainer_core.data import read_dataset

    folder = Path(dataset_dir)
    if not folder.is_absolute() and not folder.exists():
        folder = REPO_ROOT / folder
    try:
        examples, _ = read_dataset(name, folder, stage)
    except Exception:  # noqa: BLE001 - the card lists the name alone when the data has moved
        return None
    return len(examples)


def _loss_rows(entries: list[dict]) -> list[str]:
    train = [e for e in entries if e.get("loss") is not None]
    evals = [e for e in entries if e.get("eval_loss") is not None]
    rows = []
    if train:
        last = train[-1]
        rows.append(f"| Final train loss | {last['loss']:.4f} (step {last['step']} of {last.get('total_steps')}; "
                    f"first logged {train[0]['loss']:.4f}) |")
    if evals:
        rows.append(f"| Final eval loss | {evals[-1]['eval_loss']:.4f} (step {evals[-1]['step']}) |")
    return rows


def _eval_headlines(run_dir: Path | None) -> list[str]:
    """One line per RUN_DIR/eval/**/*.json result: task, dataset and the headline metrics."""
    if run_dir is None:
        return []
    lines = []
    for path in sorted((run_dir / "eval").glob("**/*.json")):
        if path.name.startswith(".") or path.name == runs.STATUS_FILE:
            continue
        try:
            result = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(result, dict):
            continue
        metrics = result.get("metrics")
        if not isinstance(metrics, dict):
            metrics = result
        numbers = [f"{k} = {v:.4g}" for k, v in metrics.items()
                   if isinstance(v, int | float) and not isinstance(v, bool)][:6]
        what = " / ".join(str(result[k]) for k in ("task", "dataset", "split") if result.get(k))
        lines.append(f"`{path.relative_to(run_dir)}`: {what or 'result'}: {', '.join(numbers) or 'no numeric metrics'}")
    return lines


def _usage(settings: dict) -> list[str]:
    lines = ["## How to use", "", "```python",
             "from transformers import AutoModelForCausalLM, AutoTokenizer",
             "model = AutoModelForCausalLM.from_pretrained('PATH/TO/THIS/FOLDER')",
             "tokenizer = AutoTokenizer.from_pretrained('PATH/TO/THIS/FOLDER')",
             "```", ""]
    if settings["gguf"]:
        first = f"model-{settings['gguf'][0]}.gguf"
        lines += ["GGUF for llama.cpp and Ollama:", "", "```bash",
                  f"llama-cli -m {first} -cnv        # llama.cpp",
                  "ollama create qihuang -f Modelfile && ollama run qihuang",
                  "```", ""]
    return lines


# ---------------------------------------------------------------------------------------------
# Loss curve: matplotlib when installed, else a minimal PNG drawn here
# ---------------------------------------------------------------------------------------------

def write_loss_curve(entries: list[dict], path: Path) -> bool:
    """loss.png from trainer_log.jsonl entries; False when nothing was logged."""
    train = [(e["step"], e["loss"]) for e in entries if e.get("loss") is not None]
    evals = [(e["step"], e["eval_loss"]) for e in entries if e.get("eval_loss") is not None]
    if not train and not evals:
        return False
    try:
        from matplotlib.figure import Figure
    except ImportError:
        write_png_chart(path, [train, evals])
        return True
    figure = Figure(figsize=(6.4, 3.6), dpi=100)
    axes = figure.subplots()
    if train:
        axes.plot(*zip(*train), label="train loss", color="#1f77b4")
    if evals:
        axes.plot(*zip(*evals), "o-", label="eval loss", color="#d62728")
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)
    return True


def write_png_chart(path: Path, series: list[list[tuple[float, float]]], width: int = 640, height: int = 360) -> None:
    """A line chart without labels (train blue, eval red with dots), as an RGB PNG, in pure Python."""
    colours = [(31, 119, 180), (214, 39, 40)]
    pixels = bytearray(b"\xff" * (width * height * 3))
    points = [p for s in series for p in s]
    x0, x1 = min(p[0] for p in points), max(p[0] for p in points)
    y0, y1 = min(p[1] for p in points), max(p[1] for p in points)
    left, right, top, bottom = 40, width - 20, 20, height - 30

    def to_pixel(x: float, y: float) -> tuple[int, int]:
        px = left + (x - x0) / ((x1 - x0) or 1) * (right - left)
        py = bottom - (y - y0) / ((y1 - y0) or 1) * (bottom - top)
        return round(px), round(py)

    def dot(x: int, y: int, colour: tuple[int, int, int]) -> None:
        if 0 <= x < width and 0 <= y < height:
            pixels[(y * width + x) * 3:(y * width + x) * 3 + 3] = bytes(colour)

    def line(a: tuple[int, int], b: tuple[int, int], colour: tuple[int, int, int]) -> None:
        steps = max(abs(b[0] - a[0]), abs(b[1] - a[1]), 1)
        for i in range(steps + 1):
            dot(round(a[0] + (b[0] - a[0]) * i / steps), round(a[1] + (b[1] - a[1]) * i / steps), colour)

    grey = (120, 120, 120)
    line((left, top), (left, bottom), grey)
    line((left, bottom), (right, bottom), grey)
    for colour, values in zip(colours, series):
        pixel_points = [to_pixel(x, y) for x, y in values]
        for a, b in zip(pixel_points, pixel_points[1:]):
            line(a, b, colour)
        if colour == colours[1]:
            for x, y in pixel_points:
                for dx in range(-2, 3):
                    for dy in range(-2, 3):
                        dot(x + dx, y + dy, colour)
    rows = b"".join(b"\x00" + bytes(pixels[y * width * 3:(y + 1) * width * 3]) for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows, 9))
                     + chunk(b"IEND", b""))


# ---------------------------------------------------------------------------------------------
# GGUF
# ---------------------------------------------------------------------------------------------

# transformers layer names → GGUF block names (llama.cpp's tensor naming).
GGUF_BLOCK_NAMES = {
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
# How a byte-level BPE tokenizer splits text before merging, by llama.cpp's pre-tokenizer name.
PRE_TOKENIZER_REGEXES = {
    "qwen2": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
             r"|\s+(?!\S)|\s+",
    "llama-bpe": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+",
}


def gguf_unsupported_message(architecture: str) -> str:
    return (f"GGUF export supports the {' and '.join(GGUF_ARCHITECTURES)} architectures, not '{architecture}'. "
            "The merged safetensors still work (export with --gguf none); for GGUF use llama.cpp's "
            "convert_hf_to_gguf.py on the exported folder.")


def gguf_tensor_name(hf_name: str) -> str | None:
    """The GGUF name of a transformers tensor; None for tensors GGUF does not store."""
    fixed = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    if hf_name in fixed:
        return fixed[hf_name]
    match = re.fullmatch(r"model\.layers\.(\d+)\.(.+)\.(weight|bias)", hf_name)
    if match and match[2] in GGUF_BLOCK_NAMES:
        return f"blk.{match[1]}.{GGUF_BLOCK_NAMES[match[2]]}.{match[3]}"
    return None


def llama_permute(weights: Any, n_head: int) -> Any:
    """llama.cpp's Q/K row order for Llama: it applies rotary embeddings to interleaved pairs,
    transformers to the two halves of each head. transformers' GGUF loader undoes exactly this
    (`LlamaTensorProcessor._reverse_permute_weights`), so the round trip is exact."""
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def write_gguf(merged_dir: str | Path, out_file: str | Path, outtype: str = "f16", name: str | None = None,
               log: Log = print) -> Path:
    """Write a transformers Llama or Qwen2 folder (with a byte-level BPE tokenizer) as one GGUF file.

    outtype f16: weight matrices in float16; q8_0: in llama.cpp's 8-bit blocks. `name` goes into
    general.name (default: the folder's name). Tensors are read and written one at a time, so
    memory stays near the size of the largest tensor, even for a 14B model.
    """
    import gguf
    import numpy as np
    from transformers import AutoConfig, AutoTokenizer

    if outtype not in GGUF_TYPES:
        raise UserError(f"GGUF type '{outtype}' is unknown; choose {', '.join(GGUF_TYPES)}")
    merged_dir, out_file = Path(merged_dir), Path(out_file)
    config = AutoConfig.from_pretrained(merged_dir)
    arch = config.model_type
    if arch not in GGUF_ARCHITECTURES:
        raise UserError(gguf_unsupported_message(arch))
    rope = getattr(config, "rope_parameters", None) or {}
    rope_theta = rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))
    if rope.get("rope_type", "default") != "default":
        raise UserError(f"GGUF export does not handle rope scaling '{rope.get('rope_type')}'. The merged safetensors "
                        "still work; for GGUF use llama.cpp's convert_hf_to_gguf.py on the exported folder.")
    n_head = config.num_attention_heads
    n_kv_head = getattr(config, "num_key_value_heads", None) or n_head
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_head

    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    vocab = gguf_vocabulary(tokenizer, config.vocab_size)
    quant = {"f16": gguf.GGMLQuantizationType.F16, "q8_0": gguf.GGMLQuantizationType.Q8_0}[outtype]
    file_type = {"f16": gguf.LlamaFileType.MOSTLY_F16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[outtype]

    writer = gguf.GGUFWriter(out_file, arch)
    writer.add_name(name or merged_dir.name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv_head)
    writer.add_rope_freq_base(float(rope_theta))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_rope_dimension_count(head_dim)
    if head_dim != config.hidden_size // n_head:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(file_type)
    if outtype != "f16":
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(vocab["pre"])
    writer.add_token_list(vocab["tokens"])
    writer.add_token_types(vocab["types"])
    writer.add_token_merges(vocab["merges"])
    for key, token_id in vocab["special_ids"].items():
        getattr(writer, f"add_{key}_token_id")(token_id)
    writer.add_add_bos_token(vocab["add_bos"])
    if isinstance(tokenizer.chat_template, str):
        writer.add_chat_template(tokenizer.chat_template)

    try:
        with _SafetensorsFolder(merged_dir) as weights:
            plan = gguf_tensor_plan(weights, config, quant)
            for _, gguf_name, ggml_type, shape, nbytes in plan:
                writer.add_tensor_info(gguf_name, shape, np.dtype(np.float32), nbytes, raw_dtype=ggml_type)
            log(f"Writing {out_file.name}: {len(plan)} tensors, {outtype} ...")
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            for hf_name, gguf_name, ggml_type, _, _ in plan:
                data = weights.get(hf_name)
                if arch == "llama" and ".attn_q." in gguf_name:
                    data = llama_permute(data, n_head)
                elif arch == "llama" and ".attn_k." in gguf_name:
                    data = llama_permute(data, n_kv_head)
                writer.write_tensor_data(_encode(data, ggml_type))
    finally:
        writer.close()
    return out_file


def gguf_tensor_plan(weights: _SafetensorsFolder, config: Any, quant: Any) -> list[tuple]:
    """(transformers name, GGUF name, GGML type, shape, bytes) of every tensor the file holds.
    Norms and biases stay float32, as llama.cpp's converter keeps them; Q8_0 needs whole blocks
    of 32 per row, other rows fall back to float16."""
    import gguf
    import numpy as np

    plan = []
    for hf_name in weights.names():
        gguf_name = gguf_tensor_name(hf_name)
        if gguf_name is None:
            if hf_name.endswith("rotary_emb.inv_freq"):
                continue
            raise UserError(f"the tensor '{hf_name}' has no GGUF name; this {config.model_type} variant is not "
                            "supported. The merged safetensors still work.")
        if gguf_name == "output.weight" and config.tie_word_embeddings:
            continue
        shape = weights.shape(hf_name)
        ggml_type = gguf.GGMLQuantizationType.F32 if len(shape) == 1 else quant
        block, block_bytes = gguf.GGML_QUANT_SIZES[ggml_type]
        if shape[-1] % block:
            ggml_type = gguf.GGMLQuantizationType.F16
            block, block_bytes = gguf.GGML_QUANT_SIZES[ggml_type]
        plan.append((hf_name, gguf_name, ggml_type, shape, int(np.prod(shape)) // block * block_bytes))
    return plan


def _encode(data: Any, ggml_type: Any) -> Any:
    import gguf
    import numpy as np

    if ggml_type == gguf.GGMLQuantizationType.F32:
        return data.astype(np.float32)
    if ggml_type == gguf.GGMLQuantizationType.F16:
        return data.astype(np.float16)
    return gguf.quants.quantize(data, ggml_type)


def gguf_vocabulary(tokenizer: Any, vocab_size: int) -> dict:
    """The tokenizer in GGUF's terms (`tokenizer.ggml.*`): tokens, types, merges, special ids."""
    from gguf import TokenType

    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or "ByteLevel" not in json.dumps(spec.get("pre_tokenizer")):
        raise UserError("GGUF export handles byte-level BPE tokenizers (GPT-2 style: Qwen2, Llama 3, SmolLM); this "
                        "tokenizer is not one. The merged safetensors still work.")
    by_id = {index: token for token, index in model["vocab"].items()}
    added = {entry["id"]: entry for entry in spec.get("added_tokens", [])}
    largest = max([*by_id, *added])
    if largest >= vocab_size:
        raise UserError(f"the tokenizer has token id {largest}, beyond the model's vocab_size {vocab_size}")
    tokens, types = [], []
    for index in range(vocab_size):
        if index in added:
            tokens.append(added[index]["content"])
            types.append(TokenType.CONTROL if added[index].get("special") else TokenType.USER_DEFINED)
        elif index in by_id:
            tokens.append(by_id[index])
            types.append(TokenType.NORMAL)
        else:  # embedding rows past the tokenizer (padded vocabularies, e.g. Qwen2)
            tokens.append(f"[PAD{index}]")
            types.append(TokenType.UNUSED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    special_ids = {"eos": end_of_turn_id(tokenizer), "bos": tokenizer.bos_token_id,
                   "unk": tokenizer.unk_token_id, "pad": tokenizer.pad_token_id}
    special_ids = {k: v for k, v in special_ids.items() if v is not None}
    probe = tokenizer("a")["input_ids"]
    add_bos = tokenizer.bos_token_id is not None and bool(probe) and probe[0] == tokenizer.bos_token_id
    return {"tokens": tokens, "types": types, "merges": merges, "special_ids": special_ids,
            "add_bos": add_bos, "pre": _pre_tokenizer_name(spec.get("pre_tokenizer") or {})}


def _pre_tokenizer_name(pre: dict) -> str:
    """llama.cpp's name for how this tokenizer splits text before BPE (tokenizer.ggml.pre)."""
    parts = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    regexes = [p["pattern"].get("Regex") for p in parts
               if p.get("type") == "Split" and isinstance(p.get("pattern"), dict)]
    for name, regex in PRE_TOKENIZER_REGEXES.items():
        if regex in regexes:
            return name
    byte_level_regex = any(p.get("type") == "ByteLevel" and p.get("use_regex", True) for p in parts)
    digits = any(p.get("type") == "Digits" and p.get("individual_digits") for p in parts)
    if byte_level_regex and not regexes:
        return "smollm" if digits else "gpt-2"
    return "default"


class _SafetensorsFolder:
    """The tensors of a saved model folder (one file or shards), read one at a time as float32 numpy."""

    def __init__(self, folder: Path):
        index = folder / "model.safetensors.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        elif (folder / "model.safetensors").is_file():
            weight_map = None
        else:
            raise UserError(f"'{folder}' has no model.safetensors (or index); is it an exported model folder?")
        self.folder, self.weight_map = folder, weight_map
        self.handles: dict[str, Any] = {}  # file name -> open safetensors handle

    def __enter__(self) -> _SafetensorsFolder:
        from safetensors import safe_open

        files = sorted(set(self.weight_map.values())) if self.weight_map else ["model.safetensors"]
        for name in files:
            self.handles[name] = safe_open(str(self.folder / name), framework="pt")
        if self.weight_map is None:
            self.weight_map = {key: "model.safetensors" for key in self.handles["model.safetensors"].keys()}
        return self

    def __exit__(self, *exc: object) -> None:
        self.handles.clear()

    def names(self) -> list[str]:
        def order(name: str) -> tuple:
            layer = re.match(r"model\.layers\.(\d+)\.", name)
            return (1, int(layer[1]), name) if layer else (0 if "embed" in name else 2, 0, name)

        return sorted(self.weight_map, key=order)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.handles[self.weight_map[name]].get_slice(name).get_shape())

    def get(self, name: str) -> Any:
        return self.handles[self.weight_map[name]].get_tensor(name).float().numpy()


def check_gguf(path: Path, expected_tensors: int | None = None) -> int:
    """Read the file back (memory-mapped, no weights loaded) and return its tensor count."""
    from gguf import GGUFReader

    reader = GGUFReader(path)
    count = len(reader.tensors)
    if expected_tensors is not None and count != expected_tensors:
        raise RuntimeError(f"{path.name} holds {count} tensors, {expected_tensors} expected")
    return count


OLLAMA_TEMPLATES = {
    "<|im_start|>": ('''{{ if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}{{ if .Prompt }}<|im_start|>user
{{ .Prompt }}<|im_end|>
{{ end }}<|im_start|>assistant
{{ .Response }}<|im_end|>
''', ["<|im_end|>", "<|im_start|>"]),
    "<|start_header_id|>": ('''{{ if .System }}<|start_header_id|>system<|end_header_id|>

{{ .System }}<|eot_id|>{{ end }}{{ if .Prompt }}<|start_header_id|>user<|end_header_id|>

{{ .Prompt }}<|eot_id|>{{ end }}<|start_header_id|>assistant<|end_header_id|>

{{ .Response }}<|eot_id|>''', ["<|eot_id|>"]),
}


def write_modelfile(export_dir: Path, gguf_files: list[str], chat_template: str | None) -> Path:
    """An Ollama Modelfile for the GGUF: `ollama create NAME -f Modelfile`."""
    lines = ["# Ollama: ollama create qihuang -f Modelfile && ollama run qihuang",
             f"FROM ./{gguf_files[0]}"]
    lines += [f"# or: FROM ./{name}" for name in gguf_files[1:]]
    for marker, (template, stops) in OLLAMA_TEMPLATES.items():
        if chat_template and marker in chat_template:
            lines.append(f'TEMPLATE """{template}"""')
            lines += [f'PARAMETER stop "{stop}"' for stop in stops]
            break
    else:
        lines.append("# The chat template is stored in the GGUF file (tokenizer.chat_template).")
    path = export_dir / "Modelfile"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------
# The export job
# ---------------------------------------------------------------------------------------------

@dataclass
class ExportPlan:
    """The checked options of one export."""

    source: ExportSource
    output_dir: Path
    dtype: str
    max_shard_size: str | int
    gguf: list[str]


def check_options(cfg: ExportConfig) -> ExportPlan:
    """Every check that needs no weights, so a mistake is reported before minutes of loading: the
    config's keys and rules (ExportConfig: which options go together, dtype, shard size, GGUF
    types), then the folders (run, adapter, output) and the GGUF architecture. The launcher
    (jobs.start_task) calls it before it makes the job's folder."""
    opts = checked(cfg)
    if opts.run:
        source = source_from_run(opts.run)
    else:
        source = source_from_paths(opts.model, opts.adapter)
    dtype = opts.dtype or "float32"
    check_dtype(dtype)
    shard_size = check_shard_size(opts.max_shard_size or "2GB")
    gguf_types = parse_gguf_types(opts.gguf)
    out_dir = Path(opts.output_dir) if opts.output_dir else _default_output_dir(source)
    final_dir = _check_output_dir(out_dir, source, opts.overwrite)
    if gguf_types:
        arch = _model_config(source).model_type
        if arch not in GGUF_ARCHITECTURES:
            raise UserError(gguf_unsupported_message(arch))
    return ExportPlan(source, final_dir, dtype, shard_size, gguf_types)


def run_export(cfg: ExportConfig, log: Log = print) -> dict:
    """The export job: merge (or re-save), GGUF, Modelfile and card, atomically into output_dir.
    Progress goes to cfg.job_dir's trainer_log.jsonl when set. Returns
    {"export_dir", "files": {name: bytes}, "seconds"}."""
    start = time.time()
    plan = check_options(cfg)
    source, final_dir, gguf_types = plan.source, plan.output_dir, plan.gguf
    if source.run_dir and _read_run_config(source.run_dir).get("finetuning_type") == "qlora":
        log("QLoRA run: the adapter is merged into the full-precision base, not into the 4-bit training weights.")

    steps = ["load", "merge", "save", *[f"gguf {t}" for t in gguf_types], "card", "finish"]
    job_dir = cfg.job_dir or None
    done = 0

    def step(name: str) -> None:
        nonlocal done
        done += 1
        if job_dir:
            runs.log_progress(job_dir, done, len(steps), start)
        log(f"[{done}/{len(steps)}] {name} done ({time.time() - start:.0f} s)")

    partial = final_dir.with_name(final_dir.name + ".partial")
    if partial.exists():
        log(f"Removing {partial.name} left by an interrupted export")
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    settings = {"dtype": plan.dtype, "max_shard_size": plan.max_shard_size, "gguf": gguf_types}
    try:
        merge_and_save(source, partial, plan.dtype, plan.max_shard_size, log=log, on_step=step)
        gguf_files = []
        for outtype in gguf_types:
            name = f"model-{outtype}.gguf"
            write_gguf(partial, partial / name, outtype, name=_export_name(source), log=log)
            check_gguf(partial / name)
            gguf_files.append(name)
            step(f"gguf {outtype}")
        if gguf_files:
            write_modelfile(partial, gguf_files, _saved_chat_template(partial))
        write_model_card(partial, source, settings, log=log)
        step("card")
        marker = {"source": {"model": source.model, "adapter": str(source.adapter) if source.adapter else None,
                             "run_dir": str(source.run_dir) if source.run_dir else None},
                  **settings, "created_at": runs.now_iso()}
        runs.write_json_atomic(partial / MARKER_FILE, marker)
        _move_into_place(partial, final_dir)
    except BaseException as exc:
        # An ordinary failure cleans up; a killed process leaves only the .partial folder, which
        # the next export removes. Either way no folder with the export's name is incomplete.
        shutil.rmtree(partial, ignore_errors=True)
        if isinstance(exc, Exception) and runs.is_disk_full(exc):
            raise UserError(runs.disk_full_message(exc, partial) + f" The unfinished export was removed; "
                            f"{final_dir} was left as it was.") from exc
        raise
    step("finish")
    files = {str(p.relative_to(final_dir)): p.stat().st_size for p in sorted(final_dir.rglob("*")) if p.is_file()}
    log(f"Exported to {final_dir} ({sum(files.values()) / 1e6:.1f} MB in {len(files)} files)")
    return {"export_dir": str(final_dir), "files": files, "seconds": round(time.time() - start, 2)}


def _export_name(source: ExportSource) -> str:
    return (source.run_dir or Path(source.adapter or source.model)).name or "model"


def _default_output_dir(source: ExportSource) -> Path:
    if source.run_dir:
        return source.run_dir / "export"
    return Path("outputs") / f"export-{_export_name(source)}"


def _check_output_dir(out_dir: Path, source: ExportSource, overwrite: bool) -> Path:
    """An existing complete export is replaced only with overwrite; anything else is never replaced."""
    out_dir = out_dir.expanduser().resolve()
    protected = [p.resolve() for p in (source.run_dir, source.adapter) if p is not None]
    if out_dir in protected or (out_dir / runs.CONFIG_FILE).exists() or (out_dir / "adapter_config.json").exists():
        raise UserError(f"--output_dir {out_dir} is a run or adapter folder; choose a new folder such as "
                        "RUN_DIR/export")
    if out_dir.exists():
        if (out_dir / MARKER_FILE).is_file():
            if not overwrite:
                raise UserError(f"{out_dir} already holds an export; add --overwrite to replace it, "
                                "or choose another --output_dir")
        elif not out_dir.is_dir() or any(out_dir.iterdir()):
            raise UserError(f"{out_dir} exists and is not an export; choose another --output_dir")
    return out_dir


def _move_into_place(partial: Path, final_dir: Path) -> None:
    """Rename the finished .partial folder to its name; an old export is set aside first and
    deleted only once the new one is in place."""
    old = None
    if final_dir.exists():
        old = final_dir.with_name(f"{final_dir.name}.old-{int(time.time())}")
        final_dir.rename(old)
    partial.rename(final_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _saved_chat_template(folder: Path) -> str | None:
    path = folder / "chat_template.jinja"
    if path.is_file():
        return path.read_text(encoding="utf-8")
    config = folder / "tokenizer_config.json"
    template = json.loads(config.read_text(encoding="utf-8")).get("chat_template") if config.is_file() else None
    return template if isinstance(template, str) else None
