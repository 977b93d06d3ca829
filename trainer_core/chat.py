"""Chat with a model: streaming, multi-turn, with the LoRA adapter switchable on and off.

One `ChatSession` holds one model in memory. With a LoRA adapter, "base" and "tuned" answers
come from the same weights: the adapter is disabled for the base answer, so comparing the two
costs no second copy of the model. Loading another model replaces the first. More adapters of
the same base can be added by name (`add_adapter`, peft's `load_adapter`) and picked per answer
(`stream(..., adapter=name)`, peft's `set_adapter`): the arena (trainer_core.arena) answers with
several runs of one base from one copy of its weights.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer_core.errors import UserError


@dataclass
class GenerationSettings:
    max_new_tokens: int = 256
    temperature: float = 0.7
    top_p: float = 0.9
    top_k: int = 50
    repetition_penalty: float = 1.1
    do_sample: bool = True

    def check(self) -> None:
        problems = []
        if not 1 <= self.max_new_tokens <= 8192:
            problems.append("max_new_tokens must be between 1 and 8192")
        if not 0 <= self.temperature <= 5:
            problems.append("temperature must be between 0 and 5")
        if not 0 < self.top_p <= 1:
            problems.append("top_p must be > 0 and <= 1")
        if self.top_k < 0:
            problems.append("top_k must be >= 0")
        if not 0.5 <= self.repetition_penalty <= 2:
            problems.append("repetition_penalty must be between 0.5 and 2")
        if problems:
            raise UserError("; ".join(problems))


LOAD_WAIT_SECONDS = 600.0  # a load waits this long for a running answer, then is refused


class ChatSession:
    """A loaded model and what is needed to answer with it. Thread-safe: one generation at a
    time (a second caller waits), so two users never get crossed replies."""

    def __init__(self) -> None:
        self.model: Any = None
        self.tokenizer: Any = None
        self.description = ""
        self.has_adapter = False
        self.adapters: dict[str, Any] = {}  # adapters added by name (add_adapter) -> the tokenizer they answer with
        self._lock = threading.Lock()
        self.load_wait_seconds = LOAD_WAIT_SECONDS

    def load(self, model_name_or_path: str = "default", adapter: str | None = None, dtype: str = "auto",
             log=print) -> str:
        """Load a model (replacing the loaded one); with `adapter` the LoRA is kept separate. While
        an answer is being generated this waits for it (up to load_wait_seconds, then refuses)."""
        from trainer_core.models import import_transformers, load_for_inference

        import_transformers()  # from a UI thread, maybe beside another first import

        if not self._lock.acquire(timeout=self.load_wait_seconds):
            raise UserError(f"the loaded model is busy answering (waited {self.load_wait_seconds:.0f} s); "
                            "load the new model when the answer is finished")
        try:
            self._unload()
            self.model, self.tokenizer = load_for_inference(model_name_or_path, adapter, dtype, log=log)
            self.has_adapter = bool(adapter)
            self.description = model_name_or_path + (f" + {adapter}" if adapter else "")
        finally:
            self._lock.release()
        return self.description

    def load_run(self, run_dir: str | Path, log=print) -> str:
        """A training run's result: its base with adapter/, or its full model/."""
        from trainer_core.models import run_base_model

        run_dir = Path(run_dir)
        if (run_dir / "adapter" / "adapter_config.json").is_file():
            return self.load(run_base_model(run_dir), str(run_dir / "adapter"), log=log)
        if (run_dir / "model" / "config.json").is_file():
            return self.load(str(run_dir / "model"), log=log)
        raise UserError(f"'{run_dir}' holds no finished adapter/ or model/ (has the run finished?)")

    def add_adapter(self, adapter_dir: str | Path, name: str) -> None:
        """Put another LoRA adapter of the loaded base on the same weights, under `name`; an answer
        picks it with `stream(..., adapter=name)`. Its tokenizer (with the chat template it was
        trained with) is the adapter folder's when it has one, else the base's, as in `load`."""
        from peft import PeftModel

        from trainer_core.models import load_tokenizer

        adapter_dir = Path(adapter_dir)
        if not (adapter_dir / "adapter_config.json").is_file():
            raise UserError(f"'{adapter_dir}' is not a LoRA adapter folder (no adapter_config.json)")
        with self._lock:
            if self.model is None:
                raise UserError("no model is loaded; load one first")
            if name in self.adapters:
                raise UserError(f"an adapter named '{name}' is loaded already")
            if self.has_adapter:
                self.model.load_adapter(str(adapter_dir), adapter_name=name)
            else:
                self.model = PeftModel.from_pretrained(self.model, str(adapter_dir), adapter_name=name)
                self.has_adapter = True
            self.model.eval()
            own = (adapter_dir / "tokenizer_config.json").is_file()
            self.adapters[name] = load_tokenizer(str(adapter_dir)) if own else self.tokenizer
            self.description += f" + {adapter_dir}"

    def unload(self) -> None:
        with self._lock:
            self._unload()

    def _unload(self) -> None:
        self.model = self.tokenizer = None
        self.adapters = {}
        self.description, self.has_adapter = "", False
        gc.collect()
        with contextlib.suppress(Exception):
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    def stream(self, history: list[dict], message: str, system: str = "",
               settings: GenerationSettings | None = None, use_adapter: bool = True,
               adapter: str | None = None) -> Iterator[str]:
        """Yield the reply as it grows (the whole text so far, each time a token arrives). `adapter`
        names one added with add_adapter (else the loaded one answers; use_adapter=False: none)."""
        settings = settings or GenerationSettings()
        settings.check()
        if self.model is None:
            raise UserError("no model is loaded; load one first")
        if adapter is not None and adapter not in self.adapters:
            raise UserError(f"no adapter named '{adapter}' is loaded")
        if not message.strip():
            raise UserError("the message is empty")
        messages = ([{"role": "system", "content": system}] if system.strip() else []) + list(history)
        messages.append({"role": "user", "content": message})
        with self._lock:
            yield from self._generate(messages, settings, use_adapter, adapter)

    def _generate(self, messages: list[dict], settings: GenerationSettings, use_adapter: bool,
                  adapter: str | None = None) -> Iterator[str]:
        from transformers import TextIteratorStreamer

        tokenizer = self.adapters[adapter] if adapter is not None and use_adapter else self.tokenizer
        inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                    return_dict=True, return_tensors="pt")
        inputs = {k: v.to(self.model.device) for k, v in inputs.items()}
        streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=300)
        sampling = settings.do_sample and settings.temperature > 0
        kwargs = dict(**inputs, streamer=streamer, max_new_tokens=settings.max_new_tokens,
                      repetition_penalty=settings.repetition_penalty, do_sample=sampling,
                      eos_token_id=self._stop_ids(tokenizer), pad_token_id=tokenizer.pad_token_id)
        if sampling:
            kwargs.update(temperature=settings.temperature, top_p=settings.top_p, top_k=settings.top_k)
        cancelled = threading.Event()
        kwargs["stopping_criteria"] = _stop_when(cancelled)
        errors: list[BaseException] = []

        def run() -> None:
            import torch

            try:
                with torch.inference_mode(), self._adapter(use_adapter, adapter):
                    self.model.generate(**kwargs)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread below
                errors.append(exc)
                streamer.end()

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        text = ""
        try:
            for piece in streamer:
                if piece:  # the streamer sends "" while a character's bytes are incomplete
                    text += piece
                    yield text
        finally:
            # A caller that stops reading (closes the stream) ends the generation here, before the
            # lock goes to the next caller: never two generations (or adapter switches) at once.
            cancelled.set()
            worker.join()
        if errors:
            raise errors[0]

    def _stop_ids(self, tokenizer: Any = None) -> list[int]:
        """Stop on eos and on the template's end-of-turn tokens, whichever the model emits."""
        from trainer_core.tokenization import stop_token_ids

        return stop_token_ids(tokenizer or self.tokenizer)

    def _adapter(self, use_adapter: bool, adapter: str | None = None):
        if self.has_adapter and not use_adapter:
            return self.model.disable_adapter()
        if adapter is not None:  # under the lock: no other answer switches adapters meanwhile
            self.model.set_adapter(adapter)
        return contextlib.nullcontext()

    def reply(self, history: list[dict], message: str, system: str = "",
              settings: GenerationSettings | None = None, use_adapter: bool = True) -> str:
        text = ""
        for partial in self.stream(history, message, system, settings, use_adapter):
            text = partial
        return text

    def compare(self, history: list[dict], message: str, system: str = "",
                settings: GenerationSettings | None = None) -> dict[str, str]:
        """The same prompt answered by the base (adapter off) and the tuned model (adapter on)."""
        if not self.has_adapter:
            raise UserError("base vs tuned needs a model loaded with a LoRA adapter")
        return {"base": self.reply(history, message, system, settings, use_adapter=False),
                "tuned": self.reply(history, message, system, settings, use_adapter=True)}


def _stop_when(event: threading.Event) -> Any:
    """Stopping criteria that end generate() once the event is set."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class Cancelled(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):  # noqa: ARG002 - the StoppingCriteria signature
            return torch.full((input_ids.shape[0],), event.is_set(), dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([Cancelled()])


def add_arguments(parser) -> None:
    parser.add_argument("model", nargs="?", default="default",
                        help="a run folder, a model folder, a hub id, or 'default' (the built-in model)")
    parser.add_argument("--adapter", help="a LoRA adapter folder to put on the model")
    parser.add_argument("--system", default="", help="system prompt")
    parser.add_argument("--compare", action="store_true", help="answer with and without the adapter")
    parser.add_argument("--message", "-m", action="append",
                        help="answer these messages in turn and exit (no interactive prompt)")
    parser.add_argument("--max_new_tokens", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--top_p", type=float, default=0.9)
    parser.add_argument("--top_k", type=int, default=50)
    parser.add_argument("--repetition_penalty", type=float, default=1.1)
    parser.add_argument("--greedy", action="store_true", help="no sampling (reproducible answers)")
    parser.add_argument("--dtype", default="auto")


def run_chat(opts, input_fn=input, out=print) -> int:
    """The terminal chat: streams tokens; /clear resets history, /exit quits."""
    settings = GenerationSettings(opts.max_new_tokens, opts.temperature, opts.top_p, opts.top_k,
                                  opts.repetition_penalty, do_sample=not opts.greedy)
    settings.check()
    session = ChatSession()
    if (Path(opts.model) / "run.yaml").is_file() and not opts.adapter:
        loaded = session.load_run(opts.model, log=lambda m: out(m))
    else:
        loaded = session.load(opts.model, opts.adapter, opts.dtype, log=lambda m: out(m))
    if opts.compare and not session.has_adapter:
        raise UserError("--compare needs a LoRA adapter (a run folder or --adapter)")
    out(f"Loaded {loaded}. Type /clear to start over, /exit to quit.")
    history: list[dict] = []
    pending = list(opts.message or [])
    while True:
        if opts.message is not None:
            if not pending:
                return 0
            message = pending.pop(0)
            out(f"> {message}")
        else:
            try:
                message = input_fn("> ")
            except EOFError:
                return 0
        if message.strip() in ("/exit", "/quit"):
            return 0
        if message.strip() == "/clear":
            history = []
            continue
        variants = [("base", False), ("tuned", True)] if opts.compare else [("", True)]
        answer = ""
        for label, use_adapter in variants:
            if label:
                out(f"[{label}]")
            shown = 0
            for answer in session.stream(history, message, opts.system, settings, use_adapter):
                out(answer[shown:], end="", flush=True)
                shown = len(answer)
            out("")
        history += [{"role": "user", "content": message}, {"role": "assistant", "content": answer}]
