"""bench/run.py's DPO section without LLaMA-Factory: the data both tools train on, and the figures
read from each tool's logs (LLaMA-Factory's in the shape its 0.9.5 writes them)."""

import json
import sys

from conftest import REPO

sys.path.insert(0, str(REPO / "bench"))
import run as bench  # noqa: E402

from trainer_core.data import read_preference_dataset  # noqa: E402


def test_dpo_bench_data_is_disjoint_ranking_pairs_both_tools_read(tmp_path):
    assert bench.write_preference_data(tmp_path, 20) == (20, 32)
    info = json.loads((tmp_path / "dataset_info.json").read_text(encoding="utf-8"))
    shipped = json.loads((REPO / "data" / "dataset_info.json").read_text(encoding="utf-8"))["tcm_preference"]
    for name in (bench.PREF_DATASET, f"{bench.PREF_DATASET}_heldout"):
        # LLaMA-Factory's alpaca ranking entry, as data/ registers the source file
        assert (info[name]["ranking"], info[name]["columns"]) == (True, shipped["columns"])
    train, problems = read_preference_dataset(bench.PREF_DATASET, tmp_path)
    heldout, more = read_preference_dataset(f"{bench.PREF_DATASET}_heldout", tmp_path)
    assert (len(train), len(heldout), problems, more) == (20, 32, [], [])
    source = json.loads((REPO / "data" / "tcm_preference.json").read_text(encoding="utf-8"))
    on_disk = json.loads((tmp_path / f"{bench.PREF_DATASET}.json").read_text(encoding="utf-8"))
    assert on_disk == source[:20]  # the file's first pairs
    assert not {r["chosen"] for r in on_disk} & {r["chosen"] for r in source[-32:]}
    # more pairs asked for than the file has besides the held-out ones: all of those, none held out
    assert bench.write_preference_data(tmp_path, 10_000) == (len(source) - 32, 32)


def test_dpo_figures_from_both_tools_logs(tmp_path):
    # LLaMA-Factory 0.9.5: times in trainer_log.jsonl, every reward figure in trainer_state.json
    times = [{"current_steps": 1, "loss": 0.6931, "elapsed_time": "0:00:20"},
             {"current_steps": 5, "loss": 0.69, "elapsed_time": "0:01:00"},
             {"current_steps": 10, "loss": 0.65, "elapsed_time": "0:01:50"}]
    (tmp_path / "trainer_log.jsonl").write_text("".join(json.dumps(t) + "\n" for t in times))
    history = [{"step": 1, "loss": 0.6931, "rewards/accuracies": 0.0, "rewards/margins": 0.0},
               {"step": 5, "loss": 0.69, "rewards/accuracies": 0.5, "rewards/margins": 0.01},
               {"step": 10, "loss": 0.65, "rewards/accuracies": 0.9, "rewards/margins": 0.2},
               {"step": 10, "train_loss": 0.67, "train_runtime": 111.0}]
    (tmp_path / "trainer_state.json").write_text(json.dumps({"log_history": history}))
    entries = bench.llamafactory_dpo_entries(tmp_path)
    assert [e["step"] for e in entries] == [1, 5, 10]
    theirs = bench._dpo_result({}, entries, "step", "elapsed_time", "rewards/accuracies", "rewards/margins")
    assert theirs == {"steps": 10, "loss_first": 0.6931, "loss_last": 0.65, "s_per_step": 10.0,
                      "accuracy_first": 0.0, "accuracy_last": 0.9, "margin_last": 0.2}
    # ours: trainer_log.jsonl holds all of it
    ours = [{"step": 1, "loss": 0.6931, "elapsed_seconds": 12.0, "rewards_accuracy": 0.0, "rewards_margin": 0.0},
            {"step": 10, "loss": 0.6, "elapsed_seconds": 57.0, "rewards_accuracy": 1.0, "rewards_margin": 0.3}]
    figures = bench._dpo_result({}, ours, "step", "elapsed_seconds", "rewards_accuracy", "rewards_margin")
    assert (figures["s_per_step"], figures["accuracy_last"], figures["margin_last"]) == (5.0, 1.0, 0.3)
