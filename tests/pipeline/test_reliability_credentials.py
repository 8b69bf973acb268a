"""Issue 20, item 6: credentials the storage rejects (``InvalidAccessKeyId``, ``SignatureDoesNotMatch``)
are neither transient (retried, then exit 1 "a rerun resumes") nor the row's fault: the command stops
with exit 2, a configuration error, naming where and what, without the secret.

The end-to-end cases talk to a moto server that checks signatures (IAM auth on after the three
requests that create the user whose key uploads the fixtures)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from botocore.exceptions import ClientError
from moto_process import MotoProcess
from pipeline_testing import png_bytes, write_manifest
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.faults import (
    StorageCredentialsError,
    find_rejected_credentials,
    is_transient,
    rejected_credentials,
)


def client_error(code: str, status: int = 403) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "ListObjectsV2",
    )


@pytest.mark.parametrize("code", ["InvalidAccessKeyId", "SignatureDoesNotMatch"])
def test_rejected_credentials_are_not_transient(code):
    bare = client_error(code)
    wrapped = PermissionError("The AWS Access Key Id you provided does not exist in our records.")
    wrapped.__cause__ = bare  # what s3fs raises
    for exc in (bare, wrapped):
        assert not is_transient(exc)
        assert rejected_credentials(exc) is bare
    assert is_transient(client_error("ExpiredToken", 400))  # a session token that refreshes: transient
    assert rejected_credentials(client_error("AccessDenied")) is None  # a denied object: the row's


def test_a_rejected_credentials_error_is_found_behind_a_ray_task_error():
    text = (
        "ray::MapBatches(fetch_rows)() (pid=1)\n  File x\npipeline.faults.StorageCredentialsError: image "
        "s3://b/k: the storage rejected the credentials of this environment (ClientError: ...)\n"
    )
    found = find_rejected_credentials(RuntimeError(text))
    assert isinstance(found, StorageCredentialsError)
    assert str(found).startswith("image s3://b/k: the storage rejected the credentials")


BUCKET = "creds-bucket"


@pytest.fixture
def s3_with_auth(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict]:
    """A moto server that checks credentials; a bucket with a manifest; a valid key pair."""
    import boto3
    import s3fs

    monkeypatch.setenv("INITIAL_NO_AUTH_ACTION_COUNT", "3")  # create user, policy, key; then auth on
    server = MotoProcess(tmp_path / "moto.log")
    server.start()
    try:
        iam = boto3.client("iam", endpoint_url=server.endpoint, region_name="us-east-1")
        iam.create_user(UserName="job")
        policy = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
        }
        iam.put_user_policy(UserName="job", PolicyName="s3", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName="job")["AccessKey"]
        good = s3fs.S3FileSystem(
            endpoint_url=server.endpoint, key=key["AccessKeyId"], secret=key["SecretAccessKey"],
            skip_instance_cache=True,
        )  # fmt: skip
        good.mkdir(BUCKET)
        write_manifest(
            f"{BUCKET}/in/m.parquet",
            [{"id": "a", "image_bytes": png_bytes(0), "query": "a blue circle"}],
            fs=good,
        )
        s3fs.S3FileSystem.clear_instance_cache()
        yield {"endpoint": server.endpoint, "key": key["AccessKeyId"], "secret": key["SecretAccessKey"]}
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
        server.stop()


def validate(tmp_path: Path, tiny_model: Path, endpoint: str, *, input_s3: bool) -> tuple[int, str]:
    local = tmp_path / "local"
    write_manifest(local / "m.parquet", [{"id": "a", "image_bytes": png_bytes(0), "query": "a blue circle"}])
    source = f"s3://{BUCKET}/in/" if input_s3 else str(local)
    output = str(tmp_path / "out") if input_s3 else f"s3://{BUCKET}/out/"
    job = tmp_path / "job.yaml"
    job.write_text(
        f"input: {{paths: ['{source}']}}\noutput: {{path: '{output}'}}\nmodel: {{source: '{tiny_model}'}}\n"
        f"storage: {{endpoint_url: '{endpoint}', max_attempts: 2}}\n"
    )
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()  # fsspec caches a filesystem with the credentials it read
    result = CliRunner().invoke(app, ["validate", str(job)])
    return result.exit_code, result.output


@pytest.mark.parametrize("input_s3", [True, False], ids=["input", "output"])
def test_an_unknown_access_key_is_a_config_error(s3_with_auth, tmp_path, tiny_model, monkeypatch, input_s3):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIANOSUCHKEY0000000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    code, output = validate(tmp_path, tiny_model, s3_with_auth["endpoint"], input_s3=input_s3)
    assert code == 2, output
    if input_s3:  # a listing: S3 names the error
        assert f"input.paths[0]: s3://{BUCKET}/in/: the storage rejected the credentials" in output
        assert "InvalidAccessKeyId" in output
    else:  # a HEAD first: S3 answers a bare 403, which is refused all the same
        assert f"output s3://{BUCKET}/out/: access denied (" in output
    assert "a rerun resumes" not in output
    assert "not-the-secret" not in output


def test_a_wrong_secret_is_a_config_error(s3_with_auth, tmp_path, tiny_model, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_with_auth["key"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong" + s3_with_auth["secret"][5:])
    code, output = validate(tmp_path, tiny_model, s3_with_auth["endpoint"], input_s3=True)
    assert code == 2, output
    assert "SignatureDoesNotMatch" in output and "rejected the credentials" in output
    # and with the right secret the same job validates (the fixture's data is readable)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_with_auth["secret"])
    code, output = validate(tmp_path, tiny_model, s3_with_auth["endpoint"], input_s3=True)
    assert code == 0, output


def test_a_commit_with_rejected_credentials_stops_the_run(s3_with_auth):
    """The commit side: not retried as transient, not a raw error: ``StorageCredentialsError``, which
    ``pipeline.job`` turns into a configuration error (exit 2)."""
    import s3fs

    from pipeline import output as O
    from pipeline import rows as R

    fs = s3fs.S3FileSystem(
        endpoint_url=s3_with_auth["endpoint"],
        key=s3_with_auth["key"],
        secret="wrong",
        skip_instance_cache=True,
    )
    table = R.table_from_rows([{"id": "a", "status": R.OK, "run_id": "r"}], R.OUTPUT_SCHEMA)
    with pytest.raises(StorageCredentialsError, match=r"output creds-bucket/out: the storage rejected"):
        O.commit_blocks(fs, f"{BUCKET}/out", [table], rows_per_file=1, run_id=None)
