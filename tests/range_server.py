"""A static HTTP server with range requests that counts the body bytes it serves.

Run as its own process (``python range_server.py FOLDER``): it prints its port on the first
line of stdout. ``GET /__served__`` answers the bytes and requests served so far as
``BYTES REQUESTS``; ``GET /__reset__`` sets both to 0; ``GET /__resets__/NAME/N`` makes the next
N range requests for NAME end in a TCP reset. A separate process, because GDAL makes some of its
requests while rasterio holds Python's GIL: a server thread in the same process would never
answer them.
"""

import functools
import http.server
import os
import re
import socket
import struct
import sys

COUNTS = [0, 0]
RESETS: dict[str, int] = {}


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def send_head(self):
        if self.path.startswith("/__"):
            return self._control()
        path = self.translate_path(self.path)
        if not os.path.isfile(path):
            return super().send_head()
        name = os.path.basename(path)
        if self.headers.get("Range") and RESETS.get(name, 0) > 0:
            RESETS[name] -= 1
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                       struct.pack("ii", 1, 0))
            self.connection.close()  # a TCP reset, no response
            self.close_connection = True
            return None
        size = os.path.getsize(path)
        first, last = 0, size - 1
        match = re.match(r"bytes=(\d+)-(\d*)$", self.headers.get("Range", ""))
        if match:
            first = int(match.group(1))
            last = min(int(match.group(2)) if match.group(2) else last, size - 1)
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {first}-{last}/{size}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(last - first + 1))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", f'"{os.stat(path).st_mtime_ns}-{size}"')
        self.end_headers()
        f = open(path, "rb")  # noqa: SIM115 (closed by the base class)
        f.seek(first)
        self._left = last - first + 1
        return f

    def copyfile(self, source, outputfile):
        data = source.read(self._left)
        COUNTS[0] += len(data)
        COUNTS[1] += 1
        outputfile.write(data)

    def finish(self):
        try:
            super().finish()
        except OSError:  # the connection this handler reset
            pass

    def _control(self):
        parts = self.path.strip("/").split("/")
        if parts[0] == "__reset__":
            COUNTS[:] = [0, 0]
        elif parts[0] == "__resets__":
            RESETS[parts[1]] = int(parts[2])
        body = f"{COUNTS[0]} {COUNTS[1]}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        return None


class Server(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        pass  # resets and clients that hang up are the point of some tests


def main() -> None:
    server = Server(("127.0.0.1", 0), functools.partial(RangeHandler, directory=sys.argv[1]))
    print(server.server_address[1], flush=True)
    server.serve_forever(poll_interval=0.05)


if __name__ == "__main__":
    main()
