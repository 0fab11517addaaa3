#!/usr/bin/env python3
"""moto's server with EC2 faults the tests can turn on: what real EC2 does and moto does not.

Runs moto's WSGI app in this process (as `moto_server` does) behind a middleware that can
  - throttle: answer the next K calls of an action with RequestLimitExceeded, without forwarding;
  - buckets: throttle as EC2 does, with a token bucket per action: {"buckets": {"DescribeInstances":
    {"burst": 100, "refill_per_sec": 20}, "*": {"burst": 100, "refill_per_sec": 20}}} gives each
    action named its own bucket, and every action not named its own bucket of the `*` sizes (a
    bucket per action, not one shared); a bucket starts full, each call takes a token, tokens
    come back at `refill_per_sec` up to `burst`, and a call finding its bucket empty is answered
    RequestLimitExceeded (HTTP 503) without forwarding. Actions without a bucket are not limited;
    setting "buckets" again starts every bucket full;
  - lose_answer: forward the next K calls of an action to moto, then answer 500 InternalError;
  - not_found_secs: make each instance id a RunInstances answer carries "new" for that many
    seconds, as EC2's eventual consistency does: DescribeInstances naming it, TerminateInstances
    and CreateTags naming it answer InvalidInstanceID.NotFound (without forwarding), and
    DescribeInstances without ids leaves it out;
  - idempotent_client_token (opt-in): a RunInstances with a ClientToken already answered gets
    the same answer again, without forwarding, as EC2 does (moto launches anew);
  - hold: block every call of an action until released (a test can kill the client meanwhile);
  - count every EC2 call by Action;
  - age instances: make their launch time older in moto's backend (moto has no clock API);
  - console: make GetConsoleOutput of an instance answer a given text (base64 in <output>, as
    EC2 does) instead of moto's canned boot log, as cloud-init prints its SSH host keys there;
  - refuse_when: answer calls of an action whose parameters match (a subnet, an instance type)
    with an EC2 error code, without forwarding, as EC2 answers InsufficientInstanceCapacity for
    one type in one zone: a list of {"action", "code", "message"?, "when": {NAME: VALUE},
    "times"?, "status"?}, where NAME matches a parameter of that name at any depth (`SubnetId`
    matches `NetworkInterface.1.SubnetId`), an empty or absent `when` matches every call of the
    action (so any action can be answered with any code), and `times` (default: always) counts
    the calls it answers;
  - count the calls answered RequestLimitExceeded (by `throttle`, a bucket, or a refusal with
    that code), by Action.
Every error carries EC2's HTTP status for its code (`status_of`): 503 for RequestLimitExceeded
and Unavailable; 500 for EC2's server errors (InternalError, ServerInternal and the
Insufficient*Capacity codes, which EC2's error reference lists as server errors); 400 for every
other code. A refusal's `status` overrides it. The SDK decides what to retry from these (a 500
or 503 is transient to it), so they matter.
It also makes one thing of moto's own safe that EC2 never gets wrong: moto hands out a subnet's
private addresses from a generator that two threads cannot run at once, so two RunInstances in
one subnet at the same moment (a launch's master and worker calls go together) can fail midway,
leave one instance behind and answer 500, which the SDK retries with the same ClientToken into a
second launch. The calls of an action that takes addresses from a subnet (`ALLOCATING_ACTIONS`)
reach moto one at a time; faults, holds and counts still apply to each as it arrives.
With nothing configured it is transparent. Calls signed with an access key starting with
`stratus-double` (the tests' hypervisor, which stands for EC2's own machinery and no client of
its API) pass through untouched: no fault, bucket or count applies to them. The control API, JSON in and out:
  POST /stratus-faults/reset                     faults, holds (released), counts, throttled
                                                 counts, buckets, tracked ids, consoles
  POST /stratus-faults/config   {"throttle": {"RunInstances": 3}, "lose_answer": {...},
                                 "buckets": {"*": {"burst": 100, "refill_per_sec": 20}},
                                 "not_found_secs": 20, "idempotent_client_token": true,
                                 "refuse_when": [{"action": "RunInstances",
                                   "code": "InsufficientInstanceCapacity",
                                   "when": {"InstanceType": "m5.large"}, "times": 2}]}
                                each key named replaces its old value
  GET  /stratus-faults/config   the faults in force
  GET  /stratus-faults/counts   {"RunInstances": 2, ...}
  GET  /stratus-faults/throttled {"DescribeInstances": 7, ...}: calls answered
                                RequestLimitExceeded, by Action (cleared by reset)
  POST /stratus-faults/age      {"instance_ids": [...], "seconds": 3600} -> {"aged": n}
  POST /stratus-faults/hold     {"action": "RunInstances"}
  POST /stratus-faults/release  {"action": "RunInstances"}
  GET  /stratus-faults/held     {"RunInstances": 1}
  POST /stratus-faults/console  {"instance_id": "i-…", "output": "text"} (null output: moto's)
  POST /stratus-faults/ssm-parameter {"name": "/aws/service/…", "value": "ami-…", "region": R}
                                a public SSM parameter, as AWS publishes its images' (moto
                                refuses to create names under /aws; this puts it in moto's
                                store directly)
and POST /moto-api/reset clears all of the above before moto resets its own state.

Usage: python moto_faults.py --host 127.0.0.1 --port P
"""

import argparse
import base64
import datetime
import io
import json
import os
import re
import signal
import sys
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from urllib.parse import parse_qs

from werkzeug.serving import run_simple

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)

CONTROL = "/stratus-faults/"
# Calls signed with such a key are the test doubles' own, and pass through untouched.
DOUBLE_KEY_PREFIX = "stratus-double"
# The actions that answer InvalidInstanceID.NotFound for an instance id that is still new.
NOT_FOUND_ACTIONS = {"DescribeInstances", "TerminateInstances", "CreateTags"}
# The actions that take private addresses from a subnet in moto's backend, which does not take
# them safely from two threads at once: forwarded one at a time.
ALLOCATING_ACTIONS = {"RunInstances", "CreateNetworkInterface", "AssignPrivateIpAddresses"}
INSTANCE_ID_IN_ANSWER = re.compile(rb"<instanceId>(i-[0-9a-zA-Z]+)</instanceId>")
CONSOLE_OUTPUT_IN_ANSWER = re.compile(rb"<output>[^<]*</output>|<output\s*/>")


def error_xml(code, message):
    """EC2's error answer."""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Response><Errors><Error><Code>{code}</Code><Message>{message}</Message></Error>"
        f"</Errors><RequestID>{uuid.uuid4()}</RequestID></Response>"
    ).encode()


# EC2's server errors (its error reference, "Server error codes"): a 500-series status.
SERVER_ERRORS_500 = {
    "InternalError",
    "ServerInternal",
    "InsufficientAddressCapacity",
    "InsufficientCapacity",
    "InsufficientHostCapacity",
    "InsufficientInstanceCapacity",
    "InsufficientReservedInstanceCapacity",
    "InsufficientVolumeCapacity",
}
SERVER_ERRORS_503 = {"RequestLimitExceeded", "Unavailable"}
STATUS_TEXT = {400: "Bad Request", 500: "Internal Server Error", 503: "Service Unavailable"}


def status_of(code):
    """The HTTP status line EC2 answers an error code with."""
    if code in SERVER_ERRORS_503:
        n = 503
    elif code in SERVER_ERRORS_500:
        n = 500
    else:
        n = 400
    return f"{n} {STATUS_TEXT[n]}"


def status_line(n):
    return f"{n} {STATUS_TEXT.get(n, 'Error')}"


class Bucket:
    """A token bucket: `burst` tokens at most, `refill_per_sec` back each second; starts full."""

    def __init__(self, burst, refill_per_sec):
        if burst < 0 or refill_per_sec < 0:
            raise ValueError("a bucket's burst and refill_per_sec are >= 0")
        self.burst = float(burst)
        self.refill = float(refill_per_sec)
        self.tokens = float(burst)
        self.at = time.monotonic()

    def take(self):
        """Whether a token was there (and is now taken)."""
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.refill)
        self.at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


def not_found_message(ids):
    if len(ids) == 1:
        return f"The instance ID '{ids[0]}' does not exist"
    return f"The instance IDs '{', '.join(ids)}' do not exist"


def numbered(params, prefix):
    """The values of `prefix.1`, `prefix.2`, … in a query's parameters."""
    pat = re.compile(re.escape(prefix) + r"\.\d+$")
    return [v for k, vs in params.items() if pat.match(k) for v in vs]


class Hold:
    def __init__(self):
        self.released = threading.Event()
        self.waiting = 0  # calls blocked on it now


class Faults:
    def __init__(self):
        self.lock = threading.Lock()
        self.clear()

    def clear(self):
        """Everything back to transparent; held calls are let go."""
        with self.lock:
            for hold in getattr(self, "holds", {}).values():
                hold.released.set()
            self.throttle = {}
            self.lose_answer = {}
            self.not_found_secs = 0.0
            self.idempotent = False
            self.token_locks = {}  # ClientToken -> Lock, so one call of a token runs at a time
            self.token_answers = {}  # ClientToken -> moto's first successful answer
            self.counts = {}
            self.first_seen = {}  # instance id -> monotonic time its RunInstances answer passed
            self.holds = {}  # action -> Hold
            self.consoles = {}  # instance id -> the console output GetConsoleOutput answers
            self.refusals = []  # [{"action", "code", "message", "when", "times" (None: always)}]
            self.bucket_sizes = {}  # action or "*" -> (burst, refill_per_sec)
            self.buckets = {}  # action -> Bucket, made on its first call
            self.throttled = {}  # action -> calls answered RequestLimitExceeded

    def configure(self, conf):
        with self.lock:
            if "throttle" in conf:
                self.throttle = {a: int(k) for a, k in conf["throttle"].items()}
            if "lose_answer" in conf:
                self.lose_answer = {a: int(k) for a, k in conf["lose_answer"].items()}
            if "not_found_secs" in conf:
                self.not_found_secs = float(conf["not_found_secs"] or 0)
            if "idempotent_client_token" in conf:
                self.idempotent = bool(conf["idempotent_client_token"])
            if "refuse_when" in conf:
                self.refusals = [
                    {
                        "action": str(r["action"]),
                        "code": str(r["code"]),
                        "message": str(r.get("message") or f"{r['code']} (stratus-faults)"),
                        "when": {str(k): str(v) for k, v in (r.get("when") or {}).items()},
                        "times": None if r.get("times") is None else int(r["times"]),
                        "status": None if r.get("status") is None else int(r["status"]),
                    }
                    for r in conf["refuse_when"] or []
                ]
            if "buckets" in conf:
                sizes = {}
                for a, b in (conf["buckets"] or {}).items():
                    burst, refill = float(b["burst"]), float(b["refill_per_sec"])
                    Bucket(burst, refill)  # checks them
                    sizes[str(a)] = (burst, refill)
                self.bucket_sizes = sizes
                self.buckets = {}
        return self.config()

    def config(self):
        with self.lock:
            return {
                "throttle": {a: k for a, k in self.throttle.items() if k > 0},
                "lose_answer": {a: k for a, k in self.lose_answer.items() if k > 0},
                "not_found_secs": self.not_found_secs,
                "idempotent_client_token": self.idempotent,
                "refuse_when": [dict(r) for r in self.refusals if r["times"] != 0],
                "buckets": {
                    a: {"burst": b, "refill_per_sec": r} for a, (b, r) in self.bucket_sizes.items()
                },
            }

    def bucket_allows(self, action):
        """Whether this call gets a token of its action's bucket (always, without a bucket)."""
        with self.lock:
            bucket = self.buckets.get(action)
            if bucket is None:
                size = self.bucket_sizes.get(action) or self.bucket_sizes.get("*")
                if size is None:
                    return True
                bucket = self.buckets[action] = Bucket(*size)
            return bucket.take()

    def note_throttled(self, action):
        with self.lock:
            self.throttled[action] = self.throttled.get(action, 0) + 1

    def take(self, table, action):
        """Whether a fault of `table` answers this call, using one of its K."""
        with self.lock:
            if table.get(action, 0) > 0:
                table[action] -= 1
                return True
            return False

    def refusal(self, action, params):
        """The (code, message) of the first refusal matching this call, using one of its times."""

        def has(name, value):
            return any(
                (k == name or k.endswith("." + name)) and value in vs for k, vs in params.items()
            )

        with self.lock:
            for r in self.refusals:
                if r["action"] != action or r["times"] == 0:
                    continue
                if all(has(k, v) for k, v in r["when"].items()):
                    if r["times"] is not None:
                        r["times"] -= 1
                    status = status_of(r["code"]) if r["status"] is None else status_line(r["status"])
                    return status, r["code"], r["message"]
        return None

    def count(self, action):
        with self.lock:
            self.counts[action] = self.counts.get(action, 0) + 1

    def wait_if_held(self, action):
        with self.lock:
            hold = self.holds.get(action)
            if hold is None:
                return
            hold.waiting += 1
        try:
            hold.released.wait()
        finally:
            with self.lock:
                hold.waiting -= 1

    def hold(self, action):
        with self.lock:
            self.holds.setdefault(action, Hold())

    def release(self, action):
        with self.lock:
            hold = self.holds.pop(action, None)
        if hold is not None:
            hold.released.set()

    def held_now(self):
        """Calls blocked now, for each action held."""
        with self.lock:
            return {a: h.waiting for a, h in self.holds.items()}

    def track(self, ids):
        with self.lock:
            if self.not_found_secs <= 0:
                return
            now = time.monotonic()
            for i in ids:
                self.first_seen.setdefault(i, now)

    def set_console(self, instance_id, output):
        with self.lock:
            if output is None:
                self.consoles.pop(instance_id, None)
            else:
                self.consoles[instance_id] = str(output)
            return len(self.consoles)

    def console(self, instance_id):
        with self.lock:
            return self.consoles.get(instance_id)

    def is_new(self, instance_id):
        with self.lock:
            seen = self.first_seen.get(instance_id)
            return seen is not None and time.monotonic() - seen < self.not_found_secs


def age_instances(ids, seconds):
    """Moves the launch time of these instances `seconds` back, in every account and region."""
    from moto.ec2.models import ec2_backends

    wanted = set(ids)
    aged = 0
    for _account, _region, backend in list(ec2_backends.iter_backends()):
        for instance in backend.all_instances():
            if instance.id in wanted:
                instance.launch_time -= datetime.timedelta(seconds=seconds)
                aged += 1
    return aged


def put_public_parameter(name, value, region):
    """An AWS-owned SSM parameter (an image id) in moto's store, in the default account."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.core.utils import utcnow
    from moto.ssm.models import Parameter, ssm_backends

    backend = ssm_backends[DEFAULT_ACCOUNT_ID][region]
    versions = backend._parameters[name]
    versions.append(
        Parameter(
            account_id=DEFAULT_ACCOUNT_ID,
            name=name,
            value=value,
            parameter_type="String",
            description=None,
            allowed_pattern=None,
            keyid=None,
            last_modified_date=utcnow(),
            version=len(versions) + 1,
            data_type="aws:ec2:image",
        )
    )
    return len(versions)


def drop_new_instances(body, is_new):
    """A DescribeInstances answer without the instances that are still new (and without the
    reservations that leaves empty); None when there is nothing to drop."""
    if not any(is_new(m.decode()) for m in INSTANCE_ID_IN_ANSWER.findall(body)):
        return None
    root = ET.fromstring(body)
    ns = root.tag[1 : root.tag.index("}")] if root.tag.startswith("{") else ""

    def q(name):
        return f"{{{ns}}}{name}" if ns else name

    reservations = root.find(q("reservationSet"))
    if reservations is None:
        return None
    for reservation in list(reservations):
        instances = reservation.find(q("instancesSet"))
        if instances is None:
            continue
        dropped = False
        for instance in list(instances):
            if is_new(instance.findtext(q("instanceId")) or ""):
                instances.remove(instance)
                dropped = True
        if dropped and len(instances) == 0:
            reservations.remove(reservation)
    text = ET.tostring(root, encoding="unicode", default_namespace=ns or None)
    return ('<?xml version="1.0" encoding="UTF-8"?>\n' + text).encode()


class FaultMiddleware:
    def __init__(self, app):
        self.app = app
        self.faults = Faults()
        # Held while an ALLOCATING_ACTIONS call is in moto (not by reset: a call may be in flight).
        self.allocating = threading.Lock()

    # -- plumbing

    @staticmethod
    def read_body(environ):
        """Reads the request body and puts it back for moto."""
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        stream = environ["wsgi.input"]
        if length > 0:
            body = stream.read(length)
        elif environ.get("wsgi.input_terminated"):
            body = stream.read()
        else:
            body = b""
        environ["wsgi.input"] = io.BytesIO(body)
        if body or "CONTENT_LENGTH" in environ:
            environ["CONTENT_LENGTH"] = str(len(body))
        return body

    def forward(self, environ):
        """moto's answer, whole: (status, headers, body)."""
        captured = {}

        def start_response(status, headers, exc_info=None):
            captured["status"] = status
            captured["headers"] = list(headers)
            return lambda data: captured.setdefault("written", []).append(data)

        result = self.app(environ, start_response)
        try:
            body = b"".join(result)
        finally:
            if hasattr(result, "close"):
                result.close()
        body = b"".join(captured.get("written", [])) + body
        return captured["status"], captured["headers"], body

    def forward_ec2(self, environ, action):
        """`forward`, one call at a time for the actions that take addresses from a subnet."""
        if action in ALLOCATING_ACTIONS:
            with self.allocating:
                return self.forward(environ)
        return self.forward(environ)

    @staticmethod
    def answer(start_response, status, body, content_type, headers=None):
        headers = [h for h in (headers or []) if h[0].lower() != "content-length"]
        if not any(h[0].lower() == "content-type" for h in headers):
            headers.append(("Content-Type", content_type))
        headers.append(("Content-Length", str(len(body))))
        start_response(status, headers)
        return [body]

    def ec2_error(self, start_response, status, code, message):
        return self.answer(
            start_response, status, error_xml(code, message), "text/xml;charset=UTF-8"
        )

    def json_answer(self, start_response, value, status="200 OK"):
        return self.answer(
            start_response, status, json.dumps(value).encode(), "application/json"
        )

    # -- requests

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        method = environ.get("REQUEST_METHOD", "GET")
        if path.startswith(CONTROL):
            return self.control(environ, start_response, path[len(CONTROL) :], method)
        if path.rstrip("/") == "/moto-api/reset" and method == "POST":
            self.faults.clear()
            return self.app(environ, start_response)
        action = self.ec2_action(environ)
        if action is None:
            return self.app(environ, start_response)
        m = re.search(r"Credential=([^/,]*)/", environ.get("HTTP_AUTHORIZATION", ""))
        if m is not None and m.group(1).startswith(DOUBLE_KEY_PREFIX):
            return self.app(environ, start_response)
        return self.ec2(environ, start_response, action)

    def ec2_action(self, environ):
        """The Action of an EC2 query request (reading the body), or None for anything else."""
        auth = environ.get("HTTP_AUTHORIZATION", "")
        m = re.search(r"Credential=[^/,]*/[^/,]*/[^/,]*/([^/,]*)/", auth)
        if auth and (m is None or m.group(1) != "ec2"):
            return None
        params = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
        if environ.get("REQUEST_METHOD") == "POST" and (
            environ.get("CONTENT_TYPE", "").startswith("application/x-www-form-urlencoded")
        ):
            body = self.read_body(environ)
            try:
                params.update(parse_qs(body.decode("utf-8"), keep_blank_values=True))
            except UnicodeDecodeError:
                pass
        actions = params.get("Action")
        if not actions:
            return None
        environ["stratus.params"] = params
        return actions[0]

    def ec2(self, environ, start_response, action):
        f = self.faults
        params = environ["stratus.params"]
        f.count(action)
        # EC2 throttles before it looks at what a call asks.
        if not f.bucket_allows(action):
            f.note_throttled(action)
            return self.ec2_error(
                start_response,
                status_of("RequestLimitExceeded"),
                "RequestLimitExceeded",
                "Request limit exceeded.",
            )
        # A refusal answers at once, before any hold: a test can hold the call that follows it.
        refused = f.refusal(action, params)
        if refused is not None:
            if refused[1] == "RequestLimitExceeded":
                f.note_throttled(action)
            return self.ec2_error(start_response, *refused)
        f.wait_if_held(action)
        if f.take(f.throttle, action):
            f.note_throttled(action)
            return self.ec2_error(
                start_response,
                status_of("RequestLimitExceeded"),
                "RequestLimitExceeded",
                "Request limit exceeded.",
            )
        if action in NOT_FOUND_ACTIONS:
            named = numbered(params, "InstanceId") + numbered(params, "ResourceId")
            new = [i for i in named if f.is_new(i)]
            if new:
                return self.ec2_error(
                    start_response,
                    "400 Bad Request",
                    "InvalidInstanceID.NotFound",
                    not_found_message(new),
                )
        token = (params.get("ClientToken") or [""])[0] if action == "RunInstances" else ""
        if token and f.idempotent:
            with f.lock:
                token_lock = f.token_locks.setdefault(token, threading.Lock())
            with token_lock:
                with f.lock:
                    first = f.token_answers.get(token)
                if first is None:
                    status, headers, body = self.forward_ec2(environ, action)
                    if status.startswith("2"):
                        with f.lock:
                            f.token_answers[token] = (status, headers, body)
                else:
                    status, headers, body = first
        else:
            status, headers, body = self.forward_ec2(environ, action)
        if action == "RunInstances" and status.startswith("2"):
            f.track([m.decode() for m in INSTANCE_ID_IN_ANSWER.findall(body)])
        if f.take(f.lose_answer, action):
            return self.ec2_error(
                start_response,
                status_of("InternalError"),
                "InternalError",
                "An internal error has occurred",
            )
        if action == "GetConsoleOutput" and status.startswith("2"):
            # moto checked the instance exists; the text set for it replaces moto's canned one.
            text = f.console((params.get("InstanceId") or [""])[0])
            if text is not None:
                encoded = base64.b64encode(text.encode()).decode()
                body = CONSOLE_OUTPUT_IN_ANSWER.sub(
                    f"<output>{encoded}</output>".encode(), body, count=1
                )
        if action == "DescribeInstances" and status.startswith("2"):
            if not numbered(params, "InstanceId"):
                try:
                    filtered = drop_new_instances(body, f.is_new)
                except ET.ParseError:
                    filtered = None
                if filtered is not None:
                    body = filtered
        return self.answer(start_response, status, body, "text/xml", headers)

    def control(self, environ, start_response, what, method):
        f = self.faults
        body = self.read_body(environ)
        try:
            arg = json.loads(body) if body.strip() else {}
        except ValueError as e:
            return self.json_answer(start_response, {"error": f"not JSON: {e}"}, "400 Bad Request")
        try:
            if what == "reset" and method == "POST":
                f.clear()
                return self.json_answer(start_response, {"reset": True})
            if what == "config" and method == "POST":
                return self.json_answer(start_response, f.configure(arg))
            if what == "config" and method == "GET":
                return self.json_answer(start_response, f.config())
            if what == "counts" and method == "GET":
                with f.lock:
                    counts = dict(f.counts)
                return self.json_answer(start_response, counts)
            if what == "throttled" and method == "GET":
                with f.lock:
                    throttled = dict(f.throttled)
                return self.json_answer(start_response, throttled)
            if what == "age" and method == "POST":
                aged = age_instances(list(arg["instance_ids"]), float(arg["seconds"]))
                return self.json_answer(start_response, {"aged": aged})
            if what == "hold" and method == "POST":
                f.hold(str(arg["action"]))
                return self.json_answer(start_response, f.held_now())
            if what == "release" and method == "POST":
                f.release(str(arg["action"]))
                return self.json_answer(start_response, f.held_now())
            if what == "console" and method == "POST":
                n = f.set_console(str(arg["instance_id"]), arg.get("output"))
                return self.json_answer(start_response, {"consoles": n})
            if what == "ssm-parameter" and method == "POST":
                version = put_public_parameter(
                    str(arg["name"]), str(arg["value"]), str(arg.get("region") or "us-east-1")
                )
                return self.json_answer(start_response, {"version": version})
            if what == "held" and method == "GET":
                return self.json_answer(start_response, f.held_now())
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            return self.json_answer(
                start_response, {"error": f"bad request: {e!r}"}, "400 Bad Request"
            )
        return self.json_answer(
            start_response, {"error": f"no {method} {CONTROL}{what}"}, "404 Not Found"
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    # As moto_server does: moto uses it to call itself.
    os.environ.setdefault("MOTO_PORT", str(args.port))
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: sys.exit(0))
    moto_app = DomainDispatcherApplication(create_backend_app)
    moto_app.debug = True
    run_simple(
        args.host,
        args.port,
        FaultMiddleware(moto_app),
        threaded=True,
        use_reloader=False,
        request_handler=MotoRequestHandler,
    )


if __name__ == "__main__":
    main()
