"""Random malformed messages through the decoder: nothing but ProtocolError may come out."""

from __future__ import annotations

import copy
import json
import random

from protocol_samples import all_samples

from stabledreamer_protocol import Message, ProtocolError, decode, encode

ROUNDS = 3000

ODD_VALUES = [
    None,
    True,
    0,
    -1,
    2**31,
    2**64,
    10**30,
    -(10**30),
    1.5,
    -0.0,
    1e308,
    "",
    "x" * 300,
    "../../x",
    "\u0000",
    "é",
    [],
    [1, "a", None],
    [[[]]],
    {},
    {"a": {"b": {}}},
    {"name": "position", "dtype": "<f4", "shape": [1, 3], "nbytes": 12},
]


def odd(rng: random.Random):
    return copy.deepcopy(rng.choice(ODD_VALUES))


def mutate_json(rng: random.Random, node):
    """Change one random leaf (or container) somewhere in a JSON tree."""
    if isinstance(node, dict) and node and rng.random() < 0.75:
        key = rng.choice(list(node))
        choice = rng.random()
        if choice < 0.15:
            del node[key]
        elif choice < 0.25:
            node[rng.choice(["extra", "v", "type", "0", "name"])] = odd(rng)
        elif choice < 0.6 and isinstance(node[key], dict | list):
            mutate_json(rng, node[key])
        else:
            node[key] = odd(rng)
        return node
    if isinstance(node, list) and node and rng.random() < 0.75:
        i = rng.randrange(len(node))
        if rng.random() < 0.5 and isinstance(node[i], dict | list):
            mutate_json(rng, node[i])
        elif rng.random() < 0.5:
            node[i] = odd(rng)
        else:
            node.append(odd(rng))
        return node
    return odd(rng)


def malformed(rng: random.Random, valid: list[list[bytes]]) -> list:
    frames = list(rng.choice(valid))
    kind = rng.randrange(7)
    if kind == 0:  # structural JSON changes
        header = json.loads(frames[0])
        for _ in range(rng.randint(1, 3)):
            header = mutate_json(rng, header)
        frames[0] = json.dumps(header).encode()
    elif kind == 1:  # flipped bytes in the header
        h = bytearray(frames[0])
        for _ in range(rng.randint(1, 4)):
            h[rng.randrange(len(h))] = rng.randrange(256)
        frames[0] = bytes(h)
    elif kind == 2:  # truncated or extended frames
        i = rng.randrange(len(frames))
        cut = rng.randint(0, len(frames[i]))
        frames[i] = frames[i][:cut] if rng.random() < 0.5 else frames[i] + bytes(cut % 17 + 1)
    elif kind == 3:  # dropped, duplicated, reordered frames
        op = rng.randrange(3)
        if op == 0:
            del frames[rng.randrange(len(frames))]
        elif op == 1:
            frames.insert(rng.randrange(len(frames) + 1), rng.choice(frames))
        else:
            rng.shuffle(frames)
    elif kind == 4:  # random bytes
        frames = [rng.randbytes(rng.randint(0, 200)) for _ in range(rng.randint(0, 11))]
    elif kind == 5:  # buffers swapped between messages
        other = rng.choice(valid)
        frames = [frames[0], *other[1:]]
    else:  # non-bytes frames
        frames[rng.randrange(len(frames))] = rng.choice([None, 5, "str", 1.5, [b"x"], object()])
    return frames


def test_fuzz_decoder_raises_only_protocol_error():
    rng = random.Random(12345)
    valid = [[bytes(f) for f in encode(s)] for s in all_samples()]
    outcomes = {"ok": 0}
    for _ in range(ROUNDS):
        frames = malformed(rng, valid)
        try:
            msg = decode(frames)
        except ProtocolError as e:
            assert isinstance(e.code, str) and e.code
            outcomes[e.code] = outcomes.get(e.code, 0) + 1
        else:
            assert isinstance(msg, Message)  # some mutations leave a valid message
            outcomes["ok"] += 1
    assert sum(outcomes.values()) == ROUNDS
    assert len(outcomes) >= 10, outcomes  # the fuzz reaches many different checks
