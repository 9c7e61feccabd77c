"""Every mask equals a brute-force double-loop reference (inference and training layouts)."""

import itertools

import pytest
import torch

from opdlm.models.geometry import inference_geometry, prediction_rows, training_geometry


def brute_inference(plen: int, P: int, L: int, B: int) -> torch.Tensor:
    T = P + L
    pad = P - plen
    out = torch.zeros(T, T, dtype=torch.bool)
    for q, k in itertools.product(range(T), range(T)):
        if q < pad:
            out[q, k] = q == k
        elif k < pad:
            out[q, k] = False
        elif q < P:
            out[q, k] = k <= q  # causal prompt, never sees the response
        elif k < P:
            out[q, k] = True  # the response sees the whole prompt
        else:
            out[q, k] = (k - P) // B <= (q - P) // B
    return out


def brute_training(plen: int, P: int, L: int, B: int) -> torch.Tensor:
    T = P + 2 * L
    pad = P - plen
    out = torch.zeros(T, T, dtype=torch.bool)

    def region(i):
        return "prompt" if i < P else ("clean" if i < P + L else "noisy")

    for q, k in itertools.product(range(T), range(T)):
        rq, rk = region(q), region(k)
        if q < pad:
            allowed = q == k
        elif k < pad:
            allowed = False
        elif rq == "prompt":
            allowed = rk == "prompt" and k <= q
        elif rk == "prompt":
            allowed = True
        elif rq == "clean":
            allowed = rk == "clean" and (k - P) // B <= (q - P) // B
        else:  # noisy query: earlier clean blocks, and its own noisy block
            bq = (q - P - L) // B
            allowed = (rk == "clean" and (k - P) // B < bq) or (rk == "noisy" and (k - P - L) // B == bq)
        out[q, k] = allowed
    return out


CASES = [(B, lens, L) for B in (1, 2, 3, 4) for lens in ((5, 5), (3, 6), (1, 4, 6)) for L in (4, 8, 12)]


@pytest.mark.parametrize("B,lens,L", CASES)
def test_inference_mask_matches_brute_force(B, lens, L):
    P = max(lens)
    geom = inference_geometry(torch.tensor(lens), P, L, B)
    allowed = geom.allowed()
    for i, plen in enumerate(lens):
        assert torch.equal(allowed[i], brute_inference(plen, P, L, B))


@pytest.mark.parametrize("B,lens,L", CASES)
def test_training_mask_matches_brute_force(B, lens, L):
    P = max(lens)
    geom = training_geometry(torch.tensor(lens), P, L, B)
    allowed = geom.allowed()
    for i, plen in enumerate(lens):
        assert torch.equal(allowed[i], brute_training(plen, P, L, B))


def test_slices_equal_full_mask():
    geom = inference_geometry(torch.tensor([2, 5]), 5, 12, 4)
    full = geom.allowed()
    assert torch.equal(geom.allowed(9, 13, 13), full[:, 9:13, :13])
    assert torch.equal(geom.allowed(5, 9, 9), full[:, 5:9, :9])


def test_positions_shared_by_training_and_inference():
    lens = torch.tensor([3, 6])
    inf = inference_geometry(lens, 6, 8, 4)
    tr = training_geometry(lens, 6, 8, 4)
    assert torch.equal(tr.position_ids_BT[:, :14], inf.position_ids_BT)
    assert torch.equal(tr.position_ids_BT[:, 14:], inf.position_ids_BT[:, 6:])
    assert inf.position_ids_BT[0, 3:].tolist() == list(range(11))  # prompt of 3 after 3 pads


@pytest.mark.parametrize("shift", [False, True])
def test_prediction_rows_brute_force(shift):
    P, L, B = 5, 8, 4
    rows = prediction_rows(P, L, B, shift, noisy=True).tolist()
    for r in range(L):
        if not shift:
            assert rows[r] == P + L + r
        elif r == 0:
            assert rows[r] == P - 1
        elif r % B == 0:
            assert rows[r] == P + r - 1  # the clean copy's last token of the previous block
        else:
            assert rows[r] == P + L + r - 1
