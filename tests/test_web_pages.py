"""The web catalog's pages without a browser (fast): hostile repo contents are escaped, never become paths,
and an unreadable repo is reported instead of breaking the site."""
from __future__ import annotations

import json
import re
from pathlib import Path

from zoo.mirror import commit_files
from zoo.site import build_site
from zoo.site.pages import CSP

PAYLOAD = '<script>window.__pwned = 1</script>'


def publish_to_mirror(folder: Path, mirror: Path, repo_id: str) -> None:
    """Commit the files as they are: a mirror can hold what `zoo publish` would refuse (someone else's git push)."""
    commit_files(mirror, repo_id, {p.name: p for p in folder.iterdir()}, "test")


def _folder(tmp_path: Path, name: str, meta: dict, card: str) -> Path:
    folder = tmp_path / "src" / name
    folder.mkdir(parents=True)
    (folder / "zoo.json").write_text(json.dumps(meta))
    (folder / "config.json").write_text(json.dumps({"architecture": "mobilenetv2_100", "num_classes": 0}))
    (folder / "README.md").write_text(card)
    (folder / "model.safetensors").write_bytes(b"not really weights, only hashed here")
    return folder


def test_hostile_text_is_escaped_and_never_a_path(tmp_path):
    mirror = tmp_path / "mirror"
    hostile = {"name": f"../../escape{PAYLOAD}", "strategy": f"hpt{PAYLOAD}", "domain": "../x", "arch": "mnv2",
               "summary": PAYLOAD, "lineage": [{"role": "base", "name": PAYLOAD, "sha256": PAYLOAD,
                                                "url": "javascript:alert(1)"}],
               "evaluations": [{"protocol": "knn", "data": f"../../{PAYLOAD}", "split": "test", "metric": "top1",
                                "value": 0.5, "command": PAYLOAD}, {"protocol": "knn", "value": "NaN"}],
               "bn_variants": [PAYLOAD]}
    card = (f"---\nlicense: {PAYLOAD}\n---\n# title\n\n{PAYLOAD}\n\n<img src=x onerror=alert(1)>\n\n"
            "[a](javascript:alert(1)) [b](data:text/html,hi) [ok](https://example.org/)\n")
    publish_to_mirror(_folder(tmp_path, "evil", hostile, card), mirror, "org/evil")
    publish_to_mirror(_folder(tmp_path, "plain", {"name": "plain-mnv2", "strategy": "hpt"}, "# plain\n"),
                      mirror, "org/plain")
    broken = _folder(tmp_path, "broken", {"name": "broken"}, "# broken\n")
    (broken / "zoo.json").write_text("{not json")
    publish_to_mirror(broken, mirror, "org/broken")
    (mirror / "models" / "org" / "linked").symlink_to(mirror / "models" / "org" / "plain")

    site = build_site(mirror, tmp_path / "site", catalog={"models": {}})
    pages = sorted(p.relative_to(site).as_posix() for p in site.rglob("*.html"))
    assert "models/org/evil.html" in pages and "models/org/plain.html" in pages
    assert not any("linked" in p or ".." in p for p in pages)  # a symlinked repo is not described
    assert all(p.resolve().is_relative_to(site.resolve()) for p in site.rglob("*"))
    assert not (tmp_path / "escape").exists()
    for path in site.rglob("*.html"):
        html = path.read_text()
        assert html.count("<script") == 1 and 'src="' in html.split("<script", 1)[1][:40], path  # only app.js
        assert "<img" not in html and not re.search(r"(href|src)=\"\s*(javascript|data):", html, re.I), path
        assert f'content="{CSP}"' in html
    evil = (site / "models/org/evil.html").read_text()
    assert "&lt;script&gt;window.__pwned = 1&lt;/script&gt;" in evil  # shown as text
    assert 'href="https://example.org/"' in evil  # ordinary links stay links; javascript:/data: stay text
    index = (site / "index.html").read_text()
    assert "org/broken" in index and "zoo.json is not JSON" in index
    assert len(re.findall(r'<tr class="model"', index)) == 2


def test_rebuild_replaces_the_site(tmp_path):
    mirror = tmp_path / "mirror"
    publish_to_mirror(_folder(tmp_path, "one", {"name": "one-mnv2"}, "# one\n"), mirror, "org/one")
    site = build_site(mirror, tmp_path / "site", catalog={"models": {}})
    assert (site / "models/org/one.html").exists()
    publish_to_mirror(_folder(tmp_path, "two", {"name": "two-mnv2"}, "# two\n"), mirror, "org/two")
    build_site(mirror, site, catalog={"models": {}})
    assert (site / "models/org/two.html").exists() and "two-mnv2" in (site / "index.html").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mirror", "site", "src"]  # no staging left behind


def test_served_pages_follow_publishes_and_catalog_pins(tmp_path, monkeypatch):
    import time
    import urllib.request

    from zoo.site import serve_site

    catalog = tmp_path / "catalog.json"
    monkeypatch.setenv("ZOO_CATALOG", str(catalog))
    mirror = tmp_path / "mirror"
    publish_to_mirror(_folder(tmp_path, "one", {"name": "one-mnv2"}, "# one\n"), mirror, "org/one")

    def page(url):
        with urllib.request.urlopen(url) as response:
            assert response.headers["Content-Security-Policy"] == CSP
            return response.read().decode()
    with serve_site(mirror) as url:
        assert "org/one" in page(url + "/") and "org/two" not in page(url + "/")
        publish_to_mirror(_folder(tmp_path, "two", {"name": "two-mnv2"}, "# two\n"), mirror, "org/two")
        time.sleep(1.1)  # the server looks at the mirror at most once a second
        assert "org/two" in page(url + "/")
        assert "Not in the catalog" in page(url + "/models/org/two.html")
        catalog.write_text(json.dumps({"models": {"two-mnv2": {"repo_id": "org/two", "revision": "0" * 40,
                                                               "timm_arch": "mobilenetv2_100", "num_classes": 0,
                                                               "files": {"model.safetensors": {
                                                                   "sha256": "0" * 64, "size": 1}}}}}))
        time.sleep(1.1)  # pinned after the commit, as `zoo publish --catalog` does: seen too
        assert "In the catalog as <code>two-mnv2</code>" in page(url + "/models/org/two.html")
