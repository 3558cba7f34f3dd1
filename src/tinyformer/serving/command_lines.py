"""Read a `vllm serve`, `python -m vllm.entrypoints.openai.api_server` or `docker run ... vllm/vllm-openai` line the way
the installed vLLM does: which words are the shell's (``VAR=value`` in front), which Docker's, and what each of
vLLM's flags sets, parsed by vLLM's own argument parser (``make_arg_parser``, the one both entry points build).

    read_command_line("vllm serve m --max-model-len 4096").sets   # {'model_tag': 'm', 'max_model_len': 4096}

Nothing is started: parsing needs only ``import vllm`` (10-25 s on 2 cores, once per process). The seeds' own
lines, each with where it came from, are ``seed_command_lines()`` (reference/seed_command_lines.json).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import shlex
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources

# Docker's `run` options that take a value (the next word, or after "="), and what each does for a vLLM container.
DOCKER_VALUE_OPTIONS = {
    "--runtime": "the container runtime (nvidia: the NVIDIA Container Toolkit exposes the GPUs)",
    "--gpus": "which GPUs the container sees",
    "-v": "a host folder mounted into the container (host:container)",
    "--volume": "a host folder mounted into the container (host:container)",
    "-p": "a host port forwarded to the container's port (host:container)",
    "--publish": "a host port forwarded to the container's port (host:container)",
    "-e": "an environment variable inside the container",
    "--env": "an environment variable inside the container",
    "--ipc": "host: share the host's IPC namespace, so /dev/shm is not Docker's 64 MB (PyTorch's worker processes "
    "pass tensors through shared memory)",
    "--shm-size": "the size of /dev/shm inside the container (the alternative to --ipc=host)",
    "--name": "the container's name",
    "--network": "the container's network",
    "--entrypoint": "replaces the image's entry point",
}
DOCKER_FLAGS = {"--rm", "-d", "--detach", "-i", "-t", "-it", "--privileged", "--interactive", "--tty"}
API_SERVER_PROG = "api_server.py"  # argparse's prog under `python -m vllm.entrypoints.openai.api_server`
SHELL_TRACE = "+"  # `set -x` prints each command after a "+"
ELISION = "..."  # a quoted line shortened by its author


class CommandLineError(ValueError):
    """The line is not one of the three forms this module reads."""


class VLLMRefusal(Exception):
    """vLLM's parser would print this to stderr and exit (argparse's ``error``), e.g. for a flag it does not know."""


@dataclass
class ReadLine:
    """One command line, taken apart."""

    line: str
    program: str  # "vllm serve", "python -m <module>", or the image's entry point for a container
    environment: dict[str, str] = field(default_factory=dict)  # VAR=value words before the program
    docker: list[tuple[str, str | None]] = field(default_factory=list)  # Docker's options, in order
    image: str | None = None
    vllm_args: list[str] = field(default_factory=list)  # what vLLM's parser receives
    sets: dict[str, object] = field(default_factory=dict)  # every setting that differs from vLLM 0.32's default
    unknown: list[str] = field(default_factory=list)  # words vLLM 0.32's parser does not recognise
    refusal: str | None = None  # what vLLM 0.32 prints before it exits (None: it accepts the line)
    module_exists: bool = True  # `python -m MODULE`: whether vLLM 0.32 still has MODULE
    elided: bool = False  # the line's author replaced some words with "..."

    @property
    def model(self) -> str | None:
        """The model: `vllm serve`'s positional argument, or --model."""
        return self.sets.get("model_tag") or self.sets.get("model")


def seed_command_lines() -> dict:
    """The seeds' command lines with their sources, the image's entry point and the dropped flags."""
    return json.loads((resources.files("tinyformer") / "reference" / "seed_command_lines.json").read_text())


def read_command_line(line: str) -> ReadLine:
    """``line`` taken apart and its vLLM flags parsed by the installed vLLM's own parser."""
    words = shlex.split(line)
    if words[:1] == [SHELL_TRACE]:
        words = words[1:]
    read = ReadLine(line=line, program="", elided=ELISION in words)
    words = [w for w in words if w != ELISION]
    while words and "=" in words[0] and not words[0].startswith("-"):  # VAR=value before the program
        name, value = words.pop(0).split("=", 1)
        read.environment[name] = value
    read.program, read.vllm_args = _split_program(words, read)
    _parse_vllm_args(read)
    return read


def image_entrypoint() -> list[str]:
    """The vllm/vllm-openai image's ENTRYPOINT: `docker run IMAGE ARGS` runs it followed by ARGS."""
    return seed_command_lines()["image_entrypoint"]["entrypoint"]


def _split_program(words: list[str], read: ReadLine) -> tuple[str, list[str]]:
    if words[:2] == ["vllm", "serve"]:
        return "vllm serve", words[2:]
    if len(words) >= 3 and words[0] in ("python", "python3") and words[1] == "-m":
        read.module_exists = _module_exists(words[2])
        return f"{words[0]} -m {words[2]}", words[3:]
    if words[:2] == ["docker", "run"]:
        words = _take_docker_options(words[2:], read)
    if words and words[0].split(":")[0] == "vllm/vllm-openai":
        read.image = words[0]
        return " ".join(image_entrypoint()), words[1:]
    raise CommandLineError(
        f"not a vLLM server command line: {' '.join(words[:3])!r}. Give `vllm serve ...`, `python -m "
        "vllm.entrypoints.openai.api_server ...` or `docker run ... vllm/vllm-openai[:TAG] ...`."
    )


def _take_docker_options(words: list[str], read: ReadLine) -> list[str]:
    """Move `docker run`'s options into ``read.docker``; return the words from the image on."""
    words = list(words)
    while words and words[0].startswith("-"):
        word = words.pop(0)
        name, has_value, value = word.partition("=")
        if name in DOCKER_VALUE_OPTIONS:
            read.docker.append((name, value if has_value else words.pop(0)))
        elif word in DOCKER_FLAGS:
            read.docker.append((word, None))
        else:
            raise CommandLineError(f"unknown docker run option {word!r}: add it to DOCKER_VALUE_OPTIONS/DOCKER_FLAGS.")
    return words


def _module_exists(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


def _parse_vllm_args(read: ReadLine) -> None:
    parser = vllm_parser("vllm serve" if read.program == "vllm serve" else API_SERVER_PROG)
    try:
        parser.parse_args(read.vllm_args)
    except VLLMRefusal as refusal:
        read.refusal = str(refusal)
    namespace, read.unknown = parser.last_parse  # what it understood, even when it refuses the rest
    given = _dests_given(parser, read.vllm_args)
    read.sets = {
        dest: _plain(value)
        for dest, value in vars(namespace).items()
        if dest in given or value != parser.get_default(dest)  # given: even a value equal to the default
    }


def _dests_given(parser, args: list[str]) -> set[str]:
    """The settings the line names (vLLM's parser reads --a_b as --a-b)."""
    dests = set()
    for word in args:
        name = word.split("=", 1)[0]
        name = "--" + name[2:].replace("_", "-") if name.startswith("--") else name
        action = parser._option_string_actions.get(name)
        if action is not None:
            dests.add(action.dest)
    return dests


@lru_cache(maxsize=2)
def vllm_parser(prog: str = "vllm serve"):
    """vLLM's OpenAI server parser (``vllm serve`` and ``python -m vllm.entrypoints.openai.api_server`` both build
    it), raising VLLMRefusal with what vLLM would print to stderr before it exits. ``prog`` starts that message;
    only "vllm serve" gets vLLM's hint about --task."""
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    class RaisingParser(FlexibleArgumentParser):
        last_parse: tuple = (None, [])

        def parse_known_args(self, args=None, namespace=None):
            namespace, rest = super().parse_known_args(args, namespace)
            self.last_parse = (namespace, rest)
            return namespace, rest

        def print_usage(self, file=None):  # argparse prints the usage before its error: not wanted here
            pass

        def exit(self, status=0, message=None):  # argparse's error() ends here, after vLLM's own error() added hints
            raise VLLMRefusal((message or "").rstrip("\n"))

    return make_arg_parser(RaisingParser(prog=prog))


def _plain(value):
    """A config object (e.g. --kv-transfer-config's) as the fields the line set: those that differ from a fresh
    object's, leaving out those that differ between two fresh ones (random ids)."""
    if not dataclasses.is_dataclass(value):
        return value
    fresh, again = type(value)(), type(value)()
    return {
        f.name: getattr(value, f.name)
        for f in dataclasses.fields(value)
        if getattr(fresh, f.name) == getattr(again, f.name) != getattr(value, f.name)
    }
