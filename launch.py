"""Start the 数智岐黄 Tuner workbench: `python launch.py` -> http://127.0.0.1:7860

    --host HOST          bind address (default 127.0.0.1); any other than loopback needs --auth
    --port PORT          default 7860
    --auth USER:PASSWORD log-in for the page (required with a public --host or --share)
    --share              a public gradio.live link (needs --auth and internet access)
    --lang zh|en         the page's first language (a radio on the page switches)
    --workdir DIR        root of outputs/ (and data/ unless --data_dir); default: this repository
    --model PATH         preselect a local base model folder instead of the built-in one
    --data_dir DIR       preselect another data folder (holding dataset_info.json)
    --allow_path DIR     let paths typed on the page use DIR too (repeatable); by default they
                         must stay inside the work folder, the data folder and the model folders

The page comes up in a few seconds: torch and transformers are imported only by the handlers
that need them (chat, token statistics), and training runs as separate jobs.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python launch.py", description="Start the 数智岐黄 Tuner workbench.")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--auth", metavar="USER:PASSWORD", help="log-in required for a public --host or --share")
    parser.add_argument("--share", action="store_true", help="create a public gradio.live link (needs --auth)")
    parser.add_argument("--lang", choices=("zh", "en"), default="zh")
    parser.add_argument("--workdir", default=str(REPO), help="root of outputs/ and data/ (default: the repository)")
    parser.add_argument("--model", help="a local model folder to preselect instead of the built-in model")
    parser.add_argument("--data_dir", help="a data folder (holding dataset_info.json) to preselect")
    parser.add_argument("--allow_path", action="append", default=[], metavar="DIR",
                        help="a folder paths typed on the page may use, beyond the work folder (repeatable)")
    return parser.parse_args(argv)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_access(opts: argparse.Namespace) -> tuple[str, str] | None:
    """The (user, password) pair; refuses a page others can reach without one (SystemExit 2)."""
    auth = None
    if opts.auth:
        user, _, password = opts.auth.partition(":")
        if not user or not password:
            raise SystemExit("error: --auth takes USER:PASSWORD, both non-empty")
        auth = (user, password)
    if auth is None and opts.share:
        raise SystemExit("error: --share makes the workbench public; add --auth USER:PASSWORD")
    if auth is None and not is_loopback(opts.host):
        raise SystemExit(f"error: --host {opts.host} lets other machines reach the workbench (it starts jobs and "
                         "reads files); add --auth USER:PASSWORD, or leave --host at 127.0.0.1")
    return auth


def main(argv: list[str] | None = None) -> int:
    started = time.time()
    opts = parse_args(argv)
    try:
        auth = check_access(opts)
    except SystemExit as exc:
        print(exc, file=sys.stderr)
        return 2
    workdir = Path(opts.workdir).expanduser().resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    # Jobs run `python -m trainer_core` in this working directory: make the package findable there.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no network here; do not try
    sys.path.insert(0, str(REPO))
    os.chdir(workdir)

    from app.context import make_context
    from app.ui import build_app, keep_session_queues, launch_kwargs

    ctx = make_context(workdir, opts.data_dir, opts.model, opts.lang, opts.allow_path)
    demo = build_app(ctx)
    print(f"数智岐黄 Tuner: http://{opts.host}:{opts.port}  (workdir {workdir}, data {ctx.data_dir}, "
          f"model {ctx.model}; built in {time.time() - started:.1f} s)", flush=True)
    if auth:
        print(f"Log-in required: user '{auth[0]}' (--auth); "
              + ("a public gradio.live link will be made (--share)" if opts.share else f"listening on {opts.host}"),
              flush=True)
    demo.queue(default_concurrency_limit=4)
    keep_session_queues(demo)
    try:
        demo.launch(
            server_name=opts.host, server_port=opts.port, auth=auth, share=opts.share, inbrowser=False, quiet=True,
            **launch_kwargs(ctx))
    except OSError as exc:  # the port is taken, most often
        print(f"error: cannot start the web server on {opts.host}:{opts.port}: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
