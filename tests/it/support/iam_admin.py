"""IAM administration for tests/it/iam.rs, done as an instructor does it: with boto3 (the AWS
CLI's library), against the moto server of $STRATUS_MOTO_IAM_ENDPOINT.

  iam_admin.py bootstrap           the administrator: a user holding "*" on "*" and its key
                                   (run inside moto's window of unauthenticated requests)
  iam_admin.py user NAME FILE      a user holding the policy document in FILE, and its key
  iam_admin.py validate FILE       CreatePolicy of the document (moto's policy validator)
  iam_admin.py try-iam             ListUsers with $STUDENT_KEY and $STUDENT_SECRET: prints
                                   {"ok": true} or {"ok": false, "code": ...}

Keys are printed as JSON {"key": ..., "secret": ...}. The administrator's key comes from
$ADMIN_KEY and $ADMIN_SECRET.
"""

import json
import os
import sys

import boto3


def iam(key, secret):
    return boto3.client(
        "iam",
        endpoint_url=os.environ["STRATUS_MOTO_IAM_ENDPOINT"],
        region_name="us-east-1",
        aws_access_key_id=key,
        aws_secret_access_key=secret,
    )


def user(client, name, document):
    client.create_user(UserName=name)
    client.put_user_policy(UserName=name, PolicyName=name, PolicyDocument=document)
    key = client.create_access_key(UserName=name)["AccessKey"]
    return {"key": key["AccessKeyId"], "secret": key["SecretAccessKey"]}


def main(argv):
    command = argv[1]
    if command == "bootstrap":
        # Any key signs these: moto checks none of the first requests it is told to let through.
        admin = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
        }
        print(json.dumps(user(iam("bootstrap", "bootstrap"), "admin", json.dumps(admin))))
        return
    if command == "try-iam":
        student = iam(os.environ["STUDENT_KEY"], os.environ["STUDENT_SECRET"])
        try:
            student.list_users()
            print(json.dumps({"ok": True}))
        except student.exceptions.ClientError as e:
            print(json.dumps({"ok": False, "code": e.response["Error"]["Code"]}))
        return
    client = iam(os.environ["ADMIN_KEY"], os.environ["ADMIN_SECRET"])
    with open(argv[-1], encoding="utf-8") as f:
        document = f.read()
    if command == "user":
        print(json.dumps(user(client, argv[2], document)))
    elif command == "validate":
        arn = client.create_policy(PolicyName="validated", PolicyDocument=document)
        print(json.dumps({"arn": arn["Policy"]["Arn"]}))
    else:
        sys.exit(f"unknown command {command}")


if __name__ == "__main__":
    main(sys.argv)
