"""The lean SwiGLU block (trainer_core/lean_layers.py) computes what the model's own MLP computes:
same outputs, same gradients for every trainable weight, with LoRA on the down projection or
not, in full fine-tuning, and under bf16 autocast; and it keeps less for the backward pass."""

from __future__ import annotations

import copy

import pytest
import torch

from trainer_core.lean_layers import install_lean_layers


def _model(model_dir, lora_targets):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.config.use_cache = False
    if lora_targets:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, init_lora_weights=False,
                                                 target_modules=lora_targets))
    return model


def _loss_and_grads(model, ids):
    model.zero_grad()
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("lora_targets", [["down_proj", "gate_proj", "q_proj"], ["q_proj", "up_proj"], None],
                         ids=["lora-on-down", "lora-not-on-down", "full"])
def test_lean_block_gives_the_same_loss_and_gradients(tiny_model_dir, lora_targets):
    reference = _model(tiny_model_dir, lora_targets)
    lean = copy.deepcopy(reference)
    layers = reference.config.num_hidden_layers
    assert install_lean_layers(lean) == {"mlp": layers, "norm": 2 * layers + 1}
    ids = torch.randint(3, 250, (3, 21), generator=torch.Generator().manual_seed(1))
    expected_loss, expected = _loss_and_grads(reference, ids)
    loss, grads = _loss_and_grads(lean, ids)
    assert abs(loss.item() - expected_loss.item()) <= 1e-5 * abs(expected_loss.item())
    assert grads.keys() == expected.keys() and grads
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected[name], rtol=1e-5, atol=1e-6, msg=name)


def test_lean_block_under_bf16_autocast(tiny_model_dir):
    reference = _model(tiny_model_dir, ["down_proj", "up_proj"])
    lean = copy.deepcopy(reference)
    install_lean_layers(lean)
    ids = torch.randint(3, 250, (2, 17), generator=torch.Generator().manual_seed(2))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected_loss, expected = _loss_and_grads(reference, ids)
        loss, grads = _loss_and_grads(lean, ids)
    assert abs(loss.item() - expected_loss.item()) <= 2e-2 * abs(expected_loss.item())
    for name, grad in grads.items():
        assert torch.nn.functional.cosine_similarity(grad.flatten(), expected[name].flatten(), dim=0) > 0.99, name


def test_lean_block_keeps_less_for_backward(tiny_model_dir):
    def saved_bytes(model) -> int:
        seen: dict[int, int] = {}

        def pack(tensor):
            storage = tensor.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
            return tensor

        ids = torch.randint(3, 250, (2, 64), generator=torch.Generator().manual_seed(3))
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(input_ids=ids, labels=ids)
        return sum(seen.values())

    reference = _model(tiny_model_dir, ["down_proj", "gate_proj"])
    lean = copy.deepcopy(reference)
    install_lean_layers(lean)
    assert saved_bytes(lean) < saved_bytes(reference)


def test_a_merged_or_disabled_adapter_runs_the_layers_own_forward(tiny_model_dir):
    model = _model(tiny_model_dir, ["down_proj"])
    install_lean_layers(model)
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with model.disable_adapter():
        base = model(input_ids=ids).logits
    plain = _model(tiny_model_dir, None)
    torch.testing.assert_close(base, plain(input_ids=ids).logits, rtol=1e-5, atol=1e-6)
    tuned = model(input_ids=ids).logits
    model.merge_adapter()
    torch.testing.assert_close(model(input_ids=ids).logits, tuned, rtol=1e-4, atol=1e-5)


def test_a_norm_weight_with_a_zero_falls_back_to_the_models_own_norm(tiny_model_dir):
    """The lean norm divides by the weight; a zero there takes the model's own path, no NaN."""
    reference = _model(tiny_model_dir, None)
    with torch.no_grad():
        reference.model.norm.weight[3] = 0.0
    lean = copy.deepcopy(reference)
    install_lean_layers(lean)
    ids = torch.randint(3, 250, (2, 9), generator=torch.Generator().manual_seed(4))
    expected_loss, expected = _loss_and_grads(reference, ids)
    loss, grads = _loss_and_grads(lean, ids)
    assert torch.isfinite(loss) and abs(loss.item() - expected_loss.item()) <= 1e-5 * abs(expected_loss.item())
    torch.testing.assert_close(grads["model.norm.weight"], expected["model.norm.weight"], rtol=1e-5, atol=1e-6)


def _zero_checks(model, ids, forwards: int) -> int:
    """How many times the norms compared their weight with zero over `forwards` training forwards
    (each such check is a device-to-host sync on a GPU)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    count = [0]
    norm_weights = {m.weight.data_ptr() for m in model.modules() if type(m).__name__ == "LlamaRMSNorm"}

    class CountEq(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.aten.eq.Scalar and args[0].data_ptr() in norm_weights:
                count[0] += 1
            return func(*args, **(kwargs or {}))

    with CountEq():
        for _ in range(forwards):
            model(input_ids=ids, labels=ids).loss.backward()
    return count[0]


@pytest.mark.parametrize("lora_targets", [["q_proj", "v_proj"], None], ids=["lora-frozen-norms", "full"])
def test_the_zero_weight_check_runs_once_per_weight_state_not_per_forward(tiny_model_dir, lora_targets):
    model = _model(tiny_model_dir, lora_targets)
    norms = install_lean_layers(model)["norm"]
    ids = torch.randint(3, 250, (2, 9), generator=torch.Generator().manual_seed(5))
    assert _zero_checks(model, ids, forwards=3) == norms  # once, on the first forward
    from trainer_core.lean_layers import weights_changed

    weights_changed()  # an optimizer step: trainable norms check again, frozen ones need not
    assert _zero_checks(model, ids, forwards=2) == (0 if lora_targets else norms)
    norm = next(m for m in model.modules() if type(m).__name__ == "LlamaRMSNorm")
    with torch.no_grad():
        norm.weight[0] = 0.0  # written in place: checked again, and the model's own norm runs
    assert _zero_checks(model, ids, forwards=1) >= 1 and norm._lean_zero
