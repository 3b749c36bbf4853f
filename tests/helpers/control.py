#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
# control.py - one request to an agent's control socket, straight over the
# socket (tests that judge the agent do not go through hvresync's own CLI).
# The API is one JSON object per line each way (docs/control-api.md).
#
#   import control; control.call(SOCK, {"Method": "GetJob", "Job": ID})
#   control.py SOCK 'JSON'     send one raw line, print the reply line
import json
import socket
import sys


def raw(sock, line, timeout=30):
    """Send one request line, return the reply line (bytes, no newline)."""
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(timeout)
    try:
        s.connect(sock)
        s.sendall(line + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            c = s.recv(65536)
            if not c:
                break
            buf += c
    finally:
        s.close()
    return buf.strip()


def call(sock, req, timeout=30):
    """One request object; the reply as an object (ValueError if not JSON)."""
    return json.loads(raw(sock, json.dumps(req).encode(), timeout))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: control.py SOCK 'JSON'")
    print(raw(sys.argv[1], sys.argv[2].encode()).decode())
