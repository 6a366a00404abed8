"""Partitioners: every record lands where it should, exactly once; keys are stable across
splitters, upstream replicas and processes; key groups and rebalance spread load evenly."""

from __future__ import annotations

import os
import pickle
from collections import Counter
from operator import attrgetter, itemgetter
from types import SimpleNamespace

import mmh3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import partitioning
from engine.errors import DagError, RecordError
from engine.records import Tick
from partitioning import (
    Broadcast,
    Forward,
    KeyHash,
    Partitioner,
    Rebalance,
    Splitter,
    check_parallelism,
    from_spec,
    key_bytes,
    key_group,
    replica_for,
)
from partitioning import keyhash as keyhash_module

# No deadline: a loaded 2-core CI machine must not turn a slow example into a failure.
relaxed = settings(deadline=None)

symbols = st.text(max_size=6)
keys = st.recursive(
    st.one_of(st.text(max_size=6), st.binary(max_size=6), st.integers(), st.booleans()),
    lambda parts: st.tuples(parts, parts),
    max_leaves=4,
)


def symbol_of(record: Tick) -> str:
    return record.symbol


def ticks(names: list[str]) -> list[Tick]:
    """One tick per name; ``ts`` is the position in the batch, so it identifies a record."""
    return [Tick(name, ts, 1.0, 1.0) for ts, name in enumerate(names)]


def flatten(groups: list[tuple[int, list]]) -> list:
    return [record for _, group in groups for record in group]


# -- the public surface ------------------------------------------------------------------


def test_public_names():
    assert sorted(partitioning.__all__) == sorted(
        [
            "DEFAULT_MAX_PARALLELISM",
            "Broadcast",
            "Forward",
            "KeyHash",
            "Partitioner",
            "Rebalance",
            "Splitter",
            "check_parallelism",
            "from_spec",
            "key_bytes",
            "key_group",
            "replica_for",
        ]
    )
    for name in partitioning.__all__:
        assert hasattr(partitioning, name), name


CONFIGS = [
    Forward(),
    Rebalance(),
    Broadcast(),
    KeyHash("symbol"),
    KeyHash("symbol", max_parallelism=256, seed=7),
    KeyHash(symbol_of),
    KeyHash(attrgetter("symbol")),
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.describe())
def test_configs_pickle_and_build_the_same_splitter(config: Partitioner):
    clone = pickle.loads(pickle.dumps(config))
    assert repr(clone) == repr(config)  # attrgetters pickle faithfully but do not compare equal
    assert clone.describe() == config.describe()
    assert clone.all_to_all == config.all_to_all
    batch = ticks([f"S{i % 37}" for i in range(500)])
    splitter = config.build(4, 1)
    assert isinstance(splitter, Splitter)
    assert clone.build(4, 1).split(batch) == splitter.split(batch)


def test_descriptions():
    assert Forward().describe() == "forward"
    assert Rebalance().describe() == "rebalance"
    assert Broadcast().describe() == "broadcast"
    assert KeyHash("symbol").describe() == "key_hash(symbol)"
    assert (
        KeyHash("symbol", max_parallelism=256, seed=7).describe()
        == "key_hash(symbol, max_parallelism=256, seed=7)"
    )
    assert (
        KeyHash(symbol_of)
        .describe()
        .startswith("key_hash(<function symbol_of at test_partitioning.py:")
    )
    assert KeyHash(itemgetter(0)).describe() == "key_hash(operator.itemgetter(0))"


def test_from_spec():
    assert from_spec("forward") == Forward()
    assert from_spec("rebalance") == Rebalance()
    assert from_spec("broadcast") == Broadcast()
    keyed = KeyHash("symbol")
    assert from_spec(keyed) is keyed


def test_only_forward_is_one_to_one():
    assert Forward().all_to_all is False
    assert all(c.all_to_all for c in CONFIGS if not isinstance(c, Forward))


# -- forward and broadcast -----------------------------------------------------------------


def test_forward_keeps_the_replica_and_the_list():
    batch = ticks(["a", "b"])
    assert Forward().build(3, 2).split(batch) == [(2, batch)]
    assert Forward().build(3, 2).split(batch)[0][1] is batch
    assert Forward().build(3, 2).split([]) == []


@relaxed
@given(names=st.lists(symbols, max_size=50), parallelism=st.integers(1, 16))
def test_broadcast_sends_everything_everywhere(names, parallelism):
    batch = ticks(names)
    groups = Broadcast().build(parallelism, 0).split(batch)
    if not batch:
        assert groups == []
    else:
        assert [replica for replica, _ in groups] == list(range(parallelism))
        assert all(group == batch for _, group in groups)


# -- rebalance -------------------------------------------------------------------------------


@relaxed
@given(
    parallelism=st.integers(1, 16),
    upstream=st.integers(0, 20),
    sizes=st.lists(st.integers(0, 60), max_size=40),
)
def test_rebalance_is_contiguous_and_even_at_every_batch(parallelism, upstream, sizes):
    splitter = Rebalance().build(parallelism, upstream)
    sent = [0] * parallelism
    first = upstream % parallelism
    serial = 0
    for size in sizes:
        batch = list(range(serial, serial + size))
        serial += size
        groups = splitter.split(batch)
        assert flatten(groups) == batch  # contiguous chunks, in order, each record once
        replicas = [replica for replica, _ in groups]
        assert len(set(replicas)) == len(replicas) == min(size, parallelism)
        assert all(0 <= r < parallelism for r in replicas)
        lengths = [len(group) for _, group in groups]
        assert not lengths or max(lengths) - min(lengths) <= 1
        for replica, group in groups:
            sent[replica] += len(group)
        assert max(sent) - min(sent) <= 1, sent
        if size:
            # per-record round robin from `first` would have sent the same counts
            expected = [0] * parallelism
            for i in range(serial):
                expected[(first + i) % parallelism] += 1
            assert sent == expected


def test_rebalance_sends_one_record_batches_to_each_replica_in_turn():
    splitter = Rebalance().build(4, 1)
    assert [splitter.split([i])[0][0] for i in range(9)] == [1, 2, 3, 0, 1, 2, 3, 0, 1]


def test_rebalance_spreads_tiny_and_large_batches_evenly():
    splitter = Rebalance().build(5, 0)
    sent = Counter()
    for size in [1, 2, 1, 3, 1000, 1, 7, 1, 4] * 200:
        for replica, group in splitter.split(list(range(size))):
            sent[replica] += len(group)
    assert max(sent.values()) - min(sent.values()) <= 1


# -- key hash ---------------------------------------------------------------------------------


@relaxed
@given(
    names=st.lists(symbols, max_size=200),
    parallelism=st.integers(1, 32),
    upstream=st.integers(0, 4),
)
def test_key_hash_places_each_record_once_by_its_key_in_order(names, parallelism, upstream):
    batch = ticks(names)
    groups = KeyHash("symbol").build(parallelism, upstream).split(batch)
    assert sorted(r.ts for r in flatten(groups)) == list(range(len(batch)))
    assert len({replica for replica, _ in groups}) == len(groups)
    for replica, group in groups:
        assert group, "empty groups are left out"
        assert [r.ts for r in group] == sorted(r.ts for r in group)  # batch order kept
        for record in group:
            assert replica == replica_for(record.symbol, parallelism)


@relaxed
@given(batch_keys=st.lists(keys, max_size=50), parallelism=st.integers(1, 128))
def test_any_key_type_lands_where_replica_for_says(batch_keys, parallelism):
    batch = [(key, i) for i, key in enumerate(batch_keys)]
    splitter = KeyHash(itemgetter(0)).build(parallelism, 0)
    for _ in range(2):  # cold cache, then warm
        groups = splitter.split(batch)
        assert sorted(flatten(groups), key=itemgetter(1)) == batch
        for replica, group in groups:
            for key, _ in group:
                assert replica == replica_for(key, parallelism)
                assert replica == key_group(key) * parallelism // 128


@relaxed
@given(names=st.lists(symbols, min_size=1, max_size=100), parallelism=st.integers(1, 16))
def test_same_key_same_replica_across_splitters_and_upstream_replicas(names, parallelism):
    batch = ticks(names)
    placements = []
    for upstream in (0, 3, 7):
        for config in (
            KeyHash("symbol"),
            KeyHash(symbol_of),
            pickle.loads(pickle.dumps(KeyHash("symbol"))),
        ):
            groups = config.build(parallelism, upstream).split(batch)
            placements.append({r.symbol: replica for replica, g in groups for r in g})
    assert all(p == placements[0] for p in placements)


def test_dotted_attribute_key():
    batch = [SimpleNamespace(quote=tick) for tick in ticks(["AAPL", "MSFT", "AAPL"])]
    groups = KeyHash("quote.symbol").build(4, 0).split(batch)
    for replica, group in groups:
        assert all(replica == replica_for(r.quote.symbol, 4) for r in group)
    assert sorted(r.quote.ts for r in flatten(groups)) == [0, 1, 2]


def test_key_encoding():
    assert key_bytes("AAPL") == b"AAPL"
    assert key_bytes("é") == "é".encode()
    assert key_bytes(b"\x00\xff") == b"\x00\xff"
    assert key_bytes(-42) == b"-42"
    assert key_bytes(True) == key_bytes(1) == b"1"  # bools hash as the ints they equal
    assert key_bytes(("AAPL", 7, b"x")) == b"AAPL\x1f7\x1fx"
    assert key_bytes((("a", 1), "b")) == b"a\x1f1\x1fb"
    assert key_group("AAPL") == mmh3.hash(b"AAPL", 0, signed=False) % 128


def test_key_groups_are_pinned():
    """Changing these moves every key to another key group: saved state would be lost."""
    assert [key_group(k) for k in ["AAPL", "MSFT", "BTC-USD", "", 0, -42]] == [
        7,
        104,
        123,
        0,
        127,
        63,
    ]
    assert key_group(("AAPL", "NASDAQ")) == 10
    assert key_group("AAPL", max_parallelism=256, seed=7) == 144
    assert [replica_for(k, 4) for k in ["AAPL", "MSFT", "BTC-USD", -42]] == [0, 3, 3, 1]


PROBE_KEYS = ["AAPL", "MSFT", "BTC-USD", "é", b"raw", 12345, ("AAPL", "NASDAQ"), True]


def _placements() -> tuple[list[int], list[int]]:
    replicas = [replica_for(k, 7) for k in PROBE_KEYS]
    groups = [key_group(k, max_parallelism=1000, seed=99) for k in PROBE_KEYS]
    return replicas, groups


def _placements_in_child(conn) -> None:
    conn.send((*_placements(), hash("AAPL")))
    conn.close()


def test_same_replica_in_a_fresh_process_with_another_hash_seed(spawn, monkeypatch):
    seed = "2" if os.environ.get("PYTHONHASHSEED") == "1" else "1"
    # a spawned interpreter reads PYTHONHASHSEED at start: the child salts str hashes otherwise
    monkeypatch.setenv("PYTHONHASHSEED", seed)
    receiver, sender = spawn.Pipe(duplex=False)
    child = spawn.Process(target=_placements_in_child, args=(sender,), daemon=True)
    child.start()
    try:
        sender.close()
        assert receiver.poll(60), "the child sent nothing within 60 s"
        replicas, groups, child_hash = receiver.recv()
    finally:
        child.join(timeout=60)
        if child.is_alive():
            child.kill()
            child.join(timeout=10)
        receiver.close()
    assert child.exitcode == 0
    assert child_hash != hash("AAPL"), "the child should have salted str hashes differently"
    assert (replicas, groups) == _placements()


def test_key_groups_spread_evenly():
    counts = Counter(key_group(f"SYM{i}") for i in range(100_000))
    expected = 100_000 / 128
    assert len(counts) == 128
    assert min(counts.values()) > 600 and max(counts.values()) < 980
    chi_square = sum((c - expected) ** 2 / expected for c in counts.values())
    assert chi_square < 250  # 127 degrees of freedom: mean 127, sd 16


@pytest.mark.parametrize("parallelism", [1, 2, 3, 5, 7, 64, 127, 128])
def test_every_replica_owns_a_contiguous_range_of_key_groups(parallelism):
    owners = [group * parallelism // 128 for group in range(128)]
    assert owners == sorted(owners)
    assert set(owners) == set(range(parallelism))
    sizes = Counter(owners).values()
    assert max(sizes) - min(sizes) <= 1


def test_cache_is_cleared_when_full(monkeypatch):
    monkeypatch.setattr(keyhash_module, "CACHE_LIMIT", 10)
    splitter = KeyHash("symbol").build(8, 0)
    batch = ticks([f"S{i}" for i in range(100)] * 3)
    groups = splitter.split(batch)
    assert len(splitter._cache) <= 10
    for replica, group in groups:
        assert all(replica == replica_for(r.symbol, 8) for r in group)
    assert sorted(r.ts for r in flatten(groups)) == list(range(300))


# -- errors -----------------------------------------------------------------------------------


def test_unsupported_key_type_names_type_record_and_fix():
    splitter = KeyHash("price").build(4, 0)
    with pytest.raises(
        RecordError,
        match=r"key_hash\(price\), record Tick\(.*of type Tick: cannot hash a key of type float "
        r"\(1\.5\); keys must be str, bytes, int or tuples of those\. Convert it",
    ):
        splitter.split([Tick("AAPL", 0, 1.5, 1.0)])


def test_bad_part_of_a_tuple_key_is_named():
    with pytest.raises(RecordError, match=r"type float \(2\.5\) in the tuple key \('a', 2\.5\)"):
        key_bytes(("a", 2.5))
    with pytest.raises(RecordError, match=r"type NoneType"):
        key_group(None)


def test_unhashable_key():
    splitter = KeyHash(itemgetter(0)).build(4, 0)
    with pytest.raises(RecordError, match=r"the key \['a'\] cannot be hashed.*list to a tuple"):
        splitter.split([("x", 0), (["a"], 1)])


def test_missing_key_attribute():
    with pytest.raises(RecordError, match=r"key_hash\(sym\), record .* no key attribute"):
        KeyHash("sym").build(2, 0).split(ticks(["a"]))


def _fails(record):
    raise ValueError("boom")


def _missing(record):
    return {}[record]


def _type_error(record):
    return len(record)


def test_key_function_errors_are_the_users():
    with pytest.raises(ValueError, match="boom"):
        KeyHash(_fails).build(2, 0).split([1])
    with pytest.raises(KeyError):
        KeyHash(_missing).build(2, 0).split([1])
    with pytest.raises(TypeError, match="has no len"):
        KeyHash(_type_error).build(2, 0).split([1])


def test_parallelism_above_max_parallelism_says_how_to_fix():
    with pytest.raises(
        DagError,
        match=r"key_hash\(symbol\): downstream parallelism 200 is more than max_parallelism 128"
        r".*raise max_parallelism, e\.g\. KeyHash\(\.\.\., max_parallelism=256\)",
    ):
        KeyHash("symbol").build(200, 0)
    KeyHash("symbol", max_parallelism=256).build(200, 0)
    with pytest.raises(DagError, match="more than max_parallelism 128"):
        replica_for("AAPL", 129)


@pytest.mark.parametrize("config", [Forward(), Rebalance(), Broadcast(), KeyHash("symbol")])
@pytest.mark.parametrize("parallelism", [0, -1, True, 2.0, "2"])
def test_bad_parallelism(config, parallelism):
    with pytest.raises(DagError, match=r"downstream parallelism must be an int >= 1, got"):
        config.build(parallelism, 0)


def test_bad_upstream_replica():
    with pytest.raises(DagError, match=r"rebalance: upstream replica must be an int >= 0, got -1"):
        Rebalance().build(2, -1)
    with pytest.raises(DagError, match=r"forward: upstream replica 2 has no downstream replica 2"):
        Forward().build(2, 2)
    check_parallelism(3, 2)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: KeyHash(42), r"key must be an attribute name .* got 42 \(int\)"),
        (lambda: KeyHash(""), r"attribute name is empty.*KeyHash\('symbol'\)"),
        (lambda: KeyHash("sym bol"), r"key 'sym bol' is not an attribute name"),
        (lambda: KeyHash("quote..symbol"), r"not an attribute name .*dotted identifiers"),
        (lambda: KeyHash("class"), r"key 'class' is not an attribute name"),
        (lambda: KeyHash("symbol", max_parallelism=0), r"max_parallelism must be an int in"),
        (lambda: KeyHash("symbol", max_parallelism=1 << 16), r"in \[1, 32768\], got 65536"),
        (lambda: KeyHash("symbol", seed=-1), r"seed must be an int in \[0, 2\*\*32\), got -1"),
        (lambda: KeyHash("symbol", seed=1 << 32), r"seed must be an int"),
    ],
)
def test_bad_key_hash_config(make, message):
    with pytest.raises(DagError, match=message):
        make()


def test_unknown_spec():
    with pytest.raises(
        DagError,
        match=r"unknown partitioner 'key_hash'; valid names: 'forward', 'rebalance', "
        r"'broadcast'\. A keyed edge needs its key: pass KeyHash\('symbol'\)",
    ):
        from_spec("key_hash")
    with pytest.raises(
        DagError, match=r"Rebalance is a class; pass an instance, e\.g\. Rebalance\(\)"
    ):
        from_spec(Rebalance)  # type: ignore[arg-type]
    with pytest.raises(DagError, match=r"got 3 \(int\)"):
        from_spec(3)  # type: ignore[arg-type]
