"""The ``tinyformer`` command: ``tinyformer train|export|serve|workshop|doctor`` (``--help`` on each).

Each subcommand is a :class:`~tinyformer.command.Command` (its name, help text, arguments and a ``run``
function returning an exit code). To add one, define ``COMMAND = Command(...)`` in your own module, import
that module here and add its ``COMMAND`` to ``SUBCOMMANDS``, as ``tinyformer.serving.cli`` adds ``serve``;
keep heavy imports (torch, vLLM) inside ``run`` so that ``tinyformer --help`` stays instant.

Boundary: the parser, the exit codes and ``train``/``export``. ``Command`` and the argument types live below
every subcommand module in :mod:`tinyformer.command`, so those modules never import this one.

Mistakes in what the user asked for (a missing file, an existing output, a bad config) print one
clear line and exit with status 1; set TINYFORMER_DEBUG=1 to see the traceback instead.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from tinyformer.command import Command, positive_int
from tinyformer.config import ARCHS, PRESETS, ModelConfig
from tinyformer.memory import doctor
from tinyformer.serving import cli as serving_cli
from tinyformer.workshop import cli as workshop_cli

# The other modules' commands, listed after this module's own.
SUBCOMMANDS: tuple[Command, ...] = (serving_cli.COMMAND, workshop_cli.COMMAND, doctor.COMMAND)

# What a user can get wrong: these are reported as one line, never as a traceback.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, PermissionError)


def main(argv: list[str] | None = None) -> int:
    """Run ``tinyformer ARGS``; return the exit code (0 = success)."""
    parser = build_parser(all_commands())
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, or a usage error argparse has already explained
        return int(exit_.code or 0)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return args.run(args)
    except USER_ERRORS as error:
        if os.environ.get("TINYFORMER_DEBUG"):
            raise
        print(f"tinyformer {args.command}: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"tinyformer {args.command}: interrupted; nothing was written.", file=sys.stderr)
        return 130


def all_commands() -> list[Command]:
    return [TRAIN, EXPORT, *SUBCOMMANDS]


def build_parser(commands: list[Command]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tinyformer",
        description="Train, export and serve the small GPT-style transformer of the tinyformer lessons.",
        epilog="Run `tinyformer COMMAND --help` for what each command does, its options and examples.",
    )
    subparsers = parser.add_subparsers(dest="command", title="commands", metavar="COMMAND")
    for command in commands:
        sub = subparsers.add_parser(
            command.name,
            help=command.summary,
            description=command.description,
            epilog=command.epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
            allow_abbrev=False,  # `--api-key SECRET` must not pass for `--api-key-file`: keys stay off command lines
        )
        command.add_arguments(sub)
        sub.set_defaults(run=command.run)
    return parser


# -- tinyformer train ----------------------------------------------------------------------------------------


def _train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", choices=sorted(PRESETS), default="nano", help="model size (default: nano)")
    parser.add_argument(
        "--out",
        type=Path,
        metavar="PATH",
        help="checkpoint file (NAME.pt) or a folder to put PRESET.pt in (default: the artifacts folder)",
    )
    parser.add_argument(
        "--arch",
        choices=ARCHS,
        default="gpt2",
        help="gpt2 (learned positions, LayerNorm, GELU) or llama (RoPE, RMSNorm, SwiGLU) (default: gpt2)",
    )
    parser.add_argument(
        "--n-kv-head",
        type=positive_int,
        metavar="K",
        help="key/value heads shared by the query heads (llama only; must divide the preset's n_head; default: n_head)",
    )
    parser.add_argument("--steps", type=positive_int, help="training steps (default: the preset's own number)")
    parser.add_argument("--seed", type=int, default=0, help="seed for the weights and the data (default: 0)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing checkpoint")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def checkpoint_path(out: Path | None, preset: str, arch: str = "gpt2") -> Path:
    """--out as given when it names a .pt file, else PRESET.pt (PRESET-llama.pt) inside the folder it names."""
    from tinyformer.train import checkpoint_name

    name = checkpoint_name(preset, arch)
    if out is None:
        from tinyformer.paths import artifacts_dir

        return artifacts_dir() / name
    return out if out.suffix == ".pt" else out / name


def _run_train(args: argparse.Namespace) -> int:
    from tinyformer.data import Corpus
    from tinyformer.paths import check_writable
    from tinyformer.train import train_preset

    path = checkpoint_path(args.out, args.preset, args.arch)
    if path.exists() and not args.overwrite:
        raise FileExistsError(f"{path} already exists; add --overwrite to replace it, or choose another --out.")
    check_writable(path)
    architecture = dict(arch=args.arch, n_kv_head=args.n_kv_head)
    ModelConfig.preset(args.preset, vocab_size=1, **architecture)  # a bad --n-kv-head stops here, before any work
    print(f"training the {args.preset} {args.arch} model on the shipped corpus (seed {args.seed})")
    _, _, result = train_preset(
        args.preset, path, seed=args.seed, steps=args.steps, progress=not args.quiet, **architecture
    )
    print(f"validation loss {result.final_val_loss:.3f} nats (the corpus's floor: {Corpus.entropy_rate():.3f})")
    print(f"saved {path}\nnext: tinyformer export {path} --out DIR")
    return 0


TRAIN = Command(
    name="train",
    summary="train a model preset on the shipped corpus and save a checkpoint",
    description=(
        "Train a small GPT-style model with SGD on the synthetic corpus that ships with tinyformer,\n"
        "showing a progress bar, and save weights + tokenizer to one checkpoint file (written atomically)."
    ),
    epilog=(
        "examples:\n"
        "  tinyformer train --preset nano --out checkpoints/     # -> checkpoints/nano.pt\n"
        "  tinyformer train --preset micro --out micro.pt --steps 500\n"
        "  tinyformer train --preset micro --arch llama --n-kv-head 1   # -> micro-llama.pt, multi-query attention"
    ),
    add_arguments=_train_arguments,
    run=_run_train,
)


# -- tinyformer export ---------------------------------------------------------------------------------------


def _export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "checkpoint",
        type=Path,
        metavar="CHECKPOINT",
        help="a checkpoint written by `tinyformer train` (a .pt file, or the folder holding just one)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="folder to write (default: CHECKPOINT's name + '-hf' in the artifacts folder)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing export folder")
    parser.add_argument(
        "--no-verify", action="store_true", help="skip reloading the export with transformers to compare logits"
    )
    parser.add_argument(
        "--quantize",
        choices=("int8", "int4"),
        help="write quantised weights with their scales and zero points, as a checkpoint vLLM loads "
        "(int4: AWQ layout; vLLM's CPU kernel serves int4 only)",
    )
    parser.add_argument(
        "--group-size",
        type=positive_int,
        metavar="N",
        help="int4: inputs sharing one scale and zero point (default: 128, capped at the narrowest layer's width)",
    )


def checkpoint_in(path: Path) -> Path:
    """``path`` itself, or the one checkpoint in the folder ``tinyformer train --out DIR`` filled."""
    if not path.is_dir():
        return path
    found = sorted(path.glob("*.pt"))
    if len(found) == 1:
        print(f"using the checkpoint in {path}: {found[0]}")
        return found[0]
    if not found:
        raise FileNotFoundError(
            f"{path} is a folder with no checkpoint (*.pt) in it; train one with "
            f"`tinyformer train --out {path}`, or pass the checkpoint file itself."
        )
    names = ", ".join(str(p) for p in found)
    raise ValueError(f"{path} holds {len(found)} checkpoints ({names}); pass the one to export, e.g. {found[0]}.")


def _run_export(args: argparse.Namespace) -> int:
    from tinyformer.checkpoint import load_checkpoint

    if args.group_size is not None and args.quantize != "int4":
        raise ValueError("--group-size applies to --quantize int4 only (int8 has one scale per output channel).")
    checkpoint = checkpoint_in(args.checkpoint)
    if args.out is not None and args.out.resolve() in checkpoint.resolve().parents:
        raise ValueError(
            f"--out {args.out} holds the checkpoint being exported ({checkpoint}); an export replaces its folder. "
            f"Choose a folder of its own, e.g. --out {args.out / (checkpoint.stem + '-hf')}."
        )
    model, tokenizer, _ = load_checkpoint(checkpoint)
    if args.out is None:
        from tinyformer.paths import artifacts_dir

        suffix = f"-{args.quantize}" if args.quantize else "-hf"
        args.out = artifacts_dir() / f"{checkpoint.stem}{suffix}"
    if args.quantize:
        from tinyformer.export.awq import export_quantised

        out = export_quantised(
            model, tokenizer, args.out, scheme=args.quantize, group_size=args.group_size, overwrite=args.overwrite
        )
        print(f"wrote {out} ({args.quantize} weights in AWQ's layout, quantization_config in config.json)")
        print(f"serve it: tinyformer serve {out}   (vLLM reads the quantization_config; --dtype float16)")
        return 0
    from tinyformer.export.causal_lm import export_hf

    out = export_hf(model, tokenizer, args.out, overwrite=args.overwrite, verify=not args.no_verify)
    checked = "" if args.no_verify else ", checked against the checkpoint with transformers"
    print(f"wrote {out} (Hugging Face GPT-2 format{checked})")
    print(f"serve it: tinyformer serve {shlex.quote(str(out))}")
    return 0


EXPORT = Command(
    name="export",
    summary="write a checkpoint as a Hugging Face GPT-2 folder (for transformers and vLLM)",
    description=(
        "Convert a tinyformer checkpoint into a Hugging Face GPT-2 model folder (config.json,\n"
        "model.safetensors, tokenizer files, generation_config.json) that transformers and vLLM load\n"
        "without internet. The folder is reloaded with transformers and its logits compared with the\n"
        "checkpoint's before it is put in place; a failed export leaves nothing behind."
    ),
    epilog=(
        "examples:\n"
        "  tinyformer export artifacts/nano.pt --out exports/nano\n"
        "  tinyformer export micro.pt --out exports/micro --overwrite\n"
        "  tinyformer export artifacts/nano.pt --out exports/nano-int4 --quantize int4 --group-size 32"
    ),
    add_arguments=_export_arguments,
    run=_run_export,
)


if __name__ == "__main__":
    sys.exit(main())
