"""Runs a moto server for one test binary or benchmark run.

Listens on 127.0.0.1 on an ephemeral port, prints `PORT <n>` on stdout once
it accepts requests, and exits when its standard input closes, which happens
when the process that started it exits, however it exits. That way no moto
outlives its tests.

`--instance-profile NAME` creates that IAM instance profile first: EC2 in
moto, like AWS, refuses to launch with an instance profile that does not exist.

moto's instance metadata service answers an IMDSv2 token request without the
`X-aws-ec2-metadata-token-ttl-seconds` response header that EC2 documents
(and the AWS SDKs' IMDS clients require to cache the token): the token
response is given that header, echoing the TTL asked for, as EC2 does.
"""

import argparse
import logging
import os
import sys

from urllib.parse import urlparse

from moto.instance_metadata import responses as instance_metadata
from moto.moto_server.threaded_moto_server import ThreadedMotoServer

TOKEN_TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"


def _with_token_ttl(metadata_response):
    def respond(request, full_url, headers):
        status, response_headers, body = metadata_response(request, full_url, headers)
        if urlparse(full_url).path == "/latest/api/token":
            asked = {k.lower(): v for k, v in dict(headers or {}).items()}
            ttl = asked.get(TOKEN_TTL_HEADER.lower(), "21600")
            response_headers = {**dict(response_headers or {}), TOKEN_TTL_HEADER: ttl}
        return status, response_headers, body

    return staticmethod(respond)


# Before the server imports moto's URL map, which holds the function itself.
instance_metadata.InstanceMetadataResponse.metadata_response = _with_token_ttl(
    instance_metadata.InstanceMetadataResponse.metadata_response
)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--instance-profile", action="append", default=[])
    args = parser.parse_args()

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()

    if args.instance_profile:
        import boto3

        iam = boto3.client(
            "iam",
            endpoint_url=f"http://{host}:{port}",
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        for name in args.instance_profile:
            iam.create_instance_profile(InstanceProfileName=name)

    print(f"PORT {port}", flush=True)
    # Block until the parent goes away (its end of our stdin closes).
    sys.stdin.read()
    server.stop()
    os._exit(0)


if __name__ == "__main__":
    main()
