"""Thousands of malformed messages at the live service while a real job runs: every one that can
be attributed gets an ``error``, the service keeps serving, and the job completes."""

from __future__ import annotations

import json
import random
import time

import numpy as np
import zmq
from server_helpers import FAST, TARGET

from stabledreamer_protocol import Error, Fetch, Hello, PreviewAck, Submit, codec, decode, encode
from stabledreamer_protocol.client import ResultDownloaded
from stabledreamer_protocol.keys import KeyFiles, apply_client_curve

N_MESSAGES = 2400


def header(**kw) -> bytes:
    base = {"v": 1, "type": "ping", "id": "m1"}
    base.update(kw)
    return json.dumps(base).encode()


def malformed(rng: random.Random) -> list[bytes]:
    """One malformed multipart message (no identity frame: the DEALER adds none)."""
    # A demo submit with initial points (refused: "unsupported", reconstructions take no
    # init_points) with a buffer, so no mutation creates a job.
    points = np.zeros((5, 3), np.float32)
    submit = Submit(job="fz", target_format="demo", init_points=points)
    valid = [bytes(f) for f in encode(submit)]
    kind = rng.randrange(16)
    if kind == 0:  # random bytes
        return [rng.randbytes(rng.randrange(0, 300))]
    if kind == 1:  # random frames
        return [rng.randbytes(rng.randrange(0, 50)) for _ in range(rng.randrange(1, 14))]
    if kind == 2:  # bad JSON
        text = json.dumps({"v": 1, "type": "hello", "id": "x"})
        cut = rng.randrange(1, len(text))
        return [text[:cut].encode()]
    if kind == 3:  # not an object / NaN / duplicate keys
        return [rng.choice([b"[1,2]", b"null", b'{"v": NaN}', b'{"v":1,"v":1}', b'"s"'])]
    if kind == 4:  # wrong versions
        return [header(v=rng.choice([0, 2, 99, "1", None, 1.0, True]))]
    if kind == 5:  # unknown types and events sent as commands
        return [header(type=rng.choice(["explode", "", "x" * 500, "result", "preview", 7]))]
    if kind == 6:  # bad ids and job fields
        return [header(id=rng.choice(["", "a b", "x" * 65, 5, None]), job="../x")]
    if kind == 7:  # lying array length
        h = json.loads(valid[0])
        h["buffers"][0]["nbytes"] += rng.choice([-1, 1, 1000])
        return [json.dumps(h).encode(), *valid[1:]]
    if kind == 8:  # huge declared shapes
        h = json.loads(valid[0])
        h["buffers"][0]["shape"] = [rng.choice([2**31, 2**40, 10**12])]
        h["buffers"][0]["nbytes"] = h["buffers"][0]["shape"][0]
        return [json.dumps(h).encode(), *valid[1:]]
    if kind == 9:  # wrong frame counts
        return rng.choice([valid[:1], valid + [b"extra"], valid + [b""] * 9])
    if kind == 10:  # bad dtypes and buffer names
        h = json.loads(valid[0])
        h["buffers"][0][rng.choice(["dtype", "name"])] = rng.choice(["O", ">f4", "evil", 3])
        return [json.dumps(h).encode(), *valid[1:]]
    if kind == 11:  # bad body fields
        h = json.loads(valid[0])
        h["body"][rng.choice(["seed", "preset", "overrides", "target", "prompt"])] = rng.choice(
            [-1, [], {}, "x" * 3000, 1.5, True]
        )
        return [json.dumps(h).encode(), *valid[1:]]
    if kind == 12:  # oversized header
        return [header(body={"pad": "x" * 70_000})]
    if kind == 13:  # commands about jobs that do not exist
        msg = rng.choice(
            [Fetch(job="nope", file="gaussians.ply", index=rng.randrange(9)), PreviewAck(job="q")]
        )
        return [bytes(f) for f in encode(msg)]
    if kind == 14:  # a mutated valid message
        frames = [bytearray(f) for f in valid]
        f = rng.randrange(len(frames))
        if frames[f]:
            i = rng.randrange(len(frames[f]))
            frames[f][i] = rng.randrange(256)
        return [bytes(f) for f in frames]
    return [header(type="submit", job="fz2", body={"prompt": "x" * 2500})]  # prompt too long


def test_fuzz_keeps_serving(server):
    rng = random.Random(1234)
    ctx = zmq.Context.instance()
    keys = KeyFiles(server.keys)
    socks = []
    for _ in range(4):
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.SNDHWM, 100_000)
        apply_client_curve(s, keys.client_secret, keys.server_public)
        s.connect(server.endpoint)
        socks.append(s)
    with server.client() as c:
        c.handshake(timeout_s=10)
        job = c.submit(
            target_format="ply",
            target_file=TARGET,
            preset="smoke",
            seed=5,
            overrides={**FAST, "reconstruct.steps": 8},
        )
        errors = 0
        try:
            time.sleep(0.2)
            for i in range(N_MESSAGES):
                sock = socks[i % len(socks)]
                sock.send_multipart(malformed(rng), copy=True)
                while sock.poll(0):  # read replies as they come, as a real client would
                    frames = sock.recv_multipart()
                    if isinstance(decode(frames, direction="event"), Error):
                        errors += 1
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                ready = [s for s in socks if s.poll(0)]
                if not ready:
                    if errors >= 0.9 * N_MESSAGES:
                        break
                    time.sleep(0.05)
                for s in ready:
                    if isinstance(codec.recv(s, direction="event"), Error):
                        errors += 1
        finally:
            for s in socks:
                s.close(0)
        # Every message but the preview acks (no reply) got an error...
        assert errors >= 0.9 * N_MESSAGES, errors
        # A frame over MAXMSGSIZE: libzmq drops that connection (no reply is possible).
        big = ctx.socket(zmq.DEALER)
        big.setsockopt(zmq.LINGER, 0)
        apply_client_curve(big, keys.client_secret, keys.server_public)
        big.connect(server.endpoint)
        try:
            big.send(b"\0" * (64 * 2**20 + 1))
            assert big.poll(500) == 0
        finally:
            big.close(0)
        # ...the service still answers...
        hello = c.send(Hello(software="after-fuzz"))
        assert c.wait_for(lambda e: isinstance(e, Hello) and e.re == hello, 10) is not None
        # ...and the real job completes.
        hit = c.wait_for(lambda e: isinstance(e, ResultDownloaded | Error) and e.job == job, 90)
        assert isinstance(hit, ResultDownloaded), (hit, server.log())
        assert hit.files["gaussians.ply"].startswith(b"ply")
    assert server.proc.poll() is None
