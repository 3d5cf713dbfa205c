"""The token-shard reader: verification, deterministic batches, resume, ranks, validation, unigram."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from rung.errors import RungError
from rung.interfaces import BatchStream
from rung_pretrain.splits import split_summary
from rung_pretrain.reader import TokenBatches, TokenShards, unigram_loss, validation_batches
from rung_pretrain.shards import ShardWriter

VOCAB, EOS = 50, 0


def write_shards(folder: Path, train_docs, val_docs, max_tokens: int = 1000) -> Path:
    """Shards and a manifest as `prepare` writes them, from lists of token lists."""
    for split, docs in (("train", train_docs), ("validation", val_docs)):
        writer = ShardWriter(folder / split, 0, VOCAB, "hash", max_tokens=max_tokens)
        for doc in docs:
            writer.add(list(doc) + [EOS])
        writer.close()
    manifest = {"format": 1, "dtype": "<u2", "tokenizer": {"vocab_size": VOCAB, "eos_id": EOS, "dir": "tokenizer"},
                "splits": {s: split_summary(folder / s) for s in ("train", "validation")}}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


@pytest.fixture
def shards(tmp_path):
    rng = np.random.default_rng(0)
    train = [rng.integers(1, VOCAB, size=rng.integers(20, 200)).tolist() for _ in range(60)]
    val = [rng.integers(1, VOCAB, size=100).tolist() for _ in range(5)]
    return write_shards(tmp_path / "data", train, val)


def test_shards_open_as_one_stream_across_files(shards):
    train = TokenShards(shards, "train")
    assert len(train.files) > 1  # max_tokens=1000 split it
    assert train.num_documents == 60 and train.dtype == np.uint16
    boundary = int(train.starts[1])
    joined = np.concatenate([np.asarray(a) for a in train.arrays])
    assert np.array_equal(train.take(boundary - 3, 7), joined[boundary - 3 : boundary + 4])


def test_batches_are_shifted_windows_deterministic_and_resumable(shards):
    stream = TokenBatches(shards, batch_size=4, seq_len=16, seed=7)
    assert isinstance(stream, BatchStream)
    first = [next(stream) for _ in range(5)]
    batch = first[0]
    assert batch["input_ids"].shape == (4, 16) and batch["input_ids"].dtype == np.int64
    assert np.array_equal(batch["input_ids"][:, 1:], batch["targets"][:, :-1])  # labels = next tokens
    again = TokenBatches(shards, batch_size=4, seq_len=16, seed=7)
    assert all(np.array_equal(a["input_ids"], b["input_ids"]) for a, b in zip(first, [next(again) for _ in range(5)]))
    other_seed = next(TokenBatches(shards, batch_size=4, seq_len=16, seed=8))
    assert not np.array_equal(other_seed["input_ids"], batch["input_ids"])

    state = json.loads(json.dumps(stream.state_dict()))  # checkpoints store JSON
    expected = [next(stream) for _ in range(3)]
    resumed = TokenBatches(shards, batch_size=4, seq_len=16, seed=7)
    resumed.load_state_dict(state)
    assert all(np.array_equal(a["targets"], b["targets"]) for a, b in zip(expected, [next(resumed) for _ in range(3)]))


def test_ranks_see_different_data(shards):
    r0 = next(TokenBatches(shards, 4, 16, seed=1, rank=0, world_size=2))
    r1 = next(TokenBatches(shards, 4, 16, seed=1, rank=1, world_size=2))
    assert not np.array_equal(r0["input_ids"], r1["input_ids"])


def test_sequential_packing_covers_the_stream_in_order_per_rank(shards):
    train = TokenShards(shards, "train")
    seq = 16
    windows = (train.num_tokens - 1) // seq
    seen = []
    for rank in range(2):
        stream = TokenBatches(shards, 4, seq, sampling="sequential", rank=rank, world_size=2)
        for _ in range(math.ceil(len(range(rank, windows, 2)) / 4)):
            seen.extend(int(s) for s in stream.starts(stream.step))
            next(stream)
    assert sorted(set(seen)) == [w * seq for w in range(windows)]
    stream = TokenBatches(shards, 2, seq, sampling="sequential")
    b = next(stream)
    assert np.array_equal(b["input_ids"][0], train.take(0, seq)) and np.array_equal(
        b["input_ids"][1], train.take(seq, seq)
    )


def test_validation_batches_are_fixed_and_spread(shards):
    a = validation_batches(shards, batch_size=2, seq_len=16, max_batches=3)
    b = validation_batches(shards, batch_size=2, seq_len=16, max_batches=3)
    assert len(a) == 3 and all(np.array_equal(x["input_ids"], y["input_ids"]) for x, y in zip(a, b))
    everything = validation_batches(shards, batch_size=2, seq_len=16)
    assert len(everything) == ((505 - 1) // 16) // 2


def test_unigram_loss_matches_a_hand_computation(shards):
    train = np.concatenate([np.asarray(a) for a in TokenShards(shards, "train").arrays]).astype(np.int64)
    val = np.concatenate([np.asarray(a) for a in TokenShards(shards, "validation").arrays]).astype(np.int64)
    counts = np.bincount(train, minlength=VOCAB) + 1.0
    expected = -np.mean(np.log(counts[val] / counts.sum()))
    assert unigram_loss(shards) == pytest.approx(expected, rel=1e-9)
    assert unigram_loss(shards) < math.log(VOCAB) + 0.1


def test_truncated_corrupt_or_missing_shards_are_clear_errors(shards):
    stem = sorted((shards / "train").glob("*.tokens"))[1]
    data = stem.read_bytes()
    stem.write_bytes(data[:-6])
    with pytest.raises(RungError, match=rf"{stem.name}: shard is truncated"):
        TokenBatches(shards, 4, 16)
    flipped = bytearray(data)
    flipped[10] ^= 0xFF
    stem.write_bytes(bytes(flipped))
    with pytest.raises(RungError, match=rf"{stem.name}: checksum mismatch"):
        TokenShards(shards, "train")
    TokenShards(shards, "train", verify="sizes")  # sizes alone cannot see it
    stem.unlink()
    with pytest.raises(RungError, match="missing shard file"):
        TokenShards(shards, "train")
    with pytest.raises(RungError, match="run `rung prepare CONFIG` first"):
        TokenShards(shards.parent / "nowhere", "train")


def test_too_little_data_for_a_window_says_so(tmp_path):
    folder = write_shards(tmp_path / "small", [[1, 2, 3]], [[4]])
    with pytest.raises(RungError, match="fewer than seq_len"):
        TokenBatches(folder, 2, 16)
    with pytest.raises(RungError, match="too few for one window"):
        validation_batches(folder, 2, 16)
