"""Unit tests for nemotron_core/data/packing.py: exact bins, validity, lower-bound ratios, errors."""

from __future__ import annotations

import numpy as np
import pytest

from nemotron_core.data.packing import (
    ALGORITHMS,
    pack_sequences,
    packing_lower_bound,
    packing_stats,
    sample_lognormal_lengths,
    truncate_or_reject,
    validate_bins,
)

# ---------------------------------------------------------------------------------------------
# Naive O(n x bins) references: scan every open bin, exactly the textbook definitions.
# ---------------------------------------------------------------------------------------------


def naive_first_fit(order, lengths, pack_size):
    bins, loads = [], []
    for i in order:
        for b, load in enumerate(loads):
            if load + lengths[i] <= pack_size:
                bins[b].append(i)
                loads[b] += lengths[i]
                break
        else:
            bins.append([i])
            loads.append(lengths[i])
    return bins


def naive_best_fit(order, lengths, pack_size):
    bins, loads = [], []
    for i in order:
        best = None
        for b, load in enumerate(loads):
            # strictly fuller wins, so ties keep the lowest bin id
            if load + lengths[i] <= pack_size and (best is None or load > loads[best]):
                best = b
        if best is None:
            bins.append([i])
            loads.append(lengths[i])
        else:
            bins[best].append(i)
            loads[best] += lengths[i]
    return bins


def naive_concatenative(lengths, pack_size):
    bins, load = [], pack_size + 1
    for i, n in enumerate(lengths):
        if load + n > pack_size:
            bins.append([])
            load = 0
        bins[-1].append(i)
        load += n
    return bins


def decreasing_order(lengths):
    return sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))


# ---------------------------------------------------------------------------------------------
# Exact bins on hand-made inputs
# ---------------------------------------------------------------------------------------------

HAND = [4, 4, 2, 7, 10, 2]  # pack_size 10; decreasing order: 4(10) 3(7) 0(4) 1(4) 2(2) 5(2)


@pytest.mark.parametrize(
    "algorithm, expected",
    [
        # 10 -> b0 full; 7 -> b1 (3 free); 4, 4 -> b2 (2 free); 2 -> leftmost fit b1; 2 -> b2
        ("first_fit_decreasing", [[4], [3, 2], [0, 1, 5]]),
        # same until the first 2: the fullest bin that fits is b2 (2 free), then b1 (3 free)
        ("best_fit_decreasing", [[4], [3, 5], [0, 1, 2]]),
        # in order: 4+4+2 = 10; 7; 10; 2 (each next one overflows)
        ("concatenative", [[0, 1, 2], [3], [4], [5]]),
        # permutation(6) with seed 0 is [3, 2, 5, 4, 0, 1]: 7, 2 -> b0 (1 free); 2 -> b1;
        # 10 -> b2; 4, 4 -> b1 (8 then 4 free)
        ("first_fit_shuffle", [[3, 2], [5, 0, 1], [4]]),
    ],
)
def test_exact_bins_on_hand_made_lengths(algorithm, expected):
    assert pack_sequences(HAND, pack_size=10, algorithm=algorithm, seed=0) == expected


def test_first_fit_shuffle_follows_documented_permutation():
    assert np.random.default_rng(0).permutation(6).tolist() == [3, 2, 5, 4, 0, 1]
    rng = np.random.default_rng(11)
    lengths = rng.integers(1, 101, size=300).tolist()
    order = np.random.default_rng(7).permutation(300).tolist()
    got = pack_sequences(lengths, pack_size=100, algorithm="first_fit_shuffle", seed=7)
    assert got == naive_first_fit(order, lengths, 100)


def test_best_fit_ties_go_to_lowest_bin_id():
    # two bins with 4 free after the 6s; the 4 goes to bin 0
    assert pack_sequences([6, 6, 4], pack_size=10, algorithm="best_fit_decreasing") == [[0, 2], [1]]
    # then the fuller bin 0 (2 free) beats bin 1 (4 free); HAND above separates best from first fit
    assert pack_sequences([6, 6, 2, 2], pack_size=10, algorithm="best_fit_decreasing") == [[0, 2, 3], [1]]
    # three bins with 1 free, then the 1s fill them in id order
    assert pack_sequences([9, 9, 9, 1, 1, 1], pack_size=10, algorithm="best_fit_decreasing") == [
        [0, 3],
        [1, 4],
        [2, 5],
    ]


def test_equal_lengths_placed_in_index_order():
    for algorithm in ("first_fit_decreasing", "best_fit_decreasing"):
        assert pack_sequences([3, 3, 3, 3], pack_size=10, algorithm=algorithm) == [[0, 1, 2], [3]]
        assert pack_sequences([1] * 5 + [9], pack_size=10, algorithm=algorithm) == [[5, 0], [1, 2, 3, 4]]


def test_edge_cases():
    for algorithm in ALGORITHMS:
        assert pack_sequences([], pack_size=8, algorithm=algorithm) == []
        assert pack_sequences([8], pack_size=8, algorithm=algorithm) == [[0]]
        assert pack_sequences([1], pack_size=1, algorithm=algorithm) == [[0]]
        assert sorted(pack_sequences([8, 8, 8], pack_size=8, algorithm=algorithm)) == [[0], [1], [2]]
        bins = pack_sequences([1] * 20, pack_size=8, algorithm=algorithm)
        assert [len(b) for b in bins] == [8, 8, 4]
        assert sorted(i for b in bins for i in b) == list(range(20))
    assert pack_sequences(np.array([2, 3], dtype=np.uint16), pack_size=5, algorithm="concatenative") == [
        [0, 1]
    ]


# ---------------------------------------------------------------------------------------------
# Property-style loops: equal to the naive definitions, and valid
# ---------------------------------------------------------------------------------------------


def random_cases(num, seed):
    rng = np.random.default_rng(seed)
    for k in range(num):
        pack_size = int(rng.integers(1, 64))
        n = int(rng.integers(0, 120))
        lengths = rng.integers(1, pack_size + 1, size=n)
        if k % 3 == 1:  # many small items: long runs of equal lengths
            lengths = np.minimum(lengths, rng.integers(1, 4, size=n))
        if k % 3 == 2:  # many items over half a bin
            lengths = np.maximum(lengths, pack_size // 2 + 1)
        yield pack_size, lengths.tolist()


def test_matches_naive_definitions_on_random_inputs():
    checked = 0
    for pack_size, lengths in random_cases(400, seed=1):
        dec = decreasing_order(lengths)
        assert pack_sequences(
            lengths, pack_size=pack_size, algorithm="first_fit_decreasing"
        ) == naive_first_fit(dec, lengths, pack_size)
        assert pack_sequences(
            lengths, pack_size=pack_size, algorithm="best_fit_decreasing"
        ) == naive_best_fit(dec, lengths, pack_size)
        assert pack_sequences(lengths, pack_size=pack_size, algorithm="concatenative") == naive_concatenative(
            lengths, pack_size
        )
        order = np.random.default_rng(3).permutation(len(lengths)).tolist()
        assert pack_sequences(
            lengths, pack_size=pack_size, algorithm="first_fit_shuffle", seed=3
        ) == naive_first_fit(order, lengths, pack_size)
        checked += len(lengths) > 0
    assert checked > 300  # the loop really compared non-trivial inputs


def test_every_index_once_and_no_bin_over_pack_size():
    checked = 0
    for pack_size, lengths in random_cases(300, seed=2):
        lb = packing_lower_bound(lengths, pack_size=pack_size)
        for algorithm in ALGORITHMS:
            bins = pack_sequences(lengths, pack_size=pack_size, algorithm=algorithm, seed=5)
            flat = sorted(i for b in bins for i in b)
            assert flat == list(range(len(lengths)))
            assert all(b and sum(lengths[i] for i in b) <= pack_size for b in bins)
            validate_bins(lengths, bins, pack_size=pack_size)
            assert lb <= len(bins)
            # any-fit algorithms: two bins together always hold more than pack_size
            if algorithm != "concatenative":
                assert len(bins) <= max(1, 2 * -(-sum(lengths) // pack_size) - 1)
            checked += 1
    assert checked == 300 * len(ALGORITHMS)


def test_larger_random_inputs_valid():
    rng = np.random.default_rng(4)
    lengths = np.minimum(rng.geometric(1 / 300, size=20_000), 2048)
    for algorithm in ALGORITHMS:
        bins = pack_sequences(lengths, pack_size=2048, algorithm=algorithm, seed=1)
        validate_bins(lengths, bins, pack_size=2048)


# ---------------------------------------------------------------------------------------------
# The docstring's guarantee on 100k lognormal lengths
# ---------------------------------------------------------------------------------------------


def test_sample_lognormal_lengths_is_the_stated_distribution():
    lengths = sample_lognormal_lengths(100_000, seed=0)
    assert lengths.shape == (100_000,) and lengths.dtype == np.int64
    assert lengths.min() == 16 and lengths.max() == 4096  # clipped at both ends
    assert 390 <= np.median(lengths) <= 410
    assert np.array_equal(lengths, sample_lognormal_lengths(100_000, seed=0))


@pytest.mark.parametrize("data_seed", [0, 1, 2])
def test_bins_within_stated_ratio_of_lower_bound_on_lognormal_100k(data_seed):
    lengths = sample_lognormal_lengths(100_000, seed=data_seed)
    lb = packing_lower_bound(lengths, pack_size=4096)
    assert lb > 14_000  # the bound is the token count here, not a degenerate case
    for algorithm in ("first_fit_decreasing", "best_fit_decreasing"):
        bins = pack_sequences(lengths, pack_size=4096, algorithm=algorithm)
        validate_bins(lengths, bins, pack_size=4096)
        assert len(bins) <= 1.001 * lb, (algorithm, len(bins), lb)
    for seed in (0, 1, 2):
        bins = pack_sequences(lengths, pack_size=4096, algorithm="first_fit_shuffle", seed=seed)
        validate_bins(lengths, bins, pack_size=4096)
        assert len(bins) <= 1.005 * lb, (seed, len(bins), lb)


# ---------------------------------------------------------------------------------------------
# Lower bound, stats, truncation
# ---------------------------------------------------------------------------------------------


def test_packing_lower_bound_exact_values():
    assert packing_lower_bound([6, 6, 6], pack_size=10) == 3  # three items over half a bin
    assert packing_lower_bound([1] * 25, pack_size=10) == 3  # ceil(25 / 10)
    assert packing_lower_bound([5, 5], pack_size=10) == 1  # exactly half is not "over half"
    assert packing_lower_bound([6, 5, 5, 5, 5], pack_size=11) == 3  # 6 > 5.5; ceil(26 / 11) = 3
    assert packing_lower_bound([], pack_size=10) == 0
    assert packing_lower_bound(HAND, pack_size=10) == 3  # ceil(29 / 10)


def test_packing_stats_exact_values():
    bins = pack_sequences(HAND, pack_size=10, algorithm="first_fit_decreasing")
    stats = packing_stats(HAND, bins, pack_size=10)
    assert stats == {
        "pack_size": 10,
        "num_sequences": 6,
        "num_packed_sequences": 3,
        "packing_factor": 2.0,
        "packing_efficiency": 29 / 30,
        "total_tokens": 29,
        "lower_bound": 3,
        "bins_over_lower_bound": 1.0,
    }
    assert packing_stats([], [], pack_size=10)["packing_efficiency"] == 0.0


def test_truncate_or_reject():
    new, num = truncate_or_reject([3, 12, 10, 11], pack_size=10, mode="truncate")
    assert new.tolist() == [3, 10, 10, 10] and num == 2
    new, num = truncate_or_reject([3, 10], pack_size=10, mode="reject")
    assert new.tolist() == [3, 10] and num == 0
    with pytest.raises(ValueError, match=r"sequence 1 has length 12 > pack_size=10 \(2 such"):
        truncate_or_reject([3, 12, 10, 11], pack_size=10, mode="reject")
    with pytest.raises(ValueError, match=r"sequence 2 has length 0"):
        truncate_or_reject([3, 4, 0], pack_size=10, mode="truncate")
    with pytest.raises(ValueError, match="mode must be one of"):
        truncate_or_reject([3], pack_size=10, mode="drop")


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


def test_error_names_index_and_length():
    for algorithm in ALGORITHMS:
        with pytest.raises(ValueError, match=r"sequence 2 has length 11, outside \[1, pack_size=10\]"):
            pack_sequences([1, 10, 11, 12], pack_size=10, algorithm=algorithm)
        with pytest.raises(ValueError, match=r"sequence 1 has length 0"):
            pack_sequences([1, 0], pack_size=10, algorithm=algorithm)
        with pytest.raises(ValueError, match=r"sequence 0 has length -3"):
            pack_sequences([-3], pack_size=10, algorithm=algorithm)
    with pytest.raises(ValueError, match=r"sequence 0 has length 11"):
        packing_lower_bound([11], pack_size=10)


def test_other_errors():
    with pytest.raises(ValueError, match="algorithm must be one of"):
        pack_sequences([1], pack_size=10, algorithm="next_fit")
    with pytest.raises(ValueError, match="pack_size must be a positive integer"):
        pack_sequences([1], pack_size=0, algorithm="concatenative")
    with pytest.raises(TypeError, match="must be integers"):
        pack_sequences([1.5, 2.0], pack_size=10, algorithm="concatenative")
    with pytest.raises(ValueError, match="must be 1-D"):
        pack_sequences([[1, 2]], pack_size=10, algorithm="concatenative")


def test_validate_bins_rejects_bad_packings():
    lengths = [4, 4, 2, 7]
    validate_bins(lengths, [[0, 1, 2], [3]], pack_size=10)
    with pytest.raises(ValueError, match="sequence 3 appears in 0 bins"):
        validate_bins(lengths, [[0, 1, 2]], pack_size=10)
    with pytest.raises(ValueError, match="sequence 0 appears in 2 bins"):
        validate_bins(lengths, [[0, 1, 2], [3, 0]], pack_size=20)
    with pytest.raises(ValueError, match="bin 1 holds 11 tokens > pack_size=10"):
        validate_bins(lengths, [[0, 1], [2, 3, 2]], pack_size=10)
    with pytest.raises(ValueError, match=r"bin 1 holds index 4, outside \[0, 4\)"):
        validate_bins(lengths, [[0, 1], [2, 3, 4]], pack_size=20)
    with pytest.raises(ValueError, match="bin 1 is empty"):
        validate_bins(lengths, [[0, 1, 2, 3], []], pack_size=20)


# ---------------------------------------------------------------------------------------------
# Determinism
# ---------------------------------------------------------------------------------------------


def test_deterministic_for_a_seed_and_shuffle_differs_across_seeds():
    lengths = sample_lognormal_lengths(5_000, seed=3)
    for algorithm in ALGORITHMS:
        a = pack_sequences(lengths, pack_size=4096, algorithm=algorithm, seed=1)
        b = pack_sequences(lengths.tolist(), pack_size=4096, algorithm=algorithm, seed=1)
        assert a == b
    a = pack_sequences(lengths, pack_size=4096, algorithm="first_fit_shuffle", seed=1)
    b = pack_sequences(lengths, pack_size=4096, algorithm="first_fit_shuffle", seed=2)
    assert a != b
    assert sorted(map(sorted, a)) != sorted(map(sorted, b))  # different groupings, not just order
    # seed is read by first_fit_shuffle only
    for algorithm in ("first_fit_decreasing", "best_fit_decreasing", "concatenative"):
        assert pack_sequences(lengths, pack_size=4096, algorithm=algorithm, seed=1) == pack_sequences(
            lengths, pack_size=4096, algorithm=algorithm, seed=2
        )
