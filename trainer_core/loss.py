"""The causal-LM loss computed only where there is something to learn, a slice of rows at a time.

A model's output layer turns every position's hidden state into a vocabulary-sized row of logits;
for a 135M model with a 49k vocabulary that is a fifth of all the arithmetic and the largest
tensors of the step. In SFT most prompt positions have label -100 and their logits are thrown
away. Here a forward pre-hook on the output layer keeps only the rows whose (shifted) label is
trained. Then, where the output layer is a plain linear layer, those rows never become one big
logits tensor: `chunked_linear_cross_entropy` computes logits, loss and gradients a few hundred
rows at a time, so the step holds (rows x hidden) instead of three (rows x vocab) tensors. The
loss is the same sum of cross-entropies divided by the same count as transformers' own
(tests/test_loss.py checks loss and gradients against it).
"""

from __future__ import annotations

import functools
from typing import Any

IGNORE_INDEX = -100
CHUNK_ELEMENTS = 2**23  # logits per slice: 32 MB in fp32, whatever the vocabulary


def shifted_labels(labels: Any) -> Any:
    """Position t predicts token t+1: labels moved one to the left, -100 at the end."""
    import torch.nn.functional as F

    return F.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:]


# How the trained-rows loss may run for each architecture (config.model_type), and only where a
# parity test over the model zoo (tests/test_zoo_parity.py) shows it equal to the model's own loss:
#   "fused": logits are exactly hidden @ W.T (a bias-free linear head, nothing after it), so the
#            loss is computed from the trained rows' hidden states, slice by slice;
#   "rows":  the output layer sees only the trained rows, and the model's own code after it
#            (soft-capping, logit scaling) still applies to them.
# An architecture not listed here trains with the model's own forward(labels=...) loss.
TRAINED_ROWS_PATHS: dict[str, str] = {
    "llama": "fused",
    "mistral": "fused",
    "qwen2": "fused",
    "qwen2_moe": "fused",
    "qwen3": "fused",
    "qwen3_moe": "fused",
    "phi3": "fused",
    "glm4": "fused",
    "gemma3_text": "fused",
    "gemma2": "rows",  # final_logit_softcapping after the head
    "granite": "rows",  # logits divided by logits_scaling after the head
}


def trained_rows_path(model: Any) -> str | None:
    """"fused", "rows" or None (the model's own loss) for this model, from TRAINED_ROWS_PATHS. A
    head that is not a bias-free nn.Linear, or a MoE model whose loss adds the router's auxiliary
    loss, falls back to a safer path whatever the architecture."""
    import torch

    config = getattr(model, "config", None)
    path = TRAINED_ROWS_PATHS.get(getattr(config, "model_type", ""))
    if path is None or getattr(config, "output_router_logits", False):
        return None  # the model's own loss adds the router's auxiliary loss: keep it
    head = model.get_output_embeddings()
    if path == "fused" and not (type(head) is torch.nn.Linear and head.bias is None):
        return "rows"
    # A listed architecture may still be configured to change its logits after the head (Gemma 3
    # soft-caps them when final_logit_softcapping is set): then only the rows path is exact.
    rescaled = any(getattr(config, key, None) not in (None, 1.0)
                   for key in ("final_logit_softcapping", "logit_scale", "logits_scaling"))
    return "rows" if path == "fused" and rescaled else path


def can_fuse_output_layer(model: Any) -> bool:
    """The chunked loss replaces `logits = head(hidden)` only for the allow-listed architectures."""
    return trained_rows_path(model) == "fused"


class TrainedRowsOnly:
    """Installs the pre-hook; `select(labels)` arms it for the next forward, `clear()` disarms it
    (generation and anything else that calls the model sees the normal full logits).

    With `fused` the hook keeps the trained rows' hidden states and hands the output layer zero
    rows; `loss()` then computes the cross-entropy from those hidden states, slice by slice."""

    def __init__(self, model: Any, fused: bool | None = None) -> None:
        self.keep = None
        self.hidden = None
        self.dtype = None  # the output layer's matmul dtype inside forward (autocast's under bf16)
        self.head = model.get_output_embeddings()
        self.fused = can_fuse_output_layer(model) if fused is None else fused
        self.handle = self.head.register_forward_pre_hook(self._pick_rows)

    def _pick_rows(self, module: Any, args: tuple) -> tuple | None:  # noqa: ARG002 - hook signature
        if self.keep is None:
            return None
        hidden = args[0][self.keep.to(args[0].device)]
        # ZeRO-3 gathers the weight only inside the layer's own forward: there it must run.
        if self.fused and not hasattr(module.weight, "ds_id"):
            self.hidden = hidden
            # The Trainer calls the loss outside the autocast that wraps forward: remember the dtype
            # the head would have run in here, so the loss's matmuls run in it too.
            self.dtype = matmul_dtype(hidden, module.weight)
            return (hidden[:0],) + tuple(args[1:])
        return (hidden,) + tuple(args[1:])

    def select(self, labels: Any) -> None:
        self.keep = shifted_labels(labels) != IGNORE_INDEX

    def clear(self) -> None:
        self.keep = None
        self.hidden = None
        self.dtype = None

    def remove(self) -> None:
        self.handle.remove()

    def loss(self, outputs: Any, labels: Any, num_items_in_batch: Any = None) -> Any:
        """The Trainer's loss function: chunked from the kept hidden states, else from the logits."""
        if self.hidden is None:
            return trained_rows_loss(outputs, labels, num_items_in_batch)
        targets = _trained_targets(labels).to(self.hidden.device)
        total = chunked_linear_cross_entropy(self.hidden, self.head.weight, targets, self.dtype)
        self.hidden = self.dtype = None
        return total / _count(num_items_in_batch, targets, total)


def _trained_targets(labels: Any) -> Any:
    targets = shifted_labels(labels)
    return targets[targets != IGNORE_INDEX]


def _count(num_items_in_batch: Any, targets: Any, loss: Any) -> Any:
    count = num_items_in_batch if num_items_in_batch is not None else targets.numel()
    return count.to(loss.device) if hasattr(count, "to") else count


def trained_rows_loss(outputs: Any, labels: Any, num_items_in_batch: Any = None) -> Any:
    """Cross-entropy over the trained rows only; `outputs.logits` holds exactly those rows, in
    the order of `labels`' trained positions. Divides by `num_items_in_batch` when the Trainer
    gives it (gradient accumulation, several devices), else by this batch's count."""
    import torch.nn.functional as F

    targets = _trained_targets(labels)
    logits = outputs["logits"].float()
    loss = F.cross_entropy(logits, targets.to(logits.device), reduction="sum")
    return loss / _count(num_items_in_batch, targets, loss)


def chunked_linear_cross_entropy(hidden: Any, weight: Any, targets: Any, dtype: Any = None) -> Any:
    """sum_i cross_entropy(hidden_i @ weight.T, targets_i), never holding more than one slice of
    logits. The gradients are computed slice by slice in the forward pass (the slice's logits
    are at hand there) and only scaled in the backward; none are computed where autograd will not
    ask for them (grad mode off, or inputs that do not require grad). `dtype`: the matmuls' dtype
    (default: autocast's where it is on, else the weight's)."""
    import torch

    grad_mode = torch.is_grad_enabled()  # a Function's forward always runs with grad mode off
    return _autograd_function().apply(hidden, weight, targets, dtype or matmul_dtype(hidden, weight), grad_mode)


def matmul_dtype(tensor: Any, weight: Any) -> Any:
    """What the output layer's matmul would run in: the autocast dtype when autocast is on."""
    import torch

    device = tensor.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return weight.dtype


@functools.cache
def _autograd_function() -> Any:
    import torch

    class ChunkedLinearCrossEntropy(torch.autograd.Function):
        @staticmethod
        def forward(ctx, hidden, weight, targets, dtype, grad_mode):
            need_hidden, need_weight = grad_mode and ctx.needs_input_grad[0], grad_mode and ctx.needs_input_grad[1]
            w = weight.to(dtype)
            grad_hidden = torch.empty_like(hidden) if need_hidden else None
            grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_weight else None
            total = torch.zeros((), dtype=torch.float32, device=hidden.device)
            step = max(1, CHUNK_ELEMENTS // weight.shape[0])
            with torch.autocast(hidden.device.type, enabled=False):
                for start in range(0, hidden.shape[0], step):
                    h = hidden[start:start + step].to(dtype)
                    t = targets[start:start + step]
                    logits = (h @ w.T).float()
                    log_norm = torch.logsumexp(logits, dim=-1)
                    rows = torch.arange(t.shape[0], device=t.device)
                    total += (log_norm - logits[rows, t]).sum()
                    if need_hidden or need_weight:
                        # d loss / d logits = softmax - one_hot, built in the logits' own memory
                        grad_logits = logits.sub_(log_norm[:, None]).exp_()
                        grad_logits[rows, t] -= 1.0
                        grad_logits = grad_logits.to(dtype)
                        if need_hidden:
                            grad_hidden[start:start + step] = grad_logits @ w
                        if need_weight:
                            grad_weight += (grad_logits.T @ h).float()
            ctx.save_for_backward(grad_hidden, grad_weight)  # each None where not needed
            ctx.weight_dtype = weight.dtype
            return total

        @staticmethod
        def backward(ctx, grad_total):
            grad_hidden, grad_weight = ctx.saved_tensors
            if grad_hidden is not None:
                grad_hidden = grad_hidden * grad_total.to(grad_hidden.dtype)
            if grad_weight is not None:
                grad_weight = (grad_weight * grad_total).to(ctx.weight_dtype)
            return grad_hidden, grad_weight, None, None, None

    return ChunkedLinearCrossEntropy

