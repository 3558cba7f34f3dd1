"""``tinyformer serve EXPORT_DIR``: a vLLM server for an exported model, until Ctrl-C.

Plugged into the ``tinyformer`` command through ``COMMAND`` (see tinyformer.cli.SUBCOMMANDS).
vLLM is imported only when the command runs, so ``tinyformer --help`` stays instant.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import stat
import sys
import time
from pathlib import Path

from tinyformer.command import Command, port_number, positive_float, positive_int

KEY_FILE_MODE = 0o600  # a generated key file: readable and writable by its owner only


def read_or_create_key(path: Path) -> tuple[str, bool]:
    """(the API key in ``path``, whether it was just created). A missing file gets a new random key, written
    with mode 0600 (created exclusively, so an existing file is never overwritten); an existing one that others
    could read or change is refused, with the fix (chmod 600). Keys travel in files and
    environment variables, never on a command line, where `ps` shows them to every user of the machine."""
    if path.is_dir():
        raise ValueError(
            f"--api-key-file {path} is a folder; give a file, e.g. {path / 'api-key'} (made with a new key if missing)."
        )
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, KEY_FILE_MODE)
    except FileExistsError:
        return _read_key(path), False
    key = secrets.token_urlsafe(24)
    with os.fdopen(descriptor, "w") as f:
        f.write(key + "\n")
    return key, True


def _read_key(path: Path) -> str:
    with open(path) as f:
        key, mode = f.read().strip(), stat.S_IMODE(os.fstat(f.fileno()).st_mode)  # the mode of what was read
    if not key or any(c.isspace() for c in key):
        raise ValueError(
            f"--api-key-file {path} must hold one key (no spaces or blank lines); delete it to get a new one."
        )
    if mode & ~KEY_FILE_MODE:
        raise ValueError(
            f"--api-key-file {path} has mode {mode:04o}: other users of this machine can read or change the key. "
            f"Run `chmod 600 {path}` (or delete the file to get a new key)."
        )
    return key


def add_key_file_argument(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--api-key-file",
        type=Path,
        metavar="FILE",
        help=f"read {what} from FILE; a FILE that does not exist gets a new random key (mode 0600). "
        "Needed with a --host other than 127.0.0.1, ::1 or localhost, where the key guards every route but /health",
    )


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model_dir", type=Path, metavar="EXPORT_DIR", help="a folder written by `tinyformer export`")
    parser.add_argument(
        "--max-model-len", type=positive_int, metavar="N", help="longest prompt + output (default: n_positions)"
    )
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument(
        "--kv-cache-tokens", type=positive_int, metavar="T", help="KV-cache size in tokens, rounded up to whole blocks"
    )
    budget.add_argument("--kv-cache-bytes", type=positive_int, metavar="B", help="KV-cache size in bytes per worker")
    add_key_file_argument(parser, "the API key clients must send")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=port_number, help="port (default: a free one)")
    parser.add_argument("--tensor-parallel-size", type=positive_int, default=1, metavar="TP", help="workers")
    parser.add_argument(
        "--pipeline-parallel-size", type=positive_int, default=1, metavar="PP", help="stages of whole layers"
    )
    parser.add_argument("--block-size", type=positive_int, metavar="N", help="tokens per KV block (CPU: 128)")
    parser.add_argument("--max-num-seqs", type=positive_int, metavar="S", help="most requests in one batch")
    parser.add_argument("--max-num-batched-tokens", type=positive_int, metavar="B", help="most tokens in one step")
    parser.add_argument(
        "--no-check", action="store_true", help="don't refuse bad settings up front; let vLLM report its own error"
    )
    parser.add_argument(
        "--timeout", type=positive_float, default=300.0, help="seconds to wait for the server (default 300)"
    )


def run_serve(args: argparse.Namespace) -> int:
    from tinyformer.serving.server import VLLMServer

    api_key = None
    if args.api_key_file is not None:
        api_key, created = read_or_create_key(args.api_key_file)
        print(f"API key {'written to' if created else 'read from'} {args.api_key_file}")
    server = VLLMServer(
        args.model_dir,
        max_model_len=args.max_model_len,
        kv_cache_tokens=args.kv_cache_tokens,
        kv_cache_bytes=args.kv_cache_bytes,
        api_key=api_key,
        host=args.host,
        port=args.port,
        tensor_parallel_size=args.tensor_parallel_size,
        pipeline_parallel_size=args.pipeline_parallel_size,
        block_size=args.block_size,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        check=not args.no_check,
        startup_timeout=args.timeout,
        shared=False,
    )
    print(f"predicted: {server.predicted.summary()}")
    return serve_until_interrupted(server, "tinyformer serve", on_ready=_announce)


def serve_until_interrupted(server, command: str, on_ready, wait=None) -> int:
    """Start ``server``, call ``on_ready(server)``, then block until Ctrl-C or SIGTERM (exit code 0) or until
    vLLM dies (1; ``wait(server)`` may watch instead and return what to print). Always stops the server."""
    from tinyformer.serving.server import VLLMStartupError

    signal.signal(signal.SIGTERM, _interrupt)  # `kill PID` stops the server as cleanly as Ctrl-C
    signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C, even where the shell started us ignoring it
    try:
        server.start()
        on_ready(server)
        print(f"\n{(wait or _wait_while_running)(server)}; see its log: {server.log_path}", file=sys.stderr)
        return 1
    except VLLMStartupError as error:
        print(f"{command}: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nstopping vLLM ...")
        return 0
    finally:
        server.stop()


def _wait_while_running(server) -> str:
    while server.is_running():
        time.sleep(1.0)
    return "vLLM exited on its own"


def _announce(server) -> None:
    reported = server.reported
    print(f"vLLM is ready after {server.ready_seconds:.0f} s at {server.url}  (OpenAI API: {server.api_url})")
    print(f"model name: {server.model}")
    print(f"predicted: {server.predicted.log_line()}")
    print(f"reported:  {'(not found in the log)' if reported is None else reported.log_line()}")
    print(f"log: {server.log_path}\nPress Ctrl-C to stop.")


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


COMMAND = Command(
    name="serve",
    summary="serve an exported model with a real vLLM server (OpenAI-compatible API) until Ctrl-C",
    description=(
        "Start vLLM's OpenAI-compatible server on an exported model folder, wait until it is healthy and\n"
        "print its URL together with the KV-cache capacity predicted from the model's config and the one\n"
        "vLLM reports. Ctrl-C stops the server and every process it started."
    ),
    epilog=(
        "examples:\n"
        "  tinyformer serve artifacts/micro-hf --max-model-len 256 --kv-cache-tokens 1280\n"
        "  tinyformer serve exports/micro --api-key-file ~/.tinyformer-key --host 0.0.0.0 --port 8000\n"
        "  tinyformer serve exports/micro --tensor-parallel-size 2"
    ),
    add_arguments=add_serve_arguments,
    run=run_serve,
)
