"""The SGD loop: it learns, it is deterministic, it rejects bad settings, evaluation is forward-only."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from tinyformer.config import PRESETS, ModelConfig
from tinyformer.data import Corpus, TokenStream
from tinyformer.model import Transformer
from tinyformer.tokenizer import build_tokenizer
from tinyformer.train import TrainConfig, evaluate, lm_loss, train

# A few dozen steps of a one-layer model: well under a second of compute. lr 0.1 because the
# default lr is tuned for the nano preset's batch, not for this one.
TINY = TrainConfig(steps=40, batch_size=8, context_len=32, lr=0.1, momentum=0.9, eval_every=20, eval_windows=16)


@pytest.fixture(scope="module")
def stream() -> TokenStream:
    return TokenStream(Corpus(seed=0), build_tokenizer(), n_sentences=2000)


@pytest.fixture(scope="module")
def trained(stream):
    """(model, history, on_eval calls) of one TINY run, shared by the tests that only read it."""
    seen = []
    model = tiny_model(stream)
    result = train(model, stream, TINY, progress=False, on_eval=lambda *a: seen.append(a))
    return model, result, seen


def tiny_model(stream: TokenStream, seed: int = 0, n_positions: int = 32) -> Transformer:
    torch.manual_seed(seed)
    config = ModelConfig(vocab_size=len(stream.tokenizer), n_positions=n_positions, n_embd=32, n_layer=1, n_head=1)
    return Transformer(config)


def test_loss_decreases(stream, trained):
    _, result, _ = trained
    first, last = result.train_loss[0], sum(result.train_loss[-5:]) / 5
    assert first == pytest.approx(math.log(len(stream.tokenizer)), abs=0.1)  # starts near uniform
    assert last < first - 0.5, result.train_loss
    assert result.val_loss[-1] < result.val_loss[0] < first
    assert all(math.isfinite(x) for x in result.train_loss)


def test_history_and_callback(trained):
    _, result, seen = trained
    assert len(result.train_loss) == TINY.steps
    assert result.steps == [20, 40]
    assert [step for step, _, _ in seen] == result.steps
    assert [val for _, _, val in seen] == result.val_loss
    assert [train_loss for _, train_loss, _ in seen] == [result.train_loss[19], result.train_loss[39]]
    assert result.final_val_loss == result.val_loss[-1]
    assert result.seconds > 0


def test_same_seed_same_history(stream, trained):
    a, history_a, _ = trained
    b = tiny_model(stream)
    history_b = train(b, stream, TINY, progress=False)
    assert history_a.train_loss == history_b.train_loss  # exactly, not approximately
    assert history_a.val_loss == history_b.val_loss
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
    other = train(tiny_model(stream), stream, replace(TINY, seed=1), progress=False)
    assert other.train_loss != history_a.train_loss  # the seed picks the batches


def test_training_leaves_the_model_in_eval_mode(trained):
    model, _, _ = trained
    assert not model.training


def test_context_len_longer_than_position_table(stream):
    model = tiny_model(stream, n_positions=16)
    with pytest.raises(ValueError, match=r"context_len=32 is longer than the position table \(n_positions=16\)"):
        train(model, stream, TINY, progress=False)


def test_unknown_optimizer(stream):
    with pytest.raises(ValueError, match=r"optimizer must be 'sgd' or 'adamw', got 'adam'"):
        train(tiny_model(stream), stream, replace(TINY, optimizer="adam"), progress=False)


def test_adamw_also_trains(stream):
    cfg = replace(TINY, optimizer="adamw", lr=1e-2)
    result = train(tiny_model(stream), stream, cfg, progress=False)
    assert result.val_loss[-1] < result.train_loss[0] - 0.5


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_has_a_recipe_that_fits_it(preset):
    cfg = TrainConfig.for_preset(preset, steps=7)
    assert cfg.steps == 7
    assert cfg.context_len <= PRESETS[preset]["n_positions"]
    assert cfg.optimizer == "sgd"


def test_nano_recipe_trains_every_position_the_lessons_serve():
    """Lessons 05-09 generate up to position n_positions - 1 and vLLM serves max_model_len = n_positions: the
    training windows must reach the last row of the position table (a row no window reaches keeps its random init)."""
    cfg = TrainConfig.for_preset("nano")
    assert cfg.context_len == PRESETS["nano"]["n_positions"]
    assert cfg.batch_size * cfg.context_len == 2048  # the tokens per step the recipe was tuned with


def test_unknown_recipe():
    with pytest.raises(
        ValueError, match=r"no training recipe for preset 'huge'; choose one of \['micro', 'nano', 'pico'\]"
    ):
        TrainConfig.for_preset("huge")


def test_lm_loss_is_mean_next_token_cross_entropy():
    g = torch.Generator().manual_seed(0)
    logits, targets = torch.randn(2, 3, 5, generator=g), torch.randint(5, (2, 3), generator=g)
    log_probs = logits.log_softmax(-1)
    expected = -sum(log_probs[b, t, targets[b, t]] for b in range(2) for t in range(3)) / 6
    assert float(lm_loss(logits, targets)) == pytest.approx(float(expected), abs=1e-6)


def test_evaluate_is_forward_only(stream):
    model = tiny_model(stream)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grad_enabled = []
    model.register_forward_hook(lambda *_: grad_enabled.append(torch.is_grad_enabled()))

    loss = evaluate(model, stream, context_len=32, max_windows=16)

    assert grad_enabled == [False]
    assert all(p.grad is None for p in model.parameters())
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name
    assert model.training, "evaluate must restore the caller's train/eval mode"
    windows = stream.ids[stream.val_windows(32, 16)]  # [16, 33]
    with torch.no_grad():
        assert loss == pytest.approx(float(lm_loss(model.eval()(windows[:, :-1]), windows[:, 1:])), abs=1e-6)
    assert evaluate(model, stream, context_len=32, max_windows=16) == loss


def test_two_workers_asking_for_the_same_checkpoint_train_it_once(tmp_path, monkeypatch):
    """`make test` runs tests and notebooks two at a time: the second caller waits for the first's training and
    loads what it saved, instead of training again (train.load_or_train holds paths.one_writer)."""
    import threading
    import time

    from tinyformer import train as train_module
    from tinyformer.checkpoint import save_checkpoint

    trainings = []

    def quick_train_preset(preset, path, *, progress=True):
        trainings.append(preset)
        time.sleep(0.5)  # long enough for the other thread to arrive while this one "trains"
        tokenizer = build_tokenizer()
        model = Transformer(ModelConfig.preset(preset, vocab_size=len(tokenizer)))
        recipe = train_module.weights_recipe(TrainConfig.for_preset(preset))
        save_checkpoint(path, model, tokenizer, preset=preset, recipe=recipe)
        return model, tokenizer, None

    monkeypatch.setattr(train_module, "train_preset", quick_train_preset)
    path = tmp_path / "nano.pt"
    callers = [threading.Thread(target=train_module.load_or_train, kwargs={"path": path}) for _ in range(2)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join()
    assert trainings == ["nano"] and path.is_file()
