"""Chat: streaming, history, base vs tuned from one copy of the weights, one generation at a time."""

import threading

import pytest

from trainer_core.chat import ChatSession, GenerationSettings
from trainer_core.errors import UserError

GREEDY = GenerationSettings(max_new_tokens=8, do_sample=False, repetition_penalty=1.0)


def test_stream_grows_to_the_full_reply(tiny_model_dir):
    session = ChatSession()
    session.load(str(tiny_model_dir))
    parts = list(session.stream([], "黄芪的功效？", settings=GREEDY))
    assert parts and all(b.startswith(a) for a, b in zip(parts, parts[1:]))
    assert parts[-1] == session.reply([], "黄芪的功效？", settings=GREEDY)


@pytest.mark.train
def test_base_answer_comes_from_the_same_weights_with_the_adapter_off(tuned_run, tiny_model_dir):
    tuned = ChatSession()
    tuned.load_run(tuned_run)
    assert tuned.has_adapter
    answers = tuned.compare([], "黄芪的功效？", system="你是中医助手", settings=GREEDY)
    plain = ChatSession()
    plain.load(str(tiny_model_dir))
    assert answers["base"] == plain.reply([], "黄芪的功效？", system="你是中医助手", settings=GREEDY)
    # The adapter was trained hard on one answer: with it on, the reply changes.
    assert answers["tuned"] != answers["base"]


def test_history_and_system_are_part_of_the_prompt(tiny_model_dir, monkeypatch):
    session = ChatSession()
    session.load(str(tiny_model_dir))
    seen = []
    original = session.tokenizer.apply_chat_template

    def recording(messages, **kwargs):
        seen.append(messages)
        return original(messages, **kwargs)

    monkeypatch.setattr(session.tokenizer, "apply_chat_template", recording)
    history = [{"role": "user", "content": "麻黄？"}, {"role": "assistant", "content": "辛温。"}]
    session.reply(history, "归经？", system="你是中医助手", settings=GREEDY)
    assert seen[-1] == [{"role": "system", "content": "你是中医助手"}, *history, {"role": "user", "content": "归经？"}]


def test_concurrent_users_get_their_own_answers(tuned_run):
    session = ChatSession()
    session.load_run(tuned_run)
    expected = {q: session.reply([], q, settings=GREEDY) for q in ("黄芪？", "麻黄？", "四君子汤？")}
    results: dict[str, str] = {}

    def ask(question: str) -> None:
        results[question] = session.reply([], question, settings=GREEDY)

    threads = [threading.Thread(target=ask, args=(q,)) for q in expected]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert results == expected


def test_stop_tokens_settings_and_unload(tiny_model_dir):
    session = ChatSession()
    with pytest.raises(UserError, match="no model is loaded"):
        list(session.stream([], "hi"))
    session.load(str(tiny_model_dir))
    assert session.tokenizer.convert_tokens_to_ids("<|im_end|>") in session._stop_ids()
    with pytest.raises(UserError, match="top_p"):
        list(session.stream([], "hi", settings=GenerationSettings(top_p=0)))
    with pytest.raises(UserError, match="base vs tuned needs"):
        session.compare([], "hi")
    session.load(str(tiny_model_dir))  # a second load replaces the first
    assert session.description == str(tiny_model_dir)
    session.unload()
    assert session.model is None


@pytest.mark.train
def test_cli_chat_answers_scripted_messages(cli, tuned_run):
    result = cli("chat", str(tuned_run), "--compare", "--greedy", "--max_new_tokens", "4",
                 "-m", "黄芪？", "-m", "用量？")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("[base]") == 2 and result.stdout.count("[tuned]") == 2
