"""Bad input gets a ValueError that says what was wrong and what to change, never a raw torch or Python error.

Each case checks the exception's type (exactly ValueError or a subclass, not TypeError/IndexError/RuntimeError)
and a phrase of its message that names the fix.
"""

from __future__ import annotations

import json
import math
import re

import pytest
import torch

from tinyformer.checkpoint import FORMAT, load_checkpoint, save_checkpoint
from tinyformer.cli import main
from tinyformer.config import ModelConfig
from tinyformer.data import Corpus, TokenStream
from tinyformer.export import export_hf
from tinyformer.generate import generate
from tinyformer.kv_cache import KVCache
from tinyformer.model import Transformer


@pytest.fixture(scope="module")
def model(tokenizer):
    torch.manual_seed(0)
    return Transformer(ModelConfig.preset("nano", vocab_size=len(tokenizer))).eval()


def raises_value_error(match: str):
    return pytest.raises(ValueError, match=match)


# ----- generation and the model ------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [math.nan, math.inf, -1.0, "hot"])
def test_generate_refuses_a_temperature_that_is_not_a_finite_number(model, temperature):
    with raises_value_error("temperature must be a finite number >= 0"):
        generate(model, [1, 2, 3], 4, temperature=temperature, seed=0)


def test_generate_refuses_a_temperature_so_small_that_logits_overflow(model):
    with raises_value_error(r"temperature=1e-40 is so small .* use temperature=0 for greedy"):
        generate(model, [1, 2, 3], 4, temperature=1e-40, seed=0)
    assert len(generate(model, [1, 2, 3], 4, temperature=1e-3, seed=0).tokens[0]) == 4  # small but usable


@pytest.mark.parametrize(
    "batch, match",
    [
        (torch.empty(0, 5, dtype=torch.long), r"the batch is empty \(prompt_ids has shape \[0, 5\]\): give one prompt"),
        ([], "a prompt is empty; give at least one token"),
        ([[]], "a prompt is empty; give at least one token"),
    ],
)
def test_generate_refuses_an_empty_batch(model, batch, match):
    with raises_value_error(match):
        generate(model, batch, 4)


def test_a_kv_cache_built_for_fewer_layers_is_refused(model):
    with raises_value_error(r"room for 1 layers but the model has n_layer=2.*KVCache\(model.config.n_layer\)"):
        model(torch.tensor([[1, 2, 3]]), cache=KVCache(1))


@pytest.mark.parametrize("shape", [(1, 2), (2, 3), (1, 4), (3,)])
def test_a_padding_mask_of_the_wrong_shape_is_refused(model, shape):
    with raises_value_error(r"padding_mask must have shape \[batch, cached \+ new tokens\] = \[1, 0 \+ 3\]"):
        model(torch.tensor([[1, 2, 3]]), padding_mask=torch.ones(shape, dtype=torch.bool))


def test_a_padding_mask_must_cover_the_cached_tokens_too(model):
    cache = KVCache(model.config.n_layer)
    model(torch.tensor([[1, 2, 3]]), cache=cache)
    with raises_value_error(r"= \[1, 3 \+ 1\], got \[1, 1\]"):
        model(torch.tensor([[4]]), cache=cache, padding_mask=torch.ones(1, 1, dtype=torch.bool))


# ----- configurations ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("layer_norm_epsilon", -1, "layer_norm_epsilon must be a small number above 0"),
        ("layer_norm_epsilon", 0.0, "layer_norm_epsilon must be a small number above 0"),
        ("layer_norm_epsilon", math.nan, "layer_norm_epsilon must be a small number above 0"),
        ("dropout", "0.1", r"dropout must be in \[0, 1\), got"),
        ("dropout", None, r"dropout must be in \[0, 1\), got"),
        ("dropout", 1.0, r"dropout must be in \[0, 1\), got"),
    ],
)
def test_model_config_refuses_bad_numbers(field, value, match):
    with raises_value_error(match):
        ModelConfig.preset("nano", vocab_size=50, **{field: value})


def test_model_config_from_a_dict_missing_a_field():
    with raises_value_error(r"the config lacks \['n_head'\]"):
        ModelConfig.from_dict({"vocab_size": 50, "n_positions": 128, "n_embd": 64, "n_layer": 2})


@pytest.mark.parametrize(
    "field, value",
    [("eval_every", 0), ("steps", 0), ("steps", -5), ("batch_size", 0), ("context_len", 2.5), ("lr", 0.0)],
)
def test_train_config_refuses_counts_that_cannot_run(field, value):
    from tinyformer.train import TrainConfig

    with raises_value_error(f"TrainConfig.{field} must be"):
        TrainConfig(**{field: value})


# ----- data ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fraction", [0, 0.0, 1, 1.5, -0.1])
def test_token_stream_needs_a_validation_fraction_strictly_between_0_and_1(tokenizer, fraction):
    with raises_value_error("val_fraction must be a number between 0 and 1"):
        TokenStream(Corpus(seed=0), tokenizer, n_sentences=100, val_fraction=fraction)


def test_a_corpus_too_small_for_one_window_says_so(tokenizer):
    stream = TokenStream(Corpus(seed=0), tokenizer, n_sentences=10)
    with raises_value_error(r"no train window of context_len \+ 1 = 501 tokens fits .* Use more sentences"):
        stream.batch("train", 4, 500, torch.Generator().manual_seed(0))
    with raises_value_error(r"no val window of context_len \+ 1 = 501 tokens fits"):
        stream.val_windows(500)
    x, _ = stream.batch("train", 4, 4, torch.Generator().manual_seed(0))  # a window that fits is served
    assert x.shape == (4, 4)


# ----- export, checkpoints, the command line ---------------------------------------------------------------------


def test_export_needs_the_tokenizer(model, tmp_path):
    with raises_value_error("export_hf needs the model's tokenizer"):
        export_hf(model, None, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_checkpoint_without_its_metadata_is_refused(model, tokenizer, tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", model, tokenizer)
    payload = torch.load(path, weights_only=True)
    del payload["meta"]
    torch.save(payload, path)
    with raises_value_error(r"lacks \['meta'\].*Train it again"):
        load_checkpoint(path)


def test_a_checkpoint_whose_config_misses_a_field_is_refused(model, tokenizer, tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", model, tokenizer)
    payload = torch.load(path, weights_only=True)
    del payload["config"]["n_layer"]
    torch.save({**payload, "format": FORMAT}, path)
    with raises_value_error(r"holds a bad config: the config lacks \['n_layer'\]"):
        load_checkpoint(path)


def test_serve_names_the_field_a_config_json_lacks(tmp_path, capsys):
    config = {"model_type": "gpt2", "vocab_size": 55, "n_positions": 128, "n_embd": 64, "n_layer": 2}
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert main(["serve", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("tinyformer serve: error: ") and "lacks ['n_head']" in err and "Export the model again" in err


def test_export_takes_the_folder_that_train_filled(model, tokenizer, tmp_path, capsys):
    folder = tmp_path / "run"
    save_checkpoint(folder / "nano.pt", model, tokenizer)  # what `tinyformer train --out run` writes
    assert main(["export", str(folder), "--out", str(tmp_path / "hf"), "--no-verify"]) == 0
    assert f"using the checkpoint in {folder}: {folder / 'nano.pt'}" in capsys.readouterr().out
    assert (tmp_path / "hf" / "config.json").is_file()

    save_checkpoint(folder / "micro.pt", model, tokenizer)
    assert main(["export", str(folder), "--out", str(tmp_path / "hf2")]) == 1
    assert "holds 2 checkpoints" in capsys.readouterr().err and not (tmp_path / "hf2").exists()
    assert main(["export", str(tmp_path), "--out", str(tmp_path / "hf3")]) == 1
    assert "no checkpoint (*.pt) in it" in capsys.readouterr().err


def test_train_refuses_an_output_it_cannot_write_before_training(tmp_path, monkeypatch, capsys):
    import tinyformer.train

    def no_training(*args, **kwargs):
        raise AssertionError("training started before the output path was checked")

    monkeypatch.setattr(tinyformer.train, "train", no_training)
    assert main(["train", "--out", "/dev/null/x.pt", "--quiet"]) == 1
    captured = capsys.readouterr()
    assert captured.err == (
        "tinyformer train: error: cannot write /dev/null/x.pt: File exists (/dev/null). "
        "Choose a path in a folder you can write.\n"
    )
    assert "training" not in captured.out
    with raises_value_error("cannot write /dev/null/x.pt"):
        tinyformer.train.train_preset("nano", "/dev/null/x.pt")


# ----- serving: the command line and the server's settings ---------------------------------------------------


def test_an_api_key_file_that_is_a_folder_is_refused(export_config, tmp_path, capsys):
    folder = tmp_path / "keys"
    folder.mkdir()
    assert main(["serve", str(export_config), "--api-key-file", str(folder)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"tinyformer serve: error: --api-key-file {folder} is a folder; give a file, e.g. ")
    assert str(folder / "api-key") in err and list(folder.iterdir()) == []


@pytest.mark.parametrize("content, kind", [("5", "int"), ("[1, 2]", "list"), ('"gpt2"', "str"), ("null", "NoneType")])
def test_a_config_json_that_is_not_an_object_is_refused(tmp_path, capsys, content, kind):
    (tmp_path / "config.json").write_text(content)
    assert main(["serve", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"tinyformer serve: error: {tmp_path / 'config.json'} holds a JSON {kind}, not the object")
    assert "Export the model again" in err or "export the model again" in err


@pytest.mark.parametrize(
    "host, problem",
    [
        ("999.1.1.1", r"host='999.1.1.1' is not an IPv4 address \(four numbers from 0 to 255\)"),
        ("192.0.2.1", r"cannot listen on host='192.0.2.1' \(Cannot assign requested address\)"),
    ],
)
def test_a_host_this_machine_cannot_listen_on_is_refused(export_config, capsys, host, problem):
    """999.1.1.1 is no address; 192.0.2.1 is one (RFC 5737's documentation range) but not this machine's."""
    from tinyformer.serving import VLLMServer

    with raises_value_error(rf"{problem}: give an address of this machine, 127.0.0.1"):
        VLLMServer(export_config, host=host, api_key="k" * 32)
    key_file = export_config / "key"  # a host beyond loopback needs one: that check comes first
    assert main(["serve", str(export_config), "--host", host, "--port", "8000", "--api-key-file", str(key_file)]) == 1
    err = capsys.readouterr().err
    assert re.search(problem, err) and "uses the port" not in err


def test_a_port_that_cannot_be_bound_for_another_reason_does_not_blame_another_program():
    from tinyformer.serving.server import check_port_free

    with raises_value_error(r"^cannot listen on 192.0.2.1:8000 \(Cannot assign requested address\)\. Pass another"):
        check_port_free("192.0.2.1", 8000)


def test_a_kv_cache_larger_than_the_machine_is_refused_before_vllm_starts(export_config, capsys):
    import psutil

    from tinyformer.serving import VLLMServer

    total = psutil.virtual_memory().total
    with raises_value_error(rf"is more than this machine's RAM \({total:,} bytes = .* GiB\)\. At 1,024 bytes per"):
        VLLMServer(export_config, kv_cache_tokens=99999999999999999999)
    with raises_value_error("is more than this machine's RAM"):
        VLLMServer(export_config, kv_cache_bytes=total + 1)
    assert main(["serve", str(export_config), "--kv-cache-tokens", "99999999999999999999"]) == 1
    err = capsys.readouterr().err
    assert (
        "a KV cache of 102,400,000,000,000,000,000,000 bytes" in err
    )  # 1e20 tokens x 1,024 B and "this machine's RAM" in err


# ----- the vector store ---------------------------------------------------------------------------------------


@pytest.fixture
def vector_store(tmp_path):
    from tinyformer.retrieval.search import VectorStore

    store = VectorStore.build(tmp_path / "index.db", torch.randn(5, 8, generator=torch.Generator().manual_seed(0)))
    yield store
    store.close()


@pytest.mark.parametrize("k", [-1, 0, 4097, 2.5, True])
def test_a_vector_search_for_a_number_of_neighbours_sqlite_vec_refuses(vector_store, k):
    with raises_value_error(rf"k must be a whole number from 1 to 4096 \(sqlite-vec's limit\), got {k!r}; the store"):
        vector_store.search(torch.ones(8), k)
    assert [row for row, _ in vector_store.search(torch.ones(8), 4096)] != []  # the limit itself is served


@pytest.mark.parametrize("content", [b"these are my notes, not a database" * 4, b""])
def test_a_vector_store_path_that_is_not_a_store_is_refused(tmp_path, content):
    import apsw

    from tinyformer.retrieval.search import VectorStore

    path = tmp_path / "notes.db"
    path.write_bytes(content)
    with raises_value_error(rf"{path} is not a vector store written by VectorStore.build \(.*\); pass the file"):
        VectorStore(path)
    other = tmp_path / "other.db"
    apsw.Connection(str(other)).execute("CREATE TABLE t(x)")  # a real SQLite database, but not a store
    with raises_value_error(r"other.db is not a vector store written by VectorStore.build \(.*no such table"):
        VectorStore(other)
    assert path.read_bytes() == content  # opening it changed nothing
    empty_meta = tmp_path / "meta.db"
    apsw.Connection(str(empty_meta)).execute("CREATE TABLE meta(key TEXT PRIMARY KEY, value)")
    with raises_value_error(r"meta.db is not a vector store written by VectorStore.build \(no dimension recorded\)"):
        VectorStore(empty_meta)


# ----- the shared server's address -----------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["10.0.0.5:8000", "localhost:8000", "ftp://10.0.0.5", "http://"])
def test_a_shared_server_url_without_a_scheme_is_refused(export_config, monkeypatch, url):
    from tinyformer.serving import VLLMServer

    monkeypatch.setenv("TINYFORMER_VLLM_URL", url)
    with raises_value_error("is not a server address: give the scheme, host and port, e.g. export"):
        VLLMServer(export_config)


def test_a_shared_server_url_that_is_not_vllm_is_refused(export_config, monkeypatch, foreign_http_server):
    from tinyformer.serving import VLLMServer

    _, port = foreign_http_server  # a real HTTP server that answers /health with 200 but is not vLLM
    monkeypatch.setenv("TINYFORMER_VLLM_URL", f"http://127.0.0.1:{port}")
    with raises_value_error(r"answers /health, but it is not a vLLM server: GET /v1/models gave HTTP 404"):
        VLLMServer(export_config).start()


# ----- widgets ----------------------------------------------------------------------------------------------------


def test_widgets_refuse_a_model_that_is_not_on_the_cpu(tokenizer):
    """The meta device stands in for a GPU: the check is on the device type, and no data is needed to fail."""
    from tinyformer.widgets.attention_weights import attention_weights
    from tinyformer.widgets.kv_stepper import trace_generation

    with torch.device("meta"):
        elsewhere = Transformer(ModelConfig.preset("nano", vocab_size=len(tokenizer)))
    assert elsewhere.device.type == "meta"
    with raises_value_error(r"run the model on the CPU, and this one is on meta.*copy.deepcopy\(model\).cpu\(\)"):
        attention_weights(elsewhere, [1, 2, 3])
    with raises_value_error("run the model on the CPU"):
        trace_generation(elsewhere, [1, 2, 3], 2)


def test_widget_panels_show_tokens_like_unk(model, tokenizer):
    from html.parser import HTMLParser

    from tinyformer.widgets.attention_weights import attention_weights_viewer
    from tinyformer.widgets.kv_stepper import KVCacheStepper, trace_generation

    class Text(HTMLParser):
        def __init__(self):
            super().__init__()
            self.text = ""

        def handle_data(self, data):
            self.text += data

    def shown(html: str) -> str:  # what a browser displays: unknown tags such as <unk> vanish
        parser = Text()
        parser.feed(html)
        return parser.text

    viewer = attention_weights_viewer(model, tokenizer, "the cat zebra sleeps .")  # zebra is not in the vocabulary
    assert "<unk>" in viewer.words
    viewer.query.value = viewer.words.index("<unk>")
    viewer.refresh()
    assert f"{viewer.words.index('<unk>')}: <unk>" in shown(viewer.numbers.value)

    trace = trace_generation(model, [1, 2], 2)
    stepper = KVCacheStepper(trace, labels=["<unk>", "<b>", "x", "y"])
    stepper.step.value = 0
    stepper.refresh()
    assert "chosen token: x" in shown(stepper.numbers.value)
    stepper.labels[2] = "<unk>"
    stepper.refresh()
    assert "chosen token: <unk>" in shown(stepper.numbers.value)
