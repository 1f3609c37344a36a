"""Calls from grpc-core (Python grpcio) clients across many connection rotations.

Usage: rotation-load.py ADDR TOKEN CALLS

Four channels with 32 calls in flight on each (grpc.aio) call ListInvitations until CALLS
calls have been made. Prints the calls, the failures by code and the elapsed time as one
JSON line; exits 1 if any call failed. grpc-core retries by itself ("transparent retry")
the streams a server's GOAWAY refused, which the server never saw, so every failure is a
call the server had accepted. Many calls in flight per connection are what makes a client
open a stream (and send its WINDOW_UPDATE) just as the GOAWAY crosses it.
"""
import asyncio
import json
import sys
import time
from collections import Counter

import grpc

ADDR, TOKEN, CALLS = sys.argv[1], sys.argv[2], int(sys.argv[3])
CHANNELS, IN_FLIGHT_PER_CHANNEL = 4, 32
METHOD = "/invitations.v1.InvitationService/ListInvitations"
# ListInvitationsRequest { page_size: 5 }: field 1, varint.
REQUEST = b"\x08\x05"


async def main():
    remaining = CALLS
    failures, examples = Counter(), {}
    metadata = (("authorization", f"Bearer {TOKEN}"),)

    async def caller(call):
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            try:
                await call(REQUEST, metadata=metadata, timeout=10)
            except grpc.aio.AioRpcError as error:
                failures[error.code().name] += 1
                examples.setdefault(error.code().name, error.details())

    started = time.monotonic()
    channels = [grpc.aio.insecure_channel(ADDR) for _ in range(CHANNELS)]
    await asyncio.gather(*(
        caller(channel.unary_unary(METHOD))
        for channel in channels
        for _ in range(IN_FLIGHT_PER_CHANNEL)
    ))
    for channel in channels:
        await channel.close()
    print(json.dumps({
        "client": f"grpcio {grpc.__version__}",
        "calls": CALLS - max(remaining, 0),
        "failures": dict(failures),
        "examples": examples,
        "elapsed_s": round(time.monotonic() - started, 2),
    }))
    return 1 if failures else 0


sys.exit(asyncio.run(main()))
