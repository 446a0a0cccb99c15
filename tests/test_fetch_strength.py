"""zoo.fetch against a hand-filled Hugging Face cache (the layout an air-gapped site copies in), offline:
a verified cached file is returned without any download, a corrupt one is removed (blob and link) and
never returned, and a missing one says how to prefetch it."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from zoo.catalog import Entry
from zoo.errors import IntegrityError, NotCachedError
from zoo.fetch import fetch

PAYLOAD = b"trunk bytes " * 50
REVISION = "0123456789abcdef" * 2 + "01234567"


def _entry(payload: bytes = PAYLOAD) -> Entry:
    return Entry("sup-flowers-r18", {"repo_id": "someone/flowers-r18", "revision": REVISION, "files": {
        "model.safetensors": {"sha256": hashlib.sha256(payload).hexdigest(), "size": len(payload)}}})


def _fill(cache: Path, data: bytes, as_blob: bool = True) -> Path:
    """snapshots/<revision>/model.safetensors, as huggingface_hub writes it (a link to blobs/<sha>)."""
    repo = cache / "models--someone--flowers-r18"
    snapshot = repo / "snapshots" / REVISION / "model.safetensors"
    snapshot.parent.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REVISION)
    if as_blob:
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir()
        blob.write_bytes(data)
        snapshot.symlink_to(os.path.relpath(blob, snapshot.parent))
    else:
        snapshot.write_bytes(data)
    return snapshot


@pytest.mark.parametrize("as_blob", [True, False])
def test_verified_cached_file_is_returned_offline(hub_cache, offline, as_blob):
    snapshot = _fill(hub_cache, PAYLOAD, as_blob)
    assert fetch(_entry(), "model.safetensors") == str(snapshot)
    assert fetch(_entry(), "model.safetensors", revision=REVISION) == str(snapshot)
    # an explicit expectation overrides the catalog's
    other = b"other"
    with pytest.raises(IntegrityError):
        fetch(_entry(), "model.safetensors", expected={"sha256": hashlib.sha256(other).hexdigest(), "size": 5})


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_corrupt_cached_file_is_removed_and_refused_offline(hub_cache, offline, damage):
    snapshot = _fill(hub_cache, PAYLOAD)
    blob = Path(os.path.realpath(snapshot))
    data = bytearray(PAYLOAD)
    if damage == "flip":
        data[7] ^= 0xFF
    else:
        data = data[:100]
    blob.write_bytes(bytes(data))
    with pytest.raises(IntegrityError) as caught:
        fetch(_entry(), "model.safetensors")
    message = str(caught.value)
    assert message.startswith("sup-flowers-r18: the cached model.safetensors was corrupt (sha256/size mismatch) "
                              "and was removed, and a fresh copy cannot be fetched now.")
    assert "zoo download sup-flowers-r18" in message and "someone/flowers-r18" in message
    assert not blob.exists() and not os.path.lexists(snapshot)


def test_missing_file_offline_says_how_to_prefetch(hub_cache, offline):
    with pytest.raises(NotCachedError) as caught:
        fetch(_entry(), "model.safetensors")
    message = str(caught.value)
    assert message.startswith("sup-flowers-r18: cannot get model.safetensors from someone/flowers-r18@")
    assert "It is not in the local cache and HF_HUB_OFFLINE is set" in message
    assert "Prefetch it while online with `zoo download sup-flowers-r18`" in message
    assert "HF_ENDPOINT at a mirror that serves someone/flowers-r18." in message
    assert message.endswith("(LocalEntryNotFoundError)")
    assert not list(hub_cache.rglob("model.safetensors"))


@pytest.mark.parametrize("bad", ["", "-x", "a..b", "main.lock", "v1/", "v1.", "a b", 7, "x" * 201])
def test_check_revision_refuses_what_is_not_a_commit_or_ref(bad):
    from zoo.errors import InvalidArgumentError, shorten
    from zoo.fetch import check_revision

    with pytest.raises(InvalidArgumentError) as caught:
        check_revision(_entry(), bad)
    assert str(caught.value) == (f"revision must be a commit hash (40 hex characters) or a branch/tag name, not "
                                 f"{shorten(bad)}; the catalog pins sup-flowers-r18 at {REVISION}")


def test_check_revision_warns_only_for_unpinned_refs():
    import warnings

    from zoo.errors import UnpinnedRevisionWarning
    from zoo.fetch import check_revision

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_revision(_entry(), None) is None
        assert check_revision(_entry(), REVISION) == REVISION
        assert check_revision(_entry(), "f" * 40) == "f" * 40
    with pytest.warns(UnpinnedRevisionWarning) as caught:
        assert check_revision(_entry(), "main") == "main"
    assert str(caught[0].message) == (
        "revision='main' is a branch or tag, not a commit: sup-flowers-r18's files are checked only against the "
        "zoo.json that the server itself returns for it, not against the catalog. Pin a commit (the catalog's is "
        f"{REVISION}) to get files that cannot change.")


def test_offline_revision_lookup_and_fix_text(hub_cache, offline):
    from zoo.fetch import _offline_fix, resolve_revision

    assert resolve_revision(_entry(), "main") == "main"  # offline: the cache's refs decide
    assert resolve_revision(_entry(), REVISION) == REVISION
    assert _offline_fix(_entry()) == (
        "It is not in the local cache and HF_HUB_OFFLINE is set (or the Hub is unreachable). Prefetch it while "
        "online with `zoo download sup-flowers-r18` (uses HF_HOME / HF_HUB_CACHE), or point HF_ENDPOINT at a "
        "mirror that serves someone/flowers-r18.")


# ---- through a real Hub-compatible server: olah on loopback serving a two-commit mirror repo ----------------
# (a module-scoped server: about a second to start, so a mutation run that forks a pytest per mutant still fits)

import http.server  # noqa: E402
import threading  # noqa: E402
from types import SimpleNamespace  # noqa: E402

from zoo.errors import UnknownRevisionError, shorten  # noqa: E402
from zoo.fetch import _offline_fix, download, resolve_revision  # noqa: E402

TINY_REPO = "zoo-tests/fetch-tiny"
FIRST, SECOND = b"first trunk bytes " * 40, b"second trunk bytes " * 40


def _pinned(commit: str, payload: bytes = FIRST, repo_id: str = TINY_REPO) -> Entry:
    return Entry("sup-flowers-r18", {"repo_id": repo_id, "revision": commit, "files": {
        "model.safetensors": {"sha256": hashlib.sha256(payload).hexdigest(), "size": len(payload)}}})


@pytest.fixture(scope="module")
def tiny_hub(tmp_path_factory):
    from zoo.mirror import commit_files, serve

    root = tmp_path_factory.mktemp("fetch-mirror")
    first = commit_files(root, TINY_REPO, {"model.safetensors": FIRST}, "first")
    second = commit_files(root, TINY_REPO, {"model.safetensors": SECOND}, "second")
    with serve(root) as endpoint:
        yield SimpleNamespace(endpoint=endpoint, first=first, second=second)


def _point_at(monkeypatch, endpoint: str) -> None:
    """What HF_ENDPOINT does when huggingface_hub is imported (it was imported with conftest's port)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setenv("HF_ENDPOINT", endpoint)


@pytest.fixture
def online(tiny_hub, hub_cache, monkeypatch):
    _point_at(monkeypatch, tiny_hub.endpoint)
    return tiny_hub


@pytest.fixture
def nothing_listens(hub_cache, monkeypatch) -> str:
    from zoo.mirror import free_port

    endpoint = f"http://127.0.0.1:{free_port()}"
    _point_at(monkeypatch, endpoint)
    return endpoint


class _Answer(http.server.BaseHTTPRequestHandler):
    """Answers HEAD and GET with the statuses and headers a test sets (answers olah never gives)."""
    head_status, get_status, headers_to_send = 500, 500, {}

    def _answer(self, status):
        self.send_response(status)
        headers = {"Content-Length": "0", **self.headers_to_send} if status == 200 else {"Content-Length": "0"}
        if status != 200:  # an error's headers (X-Error-Code) without the file's metadata
            headers.update({k: v for k, v in self.headers_to_send.items() if k.startswith("X-Error")})
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()

    def do_HEAD(self):
        self._answer(self.head_status)

    def do_GET(self):
        self._answer(self.get_status)

    def log_message(self, *args):
        pass


@pytest.fixture
def answering(hub_cache, monkeypatch):
    """A loopback HTTP server answering every request as set; returns the function that sets it."""
    handler = type("Handler", (_Answer,), {})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _point_at(monkeypatch, f"http://127.0.0.1:{server.server_address[1]}")

    def answer(head: int, get: int | None = None, **headers):
        handler.head_status, handler.get_status = head, get or head
        handler.headers_to_send = {key.replace("_", "-"): value for key, value in headers.items()}
    yield answer
    server.shutdown()
    server.server_close()


@pytest.fixture(params=[1, 2], ids=["drops-1", "drops-2"])
def drops_connections(request, tiny_hub, hub_cache, monkeypatch):
    """A loopback TCP relay to olah that closes its first 1 or 2 connections unanswered (olah itself
    sometimes resets the first lookup of a repo); yields (drops, the list of connections it accepted)."""
    import contextlib
    import socket
    from urllib.parse import urlsplit

    olah_port = urlsplit(tiny_hub.endpoint).port
    listener = socket.create_server(("127.0.0.1", 0))
    accepted = []

    def pipe(source, target):
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                target.sendall(data)
        with contextlib.suppress(OSError):
            target.shutdown(socket.SHUT_WR)

    def relay():
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            accepted.append(client)
            if len(accepted) <= request.param:
                client.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", olah_port))
            threading.Thread(target=pipe, args=(client, upstream), daemon=True).start()
            threading.Thread(target=pipe, args=(upstream, client), daemon=True).start()
    threading.Thread(target=relay, daemon=True).start()
    _point_at(monkeypatch, f"http://127.0.0.1:{listener.getsockname()[1]}")
    yield request.param, accepted
    listener.close()


def test_resolve_revision_asks_the_server_for_the_exact_commit(online):
    entry = _pinned(online.first)
    assert resolve_revision(entry, "main") == online.second  # a branch: the commit it names now
    assert resolve_revision(entry, online.second) == online.second
    assert resolve_revision(_pinned(online.second), online.first) == online.first


def test_the_pinned_revision_needs_no_server(nothing_listens):
    entry = _pinned("c" * 40)
    assert resolve_revision(entry, "c" * 40) == "c" * 40
    with pytest.raises(NotCachedError) as caught:
        resolve_revision(entry, "main")
    assert str(caught.value) == ("sup-flowers-r18: cannot look up revision 'main' (ConnectError: '[Errno 111] "
                                 f"Connection refused'). {_offline_fix(entry)}")


@pytest.mark.parametrize("revision, status", [("no-such-branch", 401), ("f" * 40, 500)])
def test_unknown_revision_names_the_status_and_the_pin(online, revision, status):
    entry = _pinned(online.first)
    with pytest.raises(UnknownRevisionError) as caught:
        resolve_revision(entry, revision)
    assert str(caught.value) == (f"sup-flowers-r18: the server (HF_ENDPOINT) does not know revision "
                                 f"{shorten(revision)} of {TINY_REPO} (HTTP {status}); the catalog pins "
                                 f"{online.first} (leave revision= out to use it)")


def test_a_dropped_connection_is_retried_once_and_only_once(drops_connections, tiny_hub):
    drops, accepted = drops_connections
    entry = _pinned(tiny_hub.first)
    if drops == 1:
        assert resolve_revision(entry, "main") == tiny_hub.second
        assert len(accepted) == 2
    else:
        with pytest.raises(NotCachedError, match="^sup-flowers-r18: cannot look up revision 'main' "):
            resolve_revision(entry, "main")
        assert len(accepted) == 2  # no third try


def test_a_programming_error_in_the_lookup_is_not_turned_into_not_cached(online):
    from huggingface_hub.errors import HFValidationError

    with pytest.raises(HFValidationError):  # huggingface_hub's own refusal of the repo id, unchanged
        resolve_revision(_pinned(online.first, repo_id="bad//repo"), "main")


def test_download_returns_the_revisions_own_file(online):
    path = download(_pinned(online.first), "model.safetensors", online.second)
    assert Path(path).read_bytes() == SECOND
    assert Path(path).parent.name == online.second and Path(path).parent.parent.name == "snapshots"


def test_download_maps_what_the_server_does_not_have(online):
    entry = _pinned(online.first)
    with pytest.raises(UnknownRevisionError) as caught:
        download(entry, "model.safetensors", "no-such-branch")  # olah: 401, "Repository Not Found"
    assert str(caught.value) == (
        f"sup-flowers-r18: model.safetensors is not available from {TINY_REPO}@no-such-branch on the server "
        f"(HF_ENDPOINT); check the revision (the catalog pins {online.first}) (RepositoryNotFoundError)")
    with pytest.raises(UnknownRevisionError) as caught:
        download(entry, "absent.json", online.first)  # 404 EntryNotFound
    assert str(caught.value) == (
        f"sup-flowers-r18: absent.json is not available from {TINY_REPO}@{online.first} on the server "
        f"(HF_ENDPOINT); check the revision (the catalog pins {online.first}) (RemoteEntryNotFoundError)")


def test_download_maps_a_revision_not_found_answer(answering):
    answering(404, X_Error_Code="RevisionNotFound")
    entry = _pinned("c" * 40)
    with pytest.raises(UnknownRevisionError) as caught:
        download(entry, "model.safetensors", "v" * 45)
    assert str(caught.value) == (f"sup-flowers-r18: {TINY_REPO} has no revision {shorten('v' * 45)}; the catalog "
                                 f"pins {'c' * 40} (leave revision= out to use it)")


def test_download_maps_other_http_errors_to_not_cached_with_the_fix(answering):
    # the metadata answer is fine, the file itself is refused
    answering(200, 403, X_Repo_Commit="d" * 40, ETag='"' + "e" * 64 + '"', Content_Length="5")
    entry = _pinned("c" * 40)
    with pytest.raises(NotCachedError) as caught:
        download(entry, "model.safetensors", "d" * 45)
    message = str(caught.value)
    prefix, suffix = f"sup-flowers-r18: cannot get model.safetensors from {TINY_REPO}@{'d' * 40}: ", f". {_offline_fix(entry)}"
    assert message.startswith(prefix) and message.endswith(suffix)
    server_said = message[len(prefix):-len(suffix)]  # huggingface_hub's long 403 text, cut to 200 characters
    assert server_said.startswith("'403 Forbidden") and server_said.endswith(" characters>")
    full_length = server_said.rsplit("...<", 1)[1].removesuffix(" characters>")
    assert len(server_said) == 200 - 20 + len(f"...<{full_length} characters>")  # shorten(text, 200)


def test_download_maps_a_cache_that_cannot_be_written(online, monkeypatch, tmp_path):
    from huggingface_hub import constants

    (tmp_path / "a-file").write_text("")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "a-file" / "hub"))
    entry = _pinned(online.first)
    with pytest.raises(NotCachedError) as caught:
        download(entry, "model.safetensors", online.first)
    message = str(caught.value)
    assert message.startswith(f"sup-flowers-r18: cannot get model.safetensors from {TINY_REPO}@{online.first}: "
                              f"\"[Errno 20] Not a directory")
    assert message.endswith(f". {_offline_fix(entry)}")


def test_fetch_downloads_verifies_then_serves_from_the_cache_without_the_server(online, monkeypatch):
    entry = _pinned(online.first)
    path = fetch(entry, "model.safetensors")
    assert Path(path).read_bytes() == FIRST and Path(path).parent.name == online.first
    second = fetch(entry, "model.safetensors", revision=online.second,
                   expected={"sha256": hashlib.sha256(SECOND).hexdigest(), "size": len(SECOND)})
    assert Path(second).read_bytes() == SECOND and Path(second).parent.name == online.second
    from zoo.mirror import free_port

    _point_at(monkeypatch, f"http://127.0.0.1:{free_port()}")  # the server is gone: the cache answers
    assert fetch(entry, "model.safetensors") == path


def test_corrupt_cached_file_is_fetched_again_while_online(online):
    entry = _pinned(online.first)
    path = fetch(entry, "model.safetensors")
    blob = Path(os.path.realpath(path))
    blob.write_bytes(FIRST[:-1] + b"!")
    again = fetch(entry, "model.safetensors")
    assert again == path and Path(again).read_bytes() == FIRST


def test_server_serving_other_bytes_is_refused_and_nothing_stays_cached(online, hub_cache):
    entry = _pinned(online.first, payload=SECOND)  # the catalog says SECOND, the commit holds FIRST
    with pytest.raises(IntegrityError) as caught:
        fetch(entry, "model.safetensors")
    assert str(caught.value) == (
        f"sup-flowers-r18: model.safetensors from {TINY_REPO}@{online.first[:12]} does not match the catalog "
        f"(sha256 {hashlib.sha256(SECOND).hexdigest()[:12]}..., {len(SECOND)} bytes) even after a fresh download. "
        f"The server or mirror serves different bytes than were published; report it, do not use them.")
    assert not [p for p in hub_cache.rglob("*") if p.is_file() and p.read_bytes() == FIRST]
    assert not list(hub_cache.rglob("model.safetensors"))


def test_unreachable_server_fails_fast_and_says_so(nothing_listens):
    entry = _pinned("c" * 40)
    with pytest.raises(NotCachedError) as caught:
        fetch(entry, "model.safetensors")
    assert str(caught.value) == (
        f"sup-flowers-r18: cannot get model.safetensors of {TINY_REPO}@cccccccccccc: {nothing_listens} is "
        f"unreachable (ConnectionRefusedError: [Errno 111] Connection refused). {_offline_fix(entry)}")


def test_unreachable_server_with_a_corrupt_copy_is_an_integrity_error(nothing_listens, hub_cache):
    snapshot = _fill(hub_cache, PAYLOAD[:-1])
    entry = _entry()
    with pytest.raises(IntegrityError) as caught:
        fetch(entry, "model.safetensors")
    assert str(caught.value) == (
        f"sup-flowers-r18: cannot get model.safetensors of someone/flowers-r18@{REVISION[:12]}: {nothing_listens} "
        f"is unreachable (ConnectionRefusedError: [Errno 111] Connection refused) (the cached copy was corrupt and "
        f"was removed). {_offline_fix(entry)}")
    assert not os.path.lexists(snapshot)


def test_corrupt_copy_and_a_failing_server_is_an_integrity_error(answering, hub_cache):
    answering(403)  # huggingface_hub: LocalEntryNotFoundError, zoo: NotCachedError
    snapshot = _fill(hub_cache, PAYLOAD[:-1])
    with pytest.raises(IntegrityError) as caught:
        fetch(_entry(), "model.safetensors")
    assert str(caught.value) == (
        "sup-flowers-r18: the cached model.safetensors was corrupt (sha256/size mismatch) and was removed, and a "
        f"fresh copy cannot be fetched now. {_offline_fix(_entry())}")
    assert not os.path.lexists(snapshot)


def test_bad_file_behind_a_folder_link_leaving_the_cache_is_not_removed(hub_cache, offline, tmp_path):
    outside = tmp_path / "users-folder"
    outside.mkdir()
    (outside / "model.safetensors").write_bytes(b"the user's own file")
    snapshots = hub_cache / "models--someone--flowers-r18" / "snapshots"
    snapshots.mkdir(parents=True)
    (snapshots / REVISION).symlink_to(outside)
    with pytest.raises(IntegrityError) as caught:
        fetch(_entry(), "model.safetensors")
    repo = os.path.realpath(hub_cache / "models--someone--flowers-r18")
    assert str(caught.value) == (
        f"sup-flowers-r18: the cached {snapshots / REVISION / 'model.safetensors'} does not match the catalog's "
        f"sha256 and is reached through a folder link that leaves the HF cache ({repo}); it was not removed. "
        f"Remove that link yourself, then load again.")
    assert (outside / "model.safetensors").read_bytes() == b"the user's own file"


@pytest.mark.parametrize("target_in", ["outside", "other_repo_blobs", "own_blobs_folder"])
def test_bad_link_is_removed_but_never_what_it_points_to(hub_cache, offline, tmp_path, target_in):
    repo = hub_cache / "models--someone--flowers-r18"
    snapshot = repo / "snapshots" / REVISION / "model.safetensors"
    snapshot.parent.mkdir(parents=True)
    if target_in == "outside":
        target = tmp_path / "elsewhere" / "file"
    elif target_in == "other_repo_blobs":
        target = hub_cache / "models--other--repo" / "blobs" / "abc"
    else:  # a folder, not a file, inside this repo's blobs: not a blob to delete
        target = repo / "blobs" / "sub" / "file"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"not the payload")
    snapshot.symlink_to(target)
    with pytest.raises(IntegrityError):
        fetch(_entry(), "model.safetensors")
    assert not os.path.lexists(snapshot) and target.read_bytes() == b"not the payload"


def _raw_server(monkeypatch, answer: bytes):
    """A loopback server that reads each whole request, sends `answer` (nothing: a plain hang-up) and
    closes the connection; huggingface_hub is pointed at it. Yields, then stops listening."""
    import socket

    listener = socket.create_server(("127.0.0.1", 0))

    def serve():
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            with client:
                request = b""
                while b"\r\n\r\n" not in request:  # the whole request read: the close is a plain FIN
                    chunk = client.recv(65536)
                    if not chunk:
                        break
                    request += chunk
                if answer:
                    client.sendall(answer)
    threading.Thread(target=serve, daemon=True).start()
    _point_at(monkeypatch, f"http://127.0.0.1:{listener.getsockname()[1]}")
    yield
    listener.close()


@pytest.fixture
def hangs_up(hub_cache, monkeypatch):
    """A loopback server that reads each request and closes the connection without an answer."""
    yield from _raw_server(monkeypatch, b"")


def test_download_maps_a_dropped_connection_to_not_cached(hangs_up):
    entry = _pinned("c" * 40)
    with pytest.raises(NotCachedError) as caught:
        download(entry, "model.safetensors", "c" * 40)
    assert str(caught.value) == (f"sup-flowers-r18: cannot get model.safetensors from {TINY_REPO}@{'c' * 40} "
                                 f"(RemoteProtocolError: 'Server disconnected without sending a response.'). "
                                 f"{_offline_fix(entry)}")


def test_download_passes_programming_errors_through(online):
    from huggingface_hub.errors import HFValidationError

    with pytest.raises(HFValidationError):
        download(_pinned(online.first, repo_id="bad//repo"), "model.safetensors", online.first)


def test_wrong_bytes_are_downloaded_exactly_twice_then_refused(hub_cache, monkeypatch):
    """A server whose file never matches the catalog: one fresh download after the first, not more."""
    served = []

    class WrongBytes(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self):
            self.send_response(200)
            for key, value in {"X-Repo-Commit": "c" * 40, "ETag": '"' + "e" * 64 + '"', "Content-Length": "5"}.items():
                self.send_header(key, value)
            self.end_headers()

        def do_GET(self):
            served.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", "5")
            self.end_headers()
            self.wfile.write(b"hello")

        def log_message(self, *args):
            pass
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), WrongBytes)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        _point_at(monkeypatch, f"http://127.0.0.1:{server.server_address[1]}")
        with pytest.raises(IntegrityError, match="does not match the catalog .* even after a fresh download"):
            fetch(_pinned("c" * 40), "model.safetensors")
    finally:
        server.shutdown()
        server.server_close()
    assert served == [f"/{TINY_REPO}/resolve/{'c' * 40}/model.safetensors"] * 2
    assert not list(hub_cache.rglob("model.safetensors")) and not [p for p in hub_cache.rglob("*") if p.is_file()
                                                                    and p.read_bytes() == b"hello"]


@pytest.fixture
def garbles(hub_cache, monkeypatch):
    """A loopback server that answers each request with a long line that is not HTTP (its parser's error
    quotes it: an error text far over 200 characters)."""
    yield from _raw_server(monkeypatch, b"NOT-HTTP " * 60 + b"\r\n\r\n")


def _cut_to_200(text: str) -> bool:
    """Is `text` zoo.errors.shorten(..., 200) of a longer text (180 characters, then '...<N characters>')?"""
    full_length = text.rsplit("...<", 1)[1].removesuffix(" characters>")
    return int(full_length) > 200 and len(text) == 180 + len(f"...<{full_length} characters>")


def test_long_error_texts_are_cut_to_200_characters(garbles):
    entry = _pinned("c" * 40)
    fix = f"). {_offline_fix(entry)}"
    with pytest.raises(NotCachedError) as caught:
        resolve_revision(entry, "main")
    prefix = "sup-flowers-r18: cannot look up revision 'main' (RemoteProtocolError: "
    assert str(caught.value).startswith(prefix) and str(caught.value).endswith(fix)
    assert _cut_to_200(str(caught.value)[len(prefix):-len(fix)])
    with pytest.raises(NotCachedError) as caught:
        download(entry, "model.safetensors", "c" * 40)
    prefix = f"sup-flowers-r18: cannot get model.safetensors from {TINY_REPO}@{'c' * 40} (RemoteProtocolError: "
    assert str(caught.value).startswith(prefix) and str(caught.value).endswith(fix)
    assert _cut_to_200(str(caught.value)[len(prefix):-len(fix)])


@pytest.mark.parametrize("value", ["soon", "0", "-3", "nan", ""])
def test_a_bad_etag_timeout_is_refused_with_the_fix(online, monkeypatch, value):
    from zoo.errors import InvalidArgumentError

    monkeypatch.setenv("ZOO_ETAG_TIMEOUT", value)
    with pytest.raises(InvalidArgumentError) as caught:
        download(_pinned(online.first), "model.safetensors", online.first)
    assert str(caught.value) == (f"ZOO_ETAG_TIMEOUT must be a number of seconds above 0, not {value!r}; unset it "
                                 f"to wait 10 s")


def test_a_short_etag_timeout_is_used(online, monkeypatch):
    monkeypatch.setenv("ZOO_ETAG_TIMEOUT", "0.5")
    assert Path(download(_pinned(online.first), "model.safetensors", online.first)).read_bytes() == FIRST


def test_a_cache_folder_that_cannot_be_created_says_whom_to_ask(online, monkeypatch):
    from huggingface_hub import constants

    cache = "/sys/zoo-test-cache/hub"  # sysfs refuses new folders, even to root: a real PermissionError
    try:
        os.makedirs(cache)
    except PermissionError as error:
        reason = error.strerror  # EPERM for root, EACCES for others
    else:  # pragma: no cover - a system whose /sys takes new folders
        os.removedirs(cache)
        pytest.skip("/sys accepts new folders here")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", cache)
    with pytest.raises(NotCachedError) as caught:
        download(_pinned(online.first), "model.safetensors", online.first)
    assert str(caught.value) == (
        f"sup-flowers-r18: model.safetensors is not in the HF cache, and the cache ({cache}) is read-only for you "
        f"({reason}): ask its owner to run `zoo download sup-flowers-r18` there, or set HF_HUB_CACHE "
        f"to a writable folder.")


def test_a_corrupt_blob_that_cannot_be_removed_is_reported_with_the_fix(hub_cache, offline):
    """An immutable file (chattr +i) cannot be removed even by root: the read-only shared cache case."""
    import shutil
    import subprocess

    snapshot = _fill(hub_cache, PAYLOAD[:-1])
    blob = os.path.realpath(snapshot)
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", blob], capture_output=True).returncode:
        pytest.skip("chattr +i is not available on this filesystem")
    try:
        with pytest.raises(IntegrityError) as caught:
            fetch(_entry(), "model.safetensors")
    finally:
        subprocess.run(["chattr", "-i", blob], check=True)
    assert str(caught.value) == (
        f"sup-flowers-r18: the cached {snapshot} does not match the catalog's sha256, and it cannot be removed "
        f"(Operation not permitted): the HF cache is read-only. Ask whoever fills it to run `zoo download "
        f"sup-flowers-r18` there, or use a writable cache (HF_HUB_CACHE=<folder>).")
    assert os.path.exists(blob)
