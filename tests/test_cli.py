"""Bad input through the CLI: exit code 2, one message naming file, record and field, no traceback,
and nothing already saved is touched."""

from pathlib import Path

BAD = Path(__file__).parent / "bad_data"


def _train(cli, model, *extra):
    return cli("train", f"model_name_or_path={model}", f"dataset_dir={BAD}", "max_steps=1", *extra)


def test_config_mistakes_exit_2_with_every_problem(cli):
    result = cli("train", "presets/sft_lora.yaml", "lora_rnak=8", "learning_rate=fast", "--stage", "rl")
    assert result.returncode == 2
    assert "unknown key 'lora_rnak'; did you mean 'lora_rank'?" in result.stderr
    assert "learning_rate: 'fast' is not a valid float" in result.stderr
    assert "stage: 'rl' is not allowed; choose one of sft, pt" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_dataset_problems_exit_2_naming_file_record_and_field(cli, tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    result = _train(cli, tiny_model_dir, "dataset=misspelled,role_order", f"output_dir={out}")
    assert result.returncode == 2, result.stderr
    assert ("misspelled.json, record 0, field 'instruction': missing; the record has 'instrution' instead: "
            "rename it to 'instruction'") in result.stderr
    assert "role_order.json, record 1" in result.stderr and "role_order.json, record 3" in result.stderr
    assert "Traceback" not in result.stderr
    status = (out / "status.json").read_text()
    assert '"failed"' in status and "misspelled.json" in status
    assert "misspelled.json, record 0, field 'instruction'" in (out / "console.log").read_text()


def test_unknown_dataset_and_missing_model(cli, tiny_model_dir, tmp_path):
    result = _train(cli, tiny_model_dir, "dataset=misspeled", f"output_dir={tmp_path / 'a'}")
    assert result.returncode == 2 and "misspelled" in result.stderr and "Traceback" not in result.stderr
    result = cli("train", f"model_name_or_path={tmp_path / 'no-model'}", "dataset=tcm_qa",
                 f"output_dir={tmp_path / 'b'}")
    assert result.returncode == 2
    assert "does not exist" in result.stderr and "no-model" in result.stderr


def test_text_dataset_refused_for_sft(cli, tiny_model_dir, tmp_path):
    result = _train(cli, tiny_model_dir, "dataset=tcm_corpus", f"output_dir={tmp_path / 'c'}")
    assert result.returncode == 2
    assert "can only be used for stage pt" in result.stderr


def test_data_check_reports_all_problems_of_bad_files(cli, tiny_model_dir):
    result = cli("data", "check", "three_problems", "binary", "broken_json", f"--dataset_dir={BAD}",
                 f"--model_name_or_path={tiny_model_dir}")
    assert result.returncode == 2, result.stderr
    assert "3 problem(s)" in result.stdout
    assert "binary.json" in result.stdout and "broken.json" in result.stdout and "line" in result.stdout
    assert "Traceback" not in result.stderr


def test_unknown_command(cli):
    result = cli("trian")
    assert result.returncode == 2 and "unknown command 'trian'" in result.stderr


def test_models_lists_the_known_models(capsys):
    from trainer_core.catalog import KNOWN_MODELS
    from trainer_core.cli import main

    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split() for line in lines] == [[m["name"], m["hub_id"], m["template"]] for m in KNOWN_MODELS]
    assert any(line.split()[:2] == ["Qwen2.5-7B-Instruct", "Qwen/Qwen2.5-7B-Instruct"] for line in lines)
