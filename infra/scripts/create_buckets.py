"""Create S3 buckets if they do not exist yet (idempotent); used by both stacks at start.

The endpoint and credentials come from the environment like every AWS tool (``AWS_ENDPOINT_URL_S3``
or ``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``), so the same script runs
against the local moto server, the compose stack's object store and a real cloud account.

Usage: python infra/scripts/create_buckets.py BUCKET [BUCKET ...] [--wait SECONDS]
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def create_buckets(names: list[str], wait_s: float) -> list[str]:
    """Create each missing bucket; wait up to ``wait_s`` for the endpoint. Returns the names created."""
    import boto3
    from botocore.config import Config
    from botocore.exceptions import ClientError, EndpointConnectionError

    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    s3 = boto3.client("s3", endpoint_url=endpoint, config=Config(retries={"max_attempts": 3, "mode": "standard"}))
    deadline = time.monotonic() + wait_s
    while True:
        try:
            existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
            break
        except EndpointConnectionError:
            if time.monotonic() > deadline:
                raise SystemExit(f"error: S3 endpoint {endpoint} did not answer within {wait_s:.0f} s") from None
            time.sleep(1)
    created = []
    for name in names:
        if name in existing:
            continue
        try:
            s3.create_bucket(Bucket=name)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise SystemExit(f"error: could not create bucket {name!r} at {endpoint}: {exc}") from None
            continue
        created.append(name)
    return created


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("buckets", nargs="+", help="bucket names")
    parser.add_argument("--wait", type=float, default=60.0, help="seconds to wait for the endpoint to answer")
    args = parser.parse_args(argv)
    created = create_buckets(args.buckets, args.wait)
    for name in args.buckets:
        print(f"bucket {name}: {'created' if name in created else 'exists'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
