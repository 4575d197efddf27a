"""A local S3 server's helper for the Delta-on-S3 tests (boto3, from the same virtual
environment as moto's server). Usage:

  s3.py mkbucket ENDPOINT BUCKET
  s3.py keys ENDPOINT BUCKET PREFIX          # prints the keys under PREFIX/, one per line
  s3.py mirror ENDPOINT BUCKET PREFIX DEST   # copies every object under PREFIX/ into DEST
  s3.py delete ENDPOINT BUCKET KEY

The credentials are the test server's own (moto accepts any)."""

import os
import sys

import boto3


def client(endpoint):
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="xmbridge-test",
        aws_secret_access_key="xmbridge-test-secret",
        region_name="us-east-1",
    )


def keys(s3, bucket, prefix):
    out = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix.rstrip("/") + "/"):
        out.extend(o["Key"] for o in page.get("Contents", []))
    return sorted(out)


def main():
    cmd, endpoint, bucket = sys.argv[1], sys.argv[2], sys.argv[3]
    s3 = client(endpoint)
    if cmd == "mkbucket":
        s3.create_bucket(Bucket=bucket)
    elif cmd == "keys":
        for k in keys(s3, bucket, sys.argv[4]):
            print(k)
    elif cmd == "delete":
        s3.delete_object(Bucket=bucket, Key=sys.argv[4])
    elif cmd == "mirror":
        prefix, dest = sys.argv[4].rstrip("/") + "/", sys.argv[5]
        for k in keys(s3, bucket, prefix):
            path = os.path.join(dest, k[len(prefix):])
            os.makedirs(os.path.dirname(path), exist_ok=True)
            s3.download_file(bucket, k, path)
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
