"""Serve parity: an exported student behind SGLang or LMDeploy vs opdlm's own sampler, greedy.

Exports the student (``opdlm export --format F``), launches the engine's HTTP server on it, sends
each prompt's token ids to ``POST /generate`` and compares the returned token ids with opdlm's block
sampler on the same GPU, token by token (each response up to and including its first EOS). The
agreement is matched positions over the longer response's length, summed over prompts. Prompts whose
length is a multiple of the block size are reported apart: there the engines' block alignment
(absolute position 0) and opdlm's (counted back from the response start) coincide, so any
disagreement there is numerics or settings, not geometry.

Needs a CUDA GPU and the engine installed (``pip install sglang`` or ``pip install lmdeploy``);
without them it exits 1 with one line and runs nothing.

Usage:
    python benchmarks/serve_parity.py --model STUDENT --format sglang [--prompts 50] [--max-new-tokens 128]

Last line: ``serve_parity_token_agreement: X (target: 1.0)``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

PACKAGES = {"sglang": "sglang", "lmdeploy": "lmdeploy"}
HEALTH = {"sglang": "/health", "lmdeploy": "/v1/models"}


def _fail(message: str) -> None:
    print(f"serve_parity: {message}", file=sys.stderr)
    raise SystemExit(1)


def _post(url: str, payload: dict, timeout: float = 600) -> dict:
    req = urllib.request.Request(url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


def _wait_ready(base: str, fmt: str, proc: subprocess.Popen, deadline_s: float, log: Path) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < deadline_s:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
            _fail(f"the {fmt} server exited with code {proc.returncode}: {tail[0]} (log: {log})")
        try:
            with urllib.request.urlopen(base + HEALTH[fmt], timeout=5) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(2)
    _fail(f"the {fmt} server was not ready after {deadline_s:.0f} s (log: {log})")


def _request(fmt: str, ids: list[int], max_new_tokens: int) -> dict:
    if fmt == "sglang":
        return {"input_ids": ids, "sampling_params": {"max_new_tokens": max_new_tokens, "temperature": 0.0}}
    return {"input_ids": ids, "max_tokens": max_new_tokens, "temperature": 0.0, "top_k": 1}


def _output_ids(fmt: str, reply: dict, tokenizer) -> list[int]:
    """Token ids from a /generate reply (SGLang lists one reply per request or a dict)."""
    reply = reply[0] if isinstance(reply, list) else reply
    if reply.get("output_ids") is not None:
        return list(reply["output_ids"])
    return tokenizer.encode(reply["text"], add_special_tokens=False)  # older servers: text only


def _until_eos(ids: list[int], eos: set[int]) -> list[int]:
    for i, t in enumerate(ids):
        if t in eos:
            return ids[: i + 1]
    return ids


def agreement(ours: list[list[int]], theirs: list[list[int]]) -> tuple[int, int]:
    """``(matched, total)``: positions equal at the same index, over the longer response of each pair."""
    matched = total = 0
    for a, b in zip(ours, theirs, strict=True):
        matched += sum(x == y for x, y in zip(a, b))
        total += max(len(a), len(b), 1)
    return matched, total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="A converted student (local directory, hf://, s3://).")
    ap.add_argument("--format", required=True, choices=sorted(PACKAGES))
    ap.add_argument("--prompts", type=int, default=50)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--port", type=int, default=None, help="Default: 30000 (sglang), 23333 (lmdeploy).")
    ap.add_argument("--ready-timeout", type=float, default=900.0, help="Seconds to wait for the server.")
    ap.add_argument("--out", type=Path, default=None, help="Export here (default: a temporary directory).")
    args = ap.parse_args()

    import torch

    if not torch.cuda.is_available():
        _fail("needs a CUDA GPU (torch.cuda.is_available() is false); not run")
    if importlib.util.find_spec(PACKAGES[args.format]) is None:
        _fail(f"needs the {args.format} package (pip install {PACKAGES[args.format]}); not run")

    from opdlm.data.prompting import encode_prompts, format_prompt
    from opdlm.data.synthetic import load_split
    from opdlm.formats.engine import export_student
    from opdlm.models.student import load_student
    from opdlm.sampling.block_sampler import BlockDiffusionSampler
    from opdlm.sources.resolve import resolve_model_source

    student_dir = resolve_model_source(args.model, "student")
    student = load_student(student_dir, device="cuda")
    sampler = student.meta.sampler_defaults.with_overrides(temperature=0.0, max_new_tokens=args.max_new_tokens)
    out = args.out or Path(tempfile.mkdtemp(prefix="serve-parity-")) / args.format
    overrides = {
        "temperature": 0.0,
        "remasking": sampler.remasking,
        "threshold": sampler.threshold,
        "denoise_steps_per_block": sampler.denoise_steps_per_block,
    }
    export_dir, notes = export_student(student_dir, out, args.format, overrides, overwrite=True, source=args.model)
    summary = json.loads((export_dir / "export.json").read_text())
    port = args.port or (30000 if args.format == "sglang" else 23333)
    command = (
        summary["launch"]
        .replace("--port 30000", f"--port {port}")
        .replace("--server-port 23333", f"--server-port {port}")
    )

    tok = student.tokenizer
    rows = load_split("eval", n=args.prompts)
    prompts = encode_prompts(
        tok, [format_prompt(tok, r.question, enable_thinking=student.meta.enable_thinking) for r in rows]
    )
    eos = set(student.meta.eos_token_ids)
    batch = BlockDiffusionSampler(student).generate(prompts, sampler, generator=torch.Generator("cuda").manual_seed(0))
    ours = [_until_eos(list(r["token_ids"]), eos) for r in batch.records()]
    del student, batch
    torch.cuda.empty_cache()

    log = export_dir.parent / f"{args.format}-server.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen(command.split(), stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_ready(base, args.format, proc, args.ready_timeout, log)
        theirs = [
            _until_eos(
                _output_ids(
                    args.format, _post(base + "/generate", _request(args.format, ids, args.max_new_tokens)), tok
                ),
                eos,
            )
            for ids in prompts
        ]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server and its workers: the group this script started
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)

    b = sampler.block_size
    aligned = [i for i, p in enumerate(prompts) if len(p) % b == 0]
    rest = [i for i in range(len(prompts)) if len(prompts[i]) % b]
    for name, idx in (("prompt length % B == 0 (same alignment)", aligned), ("other prompts (shifted blocks)", rest)):
        m, t = agreement([ours[i] for i in idx], [theirs[i] for i in idx]) if idx else (0, 0)
        exact = sum(ours[i] == theirs[i] for i in idx)
        print(f"{name}: {len(idx)} prompts, {exact} identical, token agreement {m / t if t else float('nan'):.4f}")
    for line in notes:
        print(f"note: {line}")
    print(f"engine: {args.format}; launched: {command}")
    matched, total = agreement(ours, theirs)
    print(f"serve_parity_token_agreement: {matched / total:.4f} (target: 1.0)")


if __name__ == "__main__":
    main()
