"""The trained-rows-only loss (trainer_core/loss.py) computes what transformers' loss computes:
same value, same gradients, on padded and on packed batches, with and without an external
token count (gradient accumulation)."""

from __future__ import annotations

import pytest
import torch

from trainer_core import loss as loss_module
from trainer_core.loss import TrainedRowsOnly, can_fuse_output_layer, chunked_linear_cross_entropy, trained_rows_loss
from trainer_core.tokenization import IGNORE_INDEX, SupervisedCollator, pack_samples


def _lora_model(model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.config.use_cache = False
    model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, init_lora_weights=False,
                                             target_modules=["q_proj", "v_proj", "gate_proj", "down_proj"]))
    return model


def _samples(seed: int = 0, n: int = 6) -> list[dict]:
    generator = torch.Generator().manual_seed(seed)
    samples = []
    for i in range(n):
        length = 6 + 5 * i
        ids = torch.randint(3, 250, (length,), generator=generator).tolist()
        prompt = 2 + i % 4  # the first tokens are prompt: never trained
        labels = [IGNORE_INDEX] * prompt + ids[prompt:]
        samples.append({"input_ids": ids, "labels": labels})
    return samples


def _loss_and_grads(model, batch, ours: bool, num_items=None, fused: bool = False):
    model.zero_grad()
    if ours:
        rows = TrainedRowsOnly(model, fused=fused)
        rows.select(batch["labels"])
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        outputs = model(**inputs)
        trained = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
        # only the trained rows were computed; fused, none at all (the loss does them in slices)
        assert outputs.logits.shape[0] == (0 if fused else trained)
        loss = rows.loss(outputs, batch["labels"], num_items) if fused else trained_rows_loss(
            outputs, batch["labels"], num_items)
        rows.clear()
        rows.remove()
    else:
        kwargs = {"num_items_in_batch": num_items} if num_items is not None else {}
        loss = model(**batch, **kwargs).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return loss.detach(), grads


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("num_items", [None, 57])
def test_trained_rows_loss_equals_the_full_loss(tiny_model_dir, packed, num_items, fused, monkeypatch):
    monkeypatch.setattr(loss_module, "CHUNK_ELEMENTS", 7 * 256)  # slices of 7 rows: several, uneven
    model = _lora_model(tiny_model_dir)
    samples = _samples()
    if packed:
        samples = pack_samples(samples, cutoff_len=40)
        assert any(len(s["input_ids"]) > 30 for s in samples)  # several samples share a block
    batch = SupervisedCollator(pad_token_id=0)(samples)
    reference, reference_grads = _loss_and_grads(model, batch, ours=False, num_items=num_items)
    loss, grads = _loss_and_grads(model, batch, ours=True, num_items=num_items, fused=fused)
    assert abs(loss.item() - reference.item()) <= 1e-5 * abs(reference.item())
    assert grads.keys() == reference_grads.keys() and grads
    for name, grad in grads.items():
        torch.testing.assert_close(grad, reference_grads[name], rtol=1e-5, atol=1e-7, msg=name)


def test_the_hook_is_inert_when_not_armed(tiny_model_dir):
    """Generation and evaluation outside the Trainer get full logits."""
    model = _lora_model(tiny_model_dir)
    rows = TrainedRowsOnly(model)
    ids = torch.tensor([[5, 6, 7, 8]])
    assert model(input_ids=ids).logits.shape[:2] == (1, 4)
    rows.remove()


def test_full_fine_tuning_gets_the_same_output_layer_gradient(tiny_model_dir, monkeypatch):
    """Trainable (tied) output weights: the slices add up to the same weight gradient."""
    from transformers import AutoModelForCausalLM

    monkeypatch.setattr(loss_module, "CHUNK_ELEMENTS", 5 * 256)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model.config.use_cache = False
    assert can_fuse_output_layer(model)
    batch = SupervisedCollator(pad_token_id=0)(_samples(seed=3))
    reference, reference_grads = _loss_and_grads(model, batch, ours=False)
    loss, grads = _loss_and_grads(model, batch, ours=True, fused=True)
    assert abs(loss.item() - reference.item()) <= 1e-5 * abs(reference.item())
    for name, grad in grads.items():
        torch.testing.assert_close(grad, reference_grads[name], rtol=1e-5, atol=1e-6, msg=name)


def test_chunked_cross_entropy_matches_under_bf16_autocast():
    """With autocast the slices' matmuls run in bf16, as the output layer's own would."""
    torch.manual_seed(0)
    hidden = torch.randn(37, 16, requires_grad=True)
    weight = torch.randn(300, 16, requires_grad=True)
    targets = torch.randint(0, 300, (37,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        reference = torch.nn.functional.cross_entropy((hidden @ weight.T).float(), targets, reduction="sum")
        ours = chunked_linear_cross_entropy(hidden, weight, targets)
    assert abs(ours.item() - reference.item()) <= 1e-2 * abs(reference.item())
    expected = torch.autograd.grad(reference, (hidden, weight))
    got = torch.autograd.grad(ours, (hidden, weight))
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=5e-2, atol=5e-2)


def _flops(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


@pytest.mark.parametrize("hidden_grad,weight_grad", [(True, True), (True, False), (False, True)])
def test_no_gradient_work_without_grad(hidden_grad, weight_grad):
    """Evaluation (no_grad) with a trainable output layer, as in full fine-tuning: one matmul of
    logits and nothing more, neither a hidden nor a vocab x hidden weight gradient."""
    rows, hidden_size, vocab = 24, 16, 300
    hidden = torch.randn(rows, hidden_size, requires_grad=hidden_grad)
    weight = torch.randn(vocab, hidden_size, requires_grad=weight_grad)
    targets = torch.randint(0, vocab, (rows,))
    logits_flops = 2 * rows * hidden_size * vocab
    with torch.no_grad():
        assert _flops(lambda: chunked_linear_cross_entropy(hidden, weight, targets)) == logits_flops
        total = chunked_linear_cross_entropy(hidden, weight, targets)
    assert not total.requires_grad
    expected = torch.nn.functional.cross_entropy(hidden @ weight.T, targets, reduction="sum")
    assert abs(total.item() - expected.item()) <= 1e-5 * abs(expected.item())
    # with grad mode on, the gradients asked for are computed in the same pass
    needed = int(hidden_grad) + int(weight_grad)
    assert _flops(lambda: chunked_linear_cross_entropy(hidden, weight, targets)) == logits_flops * (1 + needed)


def _granite(logits_scaling: float):
    from transformers import GraniteConfig, GraniteForCausalLM

    torch.manual_seed(0)
    config = GraniteConfig(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, logits_scaling=logits_scaling,
                           tie_word_embeddings=False, use_cache=False)
    return GraniteForCausalLM(config)


def test_logits_scaled_after_the_head_are_never_fused():
    """Granite divides its logits by logits_scaling after the output layer: the fused loss would
    train on unscaled logits. Its loss runs on the kept rows through the model's own code."""
    model = _granite(logits_scaling=4.0)
    assert loss_module.trained_rows_path(model) == "rows" and not can_fuse_output_layer(model)
    batch = SupervisedCollator(pad_token_id=0)(_samples(seed=1))
    reference, reference_grads = _loss_and_grads(model, batch, ours=False)
    loss, grads = _loss_and_grads(model, batch, ours=True, fused=False)
    assert abs(loss.item() - reference.item()) <= 1e-5 * abs(reference.item())
    for name, grad in grads.items():
        torch.testing.assert_close(grad, reference_grads[name], rtol=1e-5, atol=1e-7, msg=name)


def test_an_architecture_not_listed_keeps_the_models_own_loss(monkeypatch):
    """Allow-list: an architecture nobody has checked gets no hook and no loss of ours."""
    from transformers import TrainingArguments

    from trainer_core.train import make_trainer

    model = _granite(logits_scaling=1.0)
    monkeypatch.delitem(loss_module.TRAINED_ROWS_PATHS, "granite")
    assert loss_module.trained_rows_path(model) is None
    trainer = make_trainer(model=model, args=TrainingArguments(output_dir="/tmp/unused", use_cpu=True, report_to=[]))
    assert trainer.compute_loss_func is None and not hasattr(trainer, "trained_rows")
    assert not model.get_output_embeddings()._forward_pre_hooks


def test_under_bf16_the_vocabulary_matmuls_of_a_real_trainer_step_run_in_bf16(tiny_model_dir, tmp_path):
    """The Trainer autocasts forward but calls the loss outside that autocast: the fused loss must
    still run the output layer's matmuls in bf16, as the model's own head would."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from transformers import TrainingArguments

    from trainer_core.train import make_trainer

    model = _lora_model(tiny_model_dir)
    vocab = model.get_output_embeddings().weight.shape[0]
    seen: list[torch.dtype] = []

    class VocabMatmuls(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func in (torch.ops.aten.mm.default, torch.ops.aten.addmm.default) and out.shape[-1] == vocab:
                seen.append(args[-2].dtype if func is torch.ops.aten.addmm.default else args[0].dtype)
            return out

    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, bf16=True, max_steps=1, report_to=[],
                             per_device_train_batch_size=3, save_strategy="no", remove_unused_columns=False)
    trainer = make_trainer(model=model, args=args, train_dataset=_samples(n=3),
                           data_collator=SupervisedCollator(pad_token_id=0))
    assert trainer.trained_rows.fused
    with VocabMatmuls():
        trainer.train()
    assert seen and set(seen) == {torch.bfloat16}, seen
