"""Uses a BrowserSession the way an automation client does, for `make demo`
(scripts/demo.sh): connects to its DevTools websocket URL through the node's
gateway with the session token, opens a page and reads its title back over
the Chrome DevTools Protocol. Standard library only; loopback only.

  demo-cdp.py --url WS_URL --token TOKEN   prints one line: the browser's
                                           version and the page's title
"""

import argparse
import base64
import json
import os
import socket
import struct
import sys
import time
import urllib.parse

PAGE = "data:text/html,<title>hello from a BrowserSession</title>"


class WebSocket:
    """The client side of RFC 6455, text frames only: enough for CDP."""

    def __init__(self, url: str, timeout: float = 15.0):
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "ws" or not parts.hostname.startswith("127."):
            raise SystemExit(f"refusing to dial {parts.scheme}://{parts.hostname}: loopback ws only")
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        self.sock.sendall(
            (
                f"GET {target} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise SystemExit("the gateway closed the connection during the handshake")
            head += chunk
        status = head.split(b"\r\n", 1)[0].decode(errors="replace")
        if " 101 " not in status + " ":
            raise SystemExit(f"the gateway refused the websocket: {status}")
        self.buffer = head.split(b"\r\n\r\n", 1)[1]

    def send(self, text: str) -> None:
        payload = text.encode()
        header = bytes([0x81])
        if len(payload) < 126:
            header += bytes([0x80 | len(payload)])
        elif len(payload) < 1 << 16:
            header += bytes([0x80 | 126]) + struct.pack(">H", len(payload))
        else:
            header += bytes([0x80 | 127]) + struct.pack(">Q", len(payload))
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(header + mask + masked)

    def _read(self, n: int) -> bytes:
        while len(self.buffer) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise SystemExit("the gateway closed the websocket")
            self.buffer += chunk
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def receive(self) -> str:
        message = b""
        while True:
            first, second = self._read(2)
            length = second & 0x7F
            if length == 126:
                (length,) = struct.unpack(">H", self._read(2))
            elif length == 127:
                (length,) = struct.unpack(">Q", self._read(8))
            payload = self._read(length)
            opcode = first & 0x0F
            if opcode in (0x1, 0x0):
                message += payload
                if first & 0x80:
                    return message.decode()
            elif opcode == 0x8:
                raise SystemExit("the gateway closed the websocket")


class Cdp:
    def __init__(self, url: str):
        self.ws = WebSocket(url)
        self.next_id = 0

    def call(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        self.ws.send(json.dumps(message))
        while True:
            answer = json.loads(self.ws.receive())
            if answer.get("id") == self.next_id:
                if "error" in answer:
                    raise SystemExit(f"{method}: {answer['error']}")
                return answer["result"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--token", required=True)
    args = parser.parse_args()
    separator = "&" if "?" in args.url else "?"
    cdp = Cdp(f"{args.url}{separator}token={urllib.parse.quote(args.token)}")
    version = cdp.call("Browser.getVersion")["product"]
    target = cdp.call("Target.createTarget", {"url": "about:blank"})["targetId"]
    session = cdp.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
    cdp.call("Page.enable", session=session)
    cdp.call("Page.navigate", {"url": PAGE}, session=session)
    title = ""
    for _ in range(50):
        title = cdp.call(
            "Runtime.evaluate", {"expression": "document.title", "returnByValue": True}, session=session
        )["result"].get("value", "")
        if title:
            break
        time.sleep(0.1)
    print(f"{version}; opened a page titled {title!r}")


if __name__ == "__main__":
    try:
        main()
    except (OSError, ValueError) as error:
        sys.exit(f"demo-cdp: {error}")
