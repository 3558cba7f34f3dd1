"""Checkpoints: exact round trip, atomic writes, and clear errors for every kind of bad file."""

from __future__ import annotations

import os
import stat

import pytest
import torch

from tinyformer.checkpoint import load_checkpoint, save_checkpoint
from tinyformer.config import ModelConfig
from tinyformer.data import Corpus
from tinyformer.model import Transformer
from tinyformer.paths import atomic_file
from tinyformer.tokenizer import build_tokenizer
from tinyformer.train import TrainConfig, load_or_train, weights_recipe


@pytest.fixture
def model(tokenizer) -> Transformer:
    torch.manual_seed(0)
    return Transformer(ModelConfig(vocab_size=len(tokenizer), n_positions=16, n_embd=32, n_layer=2, n_head=1)).eval()


@pytest.fixture
def saved(tmp_path, model, tokenizer):
    """A good checkpoint on disk."""
    return save_checkpoint(tmp_path / "model.pt", model, tokenizer, preset="test", val_loss=1.75)


def probe(tokenizer) -> torch.Tensor:
    return torch.tensor([tokenizer.encode(Corpus(seed=0).text(3))[:16]])  # [1, 16]


def test_round_trip_gives_identical_logits_and_tokenizer(saved, model, tokenizer):
    loaded, loaded_tokenizer, meta = load_checkpoint(saved)
    assert loaded.config == model.config
    assert not loaded.training
    ids = probe(tokenizer)
    with torch.no_grad():
        assert torch.equal(loaded(ids), model(ids))
    assert loaded.lm_head.weight is loaded.transformer.wte.weight  # still tied after loading
    assert loaded_tokenizer.get_vocab() == tokenizer.get_vocab()
    text = Corpus(seed=1).text(5) + " zebra"
    assert loaded_tokenizer.encode(text) == tokenizer.encode(text)
    assert loaded_tokenizer.special_tokens_map == tokenizer.special_tokens_map
    assert loaded_tokenizer.model_max_length == model.config.n_positions
    assert meta == {"preset": "test", "val_loss": 1.75}


def fail_mid_write(payload, f, *args, **kwargs):
    f.write(b"PK\x03\x04 half a checkpoint")  # some bytes reach the file first
    raise OSError("disk full (simulated)")


def test_failed_save_keeps_the_previous_file_and_leaves_no_temp(saved, model, tokenizer, monkeypatch):
    good = saved.read_bytes()
    with torch.no_grad():
        model.transformer.wte.weight.add_(1.0)  # a different model, so a partial overwrite would show
    monkeypatch.setattr(torch, "save", fail_mid_write)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(saved, model, tokenizer)
    monkeypatch.undo()
    assert saved.read_bytes() == good
    assert [p.name for p in saved.parent.iterdir()] == [saved.name]
    load_checkpoint(saved)  # still a good checkpoint


def test_failed_first_save_leaves_nothing(tmp_path, model, tokenizer, monkeypatch):
    monkeypatch.setattr(torch, "save", fail_mid_write)
    with pytest.raises(OSError):
        save_checkpoint(tmp_path / "new.pt", model, tokenizer)
    assert list(tmp_path.iterdir()) == []


def test_save_creates_folders_and_overwrites(tmp_path, model, tokenizer):
    path = save_checkpoint(tmp_path / "a" / "b" / "model.pt", model, tokenizer, step=1)
    save_checkpoint(path, model, tokenizer, step=2)
    assert load_checkpoint(path)[2] == {"step": 2}
    assert [p.name for p in path.parent.iterdir()] == ["model.pt"]


@pytest.fixture
def umask():
    """Set the process umask for one test; the previous one comes back after."""
    previous = os.umask(0o022)
    yield os.umask
    os.umask(previous)


@pytest.mark.parametrize("mask, mode", [(0o077, 0o600), (0o022, 0o644), (0o027, 0o640)])
def test_a_new_file_gets_the_mode_the_umask_allows(tmp_path, model, tokenizer, umask, mask, mode):
    umask(mask)
    path = save_checkpoint(tmp_path / "model.pt", model, tokenizer)
    assert stat.S_IMODE(path.stat().st_mode) == mode


def test_a_rewrite_keeps_the_mode_the_owner_chose(saved, model, tokenizer, umask):
    umask(0o022)
    saved.chmod(0o600)  # an instructor who keeps this checkpoint private
    save_checkpoint(saved, model, tokenizer, step=2)
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600 and load_checkpoint(saved)[2] == {"step": 2}
    with atomic_file(saved.with_name("notes.txt")) as tmp:
        tmp.write_text("new")
    assert stat.S_IMODE(saved.with_name("notes.txt").stat().st_mode) == 0o644


@pytest.mark.parametrize("keep", [0.5, 0.9, 0.0])
def test_truncated_file(saved, keep):
    data = saved.read_bytes()
    saved.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ValueError, match=r"truncated or corrupted"):
        load_checkpoint(saved)


def test_file_that_is_not_a_checkpoint_at_all(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("just some text\n")
    with pytest.raises(ValueError, match=r"truncated or corrupted"):
        load_checkpoint(path)


def test_torch_file_from_something_else(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, path)
    with pytest.raises(ValueError, match=r"not a tinyformer checkpoint \(expected format 'tinyformer-checkpoint-v1'\)"):
        load_checkpoint(path)


def edit_payload(path, edit) -> None:
    payload = torch.load(path, weights_only=True)
    edit(payload)
    torch.save(payload, path)


@pytest.mark.parametrize(
    "edit",
    [
        lambda p: p["config"].update(n_embd=64),  # config says one width, weights another
        lambda p: p["config"].update(n_layer=3),  # a block with no weights
        lambda p: p["state_dict"].pop("transformer.h.1.mlp.c_fc.bias"),
        lambda p: p["state_dict"].update(extra=torch.zeros(1)),
    ],
    ids=["width", "layers", "missing-weight", "extra-weight"],
)
def test_state_dict_that_does_not_match_its_config(saved, edit):
    edit_payload(saved, edit)
    with pytest.raises(ValueError, match=r"does not match its own config"):
        load_checkpoint(saved)


def test_tokenizer_that_does_not_match_the_model(saved):
    edit_payload(saved, lambda p: p.update(tokenizer=build_tokenizer(["x", "y"]).backend_tokenizer.to_str()))
    with pytest.raises(ValueError, match=r"tokenizer has 5 tokens but the model's vocab_size is 55"):
        load_checkpoint(saved)


def test_foreign_config_fields(saved):
    edit_payload(saved, lambda p: p["config"].update(n_ctx=16))
    with pytest.raises(ValueError, match=r"unknown ModelConfig fields \['n_ctx'\]"):
        load_checkpoint(saved)


def test_checkpoint_with_a_missing_entry(saved):
    edit_payload(saved, lambda p: p.pop("tokenizer"))
    with pytest.raises(ValueError, match="tokenizer"):
        load_checkpoint(saved)


def test_missing_file_has_a_hint(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no checkpoint at .*missing\.pt; train one with"):
        load_checkpoint(tmp_path / "missing.pt")


def test_load_or_train_loads_a_checkpoint_of_todays_recipe(tmp_path, model, tokenizer, monkeypatch):
    recipe = weights_recipe(TrainConfig.for_preset("nano", eval_every=100))  # how often it validated: no matter
    saved = save_checkpoint(tmp_path / "nano.pt", model, tokenizer, preset="nano", recipe=recipe)
    monkeypatch.setattr("tinyformer.train.train", lambda *a, **k: pytest.fail("load_or_train trained again"))
    loaded, loaded_tokenizer = load_or_train("nano", path=saved, progress=False)
    ids = probe(tokenizer)
    with torch.no_grad():
        assert torch.equal(loaded(ids), model(ids))
    assert loaded_tokenizer.get_vocab() == tokenizer.get_vocab()


def saved_before_the_rename(recipe: dict) -> dict:
    """A recipe as checkpoints saved it while the training window was still called block_size."""
    return {("block_size" if key == "context_len" else key): value for key, value in recipe.items()}


@pytest.mark.parametrize(
    "recipe",
    [
        None,  # no recipe saved
        {"steps": 2500, "block_size": 64},  # nano's old recipe
        saved_before_the_rename(weights_recipe(TrainConfig.for_preset("nano"))),  # today's numbers, old name
    ],
)
def test_load_or_train_trains_again_over_a_checkpoint_of_another_recipe(
    tmp_path, model, tokenizer, monkeypatch, recipe
):
    saved = save_checkpoint(tmp_path / "nano.pt", model, tokenizer, **({"recipe": recipe} if recipe else {}))
    calls = []
    monkeypatch.setattr("tinyformer.train.train_preset", lambda *a, **k: calls.append(a) or (model, tokenizer, None))
    load_or_train("nano", path=saved, progress=False)
    assert calls == [("nano", saved)]


def test_load_or_train_trains_again_over_a_checkpoint_of_another_architecture(tmp_path, model, tokenizer, monkeypatch):
    recipe = weights_recipe(TrainConfig.for_preset("nano"))
    saved = save_checkpoint(tmp_path / "nano.pt", model, tokenizer, preset="nano", recipe=recipe)  # a gpt2 model
    calls = []
    monkeypatch.setattr(
        "tinyformer.train.train_preset", lambda *a, **k: calls.append((a, k)) or (model, tokenizer, None)
    )
    load_or_train("nano", path=saved, progress=False, arch="llama")
    assert calls == [(("nano", saved), {"progress": False, "arch": "llama"})]
