"""The catalog pages over HTTP on loopback: a read-only static server that rebuilds the pages when the mirror changes.

A publish replaces a repo (new `main` commit), so before answering a request the server compares the
mirror's fingerprint (at most once a second) and rebuilds if it moved: a reload shows the new model.
"""
from __future__ import annotations

import contextlib
import shutil
import sys
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from ..errors import ZooError
from .pages import CSP


class _Handler(SimpleHTTPRequestHandler):
    server: "SiteServer"

    def __init__(self, request, client_address, server):
        server.refresh()
        super().__init__(request, client_address, server, directory=str(server.site_dir))

    def list_directory(self, path):  # only generated pages are served, never a folder listing
        self.send_error(404, "Not found")
        return None

    def do_POST(self):  # noqa: N802 (http.server's naming)
        self.send_error(405, "read-only")

    def end_headers(self):
        self.send_header("Content-Security-Policy", CSP)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Cache-Control", "no-cache")
        super().end_headers()

    def log_message(self, format, *args):  # quiet: `zoo serve` prints its own one line
        pass

    def log_error(self, format, *args):  # but failures are said, with the path asked for (escaped: it is the client's)
        asked = ascii(getattr(self, "path", "?")[:200])
        sys.stderr.write(f"zoo serve: web catalog: {self.address_string()} {asked} {format % args}\n")


class SiteServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, mirror_root, site_dir: Path, address: tuple[str, int], endpoint: str | None = None):
        from . import build_site, mirror_state

        self.mirror_root, self.endpoint = Path(mirror_root), endpoint
        self._root, self._version = Path(site_dir), 0  # each build goes to a new folder: no request sees a swap
        self._build, self._state = build_site, mirror_state
        self._lock = threading.Lock()
        self._checked = 0.0
        self._built_for = self._state(self.mirror_root)
        self.site_dir = build_site(self.mirror_root, self._root / "0", endpoint=endpoint)
        try:
            super().__init__(address, _Handler)
        except OSError as error:
            raise ZooError(f"cannot serve the web catalog on {address[0]}:{address[1]} ({error}); pass another "
                           f"--web-port, or --no-web") from None

    def refresh(self) -> None:
        with self._lock:
            now = time.monotonic()
            if now - self._checked < 1.0:
                return
            self._checked = now
            state = self._state(self.mirror_root)
            if state == self._built_for:
                return
            try:
                previous = self.site_dir
                self.site_dir = self._build(self.mirror_root, self._root / str(self._version + 1),
                                            endpoint=self.endpoint)
                self._version += 1
                self._built_for = state
                stale = self._root / str(self._version - 2)  # two builds old: its requests have long finished
                if stale != previous and stale.exists():
                    shutil.rmtree(stale, ignore_errors=True)
                print("zoo serve: the mirror changed; catalog pages rebuilt", file=sys.stderr, flush=True)
            except Exception as error:  # keep serving the last good pages
                print(f"zoo serve: could not rebuild the catalog pages: {error}", file=sys.stderr, flush=True)

    @contextlib.contextmanager
    def running(self):
        thread = threading.Thread(target=self.serve_forever, name="zoo-site", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self.shutdown()
            self.server_close()
            thread.join(5)
