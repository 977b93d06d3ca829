"""Where a training step's memory goes: the tensors autograd keeps for the backward pass.

    python bench/activation_memory.py [--set KEY=VALUE ...]

Builds the benchmark job of bench/run.py (built-in model, LoRA rank 8 on all linear layers,
batch 4, cutoff 256, packing, the loss on trained rows only) with the trainer's own functions,
takes its first batch, and runs one forward and loss under a saved-tensors hook. Each saved
tensor is counted once (by its storage) and charged to the innermost module that was running,
so the table shows which kind of layer holds how much. Parameters are left out: they are the
model, not activations. Then the backward runs, to show the step completes.
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    parser.add_argument("--workdir", default="/tmp/qihuang-bench", help="where the synthetic data is written")
    opts = parser.parse_args(argv)

    import torch
    from run import DATASET, JOB, builtin_model_dir, write_data, yaml_value

    from trainer_core.config import load_config
    from trainer_core.models import load_model, load_tokenizer
    from trainer_core.tokenization import SupervisedCollator, setup_chat_template
    from trainer_core.train import load_training_data

    data = write_data(Path(opts.workdir) / "data")
    model_path = builtin_model_dir()
    overrides = {**JOB, "model_name_or_path": model_path, "dataset_dir": str(data), "dataset": DATASET,
                 "template": "auto", "packing": True, "num_gpus": 0}
    overrides.update({k: yaml_value(v) for k, v in (item.split("=", 1) for item in opts.set)})
    cfg = load_config(None, overrides)
    quiet = lambda *a: None  # noqa: E731
    tokenizer = load_tokenizer(model_path, False)
    setup_chat_template(tokenizer, cfg.template, quiet)
    samples, _ = load_training_data(cfg, tokenizer, quiet)
    torch.manual_seed(cfg.seed)
    model = load_model(cfg, model_path, tokenizer, quiet)
    model.train()
    batch = SupervisedCollator(tokenizer.pad_token_id)(samples[: cfg.micro_batch()])

    # The trainer's loss path (trained rows only), without building TrainingArguments.
    from trainer_core.loss import TrainedRowsOnly

    rows = TrainedRowsOnly(model)
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    stack: list[str] = ["(outside modules)"]
    def leave(module, args, output) -> None:  # a forward hook that returns something replaces the output
        stack.pop()

    for module in model.modules():
        kind = type(module).__name__
        module.register_forward_pre_hook(lambda m, a, kind=kind: stack.append(kind))
        module.register_forward_hook(leave)
    by_kind: dict[str, int] = collections.Counter()
    seen: set[int] = set()

    def pack(tensor):
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if key not in seen and key not in parameters:
            seen.add(key)
            by_kind[stack[-1]] += storage.nbytes()
        return tensor

    rows.select(batch["labels"])
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        outputs = model(**{k: v for k, v in batch.items() if k != "labels"})
        loss = rows.loss(outputs, batch["labels"])
    rows.clear()
    loss.backward()

    total = sum(by_kind.values())
    tokens = int(batch["input_ids"].numel())
    print(f"batch {tuple(batch['input_ids'].shape)}, {tokens} token positions, loss {loss.item():.4f}")
    print(f"overrides: {opts.set or 'none'}\n")
    print("| innermost module | saved for backward | share |\n|---|---|---|")
    for kind, size in sorted(by_kind.items(), key=lambda kv: -kv[1]):
        print(f"| {kind} | {size / 2**20:.1f} MiB | {100 * size / total:.1f} % |")
    print(f"| **all** | **{total / 2**20:.1f} MiB** | 100 % |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
