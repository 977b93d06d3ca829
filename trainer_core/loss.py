"""The causal-LM loss computed only where there is something to learn.

A model's output layer turns every position's hidden state into a vocabulary-sized row of logits;
for a 135M model with a 49k vocabulary that is a fifth of all the arithmetic and the largest
tensors of the step. In SFT most prompt positions have label -100 and their logits are thrown
away. Here a forward pre-hook on the output layer keeps only the rows whose (shifted) label is
trained, so the logits are (trained tokens x vocab) instead of (batch x length x vocab). The
loss is the same sum of cross-entropies divided by the same count as transformers' own
(tests/test_loss.py checks loss and gradients against it).
"""

from __future__ import annotations

from typing import Any

IGNORE_INDEX = -100


def shifted_labels(labels: Any) -> Any:
    """Position t predicts token t+1: labels moved one to the left, -100 at the end."""
    import torch.nn.functional as F

    return F.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:]


class TrainedRowsOnly:
    """Installs the pre-hook; `select(labels)` arms it for the next forward, `clear()` disarms it
    (generation and anything else that calls the model sees the normal full logits)."""

    def __init__(self, model: Any) -> None:
        self.keep = None
        self.handle = model.get_output_embeddings().register_forward_pre_hook(self._pick_rows)

    def _pick_rows(self, module: Any, args: tuple) -> tuple | None:  # noqa: ARG002 - hook signature
        if self.keep is None:
            return None
        hidden = args[0]
        return (hidden[self.keep.to(hidden.device)],) + tuple(args[1:])

    def select(self, labels: Any) -> None:
        self.keep = shifted_labels(labels) != IGNORE_INDEX

    def clear(self) -> None:
        self.keep = None

    def remove(self) -> None:
        self.handle.remove()


def trained_rows_loss(outputs: Any, labels: Any, num_items_in_batch: Any = None) -> Any:
    """Cross-entropy over the trained rows only; `outputs.logits` holds exactly those rows, in
    the order of `labels`' trained positions. Divides by `num_items_in_batch` when the Trainer
    gives it (gradient accumulation, several devices), else by this batch's count."""
    import torch.nn.functional as F

    targets = shifted_labels(labels)
    targets = targets[targets != IGNORE_INDEX]
    logits = outputs["logits"].float()
    loss = F.cross_entropy(logits, targets.to(logits.device), reduction="sum")
    count = num_items_in_batch if num_items_in_batch is not None else targets.numel()
    if hasattr(count, "to"):
        count = count.to(loss.device)
    return loss / count
