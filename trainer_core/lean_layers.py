"""Llama-style layers that keep less for their backward pass: same arithmetic, less memory.

- The SwiGLU MLP computes `down(silu(gate(x)) * up(x))`. Autograd keeps four tensors of the
  intermediate size per token for it: gate, silu(gate), up and their product (the input that the
  down projection's LoRA needs); they are 60 % of all that a LoRA step keeps
  (bench/activation_memory.py). `SwiGLUDown` keeps only gate and up and recomputes silu and the
  product in the backward pass: two elementwise operations, no extra matmul. It covers a plain
  nn.Linear down projection and a peft LoRA one (one adapter, no dropout, no DoRA).
- RMSNorm keeps its input. `LeanRMSNorm` keeps its output instead, which the next layer's LoRA
  keeps anyway (one tensor, shared), and gets the normalised input back as output / weight.

Anything else (QLoRA's 4-bit layers, ZeRO-3's partitioned weights, a merged adapter, a bf16
norm input, a zero norm weight) runs the model's own forward. tests/test_lean_layers.py checks
outputs and gradients against the model's own layers.
"""

from __future__ import annotations

import functools
import types
from typing import Any

from trainer_core.loss import matmul_dtype

# Architectures (config.model_type) whose SwiGLU MLPs and RMSNorms the lean layers replace, each
# listed only where the model-zoo parity test (tests/test_zoo_parity.py) shows outputs and
# gradients equal to the model's own. Any other architecture keeps its own layers.
LEAN_LAYER_ARCHITECTURES = frozenset({"llama", "mistral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "granite"})
# Norms that compute weight * (x / rms(x)) exactly like Llama's (Gemma's 1 + weight does not)
LLAMA_STYLE_NORMS = {"LlamaRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm", "MistralRMSNorm", "Qwen2MoeRMSNorm",
                     "Qwen3MoeRMSNorm", "GraniteRMSNorm"}


def install_lean_layers(model: Any) -> dict[str, int]:
    """Give every SwiGLU MLP block and Llama-style RMSNorm of `model` the lean forward, where its
    architecture is in LEAN_LAYER_ARCHITECTURES; returns how many of each were changed."""
    changed = {"mlp": 0, "norm": 0}
    if getattr(getattr(model, "config", None), "model_type", None) not in LEAN_LAYER_ARCHITECTURES:
        return changed
    for module in model.modules():
        if _is_swiglu_block(module):
            module.forward = types.MethodType(_lean_mlp_forward, module)
            changed["mlp"] += 1
        elif type(module).__name__ in LLAMA_STYLE_NORMS and hasattr(module, "variance_epsilon"):
            module.forward = types.MethodType(_lean_norm_forward, module)
            changed["norm"] += 1
    return changed


def _is_swiglu_block(module: Any) -> bool:
    import torch

    if not all(hasattr(module, name) for name in ("gate_proj", "up_proj", "down_proj", "act_fn")):
        return False
    act = module.act_fn
    # transformers' SiLUActivation or torch's SiLU; "silu" and "swish" are the same function
    return isinstance(act, torch.nn.SiLU) or type(act).__name__ == "SiLUActivation"


def _lean_mlp_forward(self: Any, x: Any) -> Any:
    parts = _down_parts(self.down_proj)
    if parts is None:
        return type(self).forward(self, x)  # the model's own
    return _swiglu_down().apply(self.gate_proj(x), self.up_proj(x), *parts)


def _lean_norm_forward(self: Any, hidden: Any) -> Any:
    import torch

    weight = self.weight
    if (hidden.dtype != torch.float32 or weight.dtype != torch.float32 or hasattr(weight, "ds_id")
            or not torch.is_grad_enabled() or _has_a_zero(self, weight)):
        return type(self).forward(self, hidden)  # the model's own
    return _lean_rms_norm().apply(hidden, weight, self.variance_epsilon)


_optimizer_steps = 0  # bumped by weights_changed() after every optimizer step


def weights_changed() -> None:
    """Tell the lean norms that trainable weights may have changed (the Trainer calls it after each
    optimizer step): their zero-weight check runs again at the next forward."""
    global _optimizer_steps
    _optimizer_steps += 1


def _has_a_zero(norm: Any, weight: Any) -> bool:
    """Whether the norm weight holds a zero, decided once per weight state: reading the answer is a
    device-to-host sync, too dear for every layer of every forward on a GPU. A frozen weight is
    checked once (and again if it is written in place); a trainable one once per optimizer step."""
    state = (weight.data_ptr(), weight._version, _optimizer_steps if weight.requires_grad else 0)
    if getattr(norm, "_lean_zero_state", None) != state:
        norm._lean_zero = bool((weight == 0).any())
        norm._lean_zero_state = state
    return norm._lean_zero


def _down_parts(down: Any) -> tuple | None:
    """(weight, bias, lora_A, lora_B, scaling) of the down projection, or None where the lean path
    does not apply and the layer must run its own forward."""
    import torch

    if type(down) is torch.nn.Linear:
        base, lora = down, None
    elif hasattr(down, "base_layer") and hasattr(down, "lora_A"):
        base = down.base_layer
        if down.merged or type(base) is not torch.nn.Linear:
            return None
        active = [] if down.disable_adapters else [a for a in down.active_adapters if a in down.lora_A]
        if len(active) > 1:
            return None
        lora = active[0] if active else None
        if lora is not None and (lora in getattr(down, "lora_variant", {})
                                 or not isinstance(down.lora_dropout[lora], torch.nn.Identity)):
            return None
    else:
        return None
    if hasattr(base.weight, "ds_id"):  # ZeRO-3 gathers the weight only inside the layer's forward
        return None
    if lora is None:
        return base.weight, base.bias, None, None, 0.0
    return base.weight, base.bias, down.lora_A[lora].weight, down.lora_B[lora].weight, down.scaling[lora]


@functools.cache
def _lean_rms_norm() -> Any:
    import torch

    class LeanRMSNorm(torch.autograd.Function):
        """y = weight * x * rsqrt(mean(x^2) + eps), keeping y and the rsqrt instead of x (fp32)."""

        @staticmethod
        def forward(ctx, hidden, weight, eps):
            inv_rms = torch.rsqrt(hidden.pow(2).mean(-1, keepdim=True) + eps)
            out = weight * (hidden * inv_rms)
            ctx.save_for_backward(out, weight, inv_rms)
            return out

        @staticmethod
        def backward(ctx, grad_out):
            out, weight, inv_rms = ctx.saved_tensors
            normed = out / weight  # x * rsqrt(...), back from the output
            grad_normed = grad_out * weight
            grad_hidden = inv_rms * (grad_normed - normed * (grad_normed * normed).mean(-1, keepdim=True))
            grad_weight = None
            if ctx.needs_input_grad[1]:
                grad_weight = (grad_out * normed).reshape(-1, weight.shape[0]).sum(0)
            return grad_hidden, grad_weight, None

    return LeanRMSNorm


@functools.cache
def _swiglu_down() -> Any:
    import torch
    import torch.nn.functional as F

    class SwiGLUDown(torch.autograd.Function):
        """out = down(silu(gate) * up), with down = W (+ b) (+ scaling * B A); keeps gate and up."""

        @staticmethod
        def forward(ctx, gate, up, weight, bias, lora_a, lora_b, scaling):
            dtype = matmul_dtype(gate, weight)
            with torch.autocast(gate.device.type, enabled=False):
                product = F.silu(gate.to(dtype)) * up.to(dtype)
                out = F.linear(product, weight.to(dtype), None if bias is None else bias.to(dtype))
                lora_mid = None
                if lora_a is not None:
                    lora_mid = F.linear(product, lora_a.to(dtype))
                    out = out + F.linear(lora_mid, lora_b.to(dtype)) * scaling
            ctx.save_for_backward(gate, up, weight, bias, lora_a, lora_b, lora_mid)
            ctx.dtype, ctx.scaling = dtype, scaling
            return out

        @staticmethod
        def backward(ctx, grad_out):
            gate, up, weight, bias, lora_a, lora_b, lora_mid = ctx.saved_tensors
            dtype, scaling = ctx.dtype, ctx.scaling
            need = ctx.needs_input_grad
            grad_gate = grad_up = grad_weight = grad_bias = grad_a = grad_b = None
            with torch.autocast(gate.device.type, enabled=False):
                g, u = gate.to(dtype), up.to(dtype)
                silu = F.silu(g)
                product = silu * u  # recomputed: this is the memory the block saves
                dy = grad_out.to(dtype)
                grad_product = dy @ weight.to(dtype)
                flat_dy, flat_product = dy.reshape(-1, dy.shape[-1]), product.reshape(-1, product.shape[-1])
                if need[2]:
                    grad_weight = (flat_dy.T @ flat_product).to(weight.dtype)
                if bias is not None and need[3]:
                    grad_bias = flat_dy.sum(0).to(bias.dtype)
                if lora_a is not None:
                    scaled = dy * scaling
                    grad_mid = scaled @ lora_b.to(dtype)
                    grad_product = grad_product + grad_mid @ lora_a.to(dtype)
                    if need[5]:
                        grad_b = (scaled.reshape(-1, scaled.shape[-1]).T
                                  @ lora_mid.reshape(-1, lora_mid.shape[-1])).to(lora_b.dtype)
                    if need[4]:
                        grad_a = (grad_mid.reshape(-1, grad_mid.shape[-1]).T @ flat_product).to(lora_a.dtype)
                if need[1]:
                    grad_up = (grad_product * silu).to(up.dtype)
                if need[0]:  # one fused kernel for d silu(g) / d g
                    grad_gate = torch.ops.aten.silu_backward(grad_product * u, g).to(gate.dtype)
            return grad_gate, grad_up, grad_weight, grad_bias, grad_a, grad_b, None

    return SwiGLUDown
