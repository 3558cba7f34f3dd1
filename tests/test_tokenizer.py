"""The word-level tokenizer: fixed ids, round trips, special tokens, save/load."""

from __future__ import annotations

import pytest

from tinyformer import data
from tinyformer.data import Corpus
from tinyformer.tokenizer import EOS, PAD, SPECIAL_TOKENS, UNK, build_tokenizer, load_tokenizer


@pytest.fixture(scope="module")
def text() -> str:
    return Corpus(seed=7).text(200)


def test_encode_decode_round_trip(tokenizer, text):
    ids = tokenizer.encode(text)
    assert len(ids) == len(text.split())  # one word, one token, nothing added
    assert tokenizer.decode(ids) == text
    assert tokenizer.unk_token_id not in ids


def test_ids_are_fixed(tokenizer):
    expected = {token: i for i, token in enumerate(SPECIAL_TOKENS + data.vocabulary())}
    assert tokenizer.get_vocab() == expected
    assert build_tokenizer().get_vocab() == expected  # a second build gives the same table
    assert len(tokenizer) == 55
    assert tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<pad>", "<unk>", "the", "."]) == [0, 1, 2, 3, 4]


def test_special_tokens(tokenizer):
    assert (tokenizer.eos_token, tokenizer.bos_token, tokenizer.pad_token, tokenizer.unk_token) == (EOS, EOS, PAD, UNK)
    ids = (tokenizer.eos_token_id, tokenizer.bos_token_id, tokenizer.pad_token_id, tokenizer.unk_token_id)
    assert ids == (0, 0, 1, 2)
    assert tokenizer.decode([0, 3, 1], skip_special_tokens=True) == "the"


def test_unknown_word_is_unk(tokenizer):
    assert tokenizer.encode("the zebra sleeps .") == tokenizer.convert_tokens_to_ids(["the", UNK, "sleeps", "."])


def test_custom_words_and_max_length():
    tokenizer = build_tokenizer(["b", "a"], model_max_length=32)
    assert tokenizer.get_vocab() == {EOS: 0, PAD: 1, UNK: 2, "b": 3, "a": 4}
    assert tokenizer.model_max_length == 32


def test_duplicate_word_error():
    with pytest.raises(ValueError, match=r"the vocabulary repeats \['a', 'c'\]; give each word once"):
        build_tokenizer(["a", "b", "a", "c", "c"])


def test_word_equal_to_a_special_token_is_an_error():
    with pytest.raises(ValueError, match="<pad>"):
        build_tokenizer(["<pad>", "x"])


def test_save_pretrained_and_load_round_trip(tokenizer, text, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    loaded = load_tokenizer(tmp_path)
    assert loaded.get_vocab() == tokenizer.get_vocab()
    assert loaded.encode(text) == tokenizer.encode(text)
    assert loaded.decode(loaded.encode(text)) == text
    assert loaded.special_tokens_map == tokenizer.special_tokens_map
    assert (loaded.eos_token_id, loaded.pad_token_id, loaded.unk_token_id) == (0, 1, 2)
    assert loaded.encode("the zebra") == [3, 2]


def test_load_from_a_folder_without_tokenizer(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no tokenizer\.json in .*save_pretrained"):
        load_tokenizer(tmp_path)
