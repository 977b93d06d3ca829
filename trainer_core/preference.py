"""Preference training: stage dpo (pref_loss sigmoid, ipo, orpo, simpo) and stage kto, on TRL.

The data are ours: `data.read_preference_dataset` reads the records and
`tokenization.encode_preference` renders each side with the chat template and labels it exactly as
SFT labels an assistant turn (-100 elsewhere). TRL's trainers would tokenize the records again with
their own template logic; here their `_prepare_dataset` hands our token ids through unchanged and
our collators lay the batch out as TRL's own collators do, with `completion_mask` = our labels.

The reference model: with LoRA (and QLoRA) it is the base model with the adapter switched off, no
second copy of the weights (TRL does that when it adds the adapter itself, from `peft_config`: see
`make_preference_trainer`); with full fine-tuning TRL loads a frozen copy for sigmoid, ipo and
kto. orpo and simpo need none (see `trainer_arguments`).
"""

from __future__ import annotations

import functools
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trainer_core.config import PREFERENCE_STAGES, TrainConfig, dataset_mix
from trainer_core.errors import DataError, Problem, UserError

KIND_OF_STAGE = {"dpo": "pairs", "kto": "kto"}  # the records each preference stage trains on
KIND_WORDS = {"pairs": "chosen/rejected pairs", "kto": "answers labelled desirable or not (kto_tag)"}
STAGE_OF_KIND = {kind: stage for stage, kind in KIND_OF_STAGE.items()}
REFERENCE_FREE_LOSSES = ("orpo", "simpo")
# TRL's metric names -> trainer_log.jsonl's (README, "The run folder"); eval ones with eval_ before both
REWARD_METRICS = {"rewards/chosen": "rewards_chosen", "rewards/rejected": "rewards_rejected",
                  "rewards/margins": "rewards_margin", "rewards/accuracies": "rewards_accuracy"}


def is_preference_stage(stage: str) -> bool:
    return stage in PREFERENCE_STAGES


# ---- data -----------------------------------------------------------------------------------------------

def check_stage_data(cfg: TrainConfig) -> None:
    """Every dataset of a dpo or kto run (dataset and eval_dataset) holds the records its stage
    trains on; otherwise a UserError naming the dataset and what to do."""
    from trainer_core.data import load_dataset_info, name_list, preference_kind, registry_entry

    info = load_dataset_info(cfg.dataset_dir)
    for key, names in (("dataset", dataset_mix(cfg.dataset)[0]), ("eval_dataset", name_list(cfg.eval_dataset))):
        for name in names:
            kind = preference_kind(registry_entry(info, name, Path(cfg.dataset_dir) / "dataset_info.json"))
            problem = stage_data_problem(cfg.stage, key, name, kind)
            if problem:
                raise UserError(problem)


def stage_data_problem(stage: str, key: str, name: str, kind: str | None) -> str | None:
    """Why dataset `name` (preference_kind `kind`, named by config key `key`) cannot train a run of
    the preference stage `stage`, with what to do; None when it can."""
    want = KIND_OF_STAGE[stage]
    if kind == want:
        return None
    if kind is None:
        marker = '"ranking": true' if want == "pairs" else 'a "kto_tag" column'
        return (f"{key}: '{name}' is not preference data, and stage {stage} trains on {KIND_WORDS[want]}; pick a "
                f"preference dataset (in dataset_info.json: {marker}), or set stage: sft to train on its answers")
    return (f"{key}: '{name}' holds {KIND_WORDS[kind]}, and stage {stage} trains on {KIND_WORDS[want]}; set "
            f"stage: {STAGE_OF_KIND[kind]}, or pick a dataset of {KIND_WORDS[want]}")


def read_records(names: list[str], cfg: TrainConfig) -> list[dict]:
    """The preference records of `names`, in order: each entry's num_samples drawn as for SFT, then
    the first max_samples of each. Every problem of every dataset raises one DataError."""
    from trainer_core.data import load_dataset_info, read_preference_dataset, sample_records

    info = load_dataset_info(cfg.dataset_dir)
    records: list[dict] = []
    problems: list[Problem] = []
    for name in names:
        found, trouble = read_preference_dataset(name, cfg.dataset_dir)
        problems += trouble
        if info[name].get("num_samples") and found:
            found = sample_records(found, info[name]["num_samples"], f"{cfg.seed}:{name}")
        records += found[:cfg.max_samples] if cfg.max_samples else found
    if problems:
        raise DataError(problems)
    return records


def split_records(cfg: TrainConfig) -> tuple[list[dict], list[dict]]:
    """(train, eval) records of a run: the datasets concatenated and shuffled with the seed, eval from
    eval_dataset or a val_size split, as data.load_datasets does for SFT."""
    from trainer_core.data import name_list, val_count

    check_stage_data(cfg)
    names = dataset_mix(cfg.dataset)[0]
    train = read_records(names, cfg)
    if not train:
        raise UserError(f"dataset {', '.join(names)} holds no records")
    random.Random(cfg.seed).shuffle(train)
    evals = read_records(name_list(cfg.eval_dataset), cfg) if cfg.eval_dataset else []
    if not cfg.eval_dataset and cfg.val_size:
        count = val_count(cfg.val_size, len(train))
        evals, train = train[:count], train[count:]
    return train, evals


def load_preference_data(cfg: TrainConfig, tokenizer: Any, log=print,
                         record_mix: Callable[..., None] | None = None) -> tuple[list[dict], list[dict]]:
    """Datasets -> records -> token ids for a dpo or kto run: (train samples, eval samples), with a
    line of statistics for each split (as train.load_training_data gives for SFT). A prompt that
    leaves no answer token within cutoff_len is a problem naming file, record and field.
    `record_mix(cfg, records per dataset, log)` gets the training split's composition
    (train.record_mix: data_mix.json)."""
    from trainer_core.data import mix_composition
    from trainer_core.tokenization import encode_preference, prompts_over_cutoff

    train_records, eval_records = split_records(cfg)
    over = prompts_over_cutoff(train_records + eval_records, tokenizer, cfg.cutoff_len)
    if over:
        raise DataError(over)
    if record_mix is not None:
        record_mix(cfg, mix_composition(train_records), log)
    splits: list[list[dict]] = []
    for name, records in (("train", train_records), ("eval", eval_records)):
        if not records:
            splits.append([])
            continue
        start = time.perf_counter()
        samples, stats = encode_preference(records, tokenizer, cfg.cutoff_len)
        sides = "pairs" if cfg.stage == "dpo" else "answers"
        log(f"{name}: {stats.records} records -> {stats.samples} {sides} (tokenized in "
            f"{time.perf_counter() - start:.2f} s); {stats.truncated} sides truncated to cutoff_len {cfg.cutoff_len}, "
            f"{stats.dropped_no_trainable} dropped with no answer tokens left")
        if not samples:
            raise UserError(f"no {name} samples left after tokenization: every record's answer lies beyond "
                            f"cutoff_len {cfg.cutoff_len}; raise cutoff_len")
        splits.append(samples)
    if cfg.stage == "kto":
        labels = [s["kto_label"] for s in splits[0]]
        log(f"train: {sum(labels)} desirable and {len(labels) - sum(labels)} undesirable answers "
            f"(kto_chosen_weight {cfg.kto_chosen_weight}, kto_rejected_weight {cfg.kto_rejected_weight})")
    return splits[0], splits[1]


def show_preference_example(sample: dict, tokenizer: Any, log=print) -> None:
    """One sample as the model sees it, each side with its trained part (label != -100)."""
    from trainer_core.tokenization import IGNORE_INDEX

    sides = ("chosen", "rejected") if "chosen_input_ids" in sample else ("",)
    for side in sides:
        prefix = f"{side}_" if side else ""
        ids, labels = sample[f"{prefix}input_ids"], sample[f"{prefix}labels"]
        what = side or ("desirable" if sample.get("kto_label") else "undesirable")
        log(f"Example input ({what}):\n" + tokenizer.decode(ids)[:800])
        log(f"Trained on ({what}, label != -100):\n"
            + tokenizer.decode([t for t, lab in zip(ids, labels) if lab != IGNORE_INDEX])[:400])


# ---- collators ------------------------------------------------------------------------------------------

def _padded(rows: list[tuple[list[int], list[int]]], pad_token_id: int) -> dict[str, Any]:
    """Rows of (ids, labels) right-padded into input_ids, attention_mask and completion_mask
    (labels != -100), the tensors TRL's trainers read."""
    import torch

    from trainer_core.tokenization import IGNORE_INDEX

    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    completion_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (ids, labels) in enumerate(rows):
        input_ids[i, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[i, :len(ids)] = 1
        completion_mask[i, :len(ids)] = torch.tensor([lab != IGNORE_INDEX for lab in labels], dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "completion_mask": completion_mask}


class PairCollator:
    """Pairs -> TRL's DPO layout (trl.trainer.dpo_trainer.DataCollatorForPreference): the chosen rows,
    then the rejected rows, right-padded with the tokenizer's pad id; `completion_mask` marks our
    trained tokens (labels != -100), so TRL's loss covers exactly what SFT would train."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, features: list[dict]) -> dict[str, Any]:
        rows = ([(f["chosen_input_ids"], f["chosen_labels"]) for f in features]
                + [(f["rejected_input_ids"], f["rejected_labels"]) for f in features])
        return _padded(rows, self.pad_token_id)


def _prompt_and_answer(sample: dict) -> tuple[list[int], list[int], list[int]]:
    """(prompt ids, answer ids, answer labels) of a KTO sample, split at its first trained token."""
    from trainer_core.tokenization import IGNORE_INDEX

    ids, labels = sample["input_ids"], sample["labels"]
    start = next(i for i, lab in enumerate(labels) if lab != IGNORE_INDEX)
    return list(ids[:start]), list(ids[start:]), list(labels[start:])


class KTOCollator:
    """KTO answers -> TRL's unpaired layout (trl.trainer.kto_trainer.DataCollatorForUnpairedPreference):
    input_ids, attention_mask, completion_mask (labels != -100) and `label`, plus the KL rows that
    TRL's KL term reads: each prompt with the answer of the sample before it in the batch (the first
    with the last's), the rotation TRL's _prepare_dataset makes per batch, so the mismatched answers
    are the batch's own."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, features: list[dict]) -> dict[str, Any]:
        import torch

        batch = _padded([(f["input_ids"], f["labels"]) for f in features], self.pad_token_id)
        parts = [_prompt_and_answer(f) for f in features]
        rotated = [parts[-1]] + parts[:-1]
        kl_rows = [(prompt + answer, [-100] * len(prompt) + labels)
                   for (prompt, _, _), (_, answer, labels) in zip(parts, rotated)]
        batch.update({f"KL_{key}": value for key, value in _padded(kl_rows, self.pad_token_id).items()})
        batch["label"] = torch.tensor([bool(f["kto_label"]) for f in features])
        return batch


def preference_collator(stage: str, pad_token_id: int) -> Any:
    return PairCollator(pad_token_id) if stage == "dpo" else KTOCollator(pad_token_id)


# ---- trainers -------------------------------------------------------------------------------------------

def trainer_arguments(cfg: TrainConfig) -> tuple[type, dict[str, Any]]:
    """The TRL config class of the stage and the arguments it takes besides the TrainingArguments'
    (train.build_training_arguments makes those, the same as for SFT)."""
    common: dict[str, Any] = dict(
        beta=cfg.pref_beta,
        max_length=None,  # our samples are cut at cutoff_len already; TRL would cut (and drop) them again
        # Checkpointing is set on the model by models.load_model (as for SFT); TRL's config turns it on by
        # default, which would enable it a second time, with other arguments.
        gradient_checkpointing=False,
        # Evaluation needs the loss and TRL's metrics only; without this, TRL runs a second, plain forward
        # per eval batch for the vocabulary-sized logits and the Trainer gathers them for nothing
        # (minutes on a CPU at SmolLM2's 49k vocabulary).
        prediction_loss_only=True,
    )
    if cfg.stage == "kto":
        from trl import KTOConfig

        return KTOConfig, dict(common, desirable_weight=cfg.kto_chosen_weight,
                               undesirable_weight=cfg.kto_rejected_weight)
    from trl import DPOConfig

    common["loss_type"] = ["sigmoid" if cfg.pref_loss in REFERENCE_FREE_LOSSES else cfg.pref_loss]
    if cfg.pref_loss in REFERENCE_FREE_LOSSES and cfg.finetuning_type == "full":
        # DPOTrainer.__init__ loads a reference copy of the weights unless the model is a peft model or
        # the reference log-probs are precomputed; orpo and simpo need none. Saying they are precomputed
        # is the one switch TRL offers that loads nothing; our trainer then precomputes nothing
        # (_precompute_ref_logps) and its loss never reads them. TRL hashes the weights once for it.
        common["precompute_ref_log_probs"] = True
    return DPOConfig, common


def make_preference_trainer(cfg: TrainConfig, *, model: Any, args: Any, train_samples: list[dict],
                            eval_samples: list[dict], processing_class: Any, data_collator: Any,
                            callbacks: list[Any], log=print) -> Any:
    """The TRL trainer of a dpo or kto run, on our tokenized samples. `model` comes from
    models.load_model(..., wrap=False): for LoRA and QLoRA the trainer adds the adapter
    (`peft_config`), so that TRL's reference is the model with the adapter switched off. Handed a
    peft model instead, TRL would add a frozen copy of the adapter, "ref", as the reference (and the
    run's adapter/ would hold both)."""
    from datasets import Dataset

    from trainer_core.models import log_lora, lora_config

    kwargs = dict(model=model, args=args, train_dataset=Dataset.from_list(train_samples),
                  eval_dataset=Dataset.from_list(eval_samples) if eval_samples else None,
                  processing_class=processing_class, data_collator=data_collator, callbacks=callbacks,
                  peft_config=None if cfg.finetuning_type == "full" else lora_config(cfg, model))
    if cfg.stage == "kto":
        trainer = _kto_trainer_class()(**kwargs)
    else:
        reference_free = cfg.pref_loss if cfg.pref_loss in REFERENCE_FREE_LOSSES else None
        trainer = _dpo_trainer_class()(reference_free=reference_free, simpo_gamma=cfg.simpo_gamma, **kwargs)
    if cfg.finetuning_type != "full":
        log_lora(cfg, trainer.model, log)
    return trainer


def average_log_probs(per_token_logps: Any, completion_mask: Any) -> Any:
    """The mean log-prob per answer token of each row (LLaMA-Factory's logps / valid_length for
    ipo, orpo and simpo). `per_token_logps` is the fused head's (batch, length - 1), 0 off the answer."""
    mask = completion_mask[:, 1:]
    return per_token_logps[:, -mask.size(1):].sum(dim=1) / mask.sum(dim=1).clamp(min=1)


def orpo_loss(chosen: Any, rejected: Any, beta: float) -> Any:
    """ORPO per pair from average log-probs, as LLaMA-Factory's CustomDPOTrainer.odds_ratio_loss."""
    import torch
    import torch.nn.functional as F

    log_odds = (chosen - rejected) - (torch.log1p(-torch.exp(chosen)) - torch.log1p(-torch.exp(rejected)))
    return -chosen + beta * -F.logsigmoid(log_odds)


def simpo_loss(chosen: Any, rejected: Any, beta: float, gamma: float) -> Any:
    """SimPO per pair from average log-probs, as LLaMA-Factory's CustomDPOTrainer.simpo_loss."""
    import torch.nn.functional as F

    return -F.logsigmoid(beta * ((chosen - rejected) - gamma / beta))


class _Quiet:
    """What our TRL trainers leave out: telemetry (a workbench on an offline machine sends nothing)
    and TRL's model card, which it would write as README.md into the run folder at every checkpoint
    (export writes the model card)."""

    def _send_telemetry(self) -> None:
        return None

    def create_model_card(self, *args: Any, **kwargs: Any) -> None:
        return None


@functools.cache
def _dpo_trainer_class() -> type:
    from trl import DPOTrainer

    class PreferenceTrainer(_Quiet, DPOTrainer):
        """trl.DPOTrainer on our token ids; sigmoid and ipo are TRL's own losses. orpo and simpo are the
        reference-free losses computed as LLaMA-Factory computes them
        (src/llamafactory/train/dpo/trainer.py, CustomDPOTrainer: odds_ratio_loss, simpo_loss and
        concatenated_forward's average log-prob per answer token; rewards = beta x those averages),
        with TRL's fused LM head for the log-probs (no vocabulary-sized logits)."""

        def __init__(self, *args: Any, reference_free: str | None = None, simpo_gamma: float = 0.5,
                     **kwargs: Any) -> None:
            self.reference_free = reference_free
            self.simpo_gamma = simpo_gamma
            super().__init__(*args, **kwargs)

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            return dataset  # tokenized and labelled by us (encode_preference); TRL's template logic stays out

        def _precompute_ref_logps(self, dataset, name, batch_size):
            if self.reference_free:
                return dataset  # see preference.trainer_arguments: nothing to precompute for orpo, simpo
            return super()._precompute_ref_logps(dataset, name, batch_size)

        def _compute_loss(self, model, inputs, return_outputs):
            if not self.reference_free:
                return super()._compute_loss(model, inputs, return_outputs)
            mode = "train" if self.model.training else "eval"
            completion_mask = inputs["completion_mask"]
            labels = inputs["input_ids"].masked_fill(completion_mask == 0, -100)
            outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], labels=labels,
                            use_cache=False, fused_lm_head=True)
            chosen, rejected = average_log_probs(outputs.log_probs, completion_mask).chunk(2, dim=0)
            if self.reference_free == "orpo":
                losses = orpo_loss(chosen, rejected, self.beta)
            else:
                losses = simpo_loss(chosen, rejected, self.beta, self.simpo_gamma)
            self._log_rewards(mode, self.beta * chosen.detach(), self.beta * rejected.detach())
            metrics = self._metrics[mode]
            metrics["logps/chosen"].append(self.accelerator.gather(chosen.detach()).mean().item())
            metrics["logps/rejected"].append(self.accelerator.gather(rejected.detach()).mean().item())
            if self.reference_free == "orpo":
                sft = -chosen.detach()
                metrics["sft_loss"].append(self.accelerator.gather(sft).mean().item())
                metrics["odds_ratio_loss"].append(
                    self.accelerator.gather((losses.detach() - sft) / self.beta).mean().item())
            loss = losses.mean()
            if return_outputs:
                return loss, outputs
            return loss

        def _log_rewards(self, mode: str, chosen: Any, rejected: Any) -> None:
            """The reward metrics under TRL's names (its _compute_loss logs the same four)."""
            metrics, gather = self._metrics[mode], self.accelerator.gather
            metrics["rewards/chosen"].append(gather(chosen).mean().item())
            metrics["rewards/rejected"].append(gather(rejected).mean().item())
            metrics["rewards/accuracies"].append(gather((chosen > rejected).float()).mean().item())
            metrics["rewards/margins"].append(gather(chosen - rejected).mean().item())

    return PreferenceTrainer


@functools.cache
def _kto_trainer_class() -> type:
    from trl import KTOTrainer

    class KTOPreferenceTrainer(_Quiet, KTOTrainer):
        """trl.KTOTrainer on our token ids (KTOCollator builds the KL rows TRL's dataset step would)."""

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            return dataset

    return KTOPreferenceTrainer


def reward_entry(logs: dict[str, Any]) -> dict[str, Any]:
    """trainer_log.jsonl's reward fields from one Trainer log event (None where TRL logged none)."""
    entry: dict[str, Any] = {}
    for prefix in ("", "eval_"):
        for trl_name, ours in REWARD_METRICS.items():
            entry[prefix + ours] = logs.get(prefix + trl_name)
    return entry
