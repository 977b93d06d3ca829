"""Load test: several users chatting with the running workbench at once, through gradio_client.

    python bench/load_chat.py [--users 8] [--seconds 120] [--max-new-tokens 32] [--url URL]

Without --url it starts `python launch.py` on a free port (work folder under /tmp) and stops it
afterwards. Each user is its own gradio session (its own chat history) and asks its own question
again and again; a reply counts as served when its history ends with that user's question and an
answer, so crossed replies are counted as errors. One model answers one request at a time (the
ChatSession lock), so latency grows with the queue: the figures say how long users wait.
Prints requests served, errors, p50/p95/max latency and writes them to bench/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as `python bench/load_chat.py`: our package from this checkout
from trainer_core.procs import free_port  # noqa: E402

QUESTIONS = ["黄芪的功效是什么？", "人参主治哪些病证？", "当归如何配伍？", "白术的性味归经？", "茯苓有哪些注意事项？",
             "甘草的药性特点？", "麻黄与桂枝的区别？", "柴胡的用量？", "黄连能治什么？", "金银花的功效？"]


def start_workbench(workdir: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "launch.py", "--port", str(port), "--workdir", str(workdir),
                             "--lang", "en"], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url + "/", timeout=2)
            return proc, url
        except OSError:
            if proc.poll() is not None:
                raise SystemExit(f"launch.py exited with {proc.returncode}") from None
            time.sleep(0.5)
    raise SystemExit("the workbench did not answer within 120 s")


def user(url: str, index: int, until: float, max_new_tokens: int, results: list, lock: threading.Lock) -> None:
    from gradio_client import Client

    client = Client(url, verbose=False)
    question = f"{QUESTIONS[index % len(QUESTIONS)]}（用户{index}）"
    while time.time() < until:
        client.reset_session()  # a fresh one-turn chat each time: the prompt does not grow
        started = time.perf_counter()
        record = {"user": index}
        try:
            # on_send's inputs without the two State components (the client keeps them per session)
            out = client.predict(question, "", False, max_new_tokens, 0.0, 0.9, 50, 1.0, True, "en",
                                 api_name="/chat_send")
            history = out[0]
            asked = [m for m in history if m.get("role") == "user"]
            last = _text(asked[-1]["content"]) if asked else ""
            answered = history and history[-1].get("role") == "assistant" and _text(history[-1]["content"])
            record["ok"] = bool(last == question and answered)
            if not record["ok"]:
                record["error"] = f"crossed or empty reply: asked {question!r}, history ends {history[-2:]!r}"
        except Exception as exc:  # noqa: BLE001 - counted, the load goes on
            record.update(ok=False, error=f"{type(exc).__name__}: {exc}")
        record["latency_s"] = time.perf_counter() - started
        with lock:
            results.append(record)


def _text(content) -> str:
    """gradio 6 messages carry content as a string or a list of {"type": "text", "text": ...}."""
    if isinstance(content, list):
        return "".join(part.get("text", "") if isinstance(part, dict) else str(part) for part in content)
    return str(content or "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--url", help="a running workbench (else one is started)")
    opts = parser.parse_args(argv)

    from gradio_client import Client

    proc = None
    url = opts.url
    if not url:
        proc, url = start_workbench(Path("/tmp/qihuang-load-chat"))
    try:
        status = Client(url, verbose=False).predict("base", None, "builtin", "", "en", api_name="/chat_load")
        print(f"model: {status}", flush=True)
        results: list[dict] = []
        lock = threading.Lock()
        until = time.time() + opts.seconds
        threads = [threading.Thread(target=user, args=(url, i, until, opts.max_new_tokens, results, lock))
                   for i in range(opts.users)]
        started = time.time()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.time() - started
    finally:
        if proc:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)

    ok = sorted(r["latency_s"] for r in results if r["ok"])
    errors = [r for r in results if not r["ok"]]
    report = {"date": time.strftime("%Y-%m-%d %H:%M %Z"), "users": opts.users, "seconds": opts.seconds,
              "max_new_tokens": opts.max_new_tokens, "wall_s": round(wall, 1), "served": len(ok),
              "errors": len(errors), "error_samples": [e["error"] for e in errors[:5]],
              "per_user_served": [sum(1 for r in results if r["ok"] and r["user"] == i) for i in range(opts.users)],
              "p50_s": round(statistics.median(ok), 2) if ok else None,
              "p95_s": round(ok[max(0, int(len(ok) * 0.95) - 1)], 2) if ok else None,
              "max_s": round(ok[-1], 2) if ok else None, "cores": os.cpu_count()}
    out = REPO / "bench" / "results" / f"load_chat-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, ensure_ascii=False, indent=1))
    print(json.dumps(report, ensure_ascii=False, indent=1))
    return 0 if ok and not errors else 1


if __name__ == "__main__":
    sys.exit(main())
