"""The web catalog (`zoo serve`'s pages), driven in a real headless Chromium.

The mirror holds real checkpoints made at tiny size from the real ImageNet MobileNetV2: the published base
(with its `animals` BN variant), an HPT model (base -> target) and an HPT chain (base -> source -> target)
and a Target model (random init), with kNN evaluations recorded by `python -m training evaluate`, a
Base-strategy BN overlay (not in the catalog), and a copy whose name, card and zoo.json carry script payloads.
Building them takes ~30-60 s (tiny training runs on CPU); the browser checks take a few seconds.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from zoo.checkpoint import CARD, META, dump_json, read_json
from zoo.mirror import commit_files, free_port
from zoo.publish import publish, publish_to_mirror

pytestmark = pytest.mark.slow  # the module's fixture trains three tiny models

BASE = "sup-imagenet-mnv2"
TINY = {"steps": 3, "batch_size": 8, "queue_size": 64, "image_size": 32, "crop_pct": 1.0, "proj_hidden": 64,
        "bn_splits": 2, "progress": False, "checkpoint_every": 3, "device": "cpu", "num_workers": 0}
# each payload would leave a trace if it ran: a global, the title, or a DOM node
PAYLOAD = '<script>window.__pwned = 1; document.title = "pwned"</script>'
IMG_PAYLOAD = '<img src=x onerror="window.__pwned = 2">'
EVIL_NAME = f"evil{PAYLOAD}-mnv2"


def browser_paths() -> tuple[str, str] | None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver") or (os.path.exists("/usr/lib/chromium/chromedriver")
                                              and "/usr/lib/chromium/chromedriver")
    return (chromium, driver) if chromium and driver else None


def _knn(folder: Path, data: str) -> dict:
    """A real kNN evaluation through the training CLI (records the command), at CPU-test size."""
    from training.cli import main

    out = folder.parent / f"{folder.name}-{data}-knn.json"
    assert main(["evaluate", str(folder), "--protocol", "knn", "--data", data, "--train-images", "200",
                 "--eval-images", "100", "--out", str(out)]) == 0
    return json.loads(out.read_text())


def _add_evaluation(folder: Path, record: dict) -> None:
    """Append to zoo.json; checkpoints with a config.json also get their card regenerated (training.export)."""
    if (folder / "config.json").exists():
        from training.export import add_evaluation
        add_evaluation(folder, record)
        return
    meta = read_json(folder / META)
    meta["evaluations"] = [*meta.get("evaluations", []), record]
    (folder / META).write_text(dump_json(meta))


def _evil_copy(folder: Path, out: Path) -> Path:
    """A checkpoint whose untrusted text (name, summary, card, evaluation command) carries scripts."""
    shutil.copytree(folder, out)
    meta = read_json(out / META)
    meta.update(name=EVIL_NAME, summary=f"summary {IMG_PAYLOAD} {PAYLOAD}", strategy=f"hpt{IMG_PAYLOAD}")
    meta["evaluations"] = [{**meta["evaluations"][0], "command": f"python {PAYLOAD}", "data": f"animals{IMG_PAYLOAD}"}]
    meta["lineage"][-1]["name"] = EVIL_NAME
    (out / META).write_text(dump_json(meta))
    (out / CARD).write_text(f"---\nlicense: {PAYLOAD}\n---\n# {EVIL_NAME}\n\n{PAYLOAD}\n\n{IMG_PAYLOAD}\n\n"
                            f"[click](javascript:window.__pwned=3) <a href=\"javascript:window.__pwned=4\">raw</a>\n\n"
                            f"| a | b |\n|---|---|\n| {PAYLOAD} | x |\n")
    return out


def build_web_mirror(work: Path, published_root: Path) -> tuple[Path, Path, dict]:
    """(mirror root, catalog file, {name: repo_id}) with every kind of model the pages must show."""
    from training import hpt

    root, catalog = work / "mirror", work / "catalog.json"
    # the real base only, as the packaged catalog pins it (the session's mirror also holds what other tests published)
    shutil.copytree(published_root / "models" / "hpt-zoo" / BASE, root / "models" / "hpt-zoo" / BASE)
    made = work / "made"
    hpt_animals = hpt.run(hpt.recipe("hpt", "animals", "mnv2", base=BASE), made / "hpt-animals-mnv2", overrides=TINY)
    chain = hpt.run(hpt.recipe("hpt", "digits", "mnv2", base=BASE, source="animals"),
                    made / "hpt-digits-from-animals-mnv2", overrides={**TINY, "steps": 2, "checkpoint_every": 2})
    target = hpt.run(hpt.recipe("target", "animals", "mnv2"), made / "target-animals-mnv2", overrides=TINY)
    base_animals = hpt.run_base("animals", BASE, made / "base-animals-mnv2", image_size=32, crop_pct=1.0,
                                max_images=64)
    for folder, data in ((hpt_animals, "animals"), (target, "animals"), (base_animals, "animals"), (chain, "digits")):
        _add_evaluation(folder, _knn(folder, data))
    repos = {BASE: f"hpt-zoo/{BASE}"}
    for folder, repo_name in ((hpt_animals, "hpt-animals-mnv2"), (chain, "hpt-digits-from-animals-mnv2"),
                              (target, "target-animals-mnv2"), (base_animals, "base-animals-mnv2-32px")):
        result = publish(folder, f"hpt-zoo/{repo_name}", mirror=root, catalog=catalog)
        repos[result["name"]] = result["repo_id"]
    # a hostile repo that `zoo publish` would refuse, committed straight into the mirror: not in the catalog
    evil = _evil_copy(hpt_animals, made / "evil")
    commit_files(root, "hpt-zoo/evil-card", {p.name: p for p in evil.iterdir()}, "evil")
    repos[EVIL_NAME] = "hpt-zoo/evil-card"
    return root, catalog, repos


@pytest.fixture(scope="module")
def web_mirror(olah, mirror_root, tmp_path_factory):
    """Built once per module; the base comes through olah into a module-wide cache (as in test_hpt)."""
    import zoo
    from huggingface_hub import constants

    work = tmp_path_factory.mktemp("web")
    saved = constants.HF_HUB_CACHE, os.environ.get("ZOO_HOME")
    constants.HF_HUB_CACHE = str(work / "cache" / "hub")
    os.environ["ZOO_HOME"] = str(work / "cache" / "zoo")
    try:
        zoo.load(BASE)
        yield build_web_mirror(work, mirror_root)
    finally:
        constants.HF_HUB_CACHE = saved[0]
        if saved[1] is None:
            os.environ.pop("ZOO_HOME", None)
        else:
            os.environ["ZOO_HOME"] = saved[1]


def _wait_for(url: str, process: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise AssertionError(f"zoo serve did not answer {url}: {log.read_text()}")
            time.sleep(0.2)


@pytest.fixture(scope="module")
def served(web_mirror):
    """`zoo serve MIRROR` as a user runs it: olah + the catalog pages, on loopback."""
    root, catalog, repos = web_mirror
    hub_port, web_port = free_port(), free_port()
    log = open(root.parent / "serve.log", "w")
    process = subprocess.Popen([sys.executable, "-m", "zoo.cli", "serve", str(root), "--port", str(hub_port),
                                "--web-port", str(web_port)], env={**os.environ, "ZOO_CATALOG": str(catalog)},
                               stdout=log, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{web_port}"
    _wait_for(url + "/index.html", process, root.parent / "serve.log")
    yield url, f"http://127.0.0.1:{hub_port}", root, repos
    process.send_signal(signal.SIGINT)  # as Ctrl-C: `zoo serve` stops olah and the pages, then exits
    assert process.wait(30) == 0
    log.close()


@pytest.fixture(scope="module")
def browser():
    paths = browser_paths()
    if paths is None:
        pytest.skip("no headless browser: install Debian's chromium + chromium-driver "
                    "(apt-get install chromium chromium-driver; scripts/install.sh does)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium missing: pip install -e '.[dev]'")
    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1280,900", "--force-device-scale-factor=1"):
        options.add_argument(flag)
    options.binary_location = paths[0]
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=paths[1]))
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def _visible_names(driver) -> list[str]:
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('#models tbody tr'))"
        ".filter(r => !r.hidden).map(r => r.querySelector('td a').textContent)")


def _screenshot(driver, name: str, full_page: bool = True) -> None:
    """Full-page PNG into $ZOO_WEB_SCREENSHOTS (how docs/ is refreshed: ZOO_WEB_SCREENSHOTS=docs pytest ...)."""
    import base64

    folder = os.environ.get("ZOO_WEB_SCREENSHOTS")
    if folder and not full_page:
        driver.save_screenshot(str(Path(folder) / name))
    elif folder:
        width, height = driver.execute_script("return [document.documentElement.clientWidth, "
                                              "Math.min(document.documentElement.scrollHeight, 2400)]")
        shot = driver.execute_cdp_cmd("Page.captureScreenshot", {"captureBeyondViewport": True, "clip": {
            "x": 0, "y": 0, "width": width, "height": height, "scale": 1}})
        (Path(folder) / name).write_bytes(base64.b64decode(shot["data"]))
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})  # the capture may leave one behind


def test_index_lists_filters_searches_and_sorts(served, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    url, _, _, repos = served
    browser.get(url + "/")
    names = sorted(_visible_names(browser))
    assert names == sorted(repos), names  # every repo the mirror serves, once
    _screenshot(browser, "web-index.png")
    Select(browser.find_element(By.CSS_SELECTOR, "select[data-filter=domain]")).select_by_value("digits")
    assert _visible_names(browser) == ["hpt-digits-from-animals-mnv2"]
    Select(browser.find_element(By.CSS_SELECTOR, "select[data-filter=domain]")).select_by_value("")
    Select(browser.find_element(By.CSS_SELECTOR, "select[data-filter=strategy]")).select_by_value("base")
    assert _visible_names(browser) == ["base-animals-mnv2"]
    Select(browser.find_element(By.CSS_SELECTOR, "select[data-filter=strategy]")).select_by_value("")
    browser.find_element(By.ID, "search").send_keys("from-anim")
    assert _visible_names(browser) == ["hpt-digits-from-animals-mnv2"]
    assert browser.find_element(By.ID, "count").text == "1"
    browser.find_element(By.ID, "search").clear()
    browser.find_element(By.ID, "search").send_keys("no-such-model")
    assert _visible_names(browser) == [] and browser.find_element(By.ID, "empty").is_displayed()
    browser.get(url + "/")
    browser.find_element(By.ID, "sort-score").click()  # best first; unscored (the base) last
    scores = browser.execute_script("return Array.from(document.querySelectorAll('#models tbody tr'))"
                                    ".map(r => r.dataset.score)")
    numbers = [float(s) for s in scores if s]
    assert numbers == sorted(numbers, reverse=True) and len(numbers) == 5 and scores[-1:] == [""]
    browser.find_element(By.ID, "sort-score").click()
    scores = browser.execute_script("return Array.from(document.querySelectorAll('#models tbody tr'))"
                                    ".map(r => r.dataset.score).filter(s => s)")
    assert [float(s) for s in scores] == sorted(numbers)


def test_model_page_shows_lineage_evaluations_and_snippets(served, browser):
    from selenium.webdriver.common.by import By

    url, hub, root, repos = served
    browser.get(url + "/")
    browser.find_element(By.LINK_TEXT, "hpt-digits-from-animals-mnv2").click()
    meta = json.loads(subprocess.run(["git", "-C", str(Path(root) / "models" / repos["hpt-digits-from-animals-mnv2"]),
                                      "show", "main:zoo.json"], capture_output=True, check=True).stdout)
    hops = browser.find_elements(By.CSS_SELECTOR, "svg.lineage title")  # full names (a long one is clipped)
    assert [h.get_attribute("textContent") for h in hops] == [s["name"] for s in meta["lineage"]]
    assert len(browser.find_elements(By.CSS_SELECTOR, "svg.lineage .hopname")) == len(meta["lineage"])
    roles = [r.text for r in browser.find_elements(By.CSS_SELECTOR, "svg.lineage .role")]
    assert roles[-3:] == ["BASE", "SOURCE", "TARGET"]
    hop_table = browser.find_element(By.CSS_SELECTOR, "table.hops").text
    for step in meta["lineage"]:
        if step.get("sha256"):
            assert step["sha256"] in hop_table
    assert "2" in [c.text for c in browser.find_elements(By.CSS_SELECTOR, "table.hops td[data-label=steps]")]
    evaluation = meta["evaluations"][0]
    evaluations = browser.find_element(By.ID, "evaluations").text
    assert evaluation["command"].startswith("python -m training evaluate") and evaluation["command"] in evaluations
    assert f"{evaluation['value']:.4f}" in evaluations and "knn" in evaluations
    use = browser.find_element(By.ID, "use").text
    assert 'zoo.load("hpt-digits-from-animals-mnv2")' in use
    assert f'timm.create_model("hf-hub:{repos["hpt-digits-from-animals-mnv2"]}"' in use and "torch.hub.load(" in use
    assert f"HF_ENDPOINT={hub}" in use
    files = browser.find_element(By.ID, "files").text
    for name, record in meta["weights"].items():
        assert name in files and record["sha256"] in files
    _screenshot(browser, "web-model.png")
    # the lineage's base hop links to the base's own page, which lists its BN variant and real file hashes
    browser.find_element(By.CSS_SELECTOR, "svg.lineage a").click()
    assert browser.find_element(By.CSS_SELECTOR, "h1.modelname").text == BASE
    assert "animals" in browser.find_element(By.ID, "bn").text
    assert "1a62e4828bf0c3cb1fe46529ef223967a969070e391b8c94aa572c1bf453fb28" in browser.find_element(By.ID, "files").text
    assert "| hop |" not in browser.find_element(By.ID, "card").text  # the card's markdown table is rendered
    assert browser.find_elements(By.CSS_SELECTOR, "#card article table")


def test_overlay_page_and_domain_comparison(served, browser):
    from selenium.webdriver.common.by import By

    url, _, root, repos = served
    browser.get(url + "/")
    browser.find_element(By.LINK_TEXT, "base-animals-mnv2").click()
    use = browser.find_element(By.ID, "use").text
    assert 'zoo.load("base-animals-mnv2")' in use and "timm.create_model" not in use  # not a timm checkpoint
    browser.find_element(By.CSS_SELECTOR, "svg.lineage a").click()  # its base hop -> the trunk's page
    assert browser.find_element(By.CSS_SELECTOR, "h1.modelname").text == BASE
    browser.get(url + "/domains/animals.html")
    table = browser.find_element(By.CSS_SELECTOR, "table.compare").text
    compared = ("hpt-animals-mnv2", "target-animals-mnv2", "base-animals-mnv2")
    assert all(name in table for name in compared)
    bars = browser.find_elements(By.CSS_SELECTOR, "svg.chart rect.bar")
    strategies = [json.loads(subprocess.run(["git", "-C", str(Path(root) / "models" / repos[name]), "show",
                                             "main:zoo.json"], capture_output=True, check=True).stdout)["strategy"]
                  for name in compared]
    assert sorted(b.get_attribute("class") for b in bars) == sorted(f"bar s-{s}" for s in strategies)
    _screenshot(browser, "web-domain.png")


def test_script_payloads_do_not_run(served, browser):
    from selenium.webdriver.common.by import By

    url, _, _, _ = served
    for path in ("/", "/domains/index.html"):
        browser.get(url + path)
        assert browser.execute_script("return window.__pwned") is None
        assert browser.title != "pwned"
    browser.get(url + "/")
    assert EVIL_NAME in _visible_names(browser)  # shown as text, exactly
    browser.find_element(By.PARTIAL_LINK_TEXT, "evil<script>").click()
    assert browser.find_element(By.CSS_SELECTOR, "h1.modelname").text == EVIL_NAME
    card = browser.find_element(By.ID, "card")
    assert PAYLOAD in card.text and not card.find_elements(By.TAG_NAME, "script")
    assert not browser.find_elements(By.CSS_SELECTOR, "main img")  # no element made from the payloads
    for link in card.find_elements(By.TAG_NAME, "a"):
        link.click()  # a javascript: link would run here
    assert f"python {PAYLOAD}" in browser.find_element(By.ID, "evaluations").text
    assert "snapshot_download(" in browser.find_element(By.ID, "use").text  # not in the catalog: load the folder
    time.sleep(0.3)
    assert browser.execute_script("return window.__pwned") is None
    assert browser.title.startswith("evil<script>")
    assert browser.execute_script("return document.querySelectorAll('script').length") == 1  # only app.js


def _open_styled(browser, url: str, path: str, root) -> None:
    """Open a page and wait (10 s at most) until style.css applies, else fail saying what the page loaded.
    The colours below are read from computed styles: read before the sheet applies, they are the browser's
    unstyled defaults (transparent on black), which once failed the contrast check under CI load."""
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(url + path)
    styled = "return getComputedStyle(document.querySelector('main')).maxWidth === '1100px'"
    try:
        WebDriverWait(browser, 10, poll_frequency=0.1).until(lambda b: b.execute_script(styled))
    except Exception:
        loaded = browser.execute_script("return performance.getEntriesByType('resource').map("
                                        "e => [e.name, e.responseStatus, e.transferSize, e.duration])")
        pytest.fail(f"{path}: style.css not applied after 10 s; resources {loaded}; server log: "
                    f"{(Path(root).parent / 'serve.log').read_text()[-2000:]}")


def test_readable_at_phone_width_and_in_dark_mode(served, browser):
    from selenium.webdriver.common.by import By

    url, _, root, repos = served
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",  # a phone: 390 CSS px, mobile viewport rules
                            {"width": 390, "height": 844, "deviceScaleFactor": 1, "mobile": True})
    try:
        for path in ("/", f"/models/{repos['hpt-digits-from-animals-mnv2']}.html", "/domains/animals.html"):
            _open_styled(browser, url, path, root)
            width, overflowing, wide = browser.execute_script(
                "const w = document.documentElement.clientWidth; const out = e => e.getBoundingClientRect().right > w + 0.5;"
                "const all = Array.from(document.querySelectorAll('body *'));"
                "return [document.documentElement.scrollWidth - w, "
                "all.filter(e => !e.closest('.scroll, pre') && out(e)).map(e => e.tagName + '.' + e.className).slice(0, 5),"
                "all.filter(out).map(e => e.tagName + '.' + e.className + ':' + e.getBoundingClientRect().right).slice(0, 12)"
                ".concat([window.innerWidth, w, window.visualViewport.width, window.visualViewport.scale])]")
            assert width <= 0 and not overflowing, f"{path} is wider than a phone: {width}px, {overflowing}, {wide}"
        browser.get(url + "/")
        _screenshot(browser, "web-index-phone.png", full_page=False)
    finally:
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    colours = {}
    for scheme in ("light", "dark"):
        browser.execute_cdp_cmd("Emulation.setEmulatedMedia",
                                {"features": [{"name": "prefers-color-scheme", "value": scheme}]})
        _open_styled(browser, url, "/", root)
        colours[scheme] = browser.execute_script(
            "const s = getComputedStyle(document.body); return [s.backgroundColor, s.color]")
        link = browser.find_element(By.CSS_SELECTOR, "#models a")
        colours[scheme + "-link"] = link.value_of_css_property("color")
    browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": []})

    def luminance(css: str) -> float:
        r, g, b = (int(x) / 255 for x in css[css.index("(") + 1:css.index(")")].split(",")[:3])
        linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in (r, g, b)]
        return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]

    def contrast(a: str, b: str) -> float:
        high, low = sorted((luminance(a), luminance(b)), reverse=True)
        return (high + 0.05) / (low + 0.05)
    for scheme in ("light", "dark"):
        background, text = colours[scheme]
        assert contrast(background, text) >= 7, (scheme, colours[scheme])  # WCAG AAA for body text
        assert contrast(background, colours[scheme + "-link"]) >= 4.5, (scheme, colours)
    assert luminance(colours["dark"][0]) < 0.05 < luminance(colours["light"][0])


def test_a_missing_page_is_a_404_that_the_server_log_names(served):
    url, _, root, _ = served
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(url + "/models/no-such-page%0A.html")
    assert error.value.code == 404
    log, deadline = Path(root).parent / "serve.log", time.time() + 10
    while "no-such-page" not in log.read_text() and time.time() < deadline:
        time.sleep(0.1)
    said = log.read_text()
    assert "'/models/no-such-page%0A.html' code 404" in said
    assert "/favicon.ico" not in said  # every page names its icon, so a browser's visit logs no /favicon.ico miss


def test_publish_while_serving_appears_on_reload(served):
    url, _, root, _ = served
    with urllib.request.urlopen(url + "/index.html") as response:
        before = response.read().decode()
        assert "default-src 'none'" in response.headers["Content-Security-Policy"]
    assert "hpt-zoo/late-arrival" not in before
    publish_to_mirror(Path(root).parent / "made" / "hpt-animals-mnv2", root, "hpt-zoo/late-arrival")
    time.sleep(1.1)  # the server looks at the mirror at most once a second
    with urllib.request.urlopen(url + "/index.html") as response:
        assert "hpt-zoo/late-arrival" in response.read().decode()
    shutil.rmtree(Path(root) / "models" / "hpt-zoo" / "late-arrival")
