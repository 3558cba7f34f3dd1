"""The `tinyformer` command: help a newcomer can read, real train/export runs, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from tinyformer import cli
from tinyformer.checkpoint import load_checkpoint
from tinyformer.command import Command
from tinyformer.export.awq import awq_quantization_config, serve_dtype

STEPS = 3  # the command is under test here, not the training


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ckpt")
    assert cli.main(["train", "--preset", "nano", "--steps", str(STEPS), "--out", str(folder), "--quiet"]) == 0
    return folder / "nano.pt"


def test_help_lists_the_commands(capsys) -> None:
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "train" in out and "export" in out and "tinyformer COMMAND --help" in out


@pytest.mark.parametrize("command, expected", [("train", "--preset"), ("export", "CHECKPOINT")])
def test_each_command_explains_itself_with_examples(capsys, command: str, expected: str) -> None:
    assert cli.main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert expected in out and f"examples:\n  tinyformer {command}" in out


def test_no_command_prints_help_and_fails(capsys) -> None:
    assert cli.main([]) == 2
    assert "commands:" in capsys.readouterr().out


@pytest.mark.slow  # a fresh interpreter imports torch and transformers
def test_the_module_runs_as_a_program() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tinyformer.cli", "export", "/no/such/file.pt"], capture_output=True, text=True
    )
    assert result.returncode == 1
    assert "tinyformer export: error: no checkpoint at /no/such/file.pt" in result.stderr
    assert "Traceback" not in result.stderr


# -- train ---------------------------------------------------------------------------------------------------


def test_train_writes_a_checkpoint_that_loads(checkpoint: Path) -> None:
    model, tokenizer, meta = load_checkpoint(checkpoint)
    assert meta["preset"] == "nano" and meta["steps"] == STEPS
    assert model.config.n_embd == 64 and model.config.vocab_size == len(tokenizer)


def test_train_shows_progress_and_where_it_saved(tmp_path: Path, capsys) -> None:
    out = tmp_path / "mine.pt"
    assert cli.main(["train", "--steps", "2", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "2/2" in captured.err  # the tqdm progress bar
    assert f"saved {out}" in captured.out and f"tinyformer export {out}" in captured.out
    assert out.is_file()


def test_train_refuses_to_replace_a_checkpoint(checkpoint: Path, capsys) -> None:
    before = checkpoint.read_bytes()
    assert cli.main(["train", "--steps", "1", "--out", str(checkpoint), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "already exists; add --overwrite" in err and "Traceback" not in err
    assert checkpoint.read_bytes() == before


@pytest.mark.parametrize(
    "args, message",
    [
        (["--steps", "0"], "expected a whole number above 0"),
        (["--steps", "many"], "expected a whole number above 0"),
        (["--preset", "huge"], "invalid choice: 'huge'"),
    ],
)
def test_bad_train_options_are_usage_errors(args: list[str], message: str, capsys) -> None:
    assert cli.main(["train", *args]) == 2
    assert message in capsys.readouterr().err


def test_train_and_export_a_llama_with_one_kv_head(tmp_path: Path, capsys) -> None:
    args = ["--preset", "micro", "--arch", "llama", "--n-kv-head", "1", "--steps", "2", "--quiet"]
    assert cli.main(["train", *args, "--out", str(tmp_path)]) == 0
    model, _, _ = load_checkpoint(tmp_path / "micro-llama.pt")
    assert (model.config.arch, model.config.n_kv_head) == ("llama", 1)
    assert cli.main(["export", str(tmp_path / "micro-llama.pt"), "--out", str(tmp_path / "hf")]) == 0
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["num_key_value_heads"] == 1


@pytest.mark.parametrize(
    "args, message",
    [
        (["--arch", "llama", "--n-kv-head", "3"], "n_head=4 is not divisible by n_kv_head=3"),
        (["--n-kv-head", "2"], "grouped-query attention is part of arch='llama'"),
    ],
)
def test_bad_kv_heads_are_refused_before_training(tmp_path: Path, args: list[str], message: str, capsys) -> None:
    assert cli.main(["train", "--preset", "micro", *args, "--out", str(tmp_path), "--quiet"]) == 1
    err = capsys.readouterr()
    assert message in err.err and "Traceback" not in err.err and "training" not in err.out
    assert not any(tmp_path.iterdir())


# -- export --------------------------------------------------------------------------------------------------


def test_export_writes_a_folder_transformers_loads(checkpoint: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "hf"
    assert cli.main(["export", str(checkpoint), "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out

    model, _, _ = load_checkpoint(checkpoint)
    hf_model = AutoModelForCausalLM.from_pretrained(out, local_files_only=True).eval()
    ids = torch.arange(model.config.vocab_size)[None, : model.config.n_positions]  # [1, T]
    with torch.no_grad():
        torch.testing.assert_close(hf_model(ids).logits, model(ids), atol=1e-4, rtol=0)


def test_export_needs_overwrite_to_replace(checkpoint: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "hf"
    assert cli.main(["export", str(checkpoint), "--out", str(out), "--no-verify"]) == 0
    assert cli.main(["export", str(checkpoint), "--out", str(out)]) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert cli.main(["export", str(checkpoint), "--out", str(out), "--overwrite"]) == 0


def test_export_refuses_to_write_over_the_folder_of_its_own_checkpoint(checkpoint: Path, tmp_path: Path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "nano.pt").write_bytes(checkpoint.read_bytes())  # what `tinyformer train --out run` leaves
    (run / "config.json").write_text("{}")  # a folder with a config.json was enough to be deleted
    for source in (run, run / "nano.pt"):
        assert cli.main(["export", str(source), "--out", str(run), "--overwrite"]) == 1
        err = capsys.readouterr().err
        assert f"tinyformer export: error: --out {run} holds the checkpoint being exported ({run / 'nano.pt'})" in err
        assert f"--out {run / 'nano-hf'}" in err
    assert (run / "nano.pt").read_bytes() == checkpoint.read_bytes() and sorted(p.name for p in run.iterdir()) == [
        "config.json",
        "nano.pt",
    ]


def test_export_quantize_int4_writes_an_awq_folder(checkpoint: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "nano-int4"
    assert cli.main(["export", str(checkpoint), "--out", str(out), "--quantize", "int4"]) == 0
    config = json.loads((out / "config.json").read_text())
    # the default group size 128 is capped at nano's narrowest layer (n_embd = 64 inputs)
    assert config["quantization_config"] == awq_quantization_config(64)
    assert "quantization_config" in capsys.readouterr().out
    assert serve_dtype(out) == "float16" and serve_dtype(tmp_path) == "float32"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--quantize", "int4", "--group-size", "48"], "group_size=48 does not divide the layer's input width 64"),
        (["--quantize", "int8"], "4-bit kernel only"),
        (["--group-size", "32"], "--group-size applies to --quantize int4 only"),
    ],
)
def test_export_quantize_bad_input_is_one_clear_line(checkpoint: Path, tmp_path: Path, capsys, args, message) -> None:
    assert cli.main(["export", str(checkpoint), "--out", str(tmp_path / "q"), *args]) == 1
    err = capsys.readouterr().err
    assert err.startswith("tinyformer export: error:") and message in err
    assert not (tmp_path / "q").exists()


def test_export_quantize_rejects_an_unknown_scheme(checkpoint: Path, capsys) -> None:
    assert cli.main(["export", str(checkpoint), "--quantize", "int3"]) == 2
    assert "invalid choice: 'int3'" in capsys.readouterr().err


def test_export_of_a_corrupted_checkpoint_is_a_clear_error(tmp_path: Path, capsys) -> None:
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    assert cli.main(["export", str(broken), "--out", str(tmp_path / "hf")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("tinyformer export: error: checkpoint") and "corrupted" in err
    assert "Traceback" not in err
    assert not (tmp_path / "hf").exists()


# -- adding a command ----------------------------------------------------------------------------------------


def test_a_command_listed_in_subcommands_becomes_a_command(monkeypatch, capsys) -> None:
    def add_arguments(parser):
        parser.add_argument("--name", default="world")

    def run(args):
        print(f"hello {args.name}")
        return 0

    hello = Command("hello", "say hello", "Says hello.", add_arguments, run)
    monkeypatch.setattr(cli, "SUBCOMMANDS", (hello,))

    assert cli.main(["hello", "--name", "class"]) == 0
    assert capsys.readouterr().out == "hello class\n"
    assert cli.main(["--help"]) == 0
    assert "say hello" in capsys.readouterr().out
