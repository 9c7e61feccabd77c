"""Pure sampling functions against brute-force references."""

import torch

from opdlm.sampling.logits import filter_top_k_top_p, sample_tokens
from opdlm.sampling.remasking import block_progress, select_commits, transfer_schedule


def test_transfer_schedule():
    assert transfer_schedule(4, 4) == [1, 1, 1, 1]
    assert transfer_schedule(4, 3) == [2, 1, 1]
    assert transfer_schedule(8, 3) == [3, 3, 2]
    for B in range(1, 9):
        for s in range(1, B + 1):
            assert sum(transfer_schedule(B, s)) == B


def test_top_p_matches_brute_force():
    logits = torch.randn(6, 11, generator=torch.Generator().manual_seed(0))
    for p in (0.3, 0.6, 0.9):
        out = filter_top_k_top_p(logits, top_p=p)
        for row, orow in zip(logits, out):
            probs = torch.softmax(row, -1)
            order = torch.argsort(probs, descending=True)
            keep, mass = set(), 0.0
            for idx in order.tolist():
                keep.add(idx)
                mass += probs[idx].item()
                if mass >= p:
                    break
            assert {i for i in range(11) if orow[i] > float("-inf")} == keep


def test_top_k_keeps_k():
    logits = torch.randn(3, 20)
    out = filter_top_k_top_p(logits, top_k=5)
    assert ((out > float("-inf")).sum(-1) == 5).all()


def test_greedy_confidence_is_untempered_probability():
    logits = torch.tensor([[2.0, 1.0, 0.0, 5.0]])
    tok, conf = sample_tokens(logits, 0.0, forbidden_ids=(3,))
    assert tok.item() == 0
    assert torch.isclose(conf, torch.softmax(torch.tensor([2.0, 1.0, 0.0]), -1)[0])


def test_select_commits_static_and_dynamic():
    conf = torch.tensor([[0.2, 0.95, 0.5, 0.91]])
    todo = torch.tensor([[True, True, True, False]])
    static = select_commits(conf, todo, torch.tensor([1]), "static", 0.9)
    assert static.tolist() == [[False, True, False, False]]
    static2 = select_commits(conf, todo, torch.tensor([2]), "static", 0.9)
    assert static2.tolist() == [[False, True, True, False]]
    dyn = select_commits(conf, todo, torch.tensor([1]), "dynamic", 0.4)
    assert dyn.tolist() == [[False, True, True, False]]  # 0.91 is not todo
    # quota larger than what is left is clamped
    assert select_commits(conf, todo, torch.tensor([9]), "static", 0.9).sum() == 3


def test_block_progress_stops_at_first_eos():
    M, E = 99, 1
    ids = torch.tensor([[5, E, M, M], [M, E, M, 6], [5, 6, 7, 8], [E, M, M, M]])
    todo, ended = block_progress(ids, M, torch.tensor([E]), torch.ones(4, dtype=torch.bool))
    assert todo.tolist() == [[False] * 4, [True, False, False, False], [False] * 4, [False] * 4]
    assert ended.tolist() == [True, False, False, True]
    todo, _ = block_progress(
        torch.tensor([[M, M, M, M]]), M, torch.tensor([E]), torch.tensor([True, True, False, False])
    )
    assert todo.tolist() == [[True, True, False, False]]
