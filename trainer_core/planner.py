"""Will it fit, how long will it take: a memory and time plan for a run, before it starts.

`plan(config, hardware)` reads the model's config.json alone (no weights) and counts, per GPU,
what a training step of *this* trainer holds at its peak, and how long steps, epochs and the run
take. Everything is plain arithmetic on the architecture numbers and the run config; every
constant below is either a datasheet figure (with its source) or a stated assumption.

What it counts, and why each term is what it is (the trainer's own choices, read from the code):

- Weights. Without DeepSpeed the trainer loads LoRA and full models in fp32 and autocasts the
  matmuls (trainer_core/models.py `load_model`), so weights are 4 bytes each even under bf16.
  DeepSpeed with bf16/fp16 casts the module to half precision (2 bytes). QLoRA stores the decoder's
  linear weights in 4-bit NF4 with double quantisation (bitsandbytes: 4 bits, one 8-bit absmax per
  64 weights, one fp32 absmax per 256 of those) and keeps the rest (embeddings, head, norms) in fp32,
  because peft's `prepare_model_for_kbit_training` upcasts every bf16/fp16 parameter to fp32.
- LoRA adapters: rank x (in + out) per adapted linear layer; 'all' = every linear layer of the
  decoder (not the head), as `models.lora_target_modules` picks them.
- Gradients and AdamW (transformers' default `adamw_torch_fused`: two fp32 states per trainable
  parameter, no temporaries). DeepSpeed with half precision adds an fp32 master copy and an fp32
  gradient of the partition (ZeRO paper: 2 + 2 + 12 bytes per parameter), sharded by stage.
- Activations: the tensors autograd keeps between forward and backward, per layer and token,
  counted the way this trainer's layers keep them (bench/activation_memory.py measures them):
  the model's own RMSNorm keeps its input; the lean SwiGLU block keeps gate and up only
  (trainer_core/lean_layers.py); SDPA keeps q, k, v, its output and the log-sum-exp; a padded or
  packed batch adds a float mask per layer and makes k and v full-width (transformers' repeat_kv);
  each LoRA keeps its rank-r middle; autocast keeps a half-precision copy of every input it casts
  and of every frozen weight whose input needs a gradient. The loss (trainer_core/loss.py) keeps
  the trained rows' hidden-state gradient on the fused path; under ZeRO-3 (or for architectures
  without the fused path) the trained rows' logits are real tensors, and a model outside the
  allow-list computes logits for every position.
- Gradient checkpointing keeps each layer's input and recomputes one layer at a time.
- DeepSpeed's buffers (the ZeRO-1/2 reduce bucket, ZeRO-3's gathered layers and buckets) and a CUDA
  context; ZeRO-3 offload moves parameters and optimizer to the host (counted per node).

Time: FLOPs per step (6 per parameter and token for full tuning, 4 for LoRA whose frozen weights
need no weight gradients, plus the adapters, attention, and a forward's worth more under
gradient checkpointing), divided by the GPU kind's datasheet peak times an assumed utilisation;
plus ZeRO communication (our presets do not overlap it) and offload transfers.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer_core.config import PREFERENCE_STAGES, TrainConfig, auto_target, batch_candidates
from trainer_core.errors import UserError
from trainer_core.paths import PRESETS_DIR

GIB = 2**30
SHIPPED_MODELS_DIR = PRESETS_DIR / "models"

# ---- GPU kinds ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class GpuKind:
    """One kind of accelerator: what the plan needs to know of it.

    memory_gib: the datasheet's memory (HBM and GDDR sizes are binary, so GB read as GiB).
    peak_half_flops: dense bf16 (V100: fp16) tensor-core FLOP/s with fp32 accumulation, the
    datasheet's figure without structured sparsity. peak_fp32_flops: what fp32 training runs at
    (TF32 tensor cores from Ampere on, which the trainer turns on; FP32 cores on V100).
    mfu: the assumed share of that peak a step achieves (an assumption, not a measurement; a measured
    figure replaces it through Hardware.mfu, `plan --mfu`).
    link_bytes_per_s: GPU-to-GPU bandwidth inside a node, one direction (NVLink, or PCIe for
    cards without it). pcie_bytes_per_s: host-to-GPU, for ZeRO-3 offload."""

    name: str
    memory_gib: float
    peak_half_flops: float
    peak_fp32_flops: float
    mfu: float
    link_bytes_per_s: float
    pcie_bytes_per_s: float
    bf16: bool
    source: str


TFLOPS = 1e12
GBPS = 1e9
# Datasheets: NVIDIA H100 Tensor Core GPU datasheet (SXM5: BF16 1,979 TFLOPS with sparsity, TF32
# 989; NVLink 900 GB/s both ways; PCIe Gen5); NVIDIA H200 datasheet (same compute as H100 SXM,
# 141 GB HBM3e); NVIDIA A100 datasheet (BF16 312 / 624 sparse, TF32 156, NVLink 600 GB/s, PCIe
# Gen4); NVIDIA Ada Lovelace architecture whitepaper, appendix (GeForce RTX 4090: 165.2 BF16
# TFLOPS with FP32 accumulate dense, 82.6 TF32; no NVLink); NVIDIA L40S datasheet (BF16 362.05 /
# 733 sparse, TF32 183; PCIe Gen4, no NVLink); NVIDIA V100 datasheet (SXM2: 125 tensor TFLOPS fp16,
# 15.7 FP32, NVLink 300 GB/s both ways, PCIe Gen3; no bf16). Effective PCIe: Gen3 x16 12 GB/s,
# Gen4 x16 25 GB/s, Gen5 x16 50 GB/s one way (an assumption: ~80 % of the link's raw rate).
# The mfu column is an assumption: HF-Trainer-style fine-tuning with SDPA attention commonly
# reaches 35-45 % of the dense peak on A100 and a lower share on Hopper's higher peak.
GPU_KINDS: dict[str, GpuKind] = {k.name: k for k in (
    GpuKind("H100-80GB", 80, 989.4 * TFLOPS, 494.7 * TFLOPS, 0.35, 450 * GBPS, 50 * GBPS, True,
            "NVIDIA H100 datasheet (SXM5)"),
    GpuKind("H200-141GB", 141, 989.4 * TFLOPS, 494.7 * TFLOPS, 0.35, 450 * GBPS, 50 * GBPS, True,
            "NVIDIA H200 datasheet (SXM)"),
    GpuKind("A100-40GB", 40, 312 * TFLOPS, 156 * TFLOPS, 0.40, 300 * GBPS, 25 * GBPS, True,
            "NVIDIA A100 datasheet (SXM4)"),
    GpuKind("A100-80GB", 80, 312 * TFLOPS, 156 * TFLOPS, 0.40, 300 * GBPS, 25 * GBPS, True,
            "NVIDIA A100 datasheet (SXM4)"),
    GpuKind("RTX4090-24GB", 24, 165.2 * TFLOPS, 82.6 * TFLOPS, 0.35, 25 * GBPS, 25 * GBPS, True,
            "NVIDIA Ada Lovelace whitepaper (GeForce RTX 4090)"),
    GpuKind("L40S-48GB", 48, 362.05 * TFLOPS, 183 * TFLOPS, 0.35, 25 * GBPS, 25 * GBPS, True,
            "NVIDIA L40S datasheet"),
    GpuKind("V100-32GB", 32, 125 * TFLOPS, 15.7 * TFLOPS, 0.30, 150 * GBPS, 12 * GBPS, False,
            "NVIDIA V100 datasheet (SXM2; fp16 tensor cores, no bf16)"),
)}

# The CPU has no datasheet figure: its peak is cores x clock x fp32 FLOPs per cycle, with 32 per
# cycle (two 256-bit FMA units: 2 x 8 lanes x 2) and the clock read from /proc/cpuinfo (2.5 GHz when
# unknown). CPU_MFU: the share of that a training step reached on the development machine
# (bench/planner_check.py measures it; bench/RESULTS.md, "Planner: predicted vs measured").
CPU_FLOPS_PER_CYCLE = 32
CPU_DEFAULT_HZ = 2.5e9
CPU_MFU = 0.30
CPU = "CPU"
# A training process on the CPU before its model: Python with torch, transformers and peft imported,
# the tokenizer and the sample data loaded (480 MiB RSS measured on the development machine).
CPU_PROCESS_BYTES = 480 * 2**20
# What a CPU process's first training step allocates once and keeps for the later steps (the autograd
# engine's and oneDNN's buffers, caches of the first forward pass): 18-26 MiB measured on the
# development machine, the first step against the second (bench/planner_check.py).
CPU_FIRST_STEP_BYTES = 24 * 2**20

# Per GPU, beyond the tensors: the CUDA context with cuBLAS/cuDNN workspaces and NCCL buffers
# (typically 0.5-1 GiB as nvidia-smi shows it; 1 GiB assumed), and the caching allocator's
# fragmentation, assumed 10 % of what a step allocates and frees (activations, transients).
CUDA_CONTEXT_BYTES = 1 * GIB
ALLOCATOR_SLACK = 0.10
# Between nodes: one 200 Gb/s InfiniBand link per GPU, ~25 GB/s one way (an assumption).
INTER_NODE_BYTES_PER_S = 25 * GBPS
# DeepSpeed's CPU Adam on the host for ZeRO-3 offload: parameters updated per second per node
# (an assumption; it depends on the host's cores and memory bandwidth).
CPU_ADAM_PARAMS_PER_S = 2e9
# bitsandbytes' 4-bit matmuls dequantize every weight in forward and backward: a QLoRA step is
# assumed to run at 70 % of the LoRA step's speed (an assumption; it varies by GPU and shape).
QLORA_SPEED = 0.70

# What the trainer keeps, per its code (see the module docstring): the lean RMSNorm of
# trainer_core/lean_layers.py is set as an instance `forward`, and transformers' kernels
# integration sets every hub-kernel layer's forward again on `model.train()`, which the Trainer
# calls before its steps; so in a training step RMSNorm runs the model's own forward and keeps its
# input (bench/activation_memory.py on the built-in model measures exactly that). The lean SwiGLU
# block is not a hub-kernel layer and stays.
LEAN_NORMS_IN_TRAINING = False
# The fused loss computes logits a slice at a time: trainer_core/loss.py CHUNK_ELEMENTS.
LOSS_CHUNK_ELEMENTS = 2**23


@dataclass(frozen=True)
class Hardware:
    """What the run has: `gpus` per node of one kind, on `nodes` nodes. For the CPU, `memory_bytes`
    is the host's RAM and `peak_flops` its computed peak; for a GPU both come from the kind
    (a detected GPU's own memory when detected)."""

    kind: str
    gpus: int = 1
    nodes: int = 1
    memory_bytes: int = 0
    peak_flops: float = 0.0
    host_memory_bytes: int | None = None
    detected: bool = False
    mfu: float | None = None  # a measured utilisation (`plan --mfu`), used instead of the kind's assumed one
    mfu_source: str = ""  # where that figure comes from, for the plan's assumptions

    @property
    def world(self) -> int:
        return max(1, self.gpus) * max(1, self.nodes)

    @property
    def gpu(self) -> GpuKind | None:
        return GPU_KINDS.get(self.kind)

    def label(self) -> str:
        nodes = f"{self.nodes}x" if self.nodes > 1 else ""
        return f"{nodes}{self.gpus}x{self.kind}"


def gpu_hardware(kind: str, gpus: int = 1, nodes: int = 1) -> Hardware:
    """Hardware of a kind in the table (or CPU)."""
    name = kind_name(kind)
    if name == CPU:
        return cpu_hardware(gpus, nodes)
    gpu = GPU_KINDS[name]
    return Hardware(name, gpus, nodes, int(gpu.memory_gib * GIB), gpu.peak_half_flops)


def kind_name(text: str) -> str:
    """The table's name for a kind as a user may write it (case, dashes and 'GB' optional):
    a100-40gb, A100_40GB, a100 -> A100-40GB (the smaller memory where the memory is left out)."""
    key = re.sub(r"[^a-z0-9]", "", text.lower())
    if key == "cpu":
        return CPU
    names = {re.sub(r"[^a-z0-9]", "", name.lower()): name for name in GPU_KINDS}
    if key in names:
        return names[key]
    if key + "gb" in names:
        return names[key + "gb"]
    matches = sorted((GPU_KINDS[n] for k, n in names.items() if k.startswith(key)), key=lambda g: g.memory_gib)
    if matches and key:
        return matches[0].name
    raise UserError(f"unknown GPU kind '{text}'; the planner knows {', '.join([*GPU_KINDS, CPU])}")


def parse_gpus(text: str) -> Hardware:
    """`4xA100-40GB`, `A100-40GB` (one), `2x8xH100-80GB` (2 nodes of 8), `CPU`."""
    parts = [p for p in re.split(r"[x×*]", text.strip(), flags=re.IGNORECASE) if p] if text else []
    counts: list[int] = []
    while parts and parts[0].strip().isdigit():
        counts.append(int(parts.pop(0)))
    kind = "x".join(parts).strip()  # a kind's own name holds no 'x' but RTX4090: rejoin it
    if not kind or len(counts) > 2 or any(c < 1 for c in counts):
        raise UserError(f"--gpus '{text}': write COUNTxKIND (4xA100-40GB), NODESxCOUNTxKIND (2x8xH100-80GB) "
                        f"or a kind alone; kinds: {', '.join([*GPU_KINDS, CPU])}")
    nodes, gpus = (counts[0], counts[1]) if len(counts) == 2 else (1, counts[0] if counts else 1)
    return gpu_hardware(kind, gpus, nodes)


def cpu_hardware(processes: int = 1, nodes: int = 1) -> Hardware:
    """This machine's CPU: RAM from /proc/meminfo, peak from cores x clock x FLOPs per cycle."""
    cores = os.cpu_count() or 1
    return Hardware(CPU, processes, nodes, _host_memory() or 0, cores * _cpu_hz() * CPU_FLOPS_PER_CYCLE,
                    host_memory_bytes=_host_memory())


def detect_hardware(num_gpus: int = 1) -> Hardware:
    """The GPUs this machine has (torch.cuda: count, name, memory), `num_gpus` of them used; else the
    CPU with its RAM. A GPU not in the table keeps its own memory and takes the nearest kind's speed.
    Without an NVIDIA driver there is no GPU to ask about, and torch is not imported (seconds)."""
    if not (Path("/proc/driver/nvidia/version").exists() or shutil.which("nvidia-smi")):
        return dataclasses.replace(cpu_hardware(), detected=True)
    try:
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # noqa: BLE001 - a broken CUDA setup plans for the CPU rather than failing
        count = 0
    if count == 0:
        return dataclasses.replace(cpu_hardware(), detected=True)
    props = torch.cuda.get_device_properties(0)
    kind = _match_kind(props.name, props.total_memory)
    used = min(count, num_gpus) if num_gpus > 0 else 1
    gpu = GPU_KINDS[kind]
    return Hardware(kind, used, 1, int(props.total_memory), gpu.peak_half_flops,
                    host_memory_bytes=_host_memory(), detected=True)


def _match_kind(device_name: str, total_memory: int) -> str:
    """The table's kind for a CUDA device name and memory (an unknown card: the one nearest in memory)."""
    name = device_name.lower().replace(" ", "")
    gib = total_memory / GIB
    candidates = [k for k in GPU_KINDS.values() if re.sub(r"-.*", "", k.name).lower() in name]
    pool = candidates or list(GPU_KINDS.values())
    return min(pool, key=lambda k: abs(k.memory_gib - gib)).name


def measured_mfu(text: str, finetuning_type: str, kind: str) -> tuple[float, str]:
    """`plan --mfu`: a utilisation as a number (0.42, or 42%), or the JSON file the GPU check writes
    (bench/planner_gpu.py, planner_gpu.json), whose measured utilisation for this finetuning_type
    (QLoRA: LoRA's; its 4-bit slowdown is applied on top) is taken when it was measured on `kind`.
    Returns (mfu, where it comes from)."""
    value = text.strip()
    number = _share(value)
    if number is not None:
        mfu, source = number, f"given (--mfu {value})"
    else:
        mfu, source = _mfu_from_check(Path(value).expanduser(), text, finetuning_type, kind)
    if not 0 < mfu <= 1:
        raise UserError(f"--mfu '{text}': a utilisation is a share of the peak, above 0 and at most 1 (or 100%)")
    return mfu, source


def _share(value: str) -> float | None:
    """0.42 or 42% as a share; None when the text is not a number."""
    try:
        return float(value[:-1]) / 100 if value.endswith("%") else float(value)
    except ValueError:
        return None


def _mfu_from_check(path: Path, text: str, finetuning_type: str, kind: str) -> tuple[float, str]:
    if not path.is_file():
        raise UserError(f"--mfu '{text}': neither a number (0.42 or 42%) nor a file (the GPU check's "
                        "planner_gpu.json)")
    try:
        measured = json.loads(path.read_text(encoding="utf-8"))
        by_method, measured_kind = measured["mfu"], str(measured["kind"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"--mfu {path}: not the GPU check's planner_gpu.json (it needs 'kind' and 'mfu'): "
                        f"{exc}") from None
    method = "lora" if finetuning_type == "qlora" else finetuning_type
    if measured_kind != kind:
        raise UserError(f"--mfu {path}: measured on {measured_kind}, the plan is for {kind}; give the number "
                        "itself (--mfu 0.4) to use it anyway")
    if not isinstance(by_method, dict) or by_method.get(method) is None:
        known = ", ".join(sorted(by_method)) if isinstance(by_method, dict) else "none"
        raise UserError(f"--mfu {path}: no measured utilisation for finetuning_type {method} (it has {known})")
    return float(by_method[method]), f"measured by the GPU check ({path.name}, {measured_kind}, {method})"


def _host_memory(field: str = "MemTotal:") -> int | None:
    """A /proc/meminfo figure in bytes: the RAM (MemTotal), or what can be had now (MemAvailable)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cpu_hz() -> float:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("cpu MHz"):
                return float(line.split(":", 1)[1]) * 1e6
    except (OSError, ValueError):
        pass
    return CPU_DEFAULT_HZ


# ---- the model's shape --------------------------------------------------------------------------

# What transformers' config classes assume where a config.json leaves a key out (read without
# transformers: `load_model_shape(..., light=True)`); everything else defaults as in Llama's.
_GEMMA = {"tie_word_embeddings": True, "head_dim": 256}
# Architectures whose parameters the planner counts from config.json (each checked against the
# real model built on the meta device in tests/test_planner.py).
# mlp: "swiglu" (gate, up, down; lean in trainer_core/lean_layers.py where allow-listed) or
# "geglu" (Gemma's gelu-gated MLP: same weights, the model's own layers).
FAMILIES: dict[str, dict[str, Any]] = {
    "llama": {"qkv_bias": "attention_bias", "o_bias": "attention_bias", "mlp_bias": "mlp_bias"},
    "granite": {"qkv_bias": "attention_bias", "o_bias": "attention_bias", "mlp_bias": "mlp_bias"},
    "mistral": {},
    "qwen2": {"qkv_bias": True},  # Qwen2/2.5: biases on q, k and v, always
    "qwen3": {"qkv_bias": "attention_bias", "o_bias": "attention_bias", "qk_norm": True,
              "defaults": {"head_dim": 128}},
    "gemma": {"qkv_bias": "attention_bias", "o_bias": "attention_bias", "mlp": "geglu", "defaults": _GEMMA},
    "gemma2": {"qkv_bias": "attention_bias", "o_bias": "attention_bias", "mlp": "geglu", "norms": 4,
               "eager_attention": True, "defaults": _GEMMA},  # attention logit soft-capping: no SDPA
    "gemma3_text": {"qkv_bias": "attention_bias", "o_bias": "attention_bias", "mlp": "geglu", "norms": 4,
                    "qk_norm": True, "defaults": _GEMMA},
    "phi3": {"fused": True},  # qkv_proj and gate_up_proj are single linear layers
}


@dataclass(frozen=True)
class ModelShape:
    """The architecture numbers a plan needs, read from config.json."""

    model_type: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied: bool
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False
    norms_per_layer: int = 2
    mlp: str = "swiglu"
    fused: bool = False
    eager_attention: bool = False

    @property
    def q_width(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_width(self) -> int:
        return self.kv_heads * self.head_dim

    def linear_layers(self) -> dict[str, tuple[int, int]]:
        """Each linear layer of one decoder layer: name -> (in_features, out_features)."""
        h, i = self.hidden, self.intermediate
        if self.fused:
            return {"qkv_proj": (h, self.q_width + 2 * self.kv_width), "o_proj": (self.q_width, h),
                    "gate_up_proj": (h, 2 * i), "down_proj": (i, h)}
        return {"q_proj": (h, self.q_width), "k_proj": (h, self.kv_width), "v_proj": (h, self.kv_width),
                "o_proj": (self.q_width, h), "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}


def model_shape(config: Any) -> ModelShape:
    """The shape of a transformers config object (or a config.json dict)."""
    model_type = str(config.get("model_type", "") if isinstance(config, dict) else getattr(config, "model_type", ""))
    family = FAMILIES.get(model_type)
    if family is None:
        raise UserError(f"the planner does not know the architecture '{model_type}'; it counts "
                        f"{', '.join(sorted(FAMILIES))}")
    if isinstance(config, dict):  # config.json as read: the config class's defaults where a key is missing
        values = {**family.get("defaults", {}), **{k: v for k, v in config.items() if v is not None}}

        def get(key: str, default: Any = None) -> Any:
            return values.get(key, default)
    else:
        def get(key: str, default: Any = None) -> Any:
            return getattr(config, key, default)

    def flag(name: str) -> bool:
        value = family.get(name, False)
        return bool(get(value, False)) if isinstance(value, str) else bool(value)

    hidden, heads = int(get("hidden_size")), int(get("num_attention_heads"))
    head_dim = get("head_dim") or hidden // heads
    return ModelShape(
        model_type=model_type, hidden=hidden, layers=int(get("num_hidden_layers")), heads=heads,
        kv_heads=int(get("num_key_value_heads") or heads), head_dim=int(head_dim),
        intermediate=int(get("intermediate_size")), vocab=int(get("vocab_size")),
        tied=bool(get("tie_word_embeddings", False)), qkv_bias=flag("qkv_bias"), o_bias=flag("o_bias"),
        mlp_bias=flag("mlp_bias"), qk_norm=bool(family.get("qk_norm", False)),
        norms_per_layer=int(family.get("norms", 2)), mlp=str(family.get("mlp", "swiglu")),
        fused=bool(family.get("fused", False)), eager_attention=bool(family.get("eager_attention", False)))


@dataclass(frozen=True)
class ParameterCount:
    embedding: int
    head: int  # 0 when tied to the embedding
    per_layer_linear: int  # weights of the decoder layer's linear layers
    per_layer_other: int  # biases and norms of one decoder layer
    final_norm: int
    layers: int

    @property
    def linear(self) -> int:
        return self.per_layer_linear * self.layers

    @property
    def per_layer(self) -> int:
        return self.per_layer_linear + self.per_layer_other

    @property
    def total(self) -> int:
        return self.embedding + self.head + self.per_layer * self.layers + self.final_norm


def count_parameters(shape: ModelShape) -> ParameterCount:
    """Parameters from the architecture numbers: embedding, attention (GQA: k and v have kv_heads),
    MLP, biases, norms, and the head unless it is tied to the embedding."""
    linears = shape.linear_layers()
    weights = sum(n_in * n_out for n_in, n_out in linears.values())
    biases = 0
    if shape.qkv_bias:
        biases += shape.q_width + 2 * shape.kv_width
    if shape.o_bias:
        biases += shape.hidden
    if shape.mlp_bias:
        biases += 2 * shape.intermediate + shape.hidden
    norms = shape.norms_per_layer * shape.hidden + (2 * shape.head_dim if shape.qk_norm else 0)
    embedding = shape.vocab * shape.hidden
    return ParameterCount(embedding=embedding, head=0 if shape.tied else embedding, per_layer_linear=weights,
                          per_layer_other=biases + norms, final_norm=shape.hidden, layers=shape.layers)


def lora_targets(shape: ModelShape, lora_target: str) -> list[str]:
    """The adapted layer names: 'all' = every linear layer of the decoder (as models.py picks them)."""
    names = list(shape.linear_layers())
    if lora_target.strip() in ("all", ""):
        return names
    wanted = [w.strip() for w in lora_target.split(",") if w.strip()]
    missing = [w for w in wanted if w not in names]
    if missing:
        raise UserError(f"lora_target {missing} not found in the model; its linear layers are {names} "
                        "(or use lora_target: all)")
    return wanted


def lora_parameters(shape: ModelShape, rank: int, targets: list[str]) -> int:
    """rank x (in + out) per adapted layer, in every decoder layer."""
    linears = shape.linear_layers()
    return shape.layers * sum(rank * (linears[t][0] + linears[t][1]) for t in targets)


# ---- where the model's config.json comes from -----------------------------------------------------


def find_model_config(name_or_path: str, convert: bool = True) -> Path:
    """The folder holding the model's config.json: a local folder (a model, or a shipped config such
    as presets/models/qwen2.5-14b), a shipped config's name (qwen2.5-14b), a hub id whose name has a
    shipped config (Qwen/Qwen2.5-14B-Instruct), or the built-in model for 'default' (converted first
    if it has not been yet, unless `convert` is false)."""
    if name_or_path in ("", "default"):
        from trainer_core.models import default_model_dir, ensure_default_model

        folder = default_model_dir()
        if (folder / "config.json").is_file():
            return folder
        if not convert:
            raise UserError("the built-in model has not been prepared yet")
        return ensure_default_model(lambda *a: None)
    path = Path(name_or_path).expanduser()
    for candidate in (path, Path(PRESETS_DIR).parent / path, SHIPPED_MODELS_DIR / path.name,
                      SHIPPED_MODELS_DIR / re.sub(r"-instruct$", "", path.name.lower())):
        if (candidate / "config.json").is_file():
            return candidate
    shipped = ", ".join(sorted(p.name for p in SHIPPED_MODELS_DIR.glob("*") if (p / "config.json").is_file()))
    raise UserError(f"model_name_or_path '{name_or_path}': no config.json found (a local model folder, or a shipped "
                    f"config: {shipped})")


def load_model_shape(name_or_path: str, light: bool = False) -> ModelShape:
    """Read config.json through transformers' AutoConfig (no weights, no model code run). `light`:
    read the JSON itself with the config classes' defaults (FAMILIES), without importing
    transformers and torch (seconds): what `train` uses for its warning before a launch."""
    folder = find_model_config(name_or_path, convert=not light)
    if light:
        try:
            raw = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot read {folder / 'config.json'}: {exc}") from exc
        return model_shape(raw.get("text_config", raw) if "hidden_size" not in raw else raw)
    try:
        from trainer_core.models import import_transformers

        import_transformers()  # the plan panel asks from a UI thread
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(str(folder))
    except (OSError, ValueError, KeyError) as exc:
        # An architecture this transformers does not know: the JSON numbers are all we need.
        try:
            config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise UserError(f"cannot read {folder / 'config.json'}: {exc}") from exc
    text_config = getattr(config, "text_config", None)  # multimodal wrappers: the language model's numbers
    return model_shape(text_config if text_config is not None and not hasattr(config, "hidden_size") else config)


# ---- the data --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataStats:
    """Token statistics of the training data (trainer_core/datacheck.py `token_stats`, summed over
    the datasets): samples, tokens after truncation, trained (answer) tokens, a 95th percentile."""

    samples: int
    tokens: int
    trainable_tokens: int
    tokens_p95: int
    tokens_max: int  # the longest sample before truncation

    @classmethod
    def from_reports(cls, summaries: list[dict]) -> DataStats:
        samples = sum(int(s.get("samples", 0)) for s in summaries)
        return cls(samples=samples, tokens=sum(int(s.get("tokens", 0)) for s in summaries),
                   trainable_tokens=sum(int(s.get("trainable_tokens", 0)) for s in summaries),
                   tokens_p95=max((int(s.get("tokens_p95", 0)) for s in summaries), default=0),
                   tokens_max=max((int(s.get("tokens_max", 0)) for s in summaries), default=0))


def data_statistics(cfg: TrainConfig, log: Any = None, convert: bool = True) -> tuple[DataStats | None, list[str]]:
    """The training data's token statistics for a plan (trainer_core/datacheck.py `check_datasets`,
    summed over cfg.dataset), with the model's tokenizer, or the built-in model's where the model
    folder has none (a shipped config): then the counts are approximate. (None, notes) when the
    data cannot be read. `log` takes the checker's progress lines (None: dropped); the notes say
    what was approximated or left out. What `plan` on the command line and the Parameters tab use.
    `convert`: prepare the built-in model when its tokenizer is needed and it is not there yet (a
    minute on first use); the Parameters tab does not (that is a run's first step, and it would hold up
    the page's events), and goes without statistics until then."""
    from trainer_core.datacheck import check_datasets
    from trainer_core.models import TOKENIZER_FILES

    notes: list[str] = []
    tokenizer_cfg = cfg
    try:
        folder: Path | None = find_model_config(cfg.model_name_or_path, convert=convert)
    except UserError:
        folder = None
    if cfg.model_name_or_path not in ("", "default") and (
            folder is None or not any((folder / name).is_file() for name in TOKENIZER_FILES)):
        tokenizer_cfg = dataclasses.replace(cfg, model_name_or_path="default", template="auto")
        notes.append(f"{cfg.model_name_or_path} has no tokenizer here; tokens counted with the built-in model's "
                     "(an approximation)")
    if not convert and tokenizer_cfg.model_name_or_path in ("", "default"):
        try:
            find_model_config("default", convert=False)
        except UserError as exc:
            notes.append(f"no data statistics ({exc}); every sample taken as cutoff_len tokens")
            return None, notes
    try:
        reports = check_datasets(tokenizer_cfg, with_tokens=True, log=log or (lambda message: None))
    except UserError as exc:
        notes.append(f"no data statistics ({exc}); every sample taken as cutoff_len tokens")
        return None, notes
    summaries = [r["tokens"] for r in reports if r.get("tokens")]
    return (DataStats.from_reports(summaries) if summaries else None), notes


# ---- the plan --------------------------------------------------------------------------------------

PARTS = ("weights", "adapters", "optimizer", "gradients", "activations", "buffers", "overhead")


@dataclass
class Plan:
    """A run's plan: memory per GPU in bytes by part, whether it fits, time and cost. Plain data.

    total = sum(parts) - overlap: the backward pass frees activations while it makes gradients,
    so the peak holds the larger of (activations) and (gradients) plus what each needs at once."""

    model: str
    model_type: str
    hardware: str
    world: int
    parameters: int
    trainable_parameters: int
    parts: dict[str, int]
    overlap: int
    total: int
    capacity: int
    fits: bool
    details: dict[str, int] = field(default_factory=dict)
    host_bytes_per_node: int = 0  # ZeRO-3 offload: parameters and optimizer in host RAM
    tokens_per_step: int = 0  # tokens (padding included) that one optimizer step computes, all GPUs
    flops_per_step: float = 0.0
    step_seconds: float = 0.0
    steps_per_epoch: int | None = None
    total_steps: int | None = None
    epoch_seconds: float | None = None
    run_seconds: float | None = None
    gpu_hours: float | None = None
    cost: float | None = None
    price_per_gpu_hour: float | None = None
    fixes: list[dict] = field(default_factory=list)
    assumptions: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def step_growth(self) -> int:
        """What a training step adds to the memory held once the model is loaded: gradients,
        optimizer states and activations at the peak, and on the CPU what the first step keeps (what
        the CPU check measures as RSS growth)."""
        return (self.parts["optimizer"] + self.parts["gradients"] + self.parts["activations"] - self.overlap
                + self.details.get("first_step_runtime", 0))


@dataclass(frozen=True)
class Precision:
    """How the run holds numbers: `weight` bytes of a trainable or frozen float weight on the device,
    `act` bytes of a matmul output, `residual` bytes of the residual stream, and whether autocast
    (half-precision matmuls over fp32 weights) is on."""

    half: bool
    deepspeed_half: bool
    autocast: bool
    weight: int
    act: int
    residual: int


def precision_of(cfg: TrainConfig, stage: int | None) -> Precision:
    half = cfg.bf16 or cfg.fp16
    ds_half = half and stage is not None
    autocast = half and stage is None
    return Precision(half=half, deepspeed_half=ds_half, autocast=autocast, weight=2 if ds_half else 4,
                     act=2 if half else 4, residual=2 if ds_half else 4)


@dataclass(frozen=True)
class ZeroSetup:
    stage: int | None  # None: no DeepSpeed
    offload: bool
    reduce_bucket: float  # elements
    overlap_comm: bool
    prefetch_bucket: float
    max_live: float


def zero_setup(cfg: TrainConfig, shape: ModelShape) -> ZeroSetup:
    """DeepSpeed's ZeRO settings from the preset or JSON file; 'auto' values as transformers fills
    them (reduce bucket hidden^2, prefetch 0.9 x hidden^2)."""
    if not cfg.deepspeed:
        return ZeroSetup(None, False, 0, False, 0, 0)
    from trainer_core.train import deepspeed_config

    zero = deepspeed_config(cfg.deepspeed).get("zero_optimization", {}) or {}
    stage = int(zero.get("stage", 0))
    offload = any(str((zero.get(k) or {}).get("device", "none")) in ("cpu", "nvme")
                  for k in ("offload_param", "offload_optimizer"))

    def number(key: str, auto: float) -> float:
        value = zero.get(key, auto)
        return auto if value == "auto" else float(value)

    h2 = float(shape.hidden * shape.hidden)
    return ZeroSetup(stage, offload, number("reduce_bucket_size", h2 if stage == 3 else 5e8),
                     bool(zero.get("overlap_comm", False)), number("stage3_prefetch_bucket_size", 0.9 * h2),
                     number("stage3_max_live_parameters", 1e9))


def plan(config: TrainConfig, hardware: Hardware, data: DataStats | None = None,
         price_per_gpu_hour: float | None = None, shape: ModelShape | None = None,
         with_fixes: bool = True) -> Plan:
    """The memory and time plan of `config` on `hardware` (see the module docstring). `data`: the
    training data's token statistics (else every sample is taken as cutoff_len long and the
    number of steps is known only from max_steps). `shape`: the model's numbers, when the caller
    has them (else read from config.model_name_or_path's config.json). per_device_train_batch_size
    auto is planned as `resolve_auto_batch` decides it for `hardware` (its line is the first note)."""
    shape = shape or load_model_shape(config.model_name_or_path)
    notes: list[str] = []
    if config.batch_is_auto():
        chosen = resolve_auto_batch(config, hardware, shape)
        config = chosen.config
        notes.append(chosen.line)
    counts = count_parameters(shape)
    zero = zero_setup(config, shape)
    prec = precision_of(config, zero.stage)
    world = hardware.world
    assumptions: list[str] = []

    # Memory is planned for the longest batch the data can make: every row cutoff_len long, or as long
    # as the longest sample when the data has none that long (packed rows are always cutoff_len).
    seq_len = config.cutoff_len
    if data and data.tokens_max and not config.resolved_packing():
        seq_len = min(seq_len, data.tokens_max)
    memory_config = config
    if config.stage in PREFERENCE_STAGES:
        # TRL runs a pair's chosen and rejected answers (kto: an answer and its KL counterpart) as
        # two rows of one forward: activations and logits of twice the micro-batch.
        memory_config = dataclasses.replace(config, per_device_train_batch_size=2 * config.micro_batch())
        unit = "pair" if config.stage == "dpo" else "answer"
        notes.append(f"stage {config.stage}: memory planned for two rows per {unit} ({2 * config.micro_batch()} rows "
                     "a micro-batch); the time plan counts one row each and no reference pass, so a step takes "
                     "about twice the planned time or more")
    memory, details, overlap, trainable, host = _memory(memory_config, shape, counts, zero, prec, world, hardware,
                                                        seq_len)
    total = sum(memory.values()) - overlap
    capacity = hardware.memory_bytes
    result = Plan(model=config.model_name_or_path, model_type=shape.model_type, hardware=hardware.label(),
                  world=world, parameters=counts.total, trainable_parameters=trainable, parts=memory,
                  overlap=overlap, total=total, capacity=capacity, fits=total <= capacity, details=details,
                  host_bytes_per_node=host, price_per_gpu_hour=price_per_gpu_hour, assumptions=assumptions,
                  notes=notes)
    if zero.offload and hardware.host_memory_bytes and host > hardware.host_memory_bytes:
        result.fits = False
        notes.append(f"offload needs {host / GIB:.1f} GiB of host RAM per node; the host has "
                     f"{hardware.host_memory_bytes / GIB:.1f} GiB")
    assumptions.append(f"memory for the longest micro-batch: {config.micro_batch()} x {seq_len} "
                       "tokens, every position trained" + (" (the data's longest sample)" if seq_len < config.cutoff_len
                                                           else ""))
    _time(result, config, shape, counts, zero, prec, hardware, data, trainable, assumptions, notes)
    if with_fixes and not result.fits:
        result.fixes = find_fixes(config, hardware, data, price_per_gpu_hour, shape)
    return result


def _memory(cfg: TrainConfig, shape: ModelShape, counts: ParameterCount, zero: ZeroSetup, prec: Precision,
            world: int, hardware: Hardware, seq_len: int) -> tuple[dict[str, int], dict[str, int], int, int, int]:
    """(parts, details, overlap, trainable parameters, host bytes per node) per GPU."""
    method = cfg.finetuning_type
    stage, offload = zero.stage, zero.offload
    shard = world if stage is not None and stage >= 1 else 1  # optimizer (and ZeRO-2/3 gradient) partitions
    details: dict[str, int] = {}

    # Weights ------------------------------------------------------------------------------------
    non_linear = counts.total - counts.linear
    if method == "qlora":
        quantized = _quantized_bytes(counts.linear, cfg.quantization_bit)
        # peft upcasts every bf16/fp16 parameter it did not quantize to fp32; DeepSpeed casts it back.
        weights = quantized + non_linear * prec.weight
        details["weights_quantized"] = int(quantized)
    else:
        weights = counts.total * prec.weight
    params_sharded = stage == 3
    if params_sharded:
        weights = weights / world
    if offload:
        weights = 0
    adapters = 0.0
    targets: list[str] = []
    if method in ("lora", "qlora"):
        targets = lora_targets(shape, cfg.lora_target)
        n_lora = lora_parameters(shape, cfg.lora_rank, targets)
        adapters = n_lora * (2 if prec.deepspeed_half else 4) / (world if params_sharded else 1)
        if offload:
            adapters = 0.0
        trainable = n_lora
    else:
        trainable = counts.total

    # Gradients and optimizer -----------------------------------------------------------------------
    ddp_buckets = 0.0
    if stage is None:
        grads = 4.0 * trainable  # fp32 weights, fp32 gradients
        if world > 1:
            ddp_buckets = 4.0 * trainable  # DDP's gradient buckets: a second copy, kept between steps
            details["ddp_buckets"] = int(ddp_buckets)
        optimizer = 8.0 * trainable  # AdamW exp_avg + exp_avg_sq in fp32
    else:
        grad_shard = world if stage >= 2 else 1
        half_grads = (2.0 if prec.half else 4.0) * trainable / grad_shard
        fp32_grads = 4.0 * trainable / shard if prec.half else 0.0  # the partition's fp32 gradient at the step
        master = 4.0 * trainable / shard if prec.half else 0.0  # fp32 master weights
        grads = half_grads + fp32_grads
        optimizer = 8.0 * trainable / shard + master
        details["master_weights"] = int(master)
    if method == "full" and shape.tied and grads:
        # A tied head's gradient (made by the loss) and the embedding's dense gradient are two
        # tensors until the second is added to the first, at the end of backward: the step's peak.
        tied_sum = 4.0 * counts.embedding / (world if stage is not None and stage >= 2 else 1)
        grads += tied_sum
        details["gradients_tied_embedding_sum"] = int(tied_sum)
    host = 0
    if offload:
        # Per node: the node's ranks hold their partitions of the fp16 parameters, fp32 master
        # weights, gradients and Adam states in host RAM (16 bytes per trainable + 2 per parameter).
        per_rank = (prec.weight * counts.total + (4 + 4 + 8) * trainable) / world
        host = int(per_rank * max(1, hardware.gpus))
        grads, optimizer = 0.0, 0.0

    # Activations -------------------------------------------------------------------------------------
    act = _activations(cfg, shape, counts, prec, stage, targets, seq_len)
    details.update({f"activations_{k}": int(v) for k, v in act.items()})
    activations = sum(act.values())

    # Buffers: DeepSpeed's reduce buckets and, for ZeRO-3, the layers gathered at a time -------------
    buffers = ddp_buckets
    if stage is not None and stage in (1, 2):
        buffers += zero.reduce_bucket * (2 if prec.half else 4) * (2 if zero.overlap_comm else 1)
    if stage == 3:
        half_bytes = 2 if prec.half else 4
        largest = max(counts.per_layer, counts.embedding)
        gathered = min(zero.max_live, largest + counts.per_layer) * half_bytes  # the running block + a prefetched layer
        buffers += gathered + (zero.reduce_bucket + zero.prefetch_bucket) * half_bytes
        # The gathered block's full gradient before it is reduce-scattered.
        buffers += (largest if method == "full" else 0) * half_bytes
        details["zero3_gathered"] = int(gathered)
    overhead: float
    if hardware.kind == CPU:
        overhead = CPU_PROCESS_BYTES + CPU_FIRST_STEP_BYTES
        details["first_step_runtime"] = CPU_FIRST_STEP_BYTES
    else:
        overhead = CUDA_CONTEXT_BYTES + ALLOCATOR_SLACK * activations

    # The peak: the forward pass ends holding every activation (with the head's gradient on the
    # fused path); backward frees activations layer by layer as it makes the gradients, which are
    # all there at the optimizer step. So the step holds max(activations, gradients), not both.
    overlap = min(activations, grads)
    parts = {"weights": weights, "adapters": adapters, "optimizer": optimizer, "gradients": grads,
             "activations": activations, "buffers": buffers, "overhead": overhead}
    return ({k: int(round(v)) for k, v in parts.items()}, details, int(round(overlap)), trainable, host)


def _quantized_bytes(n: int, bits: int) -> float:
    """bitsandbytes storage of n linear weights: NF4 with double quantisation (4 bits, one 8-bit absmax
    per 64-weight block, one fp32 absmax per 256 blocks), or LLM.int8 (one byte each)."""
    if bits == 8:
        return float(n)
    return n * (0.5 + 1 / 64 + 4 / (64 * 256))


def loss_path(model_type: str, stage: int | None) -> str:
    """How trainer_core.loss computes the loss for this architecture: 'fused' (trained rows, logits a
    slice at a time), 'rows' (the trained rows' logits as tensors: ZeRO-3 runs the head inside its own
    forward, and the non-fused architectures) or 'own' (the model's loss: every position's logits)."""
    from trainer_core.loss import TRAINED_ROWS_PATHS

    path = TRAINED_ROWS_PATHS.get(model_type)
    if path is None:
        return "own"
    return "rows" if stage == 3 else path


def _activations(cfg: TrainConfig, shape: ModelShape, counts: ParameterCount, prec: Precision,
                 stage: int | None, targets: list[str], seq_len: int) -> dict[str, float]:
    """What autograd keeps for the backward pass at the end of the forward pass of a micro-batch of
    per_device_train_batch_size rows of seq_len tokens, per GPU, in bytes, by where it is kept. See
    the module docstring for the layer-by-layer reasoning."""
    from trainer_core.lean_layers import LEAN_LAYER_ARCHITECTURES

    method = cfg.finetuning_type
    batch = cfg.micro_batch()
    tokens = batch * seq_len
    rows = tokens  # trained rows at the peak: every position may be trained (pre-training, a long answer)
    h, q, kv, i, r = shape.hidden, shape.q_width, shape.kv_width, shape.intermediate, cfg.lora_rank
    a, res = prec.act, prec.residual
    full = method == "full"
    lora = method in ("lora", "qlora")
    lean_mlp = (shape.model_type in LEAN_LAYER_ARCHITECTURES and shape.mlp == "swiglu" and not shape.fused
                and stage != 3 and method != "qlora" and cfg.lora_dropout == 0)
    # A padded batch (several rows of different lengths) or packed rows (several samples in one row)
    # give SDPA a mask: transformers then repeats k and v to every head, and SDPA keeps a float mask
    # of (rows x T x T) per layer. One unpadded row needs no mask.
    masked = cfg.resolved_packing() or cfg.micro_batch() > 1
    linears = shape.linear_layers()
    consumers = {"input": [n for n in linears if n in ("q_proj", "k_proj", "v_proj", "qkv_proj")],
                 "post": [n for n in linears if n in ("gate_proj", "up_proj", "gate_up_proj")]}

    def norm_bytes(outputs_for: list[str]) -> float:
        """One RMSNorm before `outputs_for` (per token): the model's own keeps its input (fp32) and
        1/rms; the output is kept by the layers after it (one shared tensor, or under autocast one
        half-precision copy per layer that keeps its input)."""
        kept = 4.0 * h + 4  # input (as fp32: a copy under DeepSpeed half) and 1/rms
        if LEAN_NORMS_IN_TRAINING and not prec.deepspeed_half:
            kept = 4.0  # the lean norm keeps its output (the next layer keeps it anyway) and 1/rms
        if full:
            kept += (2.0 if prec.deepspeed_half else 4.0) * h  # the normalised input, for the weight's gradient
        keepers = outputs_for if full else [n for n in outputs_for if n in targets]
        if prec.autocast:
            kept += 2.0 * h * len(keepers)  # autocast casts the fp32 output once per layer that keeps it
        elif keepers:
            kept += res * h if prec.deepspeed_half else 4.0 * h
        return kept

    per_token = 0.0
    per_token += norm_bytes(consumers["input"]) + norm_bytes(consumers["post"])
    if shape.norms_per_layer == 4:  # Gemma 2/3: norms after attention and MLP keep their input and 1/rms
        per_token += 2 * (4.0 * h + 4)
    # Attention: q, k, v as SDPA keeps them (k and v at every head when masked), its output, the log-sum-exp.
    kv_kept = q if masked else kv
    per_token += a * (q + 2 * kv_kept + q) + 4.0 * shape.heads
    if shape.qk_norm:  # per-head RMSNorm of q and k: their inputs (fp32) and 1/rms per head
        per_token += 4.0 * (q + kv) + 4.0 * (shape.heads + shape.kv_heads)
    # peft casts a half-precision input to the adapter's fp32 and autocast casts it back: a copy each
    # for o_proj (SDPA's output) and, where the MLP is the model's own, down_proj (the product).
    if prec.autocast and lora:
        per_token += 2.0 * q * ("o_proj" in targets) + 2.0 * i * ("down_proj" in targets and not lean_mlp)
    # MLP: the lean block keeps gate and up; the model's own also keeps act(gate) and the product.
    per_token += a * (2 if lean_mlp else 4) * i
    # LoRA: each adapter keeps its rank-r middle; with dropout, also its dropped input and the mask.
    if lora:
        per_token += a * r * len(targets)
        if cfg.lora_dropout > 0:
            per_token += sum((a + 1) * linears[t][0] for t in targets)
    per_layer = per_token * tokens
    mask = a * batch * seq_len ** 2 if masked else 0.0
    if shape.eager_attention:  # eager attention keeps the (soft-capped) probabilities, per head
        mask += 3.0 * a * shape.heads * batch * seq_len ** 2
    one_layer = per_layer + mask

    out: dict[str, float] = {}
    if cfg.gradient_checkpointing:
        # Each layer keeps its input; backward recomputes one layer at a time.
        out["layers"] = shape.layers * tokens * h * res + one_layer
    else:
        out["layers"] = shape.layers * one_layer
    out["final_norm"] = tokens * (4.0 * h + 4)

    # Autocast's half-precision weight copies kept for backward --------------------------------------
    if prec.autocast:
        lean_down = lean_mlp and "down_proj" in linears
        down = linears["down_proj"][0] * linears["down_proj"][1] if lean_down else 0
        weight_linear = counts.per_layer_linear - down  # the lean block casts down's weight in backward
        if full:
            # Trainable weights: autocast caches every cast until the forward ends (checkpointing too).
            out["autocast_weights"] = 2.0 * (weight_linear * shape.layers + counts.embedding)  # + the head
        elif method == "lora":
            # Frozen weights: each cast is kept for the input's gradient (one layer at a time under
            # checkpointing); the 4-bit QLoRA weights are dequantized again in backward instead.
            layers_kept = 1 if cfg.gradient_checkpointing else shape.layers
            out["autocast_weights"] = 2.0 * weight_linear * layers_kept

    # The loss --------------------------------------------------------------------------------------
    path = loss_path(shape.model_type, stage)
    vocab = shape.vocab
    if path == "fused":
        out["loss"] = 4.0 * rows * h  # the trained rows' hidden-state gradient, computed in forward
        # One slice's logits, CHUNK_ELEMENTS // vocab rows at a time, in fp32 (turned into their own
        # gradient in place), and logsumexp's temporary of the same size: 8 bytes a logit (the
        # half-precision matmul output and gradient cast of bf16 runs are smaller and not alive with it).
        out["loss"] += min(rows, max(1, LOSS_CHUNK_ELEMENTS // vocab)) * vocab * 8
        head_dtype = 4 if not prec.deepspeed_half else 2
        if head_dtype != a:
            out["loss"] += a * vocab * h  # the head's weight cast to the matmul dtype, for the loss
        if full:
            out["loss_head_gradient"] = 4.0 * vocab * h  # fp32 gradient of the head, made in forward
    else:
        positions = rows if path == "rows" else tokens
        # Logits, their fp32 copy and log-softmax, then in backward its gradient: 12 bytes a logit at
        # the peak (the start of backward).
        out["loss"] = 12.0 * positions * vocab
    return out


def _time(result: Plan, cfg: TrainConfig, shape: ModelShape, counts: ParameterCount, zero: ZeroSetup,
          prec: Precision, hardware: Hardware, data: DataStats | None, trainable: int,
          assumptions: list[str], notes: list[str]) -> None:
    """Step, epoch and run time from FLOPs at the kind's peak x utilisation (assumed, or measured and
    given with `plan --mfu`), plus ZeRO
    communication and offload transfers; cost from the price per GPU-hour."""
    gpu = hardware.gpu
    world = hardware.world
    batch = cfg.micro_batch()
    packing = cfg.resolved_packing()
    # Tokens a micro-batch computes per GPU: packed rows are full; padded rows are as long as the
    # batch's longest sample (p95 of the data taken as that length; one sample: its mean).
    if data and data.samples:
        mean = data.tokens / data.samples
        row = cfg.cutoff_len if packing else (mean if batch == 1 else min(cfg.cutoff_len, max(mean, data.tokens_p95)))
        trained_share = data.trainable_tokens / data.tokens if data.tokens else 1.0
        samples = data.samples
        if cfg.val_size:
            samples -= int(cfg.val_size) if cfg.val_size >= 1 else int(round(samples * cfg.val_size))
        if packing:
            samples = max(1, math.ceil(data.tokens / cfg.cutoff_len))
    else:
        row, trained_share, samples = float(cfg.cutoff_len), 1.0, 0
        assumptions.append("no data statistics: every sample taken as cutoff_len tokens, every token trained")
    micro_tokens = batch * row
    trained_rows = micro_tokens * (1.0 if cfg.stage == "pt" else trained_share)
    lora = cfg.finetuning_type in ("lora", "qlora")
    body = counts.total - counts.embedding - counts.head  # what every token's matmuls run through
    head = counts.embedding  # the head's matmul (tied or not): only trained rows reach it on our loss paths
    per_param = 4.0 if lora else 6.0  # forward 2, backward 2 (+2 for weight gradients when trained)
    recompute = 2.0 if cfg.gradient_checkpointing else 0.0
    flops = micro_tokens * (per_param + recompute) * body
    if lora:
        flops += micro_tokens * 6.0 * result.trainable_parameters
    head_rows = trained_rows if loss_path(shape.model_type, zero.stage) != "own" else micro_tokens
    flops += head_rows * per_param * head
    # Attention: QK^T and AV, 4 x T x q-width per token forward, twice that backward; causal SDPA
    # skips the masked half when it has no explicit mask.
    context = row if (packing or batch > 1) else row / 2
    flops += micro_tokens * shape.layers * (12.0 + 2 * recompute) * shape.q_width * context
    flops *= cfg.gradient_accumulation_steps

    if gpu is None:  # the CPU
        peak, mfu = hardware.peak_flops, hardware.mfu or CPU_MFU
        utilisation = (f"utilisation {mfu:.0%} {hardware.mfu_source or 'given'}" if hardware.mfu
                       else f"utilisation {mfu:.0%}")
        assumptions.append(f"CPU peak {peak / 1e9:.0f} GFLOP/s ({os.cpu_count()} cores x clock x "
                           f"{CPU_FLOPS_PER_CYCLE} fp32 FLOPs/cycle), {utilisation}")
    else:
        peak = gpu.peak_half_flops if prec.half else gpu.peak_fp32_flops
        mfu = hardware.mfu or gpu.mfu
        utilisation = (f"utilisation {mfu:.0%} {hardware.mfu_source or 'given'}" if hardware.mfu
                       else f"assumed utilisation {mfu:.0%}")
        assumptions.append(f"{gpu.name}: {peak / TFLOPS:.0f} TFLOP/s {'bf16/fp16' if prec.half else 'fp32 (TF32)'} "
                           f"({gpu.source}), {utilisation}")
        if cfg.bf16 and not gpu.bf16:
            notes.append(f"{gpu.name} has no bf16: train with fp16: true")
    compute = flops / (peak * mfu)
    if cfg.finetuning_type == "qlora":
        compute /= QLORA_SPEED
        assumptions.append(f"QLoRA's 4-bit matmuls at {QLORA_SPEED:.0%} of LoRA's speed")
    comm = _communication_seconds(cfg, counts, zero, prec, hardware, trainable)
    result.tokens_per_step = int(micro_tokens * cfg.gradient_accumulation_steps * world)
    result.flops_per_step = flops * world
    result.step_seconds = compute + comm
    result.details["step_compute_seconds_x1000"] = int(compute * 1000)
    result.details["step_communication_seconds_x1000"] = int(comm * 1000)
    if samples:
        result.steps_per_epoch = max(1, math.ceil(samples / (batch * cfg.gradient_accumulation_steps * world)))
        result.epoch_seconds = result.steps_per_epoch * result.step_seconds
    if cfg.max_steps > 0:
        result.total_steps = cfg.max_steps
    elif result.steps_per_epoch:
        result.total_steps = math.ceil(result.steps_per_epoch * cfg.num_train_epochs)
    if result.total_steps:
        result.run_seconds = result.total_steps * result.step_seconds
        result.gpu_hours = result.run_seconds * world / 3600
        if result.price_per_gpu_hour is not None:
            result.cost = result.gpu_hours * result.price_per_gpu_hour


def _communication_seconds(cfg: TrainConfig, counts: ParameterCount, zero: ZeroSetup, prec: Precision,
                           hardware: Hardware, trainable: int) -> float:
    """Per optimizer step, the ZeRO collectives our presets run without overlap (overlap_comm:
    false), and the offload's host transfers and CPU Adam. DDP overlaps its all-reduce with the
    backward pass and is not added."""
    gpu, world = hardware.gpu, hardware.world
    if gpu is None or zero.stage is None:
        return 0.0
    half = 2 if prec.half else 4
    link = gpu.link_bytes_per_s if hardware.nodes == 1 else min(gpu.link_bytes_per_s, INTER_NODE_BYTES_PER_S)
    share = (world - 1) / world
    micro = cfg.gradient_accumulation_steps
    seconds = 0.0
    if world > 1:
        if zero.stage == 3:
            # Every micro-batch gathers all parameters twice (forward, backward) and reduce-scatters
            # the gradients; frozen LoRA weights are gathered all the same.
            moved = micro * (2 * counts.total * half + trainable * half)
        else:
            # ZeRO-1/2 reduce every micro-batch's gradients, then all-gather the updated parameters.
            moved = micro * trainable * half + trainable * half
        seconds += share * moved / link
    if zero.offload:
        per_rank = (2 * counts.total * half * micro + 2 * trainable * half) / world  # params in, grads out
        seconds += per_rank / gpu.pcie_bytes_per_s
        seconds += trainable / max(1, hardware.nodes) / CPU_ADAM_PARAMS_PER_S
    return seconds


# ---- fixes -------------------------------------------------------------------------------------------

FIX_ORDER = ("gradient checkpointing", "ZeRO stage up", "smaller batch, more accumulation", "offload", "QLoRA",
             "shorter cutoff_len")


def find_fixes(cfg: TrainConfig, hardware: Hardware, data: DataStats | None = None,
               price_per_gpu_hour: float | None = None, shape: ModelShape | None = None) -> list[dict]:
    """When the plan does not fit: the changes that make it fit, cheapest first. The steps of
    FIX_ORDER are tried in that order (checkpointing first: it costs a forward's worth of compute;
    a shorter cutoff_len last: it changes what is learnt), each from its mildest setting (one ZeRO
    stage up, the batch halved) to its strongest. Every step that fits on its own gives one fix, in
    order; when none does, the steps are taken together in order until the combination fits. Each
    fix: the config changes, the new plan's total and step time, and which steps it takes."""
    shape = shape or load_model_shape(cfg.model_name_or_path)
    steps = _fix_steps(cfg, hardware)
    fixes: list[dict] = []
    for name, options in steps:
        for changes in options:
            fix = _fits_with(cfg, changes, hardware, data, price_per_gpu_hour, shape)
            if fix is not None:
                fixes.append({**fix, "why": name})
                break
    if fixes:
        return fixes
    taken: dict[str, Any] = {}
    names: list[str] = []
    for name, options in steps:
        if not options:
            continue
        names.append(name)
        for changes in options:
            fix = _fits_with(cfg, {**taken, **changes}, hardware, data, price_per_gpu_hour, shape)
            if fix is not None:
                return [{**fix, "why": " + ".join(names)}]
        taken.update(options[-1])
    return []


def _fits_with(cfg: TrainConfig, changes: dict, hardware: Hardware, data: DataStats | None,
               price: float | None, shape: ModelShape) -> dict | None:
    """{changes, total, step_seconds, run_seconds} when `cfg` with `changes` fits, else None."""
    changed = dataclasses.replace(cfg, **changes)
    if changed.rules():
        return None  # a combination the config refuses (QLoRA with ZeRO-3)
    new = plan(changed, hardware, data, price, shape, with_fixes=False)
    if not new.fits:
        return None
    return {"changes": dict(changes), "total": new.total, "step_seconds": new.step_seconds,
            "run_seconds": new.run_seconds}


def _fix_steps(cfg: TrainConfig, hardware: Hardware) -> list[tuple[str, list[dict[str, Any]]]]:
    """FIX_ORDER as config changes for this config, mildest first (no options where a step does not
    apply: checkpointing already on, no ZeRO stage left, batch 1, ...)."""
    batch, accumulation = cfg.micro_batch(), cfg.gradient_accumulation_steps
    checkpointing = [] if cfg.gradient_checkpointing else [{"gradient_checkpointing": True}]
    stages = {"": ["z2", "z3"] if hardware.world > 1 else [], "z0": ["z2", "z3"], "z2": ["z3"]}.get(cfg.deepspeed, [])
    if cfg.finetuning_type == "qlora":
        stages = [s for s in stages if s != "z3"]  # QLoRA does not run under ZeRO-3 (config rules)
    zero = [{"deepspeed": s} for s in stages]
    # The global batch stays: what a smaller batch leaves out is accumulated.
    smaller = []
    new_batch = batch // 2
    while new_batch >= 1:
        smaller.append({"per_device_train_batch_size": new_batch,
                        "gradient_accumulation_steps": math.ceil(batch * accumulation / new_batch)})
        new_batch = new_batch // 2 if new_batch > 1 else 0
    offload = [] if cfg.deepspeed == "z3_offload" or cfg.finetuning_type == "qlora" else [{"deepspeed": "z3_offload"}]
    qlora = ([{"finetuning_type": "qlora", **({"deepspeed": "z2"} if cfg.deepspeed.startswith("z3") else {})}]
             if cfg.finetuning_type == "lora" else [])
    shorter = []
    cutoff = cfg.cutoff_len // 2
    while cutoff >= MIN_FIX_CUTOFF:
        shorter.append({"cutoff_len": cutoff})
        cutoff //= 2
    return list(zip(FIX_ORDER, [checkpointing, zero, smaller, offload, qlora, shorter]))


MIN_FIX_CUTOFF = 256  # a fix never proposes a cutoff_len below this: shorter samples lose most answers


# ---- per_device_train_batch_size: auto -------------------------------------------------------------


@dataclass(frozen=True)
class AutoBatch:
    """What `resolve_auto_batch` chose: the config with the numbers, and the line that says why."""

    config: TrainConfig
    line: str
    fits: bool


def resolve_auto_batch(cfg: TrainConfig, hardware: Hardware, shape: ModelShape | None = None) -> AutoBatch:
    """per_device_train_batch_size: auto as numbers: the largest micro-batch whose plan fits on
    `hardware` among the divisors of the per-device share of the global batch (`auto_target`), with
    gradient_accumulation_steps making up the rest, so the global batch is kept exactly. Planned
    without the data's statistics: every row cutoff_len tokens long, the longest a micro-batch can be
    (so `plan`, `train --dry-run` and the launch decide alike). When nothing fits, batch 1 with the
    plan's fix in the line (`fits` false). The config returned has train_batch_size set to the target."""
    shape = shape or load_model_shape(cfg.model_name_or_path)
    target, devices = auto_target(cfg), cfg.devices()
    if target % devices:
        raise UserError(f"train_batch_size: {target} does not divide evenly among {devices} devices (num_gpus x nodes)")
    per_device = target // devices
    where = f"{hardware.label()}, rows of cutoff_len {cfg.cutoff_len} tokens"
    memory = "GPU" if hardware.gpu else "process"
    chosen = None
    for micro in batch_candidates(per_device):
        trial = dataclasses.replace(cfg, per_device_train_batch_size=micro,
                                    gradient_accumulation_steps=per_device // micro, train_batch_size=target)
        result = plan(trial, hardware, shape=shape, with_fixes=micro == 1)
        chosen = (trial, result)
        if result.fits:
            break
    assert chosen is not None  # per_device >= 1: 1 is always a candidate
    trial, result = chosen
    head = (f"per_device_train_batch_size auto -> {trial.micro_batch()}, gradient_accumulation_steps "
            f"{trial.gradient_accumulation_steps} (global batch {target})")
    if result.fits:
        line = (f"{head}: the plan's largest that fits ({format_bytes(result.total)} of "
                f"{format_bytes(result.capacity)} per {memory} on {where})")
    else:
        fix = ""
        if result.fixes:
            fix = "; the planner's fix (" + result.fixes[0]["why"] + "): " + " ".join(
                f"{k}={v}" for k, v in result.fixes[0]["changes"].items())
        line = (f"{head}: warning: not even batch 1 fits the plan ({format_bytes(result.total)} of "
                f"{format_bytes(result.capacity)} per {memory} on {where}){fix}")
    return AutoBatch(trial, line, result.fits)


def auto_batch_here(cfg: TrainConfig) -> AutoBatch | None:
    """`resolve_auto_batch` for this machine, as the launcher calls it (None when the batch is a
    number): its GPUs (trainer_core/planner.py `detect_hardware`), or on the CPU the RAM available
    now (MemAvailable) shared by the job's processes, since there the plan is the only judge (the
    kernel ends a process that runs out; there is no out-of-memory error to back off from)."""
    if not cfg.batch_is_auto():
        return None
    hardware = detect_hardware(cfg.num_gpus)
    if hardware.kind == CPU:
        processes = max(1, cfg.num_gpus)
        available = _host_memory("MemAvailable:") or hardware.memory_bytes
        hardware = dataclasses.replace(hardware, gpus=processes, memory_bytes=available // processes)
    try:
        shape = load_model_shape(cfg.model_name_or_path, light=True)
    except UserError:
        shape = None  # the built-in model not prepared yet, say: read through transformers (it prepares it)
    try:
        return resolve_auto_batch(cfg, hardware, shape)
    except UserError as exc:
        if str(exc).startswith("train_batch_size"):
            raise
        raise UserError(f"per_device_train_batch_size: auto needs the planner, which cannot plan this run ({exc}); "
                        "give a number") from None


# ---- showing a plan ----------------------------------------------------------------------------------


def format_bytes(n: float) -> str:
    return f"{n / GIB:.1f} GiB" if abs(n) >= GIB / 10 else f"{n / 2**20:.0f} MiB"


def format_plan(p: Plan) -> str:
    """The plan as a short table: parts, total against capacity, fits, time, cost, the fix."""
    from trainer_core.runs import format_duration

    lines = [f"model {p.model} ({p.model_type}, {p.parameters / 1e9:.2f}B parameters, "
             f"{p.trainable_parameters / 1e6:,.1f}M trainable) on {p.hardware}",
             "memory per GPU:"]
    for name in PARTS:
        if p.parts.get(name):
            lines.append(f"  {name:<12} {format_bytes(p.parts[name]):>10}")
    if p.overlap:
        lines.append(f"  {'- overlap':<12} {format_bytes(-p.overlap):>10}   (activations freed as gradients are made)")
    verdict = "fits" if p.fits else "does NOT fit"
    lines.append(f"  {'total':<12} {format_bytes(p.total):>10}   of {format_bytes(p.capacity)}: {verdict}")
    if p.host_bytes_per_node:
        lines.append(f"  host RAM per node (offload): {format_bytes(p.host_bytes_per_node)}")
    lines.append(f"time: {p.step_seconds:.2f} s per step ({p.tokens_per_step:,} tokens)"
                 + (f", {format_duration(int(p.epoch_seconds))} per epoch" if p.epoch_seconds else "")
                 + (f", {format_duration(int(p.run_seconds))} for {p.total_steps} steps" if p.run_seconds else ""))
    if p.gpu_hours is not None:
        cost = f", cost {p.cost:,.2f} at {p.price_per_gpu_hour:g} per GPU-hour" if p.cost is not None else ""
        lines.append(f"  {p.gpu_hours:,.1f} GPU-hours{cost}")
    for fix in p.fixes[:1]:
        changes = " ".join(f"{k}={v}" for k, v in fix["changes"].items())
        lines.append(f"fix ({fix['why']}): {changes}  ->  {format_bytes(fix['total'])}, "
                     f"{fix['step_seconds']:.2f} s per step")
    if not p.fits and not p.fixes:
        lines.append("no change in the planner's list makes it fit: more or larger GPUs")
    for note in p.notes:
        lines.append(f"note: {note}")
    for assumption in p.assumptions:
        lines.append(f"assumed: {assumption}")
    return "\n".join(lines)
