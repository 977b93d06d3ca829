from pathlib import Path

import pytest
import yaml

from trainer_core.config import (
    KNOWN_MODELS_FILE,
    TrainConfig,
    config_from_dict,
    load_config,
    parse_overrides,
    preset_paths,
    save_config,
)
from trainer_core.errors import UserError

PRESETS = Path(__file__).resolve().parent.parent / "presets"


def test_defaults_and_overrides_in_both_forms():
    cfg = load_config(None, ["learning_rate=2e-5", "--lora_rank", "16", "--bf16=true", "max_samples=null"])
    assert cfg.learning_rate == 2e-5 and cfg.lora_rank == 16 and cfg.bf16 is True and cfg.max_samples is None
    assert cfg.stage == "sft" and cfg.model_name_or_path == "default"


def test_yaml_values_are_converted_to_the_key_types(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("learning_rate: 1e-4\nlora_rank: '32'\ndataset: [tcm_qa, tcm_dialog]\nbf16: 'no'\n")
    cfg = load_config(path)
    assert cfg.learning_rate == 1e-4 and cfg.lora_rank == 32
    assert cfg.dataset == "tcm_qa,tcm_dialog" and cfg.bf16 is False


def test_unknown_key_suggests_the_nearest():
    with pytest.raises(UserError, match="unknown key 'learnig_rate'; did you mean 'learning_rate'"):
        load_config(None, ["learnig_rate=1e-4"])


def test_every_mistake_is_reported_at_once_with_allowed_values():
    with pytest.raises(UserError) as err:
        load_config(None, ["lora_rank=abc", "stage=rlhf", "lora_dropout=2", "bf16=maybe", "max_samples=0",
                           "learning_rate=0"])
    text = str(err.value)
    assert "lora_rank: 'abc' is not a valid int (an integer >= 1)" in text
    assert "stage: 'rlhf' is not allowed; choose one of sft, pt" in text
    assert "lora_dropout: 2 is out of range (a number >= 0 and <= 0.9)" in text
    assert "bf16: 'maybe' is not a valid bool (true or false)" in text
    assert "max_samples: 0 is out of range (an integer >= 1, or null)" in text
    assert "learning_rate: 0 is out of range (a number > 0)" in text


def test_cross_key_rules():
    with pytest.raises(UserError, match="bf16 and fp16 are both true"):
        load_config(None, ["bf16=true", "fp16=true"])
    with pytest.raises(UserError, match="deepspeed: 'z4' is neither a preset"):
        load_config(None, ["deepspeed=z4"])


def test_override_syntax_errors():
    with pytest.raises(UserError, match="--lora_rank needs a value"):
        parse_overrides(["--lora_rank"])
    with pytest.raises(UserError, match="write key=value"):
        parse_overrides(["lora_rank"])


def test_run_yaml_reloads_to_the_same_config(tmp_path):
    cfg = load_config(None, ["stage=pt", "dataset=tcm_corpus", "max_samples=10", "lora_target=q_proj,v_proj",
                             "deepspeed=z3", "warmup_ratio=0.1"])
    save_config(cfg, tmp_path / "run.yaml")
    assert load_config(tmp_path / "run.yaml") == cfg
    # Every key is written, so the file alone describes the run.
    assert set(yaml.safe_load((tmp_path / "run.yaml").read_text())) == set(TrainConfig.__dataclass_fields__)


@pytest.mark.parametrize("path", sorted(PRESETS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_yaml_is_a_preset_that_loads_or_the_known_models_list(path):
    """By glob: a file added to presets/ is tested the day it is added."""
    if path.name == KNOWN_MODELS_FILE:
        assert path not in preset_paths(PRESETS)
        models = yaml.safe_load(path.read_text(encoding="utf-8"))
        assert isinstance(models, list) and all({"name", "template"} <= set(m) for m in models)
        return
    assert path in preset_paths(PRESETS)
    cfg = load_config(path)
    assert cfg.model_name_or_path == "default"


def test_bad_yaml_names_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("stage: sft\nlora_rank: [8\n")
    with pytest.raises(UserError, match=r"bad.yaml' is not valid YAML at line \d+"):
        load_config(path)
    with pytest.raises(UserError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    assert config_from_dict({}) == TrainConfig()


def test_an_empty_resume_from_checkpoint_means_the_default_auto(tmp_path):
    """`resume_from_checkpoint: null` (or an emptied field) continues from the newest complete
    checkpoint like `auto`, instead of failing at start as a checkpoint folder named ''."""
    from trainer_core.config import config_from_dict
    from trainer_core.train import resolve_resume

    cfg = config_from_dict({"resume_from_checkpoint": None})
    assert cfg.resume_from_checkpoint == ""
    assert resolve_resume(cfg, tmp_path) is None  # nothing saved yet: a fresh start
    (tmp_path / "checkpoint-4").mkdir()
    (tmp_path / "checkpoint-4" / "trainer_state.json").write_text("{}")
    assert resolve_resume(cfg, tmp_path) == str(tmp_path / "checkpoint-4") == resolve_resume(config_from_dict({}),
                                                                                            tmp_path)
