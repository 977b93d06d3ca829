"""Per-family numeric parity of our training path over the model zoo (tests/zoo.py).

For every family the trainer accepts, the path it takes (trainer_core.loss.trained_rows_path and
trainer_core.lean_layers.install_lean_layers) is the one the allow-lists name, and what it trains
with equals the model's own: the loss and every gradient of load_model's model (lean layers,
LoRA on all linear layers) under make_trainer's compute_loss (the trained-rows hook and its loss)
against an untouched copy's forward(labels=...).loss, for LoRA and full fine-tuning, in fp32 and
under bf16 autocast as the Trainer applies it (accelerate wraps forward in autocast; the Trainer
calls compute_loss_func outside it); and one optimizer step of make_trainer's Trainer against a
plain transformers.Trainer.

QIHUANG_TEST_DEVICE=cuda runs it all on the GPU (bf16 autocast there too); the default is CPU.
"""

from __future__ import annotations

import contextlib
import os
import sys
import types
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import zoo  # noqa: E402

from trainer_core.config import TrainConfig  # noqa: E402
from trainer_core.lean_layers import LEAN_LAYER_ARCHITECTURES, install_lean_layers  # noqa: E402
from trainer_core.loss import TRAINED_ROWS_PATHS, trained_rows_path  # noqa: E402
from trainer_core.models import bf16_supported, load_model, lora_target_modules  # noqa: E402
from trainer_core.tokenization import IGNORE_INDEX, SupervisedCollator  # noqa: E402

pytestmark = [pytest.mark.zoo, pytest.mark.train]  # optimizer steps of the Trainer

DEVICE = os.environ.get("QIHUANG_TEST_DEVICE", "cpu")

# fp32: the same arithmetic in another order. Loss: relative difference. Gradients and one-step
# weight changes: per tensor, max |ours - reference| relative to max |reference| (weight changes
# also get FP32_STEP_ULPS of the weights' own rounding: w + dw is rounded to fp32).
FP32_LOSS_RTOL = 1e-5
FP32_GRAD_RTOL = 1e-4
FP32_STEP_ULPS = 4
# bf16 autocast: every matmul rounds to 8 bits of mantissa, and the two paths round at different
# places (the fused loss scales by 1 / count after its bf16 matmul, the model's own before it),
# so gradients differ by about 1 % of their norm (1.3 % at most seen on CPU), a quarter of the
# 3-5 % by which the model's own bf16 gradients differ from its fp32 ones. Gradients: per tensor,
# ||ours - reference|| relative to ||reference||, at most BF16_GRAD_RTOL or, for a tensor whose
# gradient is mostly rounding noise (a key bias: softmax ignores it, its true gradient is 0), the
# model's own bf16-vs-fp32 difference of that tensor. A wrong formula, a lost soft-cap or scale,
# a missed row give tens of per cent.
BF16_LOSS_RTOL = 2e-3
BF16_GRAD_RTOL = 3e-2
# One bf16 step: all weight changes together, ||ours - plain|| relative to ||plain||, within
# BF16_GRAD_RTOL; each tensor within BF16_STEP_TENSOR_RTOL (a tensor gone wrong, not noise).
BF16_STEP_TENSOR_RTOL = 0.3

LORA_RANK, LORA_ALPHA = 4, 8
STEP_LR = 1.0  # SGD, no clipping: the weight change is lr x the gradient, so it compares like one


# Families whose check is known to fail: (family, check) -> reason, marked xfail(strict=True) so a
# fix shows as XPASS. None today: gemma3-text+softcap was one until trained_rows_path sent soft-
# capped configs of listed architectures to the rows path.
KNOWN_FAILURES: dict[tuple[str, str], str] = {}


def _case(family: str, check: str):
    reason = KNOWN_FAILURES.get((family, check))
    if reason is None:
        return family
    return pytest.param(family, marks=pytest.mark.xfail(strict=True, reason=reason))


def _families(check: str) -> list:
    return [_case(name, check) for name in zoo.FAMILIES]


PRECISIONS = [
    "fp32",
    pytest.param("bf16", marks=pytest.mark.skipif(
        DEVICE == "cpu" and not bf16_supported(), reason="this CPU has no native bf16 (AVX-512 BF16 / AMX)")),
]


@pytest.fixture(autouse=True)
def _full_fp32_matmuls():
    """fp32 is compared at fp32 precision: no TF32 (another test's TrainingArguments(tf32=True)
    turns it on for the whole process)."""
    if not torch.cuda.is_available():
        yield
        return
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


# --- models and batches -------------------------------------------------------------------------

_saved: dict[str, Path] = {}


@pytest.fixture(scope="module")
def saved_families(tmp_path_factory):
    """family -> a folder holding its zoo model, saved once per session (load_model loads from one)."""

    def folder(name: str) -> Path:
        if name not in _saved:
            path = tmp_path_factory.mktemp(f"zoo-{name.replace('+', '-')}")
            zoo.FAMILIES[name]().save_pretrained(path)
            _saved[name] = path
        return _saved[name]

    return folder


def _train_config(mode: str) -> TrainConfig:
    return TrainConfig(finetuning_type=mode, lora_rank=LORA_RANK, lora_alpha=LORA_ALPHA, lora_dropout=0.0,
                       lora_target="all", gradient_checkpointing=False)


def _pair(folder: Path, mode: str):
    """(ours, reference): ours exactly as load_model prepares it (lean layers, then LoRA on all
    linear layers); the reference an untouched load of the same weights with the same LoRA
    (init_lora_weights=False, so B != 0; ours gets the reference's adapter weights)."""
    from transformers import AutoModelForCausalLM

    ours = load_model(_train_config(mode), str(folder), types.SimpleNamespace(pad_token_id=zoo.PAD_TOKEN_ID),
                      log=lambda *_: None)
    reference = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    reference.config.use_cache = False
    if mode == "lora":
        from peft import LoraConfig, get_peft_model

        torch.manual_seed(zoo.SEED)
        reference = get_peft_model(reference, LoraConfig(
            task_type="CAUSAL_LM", r=LORA_RANK, lora_alpha=LORA_ALPHA, lora_dropout=0.0, init_lora_weights=False,
            target_modules=lora_target_modules(reference, "all")))
        adapter = {n: p for n, p in reference.named_parameters() if "lora_" in n}
        with torch.no_grad():
            for name, param in ours.named_parameters():
                if "lora_" in name:
                    param.copy_(adapter.pop(name))
        assert not adapter, f"LoRA weights only in the reference: {sorted(adapter)[:4]}"
        assert all(bool(p.abs().sum() > 0) for n, p in reference.named_parameters() if "lora_B" in n)
    ours_params, reference_params = dict(ours.named_parameters()), dict(reference.named_parameters())
    assert ours_params.keys() == reference_params.keys()
    for name, param in ours_params.items():
        assert param.requires_grad == reference_params[name].requires_grad, name
        assert torch.equal(param, reference_params[name]), name
    return ours.train(), reference.train()


def _samples(n: int = 5, seed: int = 0) -> list[dict]:
    """SFT samples of several lengths: a prompt (never trained), an answer, and in one sample a
    second masked turn and answer; padded by SupervisedCollator they make a batch with padding."""
    generator = torch.Generator().manual_seed(seed)
    samples = []
    for i in range(n):
        length = 7 + 4 * i
        ids = torch.randint(3, zoo.VOCAB, (length,), generator=generator).tolist()
        prompt = 2 + i % 3
        labels = [IGNORE_INDEX] * prompt + ids[prompt:]
        if i == n - 1:  # a multi-turn sample: the second prompt is masked too
            labels[length // 2:length // 2 + 3] = [IGNORE_INDEX] * 3
        samples.append({"input_ids": ids, "labels": labels})
    return samples


def _batch() -> dict:
    batch = SupervisedCollator(zoo.PAD_TOKEN_ID)(_samples())
    assert bool((batch["attention_mask"] == 0).any())  # padded
    return {k: v.to(DEVICE) for k, v in batch.items()}


def _autocast(precision: str):
    if precision == "bf16":
        return torch.autocast(DEVICE, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _arguments(tmp_path: Path, precision: str, **overrides):
    from transformers import TrainingArguments

    kwargs = dict(output_dir=str(tmp_path / "out"), use_cpu=DEVICE == "cpu", report_to=[], save_strategy="no",
                  bf16=precision == "bf16", max_steps=1, per_device_train_batch_size=8, seed=zoo.SEED,
                  data_seed=zoo.SEED, remove_unused_columns=False, dataloader_num_workers=0, disable_tqdm=True,
                  logging_steps=1)
    return TrainingArguments(**{**kwargs, **overrides})


# --- comparisons --------------------------------------------------------------------------------

def _relative(ours: torch.Tensor, reference: torch.Tensor, precision: str) -> tuple[float, float]:
    """(difference, scale) of one tensor as the tolerances measure them (see the constants)."""
    diff = ours.double() - reference.double()
    if precision == "fp32":
        return float(diff.abs().max()), float(reference.double().abs().max())
    return float(diff.norm()), float(reference.double().norm())


def _assert_same_tensors(ours: dict, reference: dict, precision: str, what: str, rtol: dict | float | None = None,
                         atol: dict | None = None) -> float:
    """Every tensor of `reference` has its twin in `ours`: difference <= rtol x scale + atol
    (rtol per tensor name or one for all; by default the precision's). Returns the worst
    difference / scale."""
    default = FP32_GRAD_RTOL if precision == "fp32" else BF16_GRAD_RTOL
    assert ours.keys() == reference.keys() and reference
    worst, failures = 0.0, []
    for name, expected in reference.items():
        got = ours[name]
        assert (got is None) == (expected is None), f"{what} of {name}: {got is None=} {expected is None=}"
        if expected is None:
            continue
        assert bool(torch.isfinite(got).all()), f"{what} of {name} is not finite"
        if not bool(expected.any()) and not bool(got.any()):
            continue  # zero in both (a token that is never seen, an expert never routed to)
        difference, scale = _relative(got, expected, precision)
        tolerance = rtol.get(name, default) if isinstance(rtol, dict) else (rtol or default)
        allowed = tolerance * scale + (atol or {}).get(name, 0.0)
        worst = max(worst, difference / max(scale, 1e-30))
        if difference > allowed:
            failures.append(f"{name}: {difference / max(scale, 1e-30):.2e} (allowed {allowed / max(scale, 1e-30):.2e})")
    assert not failures, f"{what} differ ({precision}), relative to the reference: " + "; ".join(failures[:8])
    return worst


def _bf16_noise(reference_bf16: dict, reference_fp32: dict) -> dict:
    """Per tensor, how far the model's own bf16 gradient is from its fp32 one (relative norm)."""
    noise = {}
    for name, grad in reference_bf16.items():
        if grad is not None and bool(grad.any()):
            difference, scale = _relative(grad, reference_fp32[name], "bf16")
            noise[name] = max(BF16_GRAD_RTOL, difference / scale)
    return noise


def _assert_same_loss(ours: float, reference: float, precision: str) -> float:
    tolerance = FP32_LOSS_RTOL if precision == "fp32" else BF16_LOSS_RTOL
    error = abs(ours - reference) / abs(reference)
    assert error <= tolerance, f"loss {ours} vs the model's own {reference}: {error:.2e} > {tolerance:g} ({precision})"
    return error


def _grads(model) -> dict:
    return {n: (None if p.grad is None else p.grad.detach().clone())
            for n, p in model.named_parameters() if p.requires_grad}


# --- a. the path each family takes --------------------------------------------------------------

def test_every_allow_listed_architecture_has_a_zoo_family():
    covered = {zoo.model_type(name) for name in zoo.FAMILIES}
    assert set(TRAINED_ROWS_PATHS) - covered == set(), "TRAINED_ROWS_PATHS lists architectures the zoo lacks"
    assert set(LEAN_LAYER_ARCHITECTURES) - covered == set(), "LEAN_LAYER_ARCHITECTURES lists ones the zoo lacks"
    assert covered - set(TRAINED_ROWS_PATHS), "the zoo needs a family off the allow-list (the model's own loss)"


def _expected_path(model) -> str | None:
    config = model.config
    if getattr(config, "output_router_logits", False):
        return None  # the model's own loss adds the router's auxiliary loss
    path = TRAINED_ROWS_PATHS.get(config.model_type)
    rescaled = any(getattr(config, key, None) not in (None, 1.0)
                   for key in ("final_logit_softcapping", "logit_scale", "logits_scaling"))
    if path == "fused" and rescaled:
        return "rows"  # logits are changed after the head: the fused loss would skip that
    return path


@pytest.mark.parametrize("family", _families("path"))
def test_each_family_takes_its_listed_path(family):
    model = zoo.FAMILIES[family]()
    assert trained_rows_path(model) == _expected_path(model)
    if model.config.model_type not in TRAINED_ROWS_PATHS:
        assert trained_rows_path(model) is None


@pytest.mark.parametrize("family", list(zoo.FAMILIES))
def test_lean_layers_exactly_where_listed(family):
    model = zoo.FAMILIES[family]()
    activation = getattr(model.config, "hidden_act", None) or getattr(model.config, "hidden_activation", None)
    swiglu = sum(all(isinstance(getattr(m, p, None), torch.nn.Linear) for p in ("gate_proj", "up_proj", "down_proj"))
                 and activation in ("silu", "swish") for m in model.modules())
    rms_norms = sum(type(m).__name__.endswith("RMSNorm") for m in model.modules())
    counts = install_lean_layers(model)
    if model.config.model_type in LEAN_LAYER_ARCHITECTURES:
        assert counts == {"mlp": swiglu, "norm": rms_norms}
        assert counts["norm"] > 0
    else:
        assert counts == {"mlp": 0, "norm": 0}


def test_an_unlisted_family_trains_with_the_models_own_loss(saved_families, tmp_path):
    from transformers import Trainer

    from trainer_core.train import make_trainer

    unlisted = [name for name in zoo.FAMILIES if zoo.model_type(name) not in TRAINED_ROWS_PATHS]
    assert unlisted
    ours, _ = _pair(saved_families(unlisted[0]), "lora")
    trainer = make_trainer(model=ours, args=_arguments(tmp_path, "fp32"), train_dataset=_samples(),
                           data_collator=SupervisedCollator(zoo.PAD_TOKEN_ID))
    assert type(trainer).compute_loss is Trainer.compute_loss and trainer.compute_loss_func is None
    assert not ours.get_output_embeddings()._forward_pre_hooks  # no trained-rows hook


# --- b. loss and every gradient ------------------------------------------------------------------

@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("mode", ["lora", "full"])
@pytest.mark.parametrize("family", _families("loss"))
def test_loss_and_every_gradient_equal_the_models_own(family, mode, precision, saved_families, tmp_path):
    from trainer_core.train import make_trainer

    ours, reference = _pair(saved_families(family), mode)
    ours.to(DEVICE), reference.to(DEVICE)
    batch = _batch()
    count = (batch["labels"][:, 1:] != IGNORE_INDEX).sum()  # what the Trainer passes as num_items_in_batch
    path = trained_rows_path(ours)

    trainer = make_trainer(model=ours, args=_arguments(tmp_path, precision), train_dataset=_samples(),
                           data_collator=SupervisedCollator(zoo.PAD_TOKEN_ID))
    prepared = trainer.accelerator.prepare_model(ours)  # bf16: forward inside autocast, as in train()
    ours.zero_grad()
    with trainer.compute_loss_context_manager():
        loss, outputs = trainer.compute_loss(prepared, dict(batch), return_outputs=True, num_items_in_batch=count)
    loss.backward()
    trained = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    rows = {"fused": 0, "rows": trained, None: batch["input_ids"].numel()}[path]
    assert outputs["logits"].reshape(-1, outputs["logits"].shape[-1]).shape[0] == rows, path

    reference.zero_grad()
    with _autocast(precision):
        expected = reference(**batch, num_items_in_batch=count).loss
    expected.backward()
    expected_grads, rtol = _grads(reference), None
    if precision == "bf16":
        reference.zero_grad()
        reference(**batch, num_items_in_batch=count).loss.backward()
        rtol = _bf16_noise(expected_grads, _grads(reference))

    loss_error = _assert_same_loss(loss.item(), expected.item(), precision)
    grad_error = _assert_same_tensors(_grads(ours), expected_grads, precision, "gradients", rtol)
    print(f"\nPARITY {family} {mode} {precision} path={path} loss={loss_error:.1e} grad={grad_error:.1e}")


# --- c. one optimizer step -----------------------------------------------------------------------

def _one_step(trainer_factory, model, tmp_path: Path, precision: str) -> tuple[dict, float, dict]:
    """(weight changes, training loss, each weight's max |w| before) of one SGD step."""
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    args = _arguments(tmp_path, precision, optim="sgd", learning_rate=STEP_LR, lr_scheduler_type="constant",
                      weight_decay=0.0, max_grad_norm=0.0)  # no clipping: it would hide a gradient's scale
    trainer = trainer_factory(model=model, args=args, train_dataset=_samples(),
                              data_collator=SupervisedCollator(zoo.PAD_TOKEN_ID))
    result = trainer.train()
    assert trainer.state.global_step == 1
    change = {n: p.detach().to("cpu", torch.float64) - before[n].to("cpu", torch.float64)
              for n, p in model.named_parameters() if p.requires_grad}
    return change, result.training_loss, {n: float(w.abs().max()) for n, w in before.items()}


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("mode", ["lora", "full"])
@pytest.mark.parametrize("family", _families("step"))
def test_one_optimizer_step_equals_a_plain_trainers(family, mode, precision, saved_families, tmp_path):
    from transformers import Trainer, set_seed

    from trainer_core.train import make_trainer

    ours, reference = _pair(saved_families(family), mode)
    set_seed(zoo.SEED)
    ours_change, ours_loss, _ = _one_step(make_trainer, ours, tmp_path / "ours", precision)
    set_seed(zoo.SEED)
    reference_change, reference_loss, sizes = _one_step(Trainer, reference, tmp_path / "plain", precision)
    assert any(bool(c.any()) for c in reference_change.values())  # the step changed something
    loss_error = _assert_same_loss(ours_loss, reference_loss, precision)
    if precision == "fp32":
        ulps = {n: FP32_STEP_ULPS * torch.finfo(torch.float32).eps * size for n, size in sizes.items()}
        step_error = _assert_same_tensors(ours_change, reference_change, precision, "weight changes", atol=ulps)
    else:
        _assert_same_tensors(ours_change, reference_change, precision, "weight changes", BF16_STEP_TENSOR_RTOL)
        names = [n for n, c in reference_change.items() if c is not None]
        step_error = _relative(torch.cat([ours_change[n].flatten() for n in names]),
                               torch.cat([reference_change[n].flatten() for n in names]), "bf16")
        step_error = step_error[0] / step_error[1]
        assert step_error <= BF16_GRAD_RTOL, f"all weight changes together differ by {step_error:.2e} (bf16)"
    print(f"\nSTEP {family} {mode} {precision} path={trained_rows_path(ours)} loss={loss_error:.1e} "
          f"dw={step_error:.1e}")
