"""Several processes train the same weights as one: data-parallel parity on this CPU over gloo.

Every parity test trains the tiny model (tests/tiny_model.py) for STEPS optimizer steps through
our CLI, exactly as a user starts a run, and compares the saved weights (LoRA:
adapter/adapter_model.safetensors; full: model/model.safetensors) with ONE plain process.

Same global batch, same data order. The one process uses per_device_train_batch_size=2B, the
two ranks B each (B = BATCH). The Trainer's sampler is accelerate's SeedableRandomSampler,
seeded with data_seed: its permutation of the dataset depends on the seed and the dataset's
length, not on the batch size or the world size. In a single process, step k trains
permutation[2Bk : 2B(k+1)]. With two ranks, accelerate's BatchSamplerShard cuts the same
permutation into batches of B and gives batch i to rank i % 2, so step k trains
permutation[2Bk : 2Bk+B] on rank 0 and permutation[2Bk+B : 2B(k+1)] on rank 1. That is the
same four samples. Every run records the samples it trains on (QIHUANG_RECORD_BATCHES=1), and
the tests check this step by step instead of trusting it. Gradient accumulation would give the
same global batch too (one process with B and gradient_accumulation_steps=2). Here the batch size
changes and accumulation stays at 1, so the only difference left is data parallelism. The
padding differs: each rank pads to its own longest sample. Padded positions are masked and
labelled -100, so that changes only the order of the float sums.

The normalisation. The answers have very uneven lengths (1 to 40 characters), so in each step
the two ranks hold different numbers of trained tokens. The right loss is the sum over both
ranks divided by the global count. The Trainer gets it with average_tokens_across_devices
(default on): it gathers num_items_in_batch over the ranks, and it multiplies each rank's loss
by the world size, which cancels DDP's (or DeepSpeed's) mean of the gradients.
test_a_per_rank_normalisation_fails_the_parity_check turns that option off in the ranks. They
then average two per-rank means, and the weights move away by about 5 x lr, far beyond the
tolerance.

Tolerance: max |Δw| <= TOLERANCE (2e-4) in fp32, with lr 5e-3 and Adam, after training moved
the weights by up to 1.5e-2. torchrun, ZeRO-2 and two nodes agree to 9e-8 (LoRA) and 5e-7
(full). ZeRO-3 agrees to a few 1e-6; the largest seen is 1.6e-5. The extra error comes from Adam:
an element whose gradient is close to Adam's eps (1e-8) turns a rounding difference in the
gradient into a visible difference in the update. A different global batch or a per-rank
normalisation moves the weights by 2-2.5e-2, a hundred times the tolerance. Each test prints its
figures (run with -s).

DeepSpeed on a CPU-only machine: `deepspeed --num_gpus 2` starts two ranks with DeepSpeed's CPU
accelerator. Its communication backend is gloo, because oneccl is not installed. The first
multi-rank DeepSpeed run on a machine compiles DeepSpeed's shared-memory communication op
(about 90 s on 2 cores); torch caches it in ~/.cache/torch_extensions for later runs.

Runtime: about 2.5 minutes on 2 cores once that op is cached. Every test here is `dist`
(`pytest -m "not dist"` leaves them out).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, free_port, run_cli

from trainer_core import runs

pytestmark = [pytest.mark.dist]

STEPS = 3
BATCH = 2  # per rank; the single-process reference uses 2 * BATCH
TOLERANCE = 2e-4
LEARNING_RATE = 5e-3
PHRASE = "黄芪补气升阳，固表止汗，利水消肿。麻黄辛、微苦，温，归肺、膀胱经，发汗散寒，宣肺平喘。"


@pytest.fixture(scope="module")
def parity_data(tmp_path_factory) -> Path:
    """24 alpaca records whose answers run from 1 to 40 characters, in a scattered order, so that
    each rank holds a different number of trained tokens in every step."""
    folder = tmp_path_factory.mktemp("parity-data")
    records = [{"instruction": f"第{i}问：四君子汤的组成？", "input": "", "output": PHRASE[: 1 + (i * 7) % 40]}
               for i in range(24)]
    (folder / "parity.json").write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    (folder / "dataset_info.json").write_text(json.dumps({"parity": {"file_name": "parity.json",
                                                                     "formatting": "alpaca"}}), encoding="utf-8")
    return folder


def _overrides(model: Path, data: Path, out: Path, finetuning_type: str, **extra) -> list[str]:
    settings = {"model_name_or_path": model, "dataset_dir": data, "dataset": "parity", "output_dir": out,
                "finetuning_type": finetuning_type, "cutoff_len": 64, "max_steps": STEPS, "save_steps": 100,
                "logging_steps": 1, "learning_rate": LEARNING_RATE, "lr_scheduler_type": "constant",
                "resume_from_checkpoint": "none", "per_device_train_batch_size": BATCH, "seed": 42}
    settings.update(extra)
    return [f"{key}={value}" for key, value in settings.items()]


def _train(model: Path, data: Path, out: Path, finetuning_type: str, env: dict | None = None,
           **extra) -> subprocess.CompletedProcess:
    return run_cli("train", *_overrides(model, data, out, finetuning_type, **extra),
                   env={"QIHUANG_RECORD_BATCHES": "1", **(env or {})}, timeout=900)


def _check_finished(result: subprocess.CompletedProcess, out: Path) -> None:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert runs.read_status(out)["state"] == "finished"


def _weights_file(out: Path, finetuning_type: str) -> Path:
    return out / ("model/model.safetensors" if finetuning_type == "full" else "adapter/adapter_model.safetensors")


def _load(path: Path) -> dict:
    """The tensors of a safetensors file, leaving out a saved copy of a tied weight: ZeRO-2 writes
    lm_head.weight beside model.embed_tokens.weight (the same tensor, tie_word_embeddings)."""
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    head, embed = tensors.get("lm_head.weight"), tensors.get("model.embed_tokens.weight")
    if head is not None and embed is not None and head.shape == embed.shape and bool((head == embed).all()):
        del tensors["lm_head.weight"]
    return tensors


def max_weight_difference(reference: Path, other: Path) -> tuple[float, float]:
    """max |Δw| and mean |Δw| over all tensors of two saved weight files, which must hold the same names."""
    a, b = _load(reference), _load(other)
    assert sorted(a) == sorted(b), f"tensor names differ: {sorted(set(a) ^ set(b))}"
    largest, total, count = 0.0, 0.0, 0
    for name in a:
        diff = (a[name].float() - b[name].float()).abs()
        largest = max(largest, diff.max().item())
        total, count = total + diff.sum().item(), count + diff.numel()
    return largest, total / count


def _moved(reference: Path, model: Path, finetuning_type: str) -> float:
    """How far training moved the weights from where they started (so that a parity of 1e-7 means something)."""
    if finetuning_type == "full":
        start = _load(model / "model.safetensors")
        trained = _load(reference)
        return max((trained[k].float() - start[k].float()).abs().max().item() for k in trained)
    return max(t.abs().max().item() for name, t in _load(reference).items() if "lora_B" in name)  # B starts at 0


def _samples(out: Path, rank: int) -> list[str]:
    return (out / "ranks" / f"{rank}.samples").read_text().split()


def _check_same_global_batches(reference_out: Path, outs_by_rank: list[tuple[Path, int]]) -> None:
    """Step by step, the ranks' samples together are the single process's samples."""
    single = _samples(reference_out, 0)
    ranks = [_samples(out, rank) for out, rank in outs_by_rank]
    world = len(ranks)
    for step in range(STEPS):
        together = sorted(s for r in ranks for s in r[step * BATCH:(step + 1) * BATCH])
        assert together == sorted(single[step * BATCH * world:(step + 1) * BATCH * world]), f"step {step + 1}"
        assert not set(ranks[0][step * BATCH:(step + 1) * BATCH]) & set(ranks[1][step * BATCH:(step + 1) * BATCH])


def _report(setup: str, finetuning_type: str, largest: float, mean: float, moved: float) -> None:
    print(f"\nPARITY {setup} {finetuning_type}: max |Δw| = {largest:.3g}, mean |Δw| = {mean:.3g} "
          f"(training moved weights by up to {moved:.3g}; tolerance {TOLERANCE:g})")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_model_dir, parity_data):
    """The single-process run per finetuning type, per_device_train_batch_size = 2 x BATCH, no launcher."""
    made: dict[str, Path] = {}

    def get(finetuning_type: str) -> Path:
        if finetuning_type not in made:
            out = tmp_path_factory.mktemp(f"reference-{finetuning_type}") / "run"
            result = _train(tiny_model_dir, parity_data, out, finetuning_type, per_device_train_batch_size=2 * BATCH)
            _check_finished(result, out)
            assert runs.read_status(out)["launcher"] == "python"
            made[finetuning_type] = out
        return made[finetuning_type]

    return get


def _parity(setup: str, finetuning_type: str, reference_out: Path, outs_by_rank: list[tuple[Path, int]],
            weights_out: Path, model: Path) -> None:
    _check_same_global_batches(reference_out, outs_by_rank)
    ref = _weights_file(reference_out, finetuning_type)
    largest, mean = max_weight_difference(ref, _weights_file(weights_out, finetuning_type))
    _report(setup, finetuning_type, largest, mean, _moved(ref, model, finetuning_type))
    assert largest <= TOLERANCE


@pytest.mark.parametrize("finetuning_type", ["lora", "full"])
def test_torchrun_two_processes_train_the_weights_of_one(reference, tiny_model_dir, parity_data, tmp_path,
                                                         finetuning_type):
    """num_gpus=2 without DeepSpeed: our launcher runs `torchrun --nproc_per_node 2`. With use_cpu,
    accelerate sets up the process group with gloo, and DDP all-reduces the gradients."""
    out = tmp_path / "ddp"
    result = _train(tiny_model_dir, parity_data, out, finetuning_type, num_gpus=2)
    _check_finished(result, out)
    assert runs.read_status(out)["launcher"] == "torchrun"
    _parity("torchrun-2proc", finetuning_type, reference(finetuning_type), [(out, 0), (out, 1)], out, tiny_model_dir)


def test_torchrun_ranks_on_the_arrow_path_prepare_once_and_train_the_weights_of_one(reference, tiny_model_dir,
                                                                                    parity_data, tmp_path):
    """data_engine arrow under torchrun: local rank 0 prepares the shards, rank 1 waits and reads
    them; the samples and their order are the in-memory path's, so the weights are the single
    in-memory process's."""
    out = tmp_path / "arrow"
    result = _train(tiny_model_dir, parity_data, out, "lora", num_gpus=2, data_engine="arrow",
                    env={"QIHUANG_HOME": str(tmp_path / "home")})
    _check_finished(result, out)
    console = (out / "console.log").read_text(encoding="utf-8")
    assert console.count("parity: 24 records → 24 samples (prepared 1 of 1 shards") == 1  # rank 0 alone
    assert console.count("parity: 24 records → 24 samples (from cache") == 1  # rank 1 read rank 0's shards
    _parity("torchrun-2proc-arrow", "lora", reference("lora"), [(out, 0), (out, 1)], out, tiny_model_dir)


@pytest.mark.parametrize("stage", ["z2", "z3"])
@pytest.mark.parametrize("finetuning_type", ["lora", "full"])
def test_deepspeed_zero_two_ranks_train_the_weights_of_one(reference, tiny_model_dir, parity_data, tmp_path,
                                                           stage, finetuning_type):
    """deepspeed=z2/z3 num_gpus=2: `deepspeed --num_gpus 2 --no_local_rank --module trainer_core ...`
    starts two ranks on the CPU accelerator (gloo). DeepSpeed partitions the gradients (ZeRO-2), or
    the gradients and the parameters (ZeRO-3), and reduces them itself. The reference is the plain
    single process, not a one-rank DeepSpeed run, so the test also covers DeepSpeed against DDP.

    ZeRO-3 with several CPU ranks needs deepspeed.comm initialised before the model is built:
    from_pretrained runs inside deepspeed.zero.Init, which reads the world size from it. On GPUs
    accelerate initialises it; on CPUs only torch.distributed is, so trainer_core/train.py calls
    deepspeed.init_distributed() first (without it the run stopped with DeepSpeed's batch-size
    assertion, world size 1)."""
    out = tmp_path / f"ds-{stage}"
    result = _train(tiny_model_dir, parity_data, out, finetuning_type, num_gpus=2, deepspeed=stage)
    _check_finished(result, out)
    assert runs.read_status(out)["launcher"] == "deepspeed"
    assert sorted(p.name for p in (out / "ranks").glob("*.pid")) == ["0.pid", "1.pid"]  # two ranks, not one
    _parity(f"deepspeed-{stage}-2ranks", finetuning_type, reference(finetuning_type), [(out, 0), (out, 1)], out,
            tiny_model_dir)


@pytest.mark.parametrize("finetuning_type", ["lora", "full"])
def test_two_nodes_train_the_weights_of_one(reference, tiny_model_dir, parity_data, tmp_path, finetuning_type):
    """Two nodes, simulated here, each started as a user would start it on its own host:

        NNODES=2 NODE_RANK=0 MASTER_ADDR=<node 0> MASTER_PORT=P python -m trainer_core train ... num_gpus=1
        NNODES=2 NODE_RANK=1 MASTER_ADDR=<node 0> MASTER_PORT=P python -m trainer_core train ... num_gpus=1

    Our launcher turns that into `torchrun --nproc_per_node 1 --master_port P --nnodes 2
    --node_rank R --master_addr A -m trainer_core train RUN/run.yaml`: a static rendezvous. Node 0's
    agent hosts the TCP store on A:P, node 1 joins it, and ranks are node_rank x nproc_per_node +
    local rank.

    Output folders: two hosts have two filesystems, and each node's CLI writes its own run
    folder (run.yaml, command.txt, status.json, console.log). Here both nodes share one
    filesystem, so each gets its own output_dir under its own root (node0/run and node1/run).
    With one folder, the second CLI would find the first one's job 'running' there and refuse
    to start. Each node also gets its own QIHUANG_HOME, the tokenized-data cache. Global rank 0
    (node 0) writes the trained weights, the trainer log and the checkpoints. Node 1's folder holds
    only its status, console and its rank's RNG state in checkpoint-N/. The model and the
    dataset must be at the same paths on both hosts."""
    port = free_port()
    outs = [tmp_path / f"node{rank}" / "run" for rank in (0, 1)]
    envs = [{"NNODES": "2", "NODE_RANK": str(rank), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
             "QIHUANG_HOME": str(tmp_path / f"node{rank}" / "home"), "QIHUANG_RECORD_BATCHES": "1",
             "PYTHONUNBUFFERED": "1"} for rank in (0, 1)]
    dry = run_cli("train", *_overrides(tiny_model_dir, parity_data, outs[1], finetuning_type, num_gpus=1),
                  "--dry-run", env=envs[1])
    assert dry.returncode == 0, dry.stderr
    assert (f"torchrun --nproc_per_node 1 --master_port {port} --nnodes 2 --node_rank 1 --master_addr 127.0.0.1 "
            f"-m trainer_core train {outs[1]}/run.yaml") in dry.stdout

    nodes = [subprocess.Popen([sys.executable, "-m", "trainer_core", "train",
                               *_overrides(tiny_model_dir, parity_data, outs[rank], finetuning_type, num_gpus=1)],
                              cwd=REPO, env={**os.environ, **envs[rank]}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for rank in (0, 1)]
    try:
        said = [node.communicate(timeout=600)[0] for node in nodes]
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()
    for rank, node in enumerate(nodes):
        assert node.returncode == 0, f"node {rank}:\n{said[rank][-3000:]}"
        status = runs.read_status(outs[rank])
        assert status["state"] == "finished" and status["launcher"] == "torchrun"
    assert (outs[0] / "ranks" / "0.pid").is_file() and (outs[1] / "ranks" / "1.pid").is_file()
    assert not _weights_file(outs[1], finetuning_type).exists()  # global rank 0 alone saves the weights
    assert [e["step"] for e in runs.read_log(outs[0]) if e["loss"] is not None] == [1, 2, 3]
    _parity("two-nodes", finetuning_type, reference(finetuning_type), [(outs[0], 0), (outs[1], 1)], outs[0],
            tiny_model_dir)


# ---- the checks above fail when the thing they guard breaks --------------------------------------

def test_a_different_global_batch_fails_the_parity_check(reference, tiny_model_dir, parity_data, tmp_path):
    """One process with BATCH instead of 2 x BATCH: half the global batch, the mistake the parity
    tests must not let through. Its weights are far outside the tolerance."""
    out = tmp_path / "half-batch"
    _check_finished(_train(tiny_model_dir, parity_data, out, "lora"), out)
    ref = reference("lora")
    largest, mean = max_weight_difference(_weights_file(ref, "lora"), _weights_file(out, "lora"))
    _report("mismatched-global-batch (guard)", "lora", largest, mean, _moved(_weights_file(ref, "lora"),
                                                                             tiny_model_dir, "lora"))
    assert largest > 10 * TOLERANCE


def test_a_per_rank_normalisation_fails_the_parity_check(reference, tiny_model_dir, parity_data, tmp_path):
    """The ranks run with average_tokens_across_devices=False, put in through a sitecustomize on
    PYTHONPATH. Each rank then divides by its own token count, and DDP averages the two means:
    the usual mistake with uneven answer lengths. The same batches, the same launcher, and the
    weights come out far outside the tolerance: the data really is uneven enough to catch it."""
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(
        "import trainer_core.train as _train\n"
        "_build = _train.build_training_arguments\n"
        "def _per_rank_mean(*args, **kwargs):\n"
        "    arguments = _build(*args, **kwargs)\n"
        "    arguments.average_tokens_across_devices = False\n"
        "    return arguments\n"
        "_train.build_training_arguments = _per_rank_mean\n", encoding="utf-8")
    path = os.pathsep.join(p for p in (str(shim), str(REPO), os.environ.get("PYTHONPATH")) if p)
    out = tmp_path / "per-rank"
    result = _train(tiny_model_dir, parity_data, out, "lora", env={"PYTHONPATH": path}, num_gpus=2)
    _check_finished(result, out)
    assert "Error in sitecustomize" not in (out / runs.CONSOLE_FILE).read_text()
    ref = reference("lora")
    _check_same_global_batches(ref, [(out, 0), (out, 1)])
    largest, mean = max_weight_difference(_weights_file(ref, "lora"), _weights_file(out, "lora"))
    _report("per-rank-normalisation (guard)", "lora", largest, mean, _moved(_weights_file(ref, "lora"),
                                                                            tiny_model_dir, "lora"))
    assert largest > 10 * TOLERANCE


# ---- DeepSpeed on several hosts: the command only ------------------------------------------------

def test_deepspeed_multi_node_command(tmp_path):
    """DeepSpeed on several nodes is started once, on the first host, with a hostfile. The
    deepspeed launcher then reaches every host over ssh (pdsh by default) and starts the ranks
    there. This machine has no second host, so only the command is checked (--dry-run).

    What a user needs on the hosts:
      - passwordless ssh from the launching host to every host in the hostfile, itself
        included (`ssh node-b true` must work without a prompt, the host key already accepted);
      - pdsh on the launching host (the default multi-node launcher; or pass
        --launcher openmpi/mvapich with those installed);
      - the same paths on every host: the repository (the ranks start in the launcher's working
        directory), the Python environment with the same packages, the model, the dataset, and
        the output_dir. The ranks on other hosts read output_dir/run.yaml, which the CLI writes
        only on the first host, so output_dir must be on a shared filesystem (NFS), or be copied
        to the same path on every host before the start;
      - a hostfile with one line per host, `<hostname> slots=<GPUs on that host>`, for example
        `node-a slots=8`. The hostnames must resolve and be reachable from every host;
      - environment variables for the ranks (NCCL_*, proxies, HF_HOME ...) in a .deepspeed_env
        file, in the working directory or in ~: one VAR=value a line. DeepSpeed passes on only
        NCCL_*, PYTHON* and a few other prefixes by itself;
      - MASTER_ADDR: an address of the first host that the others reach (else DeepSpeed takes
        the first hostfile entry), and MASTER_PORT open between the hosts."""
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node-a slots=2\nnode-b slots=2\n")
    env = {"NNODES": "2", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29531"}
    result = run_cli("train", "presets/sft_lora.yaml", "deepspeed=z3", "num_gpus=2", f"hostfile={hostfile}",
                     f"output_dir={tmp_path / 'run'}", "--dry-run", env=env)
    assert result.returncode == 0, result.stderr
    command = result.stdout.splitlines()[1]
    assert command.split()[0].endswith("deepspeed")
    assert (f"--master_port 29531 --hostfile {hostfile} --master_addr 10.0.0.1 --num_nodes 2 --num_gpus 2 "
            f"--no_local_rank --module trainer_core train {tmp_path / 'run'}/run.yaml") in command
    assert '"stage": 3' in result.stdout

    result = run_cli("train", "presets/sft_lora.yaml", "deepspeed=z2", f"hostfile={tmp_path / 'missing'}",
                     f"output_dir={tmp_path / 'run'}", "--dry-run")
    assert result.returncode == 2 and "does not exist" in result.stderr
