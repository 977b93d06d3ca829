"""The planner (trainer_core/planner.py): parameter counts against real models on the meta device,
the shipped configs against their published sizes, hand-checkable memory arithmetic, ZeRO sharding,
fixes, the GPU kinds, the CLI, and (marked train) its CPU figures against real training steps."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from trainer_core.config import load_config
from trainer_core.planner import (
    CPU,
    FIX_ORDER,
    GIB,
    GPU_KINDS,
    SHIPPED_MODELS_DIR,
    DataStats,
    ModelShape,
    count_parameters,
    cpu_hardware,
    gpu_hardware,
    kind_name,
    load_model_shape,
    lora_parameters,
    lora_targets,
    model_shape,
    parse_gpus,
    plan,
)

REPO = Path(__file__).resolve().parent.parent
SMALL = dict(vocab_size=512, hidden_size=64, intermediate_size=160, num_hidden_layers=3, num_attention_heads=4,
             num_key_value_heads=2, pad_token_id=0, bos_token_id=1, eos_token_id=2)
# Each family's config class with settings that change the count: GQA everywhere, biases, tied or
# untied heads, an explicit head_dim that is not hidden / heads.
FAMILY_CONFIGS = [
    ("LlamaConfig", dict(tie_word_embeddings=False)),
    ("LlamaConfig", dict(tie_word_embeddings=True, attention_bias=True, mlp_bias=True)),
    ("Qwen2Config", dict(tie_word_embeddings=False)),
    ("Qwen2Config", dict(tie_word_embeddings=True)),
    ("Qwen3Config", dict(head_dim=24, tie_word_embeddings=False)),
    ("Qwen3Config", dict(head_dim=16, tie_word_embeddings=True, attention_bias=True)),
    ("MistralConfig", dict(head_dim=16, tie_word_embeddings=False)),
    ("GemmaConfig", dict(head_dim=16)),
    ("Gemma2Config", dict(head_dim=16)),
    ("Gemma3TextConfig", dict(head_dim=16)),
    ("GraniteConfig", dict(tie_word_embeddings=True)),
    ("Phi3Config", dict(tie_word_embeddings=False)),
]


def meta_model(config):
    """The real model of `config`, built on the meta device: shapes without memory."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def family_config(class_name: str, overrides: dict):
    import transformers

    return getattr(transformers, class_name)(**{**SMALL, **overrides})


@pytest.mark.parametrize(("class_name", "overrides"), FAMILY_CONFIGS,
                         ids=[f"{c}-{i}" for i, (c, _) in enumerate(FAMILY_CONFIGS)])
def test_parameter_count_equals_the_real_model(class_name, overrides):
    config = family_config(class_name, overrides)
    model = meta_model(config)
    real = sum(p.numel() for p in model.parameters())  # a tied head is one parameter, counted once
    shape = model_shape(config)
    assert count_parameters(shape).total == real
    # config.json read without transformers gives the same shape
    assert model_shape(json.loads(config.to_json_string())) == shape


@pytest.mark.parametrize("class_name", ["LlamaConfig", "Qwen2Config", "Qwen3Config", "Phi3Config"])
def test_lora_parameters_equal_peft_on_every_linear_layer(class_name):
    from peft import LoraConfig, get_peft_model

    from trainer_core.models import lora_target_modules

    model = meta_model(family_config(class_name, {"tie_word_embeddings": False}))
    shape = model_shape(model.config)
    assert sorted(lora_targets(shape, "all")) == sorted(lora_target_modules(model, "all"))
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=lora_target_modules(model, "all")))
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert lora_parameters(shape, 4, lora_targets(shape, "all")) == trainable
    some = [n for n in lora_targets(shape, "all")][:2]
    assert lora_parameters(shape, 8, some) == sum(
        8 * (n_in + n_out) for n_in, n_out in (shape.linear_layers()[t] for t in some)) * shape.layers


# Published sizes (the models' cards): Qwen2.5-14B 14.7B (13.1B without embeddings), Qwen2.5-7B
# 7.61B (6.53B), Qwen3-8B 8.2B (6.95B), Qwen2.5-0.5B 0.49B (0.36B), Qwen2.5-3B 3.09B (2.77B),
# Qwen2.5-32B 32.5B (31.0B), Llama-3.1-70B 70B (its card gives no size without embeddings).
PUBLISHED = {"qwen2.5-14b": (14.7e9, 13.1e9), "qwen2.5-7b": (7.61e9, 6.53e9), "qwen3-8b": (8.2e9, 6.95e9),
             "qwen2.5-0.5b": (0.49e9, 0.36e9), "qwen2.5-3b": (3.09e9, 2.77e9), "qwen2.5-32b": (32.5e9, 31.0e9),
             "llama-3.1-70b": (70e9, None)}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_shipped_configs_match_the_published_sizes(name):
    shape = load_model_shape(f"presets/models/{name}")
    counts = count_parameters(shape)
    total, non_embedding = PUBLISHED[name]
    assert abs(counts.total / total - 1) < 0.01
    if non_embedding is not None:
        assert abs((counts.total - counts.embedding - counts.head) / non_embedding - 1) < 0.01
    assert load_model_shape(name, light=True) == shape  # JSON alone reads the same numbers
    from transformers import AutoConfig

    real = meta_model(AutoConfig.from_pretrained(str(SHIPPED_MODELS_DIR / name)))
    assert counts.total == sum(p.numel() for p in real.parameters())


def test_hub_ids_and_names_find_the_shipped_configs():
    assert load_model_shape("Qwen/Qwen2.5-14B-Instruct", light=True) == load_model_shape("qwen2.5-14b", light=True)
    assert load_model_shape("qwen2.5-7b", light=True).layers == 28


# ---- hand-checkable memory arithmetic ----------------------------------------------------------------

# A tiny Llama: hidden 8, 2 layers, 2 heads of 4 over 1 KV head, MLP 16, vocabulary 32, untied head.
TINY = ModelShape(model_type="llama", hidden=8, layers=2, heads=2, kv_heads=1, head_dim=4, intermediate=16,
                  vocab=32, tied=False)


def tiny_config(**overrides):
    base = dict(finetuning_type="lora", lora_rank=2, lora_alpha=4, lora_target="all", per_device_train_batch_size=1,
                cutoff_len=16, stage="sft", packing=False, num_gpus=1, max_steps=10)
    return load_config(None, {**base, **overrides})


def test_tiny_model_parameters_by_hand():
    counts = count_parameters(TINY)
    # per layer: q 8x8, k 8x4, v 8x4, o 8x8, gate 8x16, up 8x16, down 16x8 = 576, two norms of 8
    assert counts.per_layer_linear == 64 + 32 + 32 + 64 + 128 + 128 + 128
    assert counts.per_layer == 576 + 16
    # embedding 32x8, head 32x8, 2 layers, final norm 8
    assert counts.total == 256 + 256 + 2 * 592 + 8 == 1704
    # LoRA rank 2 on all seven: 2 x (in + out) each, two layers
    assert lora_parameters(TINY, 2, lora_targets(TINY, "all")) == 2 * 2 * (16 + 12 + 12 + 16 + 24 + 24 + 24) == 512


def test_tiny_lora_memory_by_hand():
    p = plan(tiny_config(), gpu_hardware("A100-40GB"), shape=TINY)
    # fp32 weights (the trainer loads LoRA and full models in fp32), fp32 adapters, fp32 gradients,
    # AdamW's two fp32 states, for 1704 weights and 512 adapter parameters
    assert p.parts["weights"] == 1704 * 4
    assert p.parts["adapters"] == 512 * 4
    assert p.parts["gradients"] == 512 * 4
    assert p.parts["optimizer"] == 512 * 8
    # Activations per token per layer (fp32, one unpadded row: no mask, k and v at one KV head):
    norms = 2 * (4 * 8 + 4 + 4 * 8)  # each norm: its input, 1/rms, its output (kept by the LoRA layers)
    attention = 4 * (8 + 4 + 4 + 8) + 4 * 2  # q, k, v, the output; the log-sum-exp per head
    mlp = 4 * 2 * 16  # the lean SwiGLU block keeps gate and up
    lora = 4 * 2 * 7  # each adapter's rank-2 middle
    layers = 2 * 16 * (norms + attention + mlp + lora)
    final_norm = 16 * (4 * 8 + 4)
    # the rows' hidden-state gradient; one slice of fp32 logits (all 16 rows) and logsumexp's temporary
    loss = 4 * 16 * 8 + 16 * 32 * 8
    assert p.parts["activations"] == layers + final_norm + loss
    assert p.overlap == 512 * 4  # the adapters' gradients fit in the freed activations
    assert p.total == sum(p.parts.values()) - p.overlap
    assert p.parts["overhead"] > 1 * GIB - 1 and p.fits


def test_tiny_time_by_hand():
    cfg = tiny_config(finetuning_type="full", per_device_train_batch_size=2, gradient_accumulation_steps=3)
    data = DataStats(samples=100, tokens=1000, trainable_tokens=500, tokens_p95=12, tokens_max=14)
    hw = gpu_hardware("A100-40GB")
    p = plan(dataclasses.replace(cfg, max_steps=-1, num_train_epochs=2.0), hw, data=data, price_per_gpu_hour=3.0,
             shape=TINY)
    row = 12  # a padded batch is as long as its longest sample: the data's p95
    tokens = 2 * row
    body = 1704 - 256 - 256
    flops = tokens * 6 * body  # full tuning: 6 FLOPs per parameter and token
    flops += tokens * 0.5 * 6 * 256  # the head only at trained rows: half of the tokens are answers
    flops += tokens * 2 * 12 * 8 * row  # attention: 12 x q-width x context per token and layer
    flops *= 3  # gradient accumulation
    assert p.flops_per_step == pytest.approx(flops)
    assert p.step_seconds == pytest.approx(flops / (GPU_KINDS["A100-40GB"].peak_fp32_flops * 0.40))
    assert p.steps_per_epoch == 17  # ceil(100 samples / (2 x 3))
    assert p.total_steps == 34
    assert p.run_seconds == pytest.approx(34 * p.step_seconds)
    assert p.cost == pytest.approx(p.run_seconds / 3600 * 3.0)
    # memory is planned for the data's longest sample (14 tokens), not cutoff_len (16)
    assert p.details["activations_final_norm"] == 2 * 14 * (4 * 8 + 4)


def test_lora_needs_two_thirds_of_full_tunings_flops():
    shape = load_model_shape("qwen2.5-7b", light=True)
    hw = gpu_hardware("H100-80GB")
    full = plan(tiny_config(finetuning_type="full", cutoff_len=512, stage="pt"), hw, shape=shape)
    lora = plan(tiny_config(finetuning_type="lora", cutoff_len=512, stage="pt", lora_rank=8), hw, shape=shape)
    assert 0.66 < lora.flops_per_step / full.flops_per_step < 0.70  # 4 of 6 FLOPs, plus the adapters


# ---- sharding per ZeRO stage ---------------------------------------------------------------------------


def test_zero_sharding_arithmetic():
    shape = load_model_shape("qwen2.5-7b", light=True)
    n = count_parameters(shape).total
    hw = parse_gpus("4xH100-80GB")
    base = tiny_config(finetuning_type="full", bf16=True, cutoff_len=1024, num_gpus=4)

    def parts(deepspeed):
        return plan(dataclasses.replace(base, deepspeed=deepspeed), hw, shape=shape, with_fixes=False)

    ddp, z0, z2, z3, off = parts(""), parts("z0"), parts("z2"), parts("z3"), parts("z3_offload")
    # no DeepSpeed: fp32 weights, gradients, AdamW; DDP's buckets are another copy of the gradients
    assert ddp.parts["weights"] == 4 * n and ddp.parts["optimizer"] == 8 * n
    assert ddp.details["ddp_buckets"] == 4 * n
    # ZeRO-0 under bf16: half weights, fp32 master + AdamW (12 bytes), half + fp32 gradients, nothing sharded
    assert z0.parts["weights"] == 2 * n and z0.parts["optimizer"] == 12 * n
    # ZeRO-2: optimizer and gradients over 4 GPUs, weights whole
    assert z2.parts["weights"] == 2 * n
    assert z2.parts["optimizer"] == pytest.approx(12 * n / 4, abs=1)
    assert z2.parts["buffers"] == 5e8 * 2  # the reduce bucket of presets/deepspeed/z2.json, in bf16
    # ZeRO-3: the weights too
    assert z3.parts["weights"] == pytest.approx(2 * n / 4, abs=1)
    assert z3.parts["optimizer"] == z2.parts["optimizer"]
    # ZeRO-3 offload: parameters and optimizer in host RAM, 2 + 16 bytes a parameter over the node
    assert off.parts["weights"] == off.parts["optimizer"] == off.parts["gradients"] == 0
    assert off.host_bytes_per_node == pytest.approx(18 * n, rel=1e-6)
    assert ddp.total > z0.total > z2.total > z3.total > off.total


def test_the_issues_case_qwen25_14b_on_four_a100_40gb():
    """Qwen2.5-14B, LoRA r64 on every linear layer, cutoff 2048, batch 4, bf16, 4 x A100-40GB."""
    hw = parse_gpus("4xA100-40GB")
    cfg = load_config(None, {"model_name_or_path": "presets/models/qwen2.5-14b", "finetuning_type": "lora",
                             "lora_rank": 64, "lora_alpha": 128, "cutoff_len": 2048, "per_device_train_batch_size": 4,
                             "gradient_accumulation_steps": 4, "bf16": True, "num_gpus": 4, "max_steps": -1,
                             "num_train_epochs": 3.0})
    data = DataStats(samples=20_000, tokens=12_000_000, trainable_tokens=6_000_000, tokens_p95=1500, tokens_max=4000)
    n = 14_770_033_664
    for stage in ("z2", "z3"):
        p = plan(dataclasses.replace(cfg, deepspeed=stage), hw, data=data, price_per_gpu_hour=2.5)
        # the weights alone: bf16 under DeepSpeed, whole under ZeRO-2, a quarter under ZeRO-3
        assert p.parts["weights"] == pytest.approx(2 * n / (1 if stage == "z2" else 4), abs=1)
        assert p.parameters == n and p.trainable_parameters == 275_251_200
        # four rows of 2048 tokens without checkpointing keep far more than 40 GB
        assert not p.fits and p.parts["activations"] > 40 * GIB
        fix = p.fixes[0]
        assert fix["changes"] == {"gradient_checkpointing": True}  # the cheapest fix comes first
        fixed = plan(dataclasses.replace(cfg, deepspeed=stage, **fix["changes"]), hw, data=data)
        assert fixed.fits and fixed.total == fix["total"] <= 40 * GIB
        assert fix["step_seconds"] > p.step_seconds  # checkpointing recomputes the forward pass
        # 3 epochs of 20,000 samples at a global batch of 4 x 4 x 4 = 64: 313 steps per epoch
        assert p.steps_per_epoch == 313 and p.total_steps == 939
        assert p.cost == pytest.approx(p.run_seconds * 4 / 3600 * 2.5)
    # ZeRO-3's rows path: the trained rows' logits are real tensors (no fused loss under ZeRO-3)
    z3 = plan(dataclasses.replace(cfg, deepspeed="z3", gradient_checkpointing=True), hw)
    assert z3.details["activations_loss"] == 12 * 4 * 2048 * 152064


def test_a_preference_run_is_planned_with_two_rows_per_pair():
    """TRL runs chosen and rejected as two rows of one forward: dpo's (and kto's) activations are
    those of twice the micro-batch, and the plan says so (its time is one row each: the note says that too)."""
    hw = parse_gpus("1xA100-40GB")
    sft = load_config(None, {"model_name_or_path": "presets/models/qwen2.5-0.5b", "cutoff_len": 1024,
                             "per_device_train_batch_size": 4, "bf16": True})
    for stage, extra in (("dpo", {"pref_loss": "sigmoid"}), ("kto", {})):
        preference = dataclasses.replace(sft, stage=stage, **extra)
        doubled = dataclasses.replace(sft, per_device_train_batch_size=8)
        assert plan(preference, hw).parts["activations"] == plan(doubled, hw).parts["activations"]
        assert plan(preference, hw).parts["activations"] > plan(sft, hw).parts["activations"]
        assert any(f"stage {stage}: memory planned for two rows" in note for note in plan(preference, hw).notes)
    assert not any("two rows" in note for note in plan(sft, hw).notes)


def test_fixes_come_in_the_stated_order_and_combine_when_one_is_not_enough():
    shape = load_model_shape("qwen2.5-14b", light=True)
    hw = gpu_hardware("RTX4090-24GB")
    cfg = tiny_config(finetuning_type="lora", lora_rank=16, cutoff_len=4096, per_device_train_batch_size=8, bf16=True)
    p = plan(cfg, hw, shape=shape)
    assert not p.fits
    assert len(p.fixes) == 1 and " + " in p.fixes[0]["why"]  # no single change is enough on one 24 GB card
    steps = p.fixes[0]["why"].split(" + ")
    assert steps == sorted(steps, key=FIX_ORDER.index) and steps[0] == "gradient checkpointing"
    assert p.fixes[0]["changes"]["deepspeed"] == "z3_offload"  # offload comes before QLoRA in the order
    assert plan(dataclasses.replace(cfg, **p.fixes[0]["changes"]), hw, shape=shape).fits
    # a batch halved keeps the global batch through accumulation
    small = plan(dataclasses.replace(cfg, finetuning_type="qlora", gradient_checkpointing=True, cutoff_len=2048),
                 hw, shape=shape)
    for fix in small.fixes:
        changes = fix["changes"]
        if "per_device_train_batch_size" in changes:
            assert changes["per_device_train_batch_size"] * changes["gradient_accumulation_steps"] == 8


def test_qlora_weights_are_four_bit_with_fp32_embeddings():
    shape = load_model_shape("qwen2.5-7b", light=True)
    counts = count_parameters(shape)
    p = plan(tiny_config(finetuning_type="qlora", bf16=True), gpu_hardware("RTX4090-24GB"), shape=shape)
    nf4 = counts.linear * (0.5 + 1 / 64 + 4 / (64 * 256))  # 4 bits + 8-bit absmax per 64 + fp32 per 256 blocks
    assert p.parts["weights"] == round(nf4 + (counts.total - counts.linear) * 4)


# ---- GPU kinds and the CLI -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", [*GPU_KINDS, CPU])
def test_every_gpu_kind_is_reachable_by_gpus(kind, capsys):
    from trainer_core.cli import main

    hw = parse_gpus(f"2x{kind}")
    assert hw.kind == kind and hw.gpus == 2
    assert kind_name(kind.lower().replace("-", "_")) == kind
    assert main(["plan", "presets/sft_lora.yaml", "model_name_or_path=qwen2.5-7b", "--gpus", f"2x{kind}",
                 "--no-data", "--price=2"]) == 0
    out = capsys.readouterr().out
    assert f"2x{kind}" in out and "total" in out


def test_gpus_spellings():
    assert parse_gpus("2x8xH100-80GB").world == 16
    assert parse_gpus("a100").kind == "A100-40GB"  # the memory left out: the smaller card
    assert parse_gpus("4xrtx4090").kind == "RTX4090-24GB"
    assert parse_gpus("cpu").memory_bytes == cpu_hardware().memory_bytes
    from trainer_core.errors import UserError

    for bad in ("4xB200", "0xA100-40GB", "x"):
        with pytest.raises(UserError):
            parse_gpus(bad)


def test_plan_cli_prints_the_table_and_the_fix(cli, tmp_path):
    config = tmp_path / "q14.yaml"
    config.write_text("model_name_or_path: presets/models/qwen2.5-14b\ncutoff_len: 2048\nlora_rank: 64\n"
                      "lora_alpha: 128\nper_device_train_batch_size: 4\nbf16: true\ndeepspeed: z3\n", encoding="utf-8")
    result = cli("plan", str(config), "--gpus", "4xA100-40GB", "--price", "2.5", "--no-data")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for text in ("weights", "activations", "does NOT fit", "fix (gradient checkpointing): gradient_checkpointing=True",
                 "4xA100-40GB", "s per step"):
        assert text in out
    as_json = cli("plan", str(config), "--gpus", "4xA100-40GB", "--no-data", "--json", "gradient_checkpointing=true")
    data = json.loads(as_json.stdout)
    assert data["fits"] and data["world"] == 4 and set(data["parts"]) >= {"weights", "activations", "optimizer"}
    bad = cli("plan", str(config), "--gpus", "4xB200")
    assert bad.returncode == 2 and "unknown GPU kind" in bad.stderr and "Traceback" not in bad.stderr


def test_a_measured_mfu_replaces_the_assumed_one(tmp_path):
    """`plan --mfu`: a number, a percentage, or the GPU check's planner_gpu.json (its figure for the
    config's finetuning_type, QLoRA taking LoRA's, measured on the same kind); the step time follows it."""
    from trainer_core.errors import UserError
    from trainer_core.planner import measured_mfu

    shape = load_model_shape("qwen2.5-7b", light=True)
    hw = gpu_hardware("H100-80GB")
    cfg = tiny_config(finetuning_type="full", bf16=True, cutoff_len=1024)
    assumed = plan(cfg, hw, shape=shape)
    mfu, source = measured_mfu("0.7", "full", hw.kind)
    given = plan(cfg, dataclasses.replace(hw, mfu=mfu, mfu_source=source), shape=shape)
    assert given.step_seconds == pytest.approx(assumed.step_seconds * GPU_KINDS["H100-80GB"].mfu / 0.7)
    assert any("utilisation 70% given (--mfu 0.7)" in a for a in given.assumptions)
    assert measured_mfu("42%", "lora", hw.kind)[0] == pytest.approx(0.42)

    checked = tmp_path / "planner_gpu.json"
    checked.write_text(json.dumps({"kind": "H100-80GB", "mfu": {"lora": 0.31, "full": 0.44}}))
    assert measured_mfu(str(checked), "full", "H100-80GB")[0] == 0.44
    assert measured_mfu(str(checked), "qlora", "H100-80GB") == (
        0.31, "measured by the GPU check (planner_gpu.json, H100-80GB, lora)")
    for text, method, kind, message in [
            ("0", "full", "H100-80GB", "above 0 and at most 1"), ("1.5", "full", "H100-80GB", "above 0"),
            ("fast", "full", "H100-80GB", "neither a number"),
            (str(checked), "full", "A100-40GB", "measured on H100-80GB, the plan is for A100-40GB")]:
        with pytest.raises(UserError, match=message):
            measured_mfu(text, method, kind)
    checked.write_text(json.dumps({"kind": "H100-80GB", "mfu": {"lora": 0.31}}))
    with pytest.raises(UserError, match="no measured utilisation for finetuning_type full"):
        measured_mfu(str(checked), "full", "H100-80GB")
    checked.write_text("[1, 2]")
    with pytest.raises(UserError, match="not the GPU check's planner_gpu.json"):
        measured_mfu(str(checked), "full", "H100-80GB")


def test_train_warns_before_launching_what_will_not_fit(cli, tmp_path):
    """A warning, not a refusal: the dry run still prints its command. A model the planner cannot read
    gets no warning and no traceback."""
    result = cli("train", "presets/sft_full.yaml", "model_name_or_path=presets/models/qwen2.5-14b", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "warning: the planner estimates" in result.stderr and "# command" in result.stdout
    unknown = tmp_path / "odd-model"
    unknown.mkdir()
    (unknown / "config.json").write_text(json.dumps({"model_type": "something_else", "hidden_size": 8}))
    quiet = cli("train", "presets/sft_lora.yaml", f"model_name_or_path={unknown}", "--dry-run")
    assert quiet.returncode == 0 and "warning: the planner" not in quiet.stderr and "Traceback" not in quiet.stderr


# ---- honest numbers on this CPU ------------------------------------------------------------------------

# Peak RSS growth of real training steps against Plan.step_growth (bench/planner_check.py, which
# also writes the fuller table into bench/RESULTS.md). With glibc's mmap threshold fixed (the
# script's default), freed tensors leave the resident set at once and the figure is the peak of
# live memory: within 15 % for every case (-6.4 % to +8.7 % over the 14 cases of bench/RESULTS.md).
TOLERANCE = 0.15


@pytest.mark.train
def test_cpu_plan_against_real_training_steps():
    sys.path.insert(0, str(REPO / "bench"))
    from planner_check import TEST_CASES

    result = subprocess.run([sys.executable, str(REPO / "bench" / "planner_check.py"), "--json", "--cases",
                             *TEST_CASES], capture_output=True, text=True, timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads(result.stdout.strip().splitlines()[-1])
    assert [row["case"] for row in rows] == list(TEST_CASES)
    for row in rows:
        measured, predicted = row["measured"], row["predicted"]
        assert abs(row["error"]) <= TOLERANCE, (row["case"], predicted["growth"], measured["growth"])
        assert predicted["weights"] == measured["weights"]  # the planner's fp32 weights are the model's tensors
    by_case = {row["case"]: row["measured"]["growth"] for row in rows}
    assert by_case["lora-b2-t128-gc"] < 0.6 * by_case["lora-b2-t128"]  # checkpointing keeps far less


# ---- published figures beside ours --------------------------------------------------------------------


def test_published_figures_script_plans_each_cell_and_its_tables_are_current():
    """bench/planner_published.py: one cell is the planner's own figure for the stated settings, and the
    tables in bench/RESULTS.md are what the script prints now (rerun it with --write when the planner
    changes)."""
    sys.path.insert(0, str(REPO / "bench"))
    import planner_published as published

    cell = published.ours("7B", {"finetuning_type": "lora"})
    cfg = load_config(None, {**published.BASE, "finetuning_type": "lora", "cutoff_len": 1024,
                             "model_name_or_path": "qwen2.5-7b"})
    direct = plan(cfg, gpu_hardware("H100-80GB"), shape=load_model_shape("qwen2.5-7b", light=True))
    assert cell["total"] == direct.total and cell["parameters"] == direct.parameters
    assert cfg.per_device_train_batch_size == 1 and cfg.gradient_checkpointing and cfg.bf16
    section = published.section()
    for method, bits, _, _, _, figures in published.LLAMA_FACTORY:  # every published row, with its figures
        row = next(line for line in section.splitlines() if line.startswith(f"| {method} | {bits} |"))
        assert all(f"| {figures[size]:g} / " in row for size in ("7B", "14B", "30B", "70B"))
    unsloth_7b = next(line for line in section.splitlines() if line.startswith("| 7B | qwen2.5-7b (7.62B) |"))
    assert f"| 19 | **{published.gb(cell['total'])}** (" in unsloth_7b  # Unsloth's LoRA 16-bit, beside ours
    results = (REPO / "bench" / "RESULTS.md").read_text(encoding="utf-8")
    written = results[results.index(published.SECTION):]
    written = written[:written.find("\n## ", 1)] if "\n## " in written[1:] else written
    tables = [line for line in section.splitlines() if line.startswith("|")]
    assert tables == [line for line in written.splitlines() if line.startswith("|")]
