"""Synthetic symmetric noise and the stratified validation split."""

import numpy as np
import pytest

from scn.data.noise import stratified_split, symmetric_noise


def test_noise_flips_exact_count_to_other_classes_deterministically():
    labels = np.repeat(np.arange(7), 100)
    noisy, flipped = symmetric_noise(labels, 0.3, seed=1, num_classes=7)
    assert flipped.sum() == 210
    assert np.all(noisy[flipped] != labels[flipped])
    assert np.all(noisy[~flipped] == labels[~flipped])
    again, flipped_again = symmetric_noise(labels, 0.3, seed=1, num_classes=7)
    assert np.array_equal(noisy, again) and np.array_equal(flipped, flipped_again)
    other, _ = symmetric_noise(labels, 0.3, seed=2, num_classes=7)
    assert not np.array_equal(noisy, other)


def test_noise_targets_are_uniform_over_the_other_classes():
    labels = np.zeros(60000, dtype=np.int64)
    noisy, flipped = symmetric_noise(labels, 0.5, seed=0, num_classes=7)
    counts = np.bincount(noisy[flipped], minlength=7)
    assert counts[0] == 0
    # 30000 draws over 6 classes: 5000 each, std ~65
    assert np.all(np.abs(counts[1:] - 5000) < 300)


def test_noise_rate_edges():
    labels = np.arange(10) % 7
    assert symmetric_noise(labels, 0.0, 0, 7)[1].sum() == 0
    assert symmetric_noise(labels, 1.0, 0, 7)[1].sum() == 10
    with pytest.raises(Exception, match="dataset.noise.rate"):
        symmetric_noise(labels, 1.5, 0, 7)


def test_stratified_split_holds_out_round_fraction_of_each_class():
    labels = np.array([0] * 50 + [1] * 30 + [2] * 7)
    keep, held = stratified_split(labels, 0.2, seed=0)
    assert np.bincount(labels[held]).tolist() == [10, 6, 1]
    assert len(np.intersect1d(keep, held)) == 0 and len(keep) + len(held) == len(labels)
    assert np.array_equal(held, stratified_split(labels, 0.2, seed=0)[1])
    assert not np.array_equal(held, stratified_split(labels, 0.2, seed=1)[1])
