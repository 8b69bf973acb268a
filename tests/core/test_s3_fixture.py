import fsspec


def test_s3_server_round_trip_over_http(s3):
    fs = fsspec.filesystem(
        "s3", client_kwargs={"endpoint_url": s3["endpoint_url"]}, key="testing", secret="testing"
    )
    fs.pipe(f"{s3['bucket']}/a/b.txt", b"hello")
    assert fs.cat(f"{s3['bucket']}/a/b.txt") == b"hello"
    assert fs.ls(f"{s3['bucket']}/a") == [f"{s3['bucket']}/a/b.txt"]
