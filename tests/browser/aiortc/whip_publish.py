"""A WHIP publisher from an independent WebRTC stack (aiortc): publishes a synthetic video
track (a moving gradient, VP8) into a room of a Switchboard server, for the media tests.

    python3 whip_publish.py BASE_URL ROOM TOKEN SECONDS

Prints one JSON line per step ({"step": "answer", "status": 201, "location": ...}, then
{"step": "connected"}, then {"step": "deleted", "status": 200}) and exits 0, or prints
{"error": ...} and exits 1.
"""

import asyncio
import fractions
import json
import sys
import time
import urllib.request

import numpy
from aiortc import RTCPeerConnection, RTCSessionDescription, VideoStreamTrack
from av import VideoFrame


class Gradient(VideoStreamTrack):
    """320x240 frames whose colours shift every frame, so every frame differs."""

    def __init__(self):
        super().__init__()
        self.n = 0

    async def recv(self):
        pts, time_base = await self.next_timestamp()
        self.n += 1
        # Computed in int32, wrapped into bytes: uint8 arithmetic would overflow.
        row = (numpy.arange(320, dtype=numpy.int32) + self.n * 4) % 256
        image = numpy.stack([numpy.tile(row, (240, 1))] * 3, axis=-1)
        image[:, :, 1] = (image[:, :, 1] // 2 + self.n) % 256
        image = image.astype(numpy.uint8)
        frame = VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts = pts
        frame.time_base = time_base or fractions.Fraction(1, 90000)
        return frame


def say(**fields):
    print(json.dumps(fields), flush=True)


def request(method, url, token, body=None, content_type=None):
    req = urllib.request.Request(url, data=body, method=method)
    req.add_header("Authorization", f"Bearer {token}")
    if content_type:
        req.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(req, timeout=10) as res:
            return res.status, dict(res.headers), res.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read().decode()


async def main(base, room, token, seconds):
    pc = RTCPeerConnection()
    pc.addTransceiver(Gradient(), direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    status, headers, answer = await asyncio.to_thread(
        request, "POST", f"{base}/whip/{room}", token,
        pc.localDescription.sdp.encode(), "application/sdp")
    location = headers.get("Location") or headers.get("location")
    say(step="answer", status=status, location=location)
    if status != 201:
        say(error=f"WHIP answered {status}: {answer}")
        return 1
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
    deadline = time.monotonic() + 15
    while pc.connectionState != "connected":
        if time.monotonic() > deadline:
            say(error=f"not connected: {pc.connectionState}")
            return 1
        await asyncio.sleep(0.1)
    say(step="connected")
    await asyncio.sleep(seconds)
    status, _, _ = await asyncio.to_thread(request, "DELETE", f"{base}{location}", token)
    say(step="deleted", status=status)
    await pc.close()
    return 0


if __name__ == "__main__":
    base, room, token, seconds = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    sys.exit(asyncio.run(main(base, room, token, seconds)))
