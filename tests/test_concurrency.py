"""Concurrent users (issue 7, Faults): two jobs on the same devices are refused, whatever their
kind; two chats at once are queued with no crossed replies; loading a model while another answer
is being generated waits (or is refused with a message), and never crashes."""

import subprocess
import threading
import time

import pytest

from trainer_core import jobs, runs
from trainer_core.chat import ChatSession, GenerationSettings
from trainer_core.config import load_config
from trainer_core.errors import UserError
from trainer_core.jobconfig import EvalConfig, ExportConfig

GREEDY = GenerationSettings(max_new_tokens=12, do_sample=False, repetition_penalty=1.0)


# ---- jobs ------------------------------------------------------------------------------------

@pytest.fixture
def live_job(tmp_path):
    """A job folder whose status says running on this machine's devices, kept alive by a real
    process group (a sleeping process stands in for the trainer)."""
    proc = subprocess.Popen(["sleep", "120"], start_new_session=True)

    def make(job_dir):
        job_dir.mkdir(parents=True)
        runs.update_status(job_dir, state="running", pid=proc.pid, pgid=proc.pid, started_at=runs.now_iso(),
                           devices=jobs.current_devices(), launcher="python")
        return job_dir

    yield make
    proc.kill()
    proc.wait()


def test_eval_and_export_jobs_are_refused_while_training_holds_the_devices(live_job, tmp_path):
    outputs = tmp_path / "outputs"
    training = live_job(outputs / "run-a")
    (training / runs.CONFIG_FILE).write_text("stage: sft\n")
    other = outputs / "run-b"
    other.mkdir()
    (other / runs.CONFIG_FILE).write_text("stage: sft\n")
    for kind, cfg in (("export", ExportConfig(run=str(other))), ("eval", EvalConfig(run=str(other)))):
        with pytest.raises(UserError, match="busy") as refused:
            jobs.start_task(kind, cfg)
        assert str(training) in str(refused.value) and "runs --abort" in str(refused.value)
        assert sorted(p.name for p in other.iterdir()) == [runs.CONFIG_FILE]  # no job folder was made


def test_training_is_refused_while_an_export_job_holds_the_devices(live_job, tmp_path, tiny_model_dir,
                                                                   tiny_data_dir):
    outputs = tmp_path / "outputs"
    export_job = live_job(outputs / "run-a" / "jobs" / "export-1")
    cfg = load_config(None, [f"model_name_or_path={tiny_model_dir}", f"dataset_dir={tiny_data_dir}", "dataset=qa",
                             f"output_dir={outputs / 'run-b'}", "max_steps=2"])
    with pytest.raises(UserError, match="busy") as refused:
        jobs.start_job(cfg)
    assert str(export_job) in str(refused.value)
    assert not (outputs / "run-b" / runs.STATUS_FILE).exists()


# ---- chat ------------------------------------------------------------------------------------

def _count_generations(session: ChatSession) -> dict:
    """Wrap the model's generate() to record how many run at the same time."""
    counts = {"now": 0, "most": 0, "calls": 0}
    guard = threading.Lock()
    original = session.model.generate

    def generate(*args, **kwargs):
        with guard:
            counts["now"] += 1
            counts["calls"] += 1
            counts["most"] = max(counts["most"], counts["now"])
        try:
            time.sleep(0.05)  # widen the window in which an unqueued second call would overlap
            return original(*args, **kwargs)
        finally:
            with guard:
                counts["now"] -= 1

    session.model.generate = generate
    return counts


def _slow_down(session: ChatSession, seconds: float = 0.02):
    """Each forward pass (one per new token) sleeps a little: a generation lasts long enough
    for another thread to act while it runs."""
    return session.model.register_forward_pre_hook(lambda module, args: time.sleep(seconds))


def test_two_chats_at_once_are_queued_with_no_crossed_replies(tuned_run):
    """Base (adapter off) and tuned (adapter on) answers from one set of weights, asked from
    several threads at once: each caller gets exactly the reply it gets alone."""
    session = ChatSession()
    session.load_run(tuned_run)
    asks = [("黄芪？", False), ("黄芪？", True), ("麻黄的性味？", False), ("麻黄的性味？", True)]
    expected = {ask: session.reply([], ask[0], settings=GREEDY, use_adapter=ask[1]) for ask in asks}
    assert expected[asks[0]] != expected[asks[1]]  # the adapter changes the answer: crossing would show
    counts = _count_generations(session)
    hook = _slow_down(session)
    results: dict = {}
    errors: list = []
    start = threading.Barrier(len(asks) * 2)

    def ask(key, slot):
        try:
            start.wait()
            streamed = list(session.stream([], key[0], settings=GREEDY, use_adapter=key[1]))
            assert all(b.startswith(a) for a, b in zip(streamed, streamed[1:]))  # one reply, growing
            results[(key, slot)] = streamed[-1]
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=ask, args=(key, slot)) for key in asks for slot in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    hook.remove()
    assert not errors, errors
    assert results == {(key, slot): expected[key] for key in asks for slot in (0, 1)}
    assert counts["calls"] == len(threads) and counts["most"] == 1  # queued: one generation at a time


def test_a_load_while_answering_waits_for_the_answer(tiny_model_dir):
    session = ChatSession()
    session.load(str(tiny_model_dir))
    expected = session.reply([], "黄芪的功效？", settings=GREEDY)
    hook = _slow_down(session, 0.1)
    events: dict = {}
    stream = session.stream([], "黄芪的功效？", settings=GREEDY)
    first = next(stream)  # generating now, holding the model

    def load_again():
        events["load_started"] = time.time()
        events["loaded"] = session.load(str(tiny_model_dir))
        events["load_done"] = time.time()

    loader = threading.Thread(target=load_again)
    loader.start()
    time.sleep(0.3)
    assert "load_done" not in events  # waiting for the answer, not replacing the model under it
    answer = first
    for partial in stream:
        answer = partial
    answered = time.time()
    loader.join(timeout=120)
    hook.remove()
    assert answer == expected
    assert events["loaded"] == str(tiny_model_dir) and events["load_done"] >= answered
    assert session.reply([], "黄芪的功效？", settings=GREEDY) == expected  # the new model answers


def test_a_load_that_cannot_wait_is_refused_with_a_message(tiny_model_dir):
    session = ChatSession()
    session.load(str(tiny_model_dir))
    expected = session.reply([], "麻黄？", settings=GREEDY)
    session.load_wait_seconds = 0.2
    hook = _slow_down(session, 0.1)
    stream = session.stream([], "麻黄？", settings=GREEDY)
    answer = next(stream)
    with pytest.raises(UserError, match="busy answering"):
        session.load(str(tiny_model_dir))
    for partial in stream:
        answer = partial
    hook.remove()
    assert answer == expected  # the refused load did not disturb the answer
    session.load(str(tiny_model_dir))  # and once it is done, loading works
    assert session.model is not None


def test_a_closed_stream_ends_its_generation_before_the_next_caller(tiny_model_dir):
    """A browser that goes away mid-answer closes the stream: its generation must stop before the
    lock passes on, or two generations would run on one model at once."""
    session = ChatSession()
    session.load(str(tiny_model_dir))
    counts = _count_generations(session)
    hook = _slow_down(session, 0.05)
    settings = GenerationSettings(max_new_tokens=200, do_sample=False, repetition_penalty=1.0)
    stream = session.stream([], "黄芪？", settings=settings)
    next(stream)
    started = time.time()
    stream.close()
    assert counts["now"] == 0, "the abandoned generation is still running"
    assert time.time() - started < 5  # stopped at the next token, not after 200
    hook.remove()
    assert session.reply([], "黄芪？", settings=GREEDY)
    assert counts["most"] == 1


# ---- the first import of transformers in the UI process -----------------------------------------

FIRST_USES = """
import sys, threading
from trainer_core import models, planner
model = sys.argv[1]
errors = []
def use(call):
    try:
        call()
    except Exception as exc:
        errors.append(repr(exc))
calls = [lambda: planner.load_model_shape(model), lambda: models.load_tokenizer(model),
         lambda: models.load_for_inference(model, log=lambda _: None)] * 2
threads = [threading.Thread(target=use, args=(call,)) for call in calls]
for t in threads: t.start()
for t in threads: t.join()
print(errors)
"""


def test_threads_that_first_use_transformers_at_once_all_get_it(tiny_model_dir):
    """The plan panel (AutoConfig), the Data tab's token statistics (AutoTokenizer) and the Chat tab
    (AutoModelForCausalLM) may import transformers for the first time in UI threads at once; without
    models.import_transformers one of them gets "cannot import name 'AutoConfig'" (each time here),
    which the page showed as an error toast."""
    import sys
    from pathlib import Path

    out = subprocess.run([sys.executable, "-c", FIRST_USES, str(tiny_model_dir)], capture_output=True, text=True,
                         timeout=300, cwd=str(Path(__file__).resolve().parents[1]))
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout[-2000:]
