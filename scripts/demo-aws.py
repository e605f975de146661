"""The AWS side of `make demo` (scripts/demo.sh), on moto, with boto3 from
.venv (moto depends on it, so nothing more is installed).

  setup --security-group NAME   looks up moto's default AMI and two default
                                subnets, creates the security group, and
                                prints the four ids on one line: image,
                                subnet, subnet, security group
  send --queue URL --reply-queue NAME --count N --ttl SECONDS
                                creates the reply queue, sends N session
                                requests replying to it, prints its URL
  replies --queue URL           prints one line per reply as it arrives
                                (deleting it), until stopped

The endpoint, region and credentials come from the environment the demo
sets (AWS_ENDPOINT_URL on loopback, AWS_REGION, AWS_ACCESS_KEY_ID, ...).
"""

import argparse
import json
import os
import sys

import boto3


def client(service: str):
    return boto3.client(
        service,
        endpoint_url=os.environ["AWS_ENDPOINT_URL"],
        region_name=os.environ["AWS_REGION"],
    )


def setup(args: argparse.Namespace) -> None:
    ec2 = client("ec2")
    images = ec2.describe_images(Owners=["amazon"])["Images"]
    image = next(i["ImageId"] for i in images if i.get("RootDeviceName"))
    subnets = ec2.describe_subnets(
        Filters=[{"Name": "default-for-az", "Values": ["true"]}]
    )["Subnets"]
    subnet_ids = sorted(s["SubnetId"] for s in subnets)[:2]
    if len(subnet_ids) < 2:
        sys.exit(f"moto has {len(subnet_ids)} default subnets, expected 2")
    group = ec2.create_security_group(
        GroupName=args.security_group, Description="browserfleet local demo"
    )["GroupId"]
    print(image, subnet_ids[0], subnet_ids[1], group)


def send(args: argparse.Namespace) -> None:
    sqs = client("sqs")
    reply_to = sqs.create_queue(QueueName=args.reply_queue)["QueueUrl"]
    entries = [
        {
            "Id": str(n),
            "MessageBody": json.dumps(
                {
                    "version": 1,
                    "action": "create",
                    "sessionId": f"demo-{n + 1}",
                    "ttlSeconds": args.ttl,
                    "replyTo": reply_to,
                }
            ),
        }
        for n in range(args.count)
    ]
    # SendMessageBatch takes at most ten entries.
    for start in range(0, len(entries), 10):
        result = sqs.send_message_batch(
            QueueUrl=args.queue, Entries=entries[start : start + 10]
        )
        if result.get("Failed"):
            sys.exit(f"sending requests failed: {result['Failed']}")
    print(reply_to)


def describe(reply: dict) -> str:
    kind = reply.get("type", "?")
    line = f"{kind:<18} {reply.get('sessionId', '?'):<8} on {reply.get('instanceId', '?')}"
    if kind == "session.ready":
        line += f"  {reply.get('endpoints', {}).get('webSocketDebuggerUrl', '')}"
    elif "reason" in reply:
        line += f"  ({reply['reason']})"
    return line


def replies(args: argparse.Namespace) -> None:
    sqs = client("sqs")
    while True:
        messages = sqs.receive_message(
            QueueUrl=args.queue, MaxNumberOfMessages=10, WaitTimeSeconds=1
        ).get("Messages", [])
        for message in messages:
            try:
                line = describe(json.loads(message["Body"]))
            except ValueError:
                line = f"unreadable reply: {message['Body']!r}"
            print(line, flush=True)
            sqs.delete_message(
                QueueUrl=args.queue, ReceiptHandle=message["ReceiptHandle"]
            )


def main() -> None:
    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("setup")
    p.add_argument("--security-group", required=True)
    p.set_defaults(run=setup)
    p = commands.add_parser("send")
    p.add_argument("--queue", required=True)
    p.add_argument("--reply-queue", required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--ttl", type=int, required=True)
    p.set_defaults(run=send)
    p = commands.add_parser("replies")
    p.add_argument("--queue", required=True)
    p.set_defaults(run=replies)
    args = parser.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
