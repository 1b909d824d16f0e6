"""Ensemble arithmetic and member selection, on planted softmaxes whose right answer is known."""

from __future__ import annotations

import itertools

import pytest
import torch

from tuner.lastmile.ensemble import combine_probabilities
from tuner.lastmile.selection import accuracy, greedy_select, log_loss, split_halves


def one_hot_ish(predicted: list[int], classes: int, confidence: float = 0.7) -> torch.Tensor:
    probs = torch.full((len(predicted), classes), (1 - confidence) / (classes - 1))
    probs[torch.arange(len(predicted)), torch.tensor(predicted)] = confidence
    return probs


def test_geometric_and_arithmetic_means_follow_their_formulas():
    a = torch.tensor([[0.7, 0.2, 0.1]])
    b = torch.tensor([[0.1, 0.6, 0.3]])
    stacked = torch.stack([a, b])
    arithmetic = combine_probabilities(stacked, torch.tensor([1.0, 1.0]), "arithmetic")
    assert torch.allclose(arithmetic, (a + b) / 2)
    geometric = combine_probabilities(stacked, torch.tensor([1.0, 1.0]), "geometric")
    expected = (a * b).sqrt() / (a * b).sqrt().sum()
    assert torch.allclose(geometric, expected, atol=1e-6)
    weighted = combine_probabilities(stacked, torch.tensor([3.0, 1.0]), "geometric")
    expected = a ** 0.75 * b ** 0.25
    assert torch.allclose(weighted, expected / expected.sum(), atol=1e-6)
    assert torch.allclose(geometric.sum(dim=1), torch.ones(1))


def test_a_confident_zero_vetoes_a_class_only_in_the_geometric_mean():
    a = torch.tensor([[0.5, 0.5, 0.0]])
    b = torch.tensor([[0.0, 0.4, 0.6]])
    stacked = torch.stack([a, b])
    assert combine_probabilities(stacked, torch.ones(2), "geometric").argmax().item() == 1
    assert combine_probabilities(stacked, torch.ones(2), "arithmetic").argmax().item() == 1
    assert torch.isfinite(combine_probabilities(stacked, torch.ones(2), "geometric")).all()


def planted_candidates():
    """Four candidates on 12 images of 3 classes: 0 is right on 9 (the best alone), 1 and 2 on 8
    each, and no image is missed by two of them; 3 is right on 4. Together 0+1+2 are right on all
    12 (two of three agree on the truth everywhere)."""
    labels = torch.tensor([0, 1, 2] * 4)
    truth = labels.tolist()

    def wrong_at(positions):
        return [(t + 1) % 3 if i in positions else t for i, t in enumerate(truth)]

    preds = [wrong_at({0, 1, 2}), wrong_at({3, 4, 5, 6}), wrong_at({7, 8, 9, 10}),
             wrong_at(set(range(8)))]
    return torch.stack([one_hot_ish(p, 3) for p in preds]), labels


def brute_force_greedy(probs, labels, k, combine):
    """The greedy rule written out independently: each step, every candidate not yet in is tried,
    the highest accuracy wins, then the lower log-loss, then the lower index."""
    picks = []
    for _ in range(k):
        best = None
        for c in range(probs.shape[0]):
            if c in picks:
                continue
            combined = combine_probabilities(probs[picks + [c]], torch.ones(len(picks) + 1), combine)
            key = (-accuracy(combined, labels), log_loss(combined, labels), c)
            best = key if best is None or key < best else best
        picks.append(best[2])
    return picks


@pytest.mark.parametrize("combine", ["geometric", "arithmetic"])
def test_greedy_selection_is_the_greedy_rule_and_beats_the_best_member(combine):
    probs, labels = planted_candidates()
    chosen = greedy_select(probs, labels, 3, combine=combine)
    assert chosen.picks == brute_force_greedy(probs, labels, 3, combine)
    assert chosen.picks[0] == 0  # the best single candidate starts the ensemble
    assert sorted(chosen.picks) == [0, 1, 2]  # the weak candidate 3 is never taken
    combined = combine_probabilities(probs[chosen.picks], torch.ones(3), combine)
    assert accuracy(combined, labels) == 1.0 > accuracy(probs[0], labels)
    assert chosen.weights == {0: pytest.approx(1 / 3), 1: pytest.approx(1 / 3), 2: pytest.approx(1 / 3)}
    assert [s["accuracy"] for s in chosen.steps][-1] == 1.0


def test_with_replacement_a_strong_member_can_count_twice():
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    strong = one_hot_ish([0, 1, 2, 0, 1, 1], 3, 0.9)
    weak = one_hot_ish([1, 2, 0, 1, 2, 0], 3, 0.9)  # wrong everywhere
    probs = torch.stack([weak, strong])
    chosen = greedy_select(probs, labels, 3, replacement=True)
    assert chosen.picks == [1, 1, 1] and chosen.weights == {1: 1.0}
    with pytest.raises(ValueError, match="cannot pick 3 distinct members from 2"):
        greedy_select(probs, labels, 3)


def test_diverse_takes_an_unseen_architecture_first():
    probs, labels = planted_candidates()
    archs = ["resnet18", "resnet18", "resnet18", "densenet121"]
    chosen = greedy_select(probs, labels, 2, archs=archs)
    assert chosen.picks == [0, 3]  # the weak densenet is the only other architecture
    assert greedy_select(probs, labels, 2).picks[1] != 3


def test_halves_split_every_class_evenly_and_stably():
    paths = [f"/val/{c}/{i:03d}.jpg" for c in "abc" for i in range(11)]
    labels = [ord(p.split("/")[2]) - ord("a") for p in paths]
    select, report = split_halves(paths, labels)
    assert sorted(select + report) == list(range(len(paths))) and not set(select) & set(report)
    for label in range(3):
        counts = [sum(labels[i] == label for i in half) for half in (select, report)]
        assert abs(counts[0] - counts[1]) <= 1
    # The listing order and the folder's location do not matter: the same files split the same way.
    order = list(reversed(range(len(paths))))
    moved = [paths[i].replace("/val/", "/elsewhere/val/") for i in order]
    select2, _ = split_halves(moved, [labels[i] for i in order])
    assert sorted(paths[order[i]] for i in select2) == sorted(paths[i] for i in select)
    # Not the trivial alternation of the listing order.
    assert select != list(itertools.islice(range(0, len(paths), 2), len(select)))


def test_log_loss_selection_can_prefer_a_less_accurate_but_honest_member():
    labels = torch.tensor([0, 1, 2, 0])
    overconfident = one_hot_ish([0, 1, 2, 1], 3, 0.99)  # 3 of 4 right, but sure of its miss
    modest = one_hot_ish([0, 1, 0, 1], 3, 0.5)  # 2 of 4 right, never sure
    probs = torch.stack([overconfident, modest])
    assert log_loss(modest, labels) < log_loss(overconfident, labels)
    assert greedy_select(probs, labels, 1).picks == [0]
    by_loss = greedy_select(probs, labels, 1, select_by="log-loss")
    assert by_loss.picks == [1] and by_loss.steps[0]["log_loss"] == pytest.approx(log_loss(modest, labels))
    with pytest.raises(ValueError, match="select_by must be one of accuracy, log-loss"):
        greedy_select(probs, labels, 1, select_by="auc")


def test_members_with_other_classes_cannot_be_combined():
    from types import SimpleNamespace

    from tuner.errors import UserError
    from tuner.lastmile.ensemble import Ensemble, Member

    def member(trial, names):
        return Member(SimpleNamespace(class_names=names), trial=trial)

    cats = ["bird", "cat", "dog"]
    Ensemble([member("a", cats), member("b", list(cats))])  # same classes, same order: fine
    with pytest.raises(UserError, match=r"member c: its classes differ from a's \(missing \['dog'\], extra \['fox'\]\)"):
        Ensemble([member("a", cats), member("b", cats), member("c", ["bird", "cat", "fox"])])
    with pytest.raises(UserError, match="same classes in another order"):
        Ensemble([member("a", cats), member("d", ["cat", "bird", "dog"])])
