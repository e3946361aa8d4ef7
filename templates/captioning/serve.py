#!/usr/bin/env python3
"""Serve the captioning template's data folder over HTTP on 127.0.0.1 (the demo's "internet").

    python serve.py                  # http://127.0.0.1:8765, the base of the committed captions.tsv URLs
    python serve.py --port 0         # a free port; the first stdout line is the base URL, e.g. http://127.0.0.1:40123

The first line on stdout is always the base URL (then the server runs until interrupted or terminated); request
logs go to stderr (``--quiet`` drops them). ``data/images/img_0000.png`` is at ``<base>/images/img_0000.png`` and
the held-out images at ``<base>/heldout/images/...``, matching the URLs of ``generate_data.py --tsv --base-url
<base>``. Only files below the folder are served, read-only; directory listings are off.
"""

from __future__ import annotations

import argparse
import functools
import signal
import sys
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

HERE = Path(__file__).resolve().parent


class Handler(SimpleHTTPRequestHandler):
    quiet = False

    def list_directory(self, path):  # no listings: only files are served
        self.send_error(404, "not found")

    def log_message(self, format, *args):
        if not self.quiet:
            super().log_message(format, *args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", default=str(HERE / "data"), help="folder to serve (default: this template's data/)")
    parser.add_argument("--port", type=int, default=8765, help="port on 127.0.0.1; 0 picks a free one (default 8765)")
    parser.add_argument("--quiet", action="store_true", help="no request log on stderr")
    args = parser.parse_args()
    root = Path(args.dir).resolve()
    if not root.is_dir():
        parser.error(f"--dir {root} is not a directory")
    Handler.quiet = args.quiet
    server = ThreadingHTTPServer(("127.0.0.1", args.port), functools.partial(Handler, directory=str(root)))
    server.daemon_threads = True
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # a clean stop on terminate(), like Ctrl-C
    host, port = server.server_address[:2]
    print(f"http://{host}:{port}", flush=True)
    try:
        server.serve_forever()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
