"""A factory run whose store is S3 (moto's server on loopback) writes the same layout."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import boto3
import pyarrow.parquet as pq
import pytest

CLI = Path(sys.executable).parent / "lora-factory"

pytestmark = pytest.mark.e2e


def test_run_with_s3_store(tmp_path: Path, moto_s3: str, s3_bucket: str) -> None:
    env = {**os.environ, "AWS_ENDPOINT_URL": moto_s3}
    proc = subprocess.run(
        [str(CLI), "run", "-t", "cactus", "--home", str(tmp_path / "home"), "--store", s3_bucket,
         "--max-images", "40", "--set", "train.max_steps=4"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    bucket, prefix = s3_bucket.removeprefix("s3://").split("/", 1)
    s3 = boto3.client("s3", endpoint_url=moto_s3)
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
            for o in page.get("Contents", [])]
    run_keys = [k for k in keys if k.startswith(f"{prefix}/runs/")]
    run_ids = {k.split("/")[2] for k in run_keys}
    assert len(run_ids) == 1
    root = f"{prefix}/runs/{run_ids.pop()}"
    rel = {k[len(root) + 1:] for k in run_keys}
    for expected in ["run.json", "manifest.parquet", "crawl/items.parquet", "crawl/crawl_stats.json",
                     "curate/report.html", "label/dataset/metadata.jsonl", "tune/train_config.yaml",
                     "train/lora/pytorch_lora_weights.safetensors", "evaluate/eval.json", "deploy/decision.json"]:
        assert expected in rel, expected
    assert any(r.startswith("crawl/images/") for r in rel)
    assert not any(".staging" in r or r.endswith(".complete") for r in rel)
    state = json.loads(s3.get_object(Bucket=bucket, Key=f"{root}/run.json")["Body"].read())
    assert all(v["status"] == "done" for v in state["stages"].values())
    assert state["store"] == s3_bucket
    manifest = pq.read_table(io.BytesIO(s3.get_object(Bucket=bucket, Key=f"{root}/manifest.parquet")["Body"].read()))
    assert "curate_decision" in manifest.column_names and manifest.num_rows > 10
    # A promoted version is copied to <store>/loras/<concept>/v<version>/ (a random tiny scorer
    # decides the verdict); a rejected one is not.
    decision = json.loads(s3.get_object(Bucket=bucket, Key=f"{root}/deploy/decision.json")["Body"].read())
    exported = {k for k in keys if not k.startswith(f"{prefix}/runs/")}
    if decision["verdict"] == "promoted":
        copy = f"{prefix}/loras/cactus/v{decision['version']}"
        assert {f"{copy}/pytorch_lora_weights.safetensors", f"{copy}/README.md"} <= exported, sorted(exported)
        card = s3.get_object(Bucket=bucket, Key=f"{copy}/README.md")["Body"].read().decode()
        assert "model-index" in card and "Not evaluated yet" not in card  # the evaluated card
    else:
        assert not exported, sorted(exported)
    # Nothing of the run landed in the local home except caches and scratch.
    assert not (tmp_path / "home" / "runs").exists()
