"""Every mask equals a brute-force double-loop reference (inference and training layouts, both
prompt modes), and the training mask equals the reference implementation's, rebuilt from METHOD."""

import itertools

import pytest
import torch

from opdlm.models.geometry import inference_geometry, prediction_rows, training_geometry


def prompt_sees(q: int, k: int, P: int, B: int, mode: str) -> bool:
    """Prompt query slot q sees prompt key slot k (both valid): causal, or block-causal with B-blocks
    counted backwards from the response start at P."""
    if mode == "causal":
        return k <= q
    return (P - 1 - k) // B >= (P - 1 - q) // B  # k's block (counted back from P) is q's or earlier


def brute_inference(plen: int, P: int, L: int, B: int, mode: str = "causal") -> torch.Tensor:
    T = P + L
    pad = P - plen
    out = torch.zeros(T, T, dtype=torch.bool)
    for q, k in itertools.product(range(T), range(T)):
        if q < pad:
            out[q, k] = q == k
        elif k < pad:
            out[q, k] = False
        elif q < P:
            out[q, k] = k < P and prompt_sees(q, k, P, B, mode)  # never sees the response
        elif k < P:
            out[q, k] = True  # the response sees the whole prompt
        else:
            out[q, k] = (k - P) // B <= (q - P) // B
    return out


def brute_training(plen: int, P: int, L: int, B: int, mode: str = "causal") -> torch.Tensor:
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
            allowed = rk == "prompt" and prompt_sees(q, k, P, B, mode)
        elif rk == "prompt":
            allowed = True
        elif rq == "clean":
            allowed = rk == "clean" and (k - P) // B <= (q - P) // B
        else:  # noisy query: earlier clean blocks, and its own noisy block
            bq = (q - P - L) // B
            allowed = (rk == "clean" and (k - P) // B < bq) or (rk == "noisy" and (k - P - L) // B == bq)
        out[q, k] = allowed
    return out


# prompts shorter than a block (1, 2, 3 at B = 4), exact multiples, and left padding in every batch
CASES = [
    (B, lens, L, mode)
    for B in (1, 2, 3, 4)
    for lens in ((5, 5), (3, 6), (1, 4, 6), (2, 8, 7))
    for L in (4, 8, 12)
    for mode in ("block", "causal")
]


@pytest.mark.parametrize("B,lens,L,mode", CASES)
def test_inference_mask_matches_brute_force(B, lens, L, mode):
    P = max(lens)
    geom = inference_geometry(torch.tensor(lens), P, L, B, mode)
    allowed = geom.allowed()
    for i, plen in enumerate(lens):
        assert torch.equal(allowed[i], brute_inference(plen, P, L, B, mode))


@pytest.mark.parametrize("B,lens,L,mode", CASES)
def test_training_mask_matches_brute_force(B, lens, L, mode):
    P = max(lens)
    geom = training_geometry(torch.tensor(lens), P, L, B, mode)
    allowed = geom.allowed()
    for i, plen in enumerate(lens):
        assert torch.equal(allowed[i], brute_training(plen, P, L, B, mode))


def test_block_prompt_examples():
    """A 6-token prompt at B = 4 is two blocks counted back from the response: [0, 1] and [2..5]."""
    allowed = inference_geometry(torch.tensor([6, 3]), 6, 4, 4, "block").allowed()
    prompt = allowed[0, :6, :6].int().tolist()
    assert prompt[0] == [1, 1, 0, 0, 0, 0] and prompt[2] == [1, 1, 1, 1, 1, 1] and prompt[5] == [1] * 6
    # 3 real tokens after 3 pads: one partial block, bidirectional, padding never a key
    assert allowed[1, 3:6, :6].int().tolist() == [[0, 0, 0, 1, 1, 1]] * 3
    # B = 1 makes the block prompt exactly the causal one
    one = inference_geometry(torch.tensor([6, 3]), 6, 4, 1, "block").allowed()
    assert torch.equal(one, inference_geometry(torch.tensor([6, 3]), 6, 4, 1, "causal").allowed())


def test_unknown_prompt_attention_is_refused():
    with pytest.raises(ValueError, match="prompt_attention must be one of block, causal"):
        inference_geometry(torch.tensor([3]), 3, 4, 4, "bidirectional")


def reference_student_mask(prompt_ids: list[int], pad_id: int, L: int, B: int) -> torch.Tensor:
    """The reference implementation's student mask for one training row, rebuilt from METHOD §2/§4.4.

    divelab/OPDLM lays a row out as ``[left-padded prompt (L0) | x0 (L1) | xt (L1)]`` and fills a
    boolean matrix range by range: noisy block b reads ``[0, L0 + b*B)`` (prompt and clean blocks
    before b) and its own noisy block; clean block b reads ``[0, L0 + (b+1)*B)``; prompt block j,
    counted backwards from L0, reads ``[0, end of block j)``. Then every padding key of the prompt is
    removed, and a query left with no key at all attends to itself.
    """
    L0 = len(prompt_ids)
    N = L0 + 2 * L
    m = torch.zeros(N, N, dtype=torch.bool)
    for b in range((L + B - 1) // B):
        lo, hi = b * B, min((b + 1) * B, L)
        m[L0 + L + lo : L0 + L + hi, : L0 + lo] = True  # noisy block b: prompt + earlier clean blocks
        m[L0 + L + lo : L0 + L + hi, L0 + L + lo : L0 + L + lo + B] = True  # ... and itself
        m[L0 + lo : L0 + hi, : L0 + hi] = True  # clean block b: prompt + clean blocks <= b
    for j in range((L0 + B - 1) // B):
        end, start = L0 - j * B, max(L0 - (j + 1) * B, 0)
        m[start:end, :end] = True
    pad_key = torch.tensor([t == pad_id for t in prompt_ids] + [False] * 2 * L)
    m[:, pad_key] = False
    empty = ~m.any(-1)
    m[empty, empty.nonzero().squeeze(-1)] = True
    return m


@pytest.mark.parametrize("plen,P,L,B", [(7, 10, 8, 4), (3, 3, 12, 4), (9, 9, 6, 2), (2, 6, 8, 4), (5, 8, 9, 3)])
def test_training_mask_equals_the_reference_implementation(plen, P, L, B):
    pad = 0
    prompt = [pad] * (P - plen) + list(range(5, 5 + plen))
    ours = training_geometry(torch.tensor([plen]), P, L, B, "block").allowed()[0]
    ref = reference_student_mask(prompt, pad, L, B)
    real = torch.tensor([t != pad for t in prompt] + [True] * 2 * L)
    # every query whose output is used (all but padding) attends to exactly the same keys
    assert torch.equal(ours[real], ref[real])
    # padding queries: the reference lets a pad in a partly real block read that block; their
    # outputs are never read (padding is never a key, never a loss row), so only keys matter there
    assert not ours[~real][:, real].any() and not ref[:, ~real][real].any()


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
