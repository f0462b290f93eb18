"""Shared pytest fixtures. Each block is owned by the part of the code it serves; add new blocks
below rather than editing someone else's."""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.seaweed import SeaweedServer

# =============================================================================================
# S3 / SeaweedFS fixtures (storage). A real `weed mini` server, one per test session (per xdist
# worker): it starts in about a second and holds ~120-220 MB, so sharing it is cheaper than
# isolation by process; tests isolate themselves by a fresh prefix instead.
# =============================================================================================

#: bucket shared by the tests' s3_url prefixes (SeaweedFS gives every bucket its own volumes,
#: so a bucket per test would grow disk use with the number of tests)
S3_TEST_BUCKET = "sellerbak-test"


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    """The SeaweedFS server. Fails (never skips) if `weed` is missing: CI installs it.

    Tests may `stop()` / `start()` it (e.g. to kill it mid-snapshot); `s3_url` restarts it if a
    previous test left it stopped.
    """
    server = SeaweedServer(tmp_path_factory.mktemp("seaweed") / "data")
    server.start()
    client = server.client()
    client.create_bucket(Bucket=S3_TEST_BUCKET)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_env(
    seaweed: SeaweedServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> SeaweedServer:
    """Point boto3's standard credential chain at the test server's keys (environment only).

    Profiles, config files, session tokens and the EC2 metadata service are switched off so a
    developer's own AWS set-up neither leaks in nor gets contacted (IMDS is not on loopback).
    Returns the server for convenience.
    """
    for var in (
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_SESSION_TOKEN",
        "AWS_SECURITY_TOKEN",
        "AWS_ROLE_ARN",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",
        "AWS_REGION",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", seaweed.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", seaweed.secret_key)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    return seaweed


@pytest.fixture
def s3_url(s3_env: SeaweedServer, request: pytest.FixtureRequest) -> str:
    """A fresh `s3://bucket/prefix` nobody else uses, in an existing bucket on the test server.

    Pass `endpoint_url=s3_env.endpoint_url` (or `seaweed.endpoint_url`) when opening it.
    """
    s3_env.start()  # no-op when running; recovers from a test that stopped the server
    name = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:40]
    return f"s3://{S3_TEST_BUCKET}/{name}-{secrets.token_hex(4)}"


# =============================================================================================
# (end of S3 / SeaweedFS fixtures)
# =============================================================================================


# =============================================================================================
# Fault-injection fixtures (tests/test_faults_*.py)
# =============================================================================================


@pytest.fixture(scope="module")
def killable_seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    """A SeaweedFS server of the module's own, for tests that kill -9 and restart it: a crash
    then never disturbs the shared `seaweed` server (and the objects other tests left in it).
    Holds the `S3_TEST_BUCKET` bucket, like `seaweed`."""
    server = SeaweedServer(tmp_path_factory.mktemp("seaweed-killable") / "data")
    server.start()
    server.client().create_bucket(Bucket=S3_TEST_BUCKET)
    try:
        yield server
    finally:
        server.stop()


# =============================================================================================
# (end of fault-injection fixtures)
# =============================================================================================
