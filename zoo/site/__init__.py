"""A web catalog of a mirror: static pages generated from its repos (zoo.json, card, files) and the catalog.

    build_site(mirror_root, out_dir)          write the pages (index, one per model, one per domain)
    with serve_site(mirror_root) as url: ...  serve them on loopback, rebuilt when a repo's commit changes

`zoo serve` runs both beside olah. The pages need nothing from the internet (no fonts, CDNs or remote
scripts): plain HTML, one stylesheet and one small script shipped in zoo/site/static/.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from ..errors import ZooError
from .collect import collect, mirror_repos
from .pages import Site, domain_page, domain_path, domains_index, index_page, model_page, model_path

STATIC = Path(__file__).with_name("static")


def _write(root: Path, relative: str, text: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def build_site(mirror_root: str | os.PathLike, out_dir: str | os.PathLike, *, endpoint: str | None = None,
               catalog: dict | None = None) -> Path:
    """Write the catalog pages for every model repo under `mirror_root` into `out_dir` (replaced atomically).

    endpoint: the Hub API URL (olah) the snippets and download links point at."""
    out_dir = Path(out_dir)
    if not Path(mirror_root).is_dir():
        raise ZooError(f"{mirror_root} is not a mirror folder (expected <root>/models/<org>/<name> repos, as "
                       f"`zoo publish --mirror` writes)")
    models, problems = collect(mirror_root, catalog)
    site = Site(models, endpoint=endpoint)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        shutil.copytree(STATIC, staging / "static")
        _write(staging, "index.html", index_page(site, problems))
        for model in models:
            _write(staging, model_path(model), model_page(model, site))
        _write(staging, "domains/index.html", domains_index(site))
        for domain in site.domains():
            _write(staging, domain_path(domain), domain_page(domain, site))
        os.chmod(staging, 0o755)
        if out_dir.is_symlink():
            raise FileExistsError(f"{out_dir} is a symlink; choose a real folder for the site")
        if out_dir.exists():  # swap: the old tree is moved aside first, so a reader never sees a half-built one
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old.", dir=out_dir.parent))
            os.replace(out_dir, old / "site")
            os.replace(staging, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


def mirror_state(mirror_root: str | os.PathLike) -> tuple:
    """Cheap fingerprint of what the pages show: every repo's `main` ref and the catalog files' mtimes (a publish
    commits, then pins the commit in a catalog: both must be seen)."""
    from ..catalog import catalog_paths

    state = [(str(path), path.stat().st_mtime_ns if path.exists() else None) for path in catalog_paths()]
    for repo_id, folder in mirror_repos(mirror_root):
        ref = folder / ".git" / "refs" / "heads" / "main"
        try:
            state.append((repo_id, ref.read_text().strip() if ref.exists() else
                          (folder / ".git" / "packed-refs").stat().st_mtime_ns))
        except OSError:
            state.append((repo_id, None))
    return tuple(state)


@contextlib.contextmanager
def serve_site(mirror_root: str | os.PathLike, port: int | None = None, *, endpoint: str | None = None,
               host: str = "127.0.0.1"):
    """Serve the pages on http://host:port/ from a background thread; yields the URL."""
    from .server import SiteServer

    with tempfile.TemporaryDirectory(prefix="zoo-site-") as scratch:
        server = SiteServer(mirror_root, Path(scratch) / "site", (host, port or 0), endpoint=endpoint)
        with server.running():
            yield f"http://{host}:{server.server_address[1]}"
