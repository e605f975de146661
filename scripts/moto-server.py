"""Runs a moto server for one test binary or benchmark run.

Listens on 127.0.0.1 on an ephemeral port, prints `PORT <n>` on stdout once
it accepts requests, and exits when its standard input closes, which happens
when the process that started it exits, however it exits. That way no moto
outlives its tests.

`--instance-profile NAME` creates that IAM instance profile first: EC2 in
moto, like AWS, refuses to launch with an instance profile that does not exist.
"""

import argparse
import logging
import os
import sys

from moto.moto_server.threaded_moto_server import ThreadedMotoServer


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
