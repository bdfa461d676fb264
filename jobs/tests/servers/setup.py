"""Creates an S3 bucket on moto or a blob container on azurite (test set-up only).

usage: setup.py s3 PORT BUCKET | setup.py azure PORT CONTAINER
"""
import base64, datetime, hashlib, hmac, http.client, sys

# The documented, public development-storage account of the Azure emulator.
ACCOUNT = "devstoreaccount1"
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def request(port, path, headers):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("PUT", path, body=b"", headers=headers)
    resp = conn.getresponse()
    body = resp.read()
    if resp.status not in (200, 201, 409):
        sys.exit(f"PUT {path}: {resp.status} {body[:300]!r}")


def s3(port, bucket):
    request(port, f"/{bucket}", {"Content-Length": "0"})


def azure(port, container):
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%a, %d %b %Y %H:%M:%S GMT")
    version = "2021-08-06"
    path = f"/{ACCOUNT}/{container}"
    string_to_sign = "\n".join(
        ["PUT", "", "", "", "", "", "", "", "", "", "", ""]
        + [f"x-ms-date:{date}", f"x-ms-version:{version}"]
        + [f"/{ACCOUNT}{path}\nrestype:container"]
    )
    signature = base64.b64encode(
        hmac.new(base64.b64decode(KEY), string_to_sign.encode(), hashlib.sha256).digest()
    ).decode()
    request(
        port,
        f"{path}?restype=container",
        {
            "x-ms-date": date,
            "x-ms-version": version,
            "Content-Length": "0",
            "Authorization": f"SharedKey {ACCOUNT}:{signature}",
        },
    )


if __name__ == "__main__":
    kind, port, name = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    {"s3": s3, "azure": azure}[kind](port, name)
