"""zoo.catalog on catalogs written for the test (merged through $ZOO_CATALOG): lookup, step choices,
BN variants, pattern listing and the errors' exact advice. No network."""
from __future__ import annotations

import json
import os

import pytest

from zoo import catalog as cat
from zoo.errors import NotPublishedError, UnknownNameError, UnknownVariantError


def _entry(**extra):
    return {"repo_id": "org/repo", "revision": "c" * 40, "timm_arch": "resnet50", "num_classes": 0,
            "files": {"model.safetensors": {"sha256": "0" * 64, "size": 3}}, **extra}


@pytest.fixture
def extra_catalogs(tmp_path, monkeypatch):
    first = tmp_path / "first.json"
    first.write_text(json.dumps({"models": {
        "target-chexpert-r50-5k": _entry(),
        "target-chexpert-r50-50k": _entry(recommended=True),
        "moco-flowers-r18-100": _entry(),
        "moco-flowers-r18-2k": _entry(),
        "sup-imagenet-r50": _entry(bn_variants=["chexpert", "flowers"]),
        "hpt-chexpert-r50": _entry(repo_id="org/first")}, "bases": {"r50": "sup-imagenet-r50"}}))
    second = tmp_path / "second.json"  # later files win
    second.write_text(json.dumps({"models": {"hpt-chexpert-r50": _entry(repo_id="org/second")}}))
    monkeypatch.setenv("ZOO_CATALOG", os.pathsep.join([str(first), "", str(tmp_path / "absent.json"), str(second)]))
    return first, second


def test_catalog_paths_split_on_the_path_separator(extra_catalogs, monkeypatch):
    first, second = extra_catalogs
    assert cat.catalog_paths()[0] == cat.PACKAGED
    assert cat.catalog_paths()[-3:] == [first, first.with_name("absent.json"), second]  # in order, empty parts dropped
    monkeypatch.delenv("ZOO_CATALOG")
    assert cat.PACKAGED in cat.catalog_paths() and first not in cat.catalog_paths()


def test_catalogs_merge_in_order_and_reload_when_a_file_changes(extra_catalogs):
    first, second = extra_catalogs
    data = cat.catalog()
    assert data["models"]["hpt-chexpert-r50"]["repo_id"] == "org/second"
    assert data["bases"] == {"mnv2": "sup-imagenet-mnv2", "r50": "sup-imagenet-r50"}
    assert "sup-imagenet-mnv2" in data["models"]  # the packaged catalog is kept
    second.write_text(json.dumps({"models": {"new-imagenet-r18": _entry()}}))
    os.utime(second, ns=(10**18, 10**18))
    reloaded = cat.catalog()
    assert "new-imagenet-r18" in reloaded["models"] and reloaded["models"]["hpt-chexpert-r50"]["repo_id"] == "org/first"


def test_published_names_include_base_variants_and_patterns_filter(extra_catalogs):
    names = cat.published_names()
    assert names == sorted(names)
    assert {"base-chexpert-r50", "base-flowers-r50", "base-animals-mnv2", "sup-imagenet-r50"} <= set(names)
    assert cat.list_models("chexpert") == ["base-chexpert-r50", "hpt-chexpert-r50", "target-chexpert-r50-50k",
                                           "target-chexpert-r50-5k"]
    assert cat.list_models("target-*") == ["target-chexpert-r50-50k", "target-chexpert-r50-5k"]
    assert cat.list_models("moco-flowers-r18-?k") == ["moco-flowers-r18-2k"]
    assert cat.list_models("[bh]*-chexpert-r50") == ["base-chexpert-r50", "hpt-chexpert-r50"]
    assert cat.list_models() == names and cat.list_models("") == names


def test_entry_fields():
    entry = cat.Entry("x", {"repo_id": "o/r", "files": {"a": {"size": 1}}})
    assert entry.repo_id == "o/r" and entry.file("a") == {"size": 1} and entry.bn_variants == []
    with pytest.raises(AttributeError, match="revision"):
        entry.revision
    assert cat.Entry("y", {"bn_variants": ["a", "b"]}).bn_variants == ["a", "b"]


def test_resolve_exact_canonical_recommended_and_base_variant(extra_catalogs):
    entry, variant = cat.resolve("hpt-chexpert-r50")
    assert (entry.name, entry.repo_id, variant) == ("hpt-chexpert-r50", "org/second", None)
    assert cat.resolve("HPT-CheXpert-ResNet50")[0].name == "hpt-chexpert-r50"  # canonical spelling
    assert cat.resolve("target-chexpert-r50")[0].name == "target-chexpert-r50-50k"  # the recommended one
    assert cat.resolve("target-chexpert-r50-5000")[0].name == "target-chexpert-r50-5k"
    trunk, variant = cat.resolve("base-flowers-r50")
    assert (trunk.name, variant) == ("sup-imagenet-r50", "flowers")


def test_resolve_asks_to_pick_among_step_counts_without_a_recommendation(extra_catalogs):
    with pytest.raises(UnknownNameError) as caught:
        cat.resolve("moco-flowers-r18")
    assert "Several step counts are published: moco-flowers-r18-100, moco-flowers-r18-2k; pick one." \
        in str(caught.value)


def test_unpublished_recipes_say_how_to_make_them(extra_catalogs):
    with pytest.raises(NotPublishedError) as caught:
        cat.resolve("base-sketch-r50")
    message = str(caught.value)
    assert message.startswith("'base-domain_net_sketch-r50' is a valid recipe name but no checkpoint is published")
    assert ("python -m training hpt --strategy base --target domain_net_sketch --arch r50 "
            "--out exported/base-domain_net_sketch-r50 (needs the domain_net_sketch data") in message
    with pytest.raises(NotPublishedError, match="Published names close to it: hpt-chexpert-r50") as caught:
        cat.resolve("hpt-chexpert-r18")
    with pytest.raises(UnknownNameError, match="Run `zoo list` to see published names") as caught:
        cat.resolve("hpt-chexprt-r50")
    assert "chexpert" in str(caught.value)


def test_recipe_hints_per_strategy():
    from zoo.names import parse_name

    assert cat.recipe_hint(parse_name("hpt-chexpert-from-imagenet-r50-5k")) == (
        "Produce it with: python -m training hpt --strategy hpt --target chexpert --arch r50 --source imagenet "
        "--steps 5000 --out exported/hpt-chexpert-from-imagenet-r50-5k (needs the chexpert data and the base "
        "model), then `zoo publish` the folder.")
    assert cat.recipe_hint(parse_name("moco-imagenet-r50-200")) == (
        "If you have the MoCo v2 authors' file: zoo convert moco_v2_800ep_pretrain.pth.tar "
        "exported/moco-imagenet-r50-200 --arch r50 --name moco-imagenet-r50-200, then pass that folder as --base. "
        "Or produce it with: python -m training pretrain --method moco --data imagenet --arch r50 --steps 200 "
        "--run runs/moco-imagenet-r50-200.")
    assert cat.recipe_hint(parse_name("simclr-flowers-r18")) == (
        "Produce it with: python -m training pretrain --method simclr --data flowers --arch r18 "
        "--run runs/simclr-flowers-r18, export it with python -m training export, then `zoo publish` the folder.")
    assert "--method moco --data flowers" in cat.recipe_hint(parse_name("moco-flowers-r18"))


def test_check_variant_accepts_aliases_and_suggests(extra_catalogs):
    entry, _ = cat.resolve("sup-imagenet-r50")
    assert cat.check_variant(entry, "flowers") == "flowers"
    assert cat.check_variant(entry, "CheXpert") == "chexpert"
    with pytest.raises(UnknownVariantError) as caught:
        cat.check_variant(entry, "flower")
    assert str(caught.value) == ("sup-imagenet-r50 has no BN variant 'flower'; available: chexpert, flowers. "
                                 "Did you mean flowers? Make a new one with zoo.recalibrate_bn + zoo.extract_bn.")
    bare, _ = cat.resolve("hpt-chexpert-r50")
    with pytest.raises(UnknownVariantError, match="available: none. Make a new one"):
        cat.check_variant(bare, "zzzz")


# ---- reading a catalog file: every malformed shape is a CatalogError that names the file and the fix ---------

from zoo.errors import CatalogError  # noqa: E402


def _write(path, data) -> str:
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(path)


def test_unreadable_catalog_names_the_file_and_where_it_was_listed(tmp_path, monkeypatch):
    bad = tmp_path / "bad.json"
    _write(bad, "{not json")
    try:
        json.loads("{not json")
    except ValueError as error:
        reason = str(error)
    with pytest.raises(CatalogError) as caught:
        cat._read_catalog(bad)
    assert str(caught.value) == (f"catalog {bad} (listed in ZOO_CATALOG) cannot be read: {reason}. Fix or remove it "
                                 f"from ZOO_CATALOG.")
    monkeypatch.setattr(cat, "PACKAGED", bad)  # the packaged file is not "listed in ZOO_CATALOG"
    with pytest.raises(CatalogError) as caught:
        cat._read_catalog(bad)
    assert str(caught.value).startswith(f"catalog {bad} cannot be read: {reason}.")
    with pytest.raises(CatalogError, match=r"cannot be read: \[Errno 21\] Is a directory"):
        cat._read_catalog(tmp_path)


@pytest.mark.parametrize("data", [[], 7, {"models": []}, {"bases": 3}, {"upstream": "x"},
                                  {"models": {}, "bases": None}])
def test_catalog_must_be_an_object_of_objects(tmp_path, data):
    path = tmp_path / "c.json"
    _write(path, data)
    with pytest.raises(CatalogError) as caught:
        cat._read_catalog(path)
    assert str(caught.value) == (f"catalog {path} (listed in ZOO_CATALOG) must be a JSON object with a 'models' "
                                 f"object (as `zoo publish --catalog` writes)")


def test_other_sections_and_valid_entries_pass_unchanged(tmp_path):
    data = {"models": {"a": _entry()}, "bases": {}, "upstream": {}, "format_version": 1, "notes": ["x"]}
    assert cat._read_catalog(tmp_path / "c.json" if not _write(tmp_path / "c.json", data) else tmp_path / "c.json") \
        == data
    trunk = _entry(trunk=True, default_bn="imagenet", files={"bn/imagenet.safetensors": {"sha256": "0" * 64,
                                                                                      "size": 1}})
    _write(tmp_path / "t.json", {"models": {"t": trunk}})
    assert cat._read_catalog(tmp_path / "t.json")["models"]["t"] == trunk


@pytest.mark.parametrize("entry, lacks", [
    ("not an object", "repo_id, revision, timm_arch, num_classes, files"),
    ({}, "repo_id, revision, timm_arch, num_classes, files"),
    (_entry(repo_id=1), "repo_id"),
    (_entry(revision=None), "revision"),
    (_entry(timm_arch=["resnet50"]), "timm_arch"),
    (_entry(num_classes="0", files=[]), "num_classes, files"),
    (_entry(files={}), "files['model.safetensors'] (sha256 + size)"),
    (_entry(files={"model.safetensors": "0" * 64}), "files['model.safetensors'] (sha256 + size)"),
    (_entry(files={"model.safetensors": {"sha256": 0, "size": 3}}), "files['model.safetensors'] (sha256 + size)"),
    (_entry(files={"model.safetensors": {"sha256": "0" * 64, "size": "3"}}),
     "files['model.safetensors'] (sha256 + size)"),
    (_entry(files={"model.safetensors": {"size": 3}}), "files['model.safetensors'] (sha256 + size)"),
    (_entry(files={"model.safetensors": {"sha256": "0" * 64}}), "files['model.safetensors'] (sha256 + size)"),
    (_entry(trunk=True, default_bn="chexpert"), "files['bn/chexpert.safetensors'] (sha256 + size)"),
])
def test_entry_problems_are_listed_with_the_fix(tmp_path, entry, lacks):
    path = tmp_path / "c.json"
    name = "n" * 100
    _write(path, {"models": {name: entry}})
    with pytest.raises(CatalogError) as caught:
        cat._read_catalog(path)
    assert str(caught.value) == (f"catalog {path} (listed in ZOO_CATALOG): entry {'n' * 80!r} lacks {lacks}; "
                                 f"re-publish it with `zoo publish --catalog`")


def test_a_malformed_listed_catalog_stops_the_merge(tmp_path, monkeypatch):
    _write(tmp_path / "bad.json", {"models": {"x": {}}})
    monkeypatch.setenv("ZOO_CATALOG", str(tmp_path / "bad.json"))
    with pytest.raises(CatalogError, match="entry 'x' lacks"):
        cat.catalog()


# ---- writing: check first, lock under $ZOO_HOME, replace atomically, keep the pins' history -----------------

def test_check_catalog_writable(tmp_path, monkeypatch):
    with pytest.raises(CatalogError) as caught:
        cat.check_catalog_writable(tmp_path)
    assert str(caught.value) == f"catalog path {tmp_path} is not a file; pass a .json file path"
    absent = tmp_path / "new" / "deeper" / "catalog.json"
    assert cat.check_catalog_writable(str(absent)) == absent and not absent.parent.exists()
    _write(tmp_path / "bad.json", [])
    with pytest.raises(CatalogError, match="must be a JSON object"):
        cat.check_catalog_writable(tmp_path / "bad.json")
    _write(tmp_path / "good.json", {"models": {}})
    assert cat.check_catalog_writable(tmp_path / "good.json") == tmp_path / "good.json"
    read_only = "/proc/sys/zoo-test-absent/catalog.json"  # procfs' sys is read-only even for root
    with pytest.raises(CatalogError) as caught:
        cat.check_catalog_writable(read_only)
    assert str(caught.value) == f"cannot write the catalog {read_only}: /proc/sys is not writable"
    monkeypatch.chdir(tmp_path)
    assert cat.check_catalog_writable("here.json") == cat.Path("here.json")


def test_lock_path_is_under_zoo_home_keyed_by_the_resolved_path(tmp_path, monkeypatch):
    import hashlib

    monkeypatch.setenv("ZOO_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    lock = cat._lock_path(cat.Path("sub/../c.json"))
    key = hashlib.sha256(str(tmp_path.resolve() / "c.json").encode()).hexdigest()[:24]
    assert lock == tmp_path / "home" / "locks" / f"catalog-{key}.lock"
    assert lock.parent.is_dir() and not lock.exists()
    assert cat._lock_path(tmp_path / "c.json") == lock  # the same file, however it is spelled
    assert cat._lock_path(tmp_path / "d.json") != lock


def _pin(revision: str, repo: str = "org/repo", size: int = 3) -> dict:
    return _entry(repo_id=repo, revision=revision, files={"model.safetensors": {"sha256": revision[0] * 64,
                                                                                "size": size}})


def test_update_catalog_writes_sorted_json_atomically(tmp_path, monkeypatch):
    monkeypatch.setenv("ZOO_HOME", str(tmp_path / "home"))
    path = tmp_path / "new" / "catalog.json"
    cat.update_catalog(path, "m", _pin("a" * 40), base_for_arch="r50")
    expected = {"bases": {"r50": "m"}, "format_version": 1, "models": {"m": _pin("a" * 40)}}
    assert path.read_text() == json.dumps(expected, indent=2, sort_keys=True) + "\n"
    assert oct(path.stat().st_mode & 0o777) == "0o644"
    assert sorted(p.name for p in path.parent.iterdir()) == ["catalog.json"]  # no temporary file left
    assert cat._lock_path(path).exists()  # written under the lock in $ZOO_HOME/locks
    cat.update_catalog(path, "n", _pin("b" * 40))  # no base given: the bases stay
    data = json.loads(path.read_text())
    assert data["bases"] == {"r50": "m"} and sorted(data["models"]) == ["m", "n"] and data["format_version"] == 1


def test_update_catalog_keeps_each_earlier_pin_of_the_same_repo(tmp_path, monkeypatch):
    monkeypatch.setenv("ZOO_HOME", str(tmp_path / "home"))
    path = tmp_path / "catalog.json"
    read = lambda: json.loads(path.read_text())["models"]["m"]  # noqa: E731
    cat.update_catalog(path, "m", _pin("a" * 40))
    assert "history" not in read()
    cat.update_catalog(path, "m", _pin("b" * 40, size=4))
    assert read()["history"] == [{"revision": "a" * 40, "files": _pin("a" * 40)["files"]}]
    assert read()["revision"] == "b" * 40
    cat.update_catalog(path, "m", _pin("b" * 40, size=5))  # same revision again: the history stays
    assert read()["history"] == [{"revision": "a" * 40, "files": _pin("a" * 40)["files"]}]
    assert read()["files"]["model.safetensors"]["size"] == 5
    cat.update_catalog(path, "m", _pin("c" * 40))
    assert [h["revision"] for h in read()["history"]] == ["a" * 40, "b" * 40]
    assert read()["history"][1]["files"]["model.safetensors"]["size"] == 5
    cat.update_catalog(path, "m", _pin("a" * 40))  # back to an old pin: it leaves the history, c joins
    assert [h["revision"] for h in read()["history"]] == ["b" * 40, "c" * 40]
    cat.update_catalog(path, "k", _pin("c" * 40))
    cat.update_catalog(path, "k", _pin("d" * 40, repo="org/other"))  # another repo: not a pin of this one
    other = json.loads(path.read_text())["models"]["k"]
    assert "history" not in other and other["repo_id"] == "org/other"
    cat.update_catalog(path, "m", _pin("a" * 40, repo="org/moved"))  # m moves repo, to a revision it knew
    assert "history" not in read() and read()["repo_id"] == "org/moved"  # its pins there were the old repo's
    cat.update_catalog(path, "m", _pin("e" * 40, repo="org/moved"))
    assert read()["history"] == [{"revision": "a" * 40, "files": _pin("a" * 40)["files"]}]
    cat.update_catalog(path, "m", _pin("f" * 40), keep_history=False)
    assert "history" not in read() and read()["revision"] == "f" * 40


def test_update_catalog_history_without_a_previous_revision(tmp_path, monkeypatch):
    monkeypatch.setenv("ZOO_HOME", str(tmp_path / "home"))
    path = tmp_path / "catalog.json"
    previous = {k: v for k, v in _pin("a" * 40).items() if k != "revision"}
    _write(path, {"models": {"x": previous, "y": "not even an entry"}})
    with pytest.raises(CatalogError):  # the file is checked before anything is written
        cat.update_catalog(path, "m", _pin("b" * 40))
    _write(path, {"models": {}})
    before = path.read_text()
    with pytest.raises(TypeError):  # cannot be serialised: the old file stays whole, no temporary is left
        cat.update_catalog(path, "m", {**_pin("b" * 40), "bad": object()})
    assert path.read_text() == before and sorted(p.name for p in tmp_path.iterdir()) == ["catalog.json", "home"]


# ---- upstream entries (a hostile ZOO_CATALOG may hold anything) ------------------------------------------------

def _upstream(**source):
    return {"timm_arch": "resnet50", "aliases": ["old-name"], "source": {
        "url": "https://example.org/m.pth", "format": "moco", "sha256": "ab" * 32, "md5_prefix": None, **source}}


def test_check_entry_accepts_a_complete_entry():
    cat.check_entry("moco-imagenet-r50.v2_x", _upstream())
    cat.check_entry("a", _upstream(url="http://x", md5_prefix="0123abcd", sha256=None, format="plain"))


@pytest.mark.parametrize("name, data, lacks", [
    ("ok", "not an object", "a 'source' object"),
    ("ok", {"timm_arch": "r"}, "a 'source' object"),
    ("ok", {"timm_arch": "r", "source": "https://x"}, "a 'source' object"),
    ("ok", {**_upstream(), "timm_arch": None}, "timm_arch"),
    ("ok", _upstream(url="ftp://x"), "source.url (http/https)"),
    ("ok", _upstream(url=None), "source.url (http/https)"),
    ("ok", _upstream(format="pickle"), "source.format (one of moco, openselfsup-moco, openselfsup-simclr, "
                                       "openselfsup-byol, openselfsup, simclrv2-pytorch, plain)"),
    ("ok", _upstream(sha256="AB" * 32), "source.sha256 (lowercase hex)"),
    ("ok", _upstream(sha256="abc"), "source.sha256 (lowercase hex)"),
    ("ok", _upstream(sha256=12345678), "source.sha256 (lowercase hex)"),
    ("ok", _upstream(md5_prefix="a04e12f8x"), "source.md5_prefix (lowercase hex)"),
    ("ok", _upstream(sha256="0" * 65, md5_prefix="zz"), "source.sha256 (lowercase hex), source.md5_prefix "
                                                         "(lowercase hex)"),
    ("Upper", _upstream(), "a name of lowercase letters, digits, '-', '_', '.'"),
    ("a..b", _upstream(), "a name of lowercase letters, digits, '-', '_', '.'"),
    ("-a", _upstream(), "a name of lowercase letters, digits, '-', '_', '.'"),
    ("a" * 97, _upstream(), "a name of lowercase letters, digits, '-', '_', '.'"),
    ("../x", {"source": {}}, "timm_arch, source.url (http/https), source.format (one of moco, openselfsup-moco, "
                             "openselfsup-simclr, openselfsup-byol, openselfsup, simclrv2-pytorch, plain), a name of "
                             "lowercase letters, digits, '-', '_', '.'"),
])
def test_check_entry_lists_every_problem(name, data, lacks):
    with pytest.raises(CatalogError) as caught:
        cat.check_entry(name, data)
    assert str(caught.value) == (f"upstream entry {name[:80]!r} lacks {lacks}; fix the catalog (the packaged "
                                 f"zoo/catalog.json or a file listed in ZOO_CATALOG)")


def test_check_entry_accepts_the_longest_name():
    cat.check_entry("a" * 96, _upstream())


def test_upstream_names_and_aliases_resolve_to_checked_entries(tmp_path, monkeypatch):
    _write(tmp_path / "u.json", {"upstream": {"moco-flowers-r18-ext": _upstream(),
                                              "bad-entry": {"source": {}, "aliases": ["broken-alias"]},
                                              "odd": {"aliases": "moco-flowers-r18-ext2"},
                                              "not-a-dict": ["aliases"]}})
    monkeypatch.setenv("ZOO_CATALOG", str(tmp_path / "u.json"))
    for text in ("moco-flowers-r18-ext", "old-name"):
        entry, variant = cat.resolve(text)
        assert (entry.name, variant, entry.kind, entry.timm_arch) == ("moco-flowers-r18-ext", None, "upstream",
                                                                      "resnet50")
    section = cat.catalog()["upstream"]
    assert cat.find_upstream("old-name", section) == "moco-flowers-r18-ext"
    assert cat.find_upstream("moco-flowers-r18-ext2", section) is None  # aliases must be a list
    assert cat.find_upstream("nothing", section) is None
    with pytest.raises(CatalogError, match="upstream entry 'bad-entry' lacks timm_arch"):
        cat.find_upstream("broken-alias", section)
    with pytest.raises(CatalogError, match="upstream entry 'bad-entry' lacks"):
        cat.resolve("bad-entry")
    assert "moco-flowers-r18-ext" in cat.published_names()


def test_canonical_spelling_finds_an_upstream_entry(tmp_path, monkeypatch):
    _write(tmp_path / "u.json", {"upstream": {"moco-flowers-r18-2k": _upstream()}})
    monkeypatch.setenv("ZOO_CATALOG", str(tmp_path / "u.json"))
    entry, variant = cat.resolve("MoCo-Flowers-ResNet18-2000")
    assert (entry.name, variant, entry.kind) == ("moco-flowers-r18-2k", None, "upstream")


def test_resolve_picks_the_only_published_step_count_and_refuses_unknown_variants(tmp_path, monkeypatch):
    _write(tmp_path / "c.json", {"models": {"simclr-flowers-r18-3k": _entry(),
                                            "simclr-flowers-r18-3k-extra": _entry(),
                                            "sup-imagenet-r50": _entry(bn_variants=["flowers"])},
                                 "bases": {"r50": "sup-imagenet-r50"}})
    monkeypatch.setenv("ZOO_CATALOG", str(tmp_path / "c.json"))
    assert cat.resolve("simclr-flowers-r18") == (cat.Entry("simclr-flowers-r18-3k", _entry()), None)
    with pytest.raises(NotPublishedError) as caught:  # the base arch exists, the variant does not
        cat.resolve("base-chexpert-r50")
    assert str(caught.value).startswith("'base-chexpert-r50' is a valid recipe name but no checkpoint is published "
                                        "for it yet. Published names close to it: base-flowers-r50")
    with pytest.raises(NotPublishedError, match="Produce it with: python -m training hpt --strategy base"):
        cat.resolve("base-chexpert-r18")  # no base for the arch


# ---- the rest of the lookup rules, exactly ----------------------------------------------------------------

def test_the_user_catalog_is_zoo_home_catalog_json_and_is_merged(tmp_path, monkeypatch):
    monkeypatch.setenv("ZOO_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("ZOO_CATALOG", raising=False)
    assert cat.user_catalog_path() == tmp_path / "home" / "catalog.json"
    assert cat.catalog_paths() == [cat.PACKAGED, tmp_path / "home" / "catalog.json"]
    (tmp_path / "home").mkdir()
    _write(tmp_path / "home" / "catalog.json", {"models": {"mine-flowers-r18": _entry()}})
    assert "mine-flowers-r18" in cat.published_names()


def test_bases_without_variants_or_without_their_model_add_no_names(tmp_path, monkeypatch):
    _write(tmp_path / "c.json", {"models": {"sup-imagenet-r18": _entry(), "Xray-Model": _entry()},
                                 "bases": {"r18": "sup-imagenet-r18", "r50": "gone-imagenet-r50"}})
    monkeypatch.setenv("ZOO_CATALOG", str(tmp_path / "c.json"))
    names = cat.published_names()
    assert not [n for n in names if n.endswith(("-r18", "-r50")) and n.startswith("base-")]
    assert cat.list_models("X") == ["Xray-Model"]  # no wildcard: a substring, case kept


def test_recipe_hints_for_target_hptbn_and_supervised():
    from zoo.names import parse_name

    for strategy in ("target", "hptbn"):
        assert cat.recipe_hint(parse_name(f"{strategy}-chexpert-r50")).startswith(
            f"Produce it with: python -m training hpt --strategy {strategy} --target chexpert --arch r50 --out")
    assert cat.recipe_hint(parse_name("sup-flowers-r18")).startswith(
        "Produce it with: python -m training pretrain --method supervised --data flowers --arch r18 ")


def test_resolve_messages_exactly(extra_catalogs):
    with pytest.raises(UnknownNameError) as caught:
        cat.resolve("hpt-chexprt-r50")
    assert str(caught.value).startswith("unknown model 'hpt-chexprt-r50'")
    with pytest.raises(UnknownNameError) as caught:
        cat.resolve("moco-flowers-r18")
    assert str(caught.value).startswith("unknown model 'moco-flowers-r18'")
    entry, _ = cat.resolve("HPT-CheXpert-ResNet50")
    assert entry.data == _entry(repo_id="org/second")
    with pytest.raises(NotPublishedError) as caught:
        cat.resolve("rotation-sketch-r18c")
    assert str(caught.value) == ("'rotation-domain_net_sketch-r18c' is a valid recipe name but no checkpoint is "
                                 "published for it yet. " + cat.recipe_hint(cat.parse_name("rotation-sketch-r18c")))
    with pytest.raises(NotPublishedError) as caught:
        cat.resolve("target-chexpert-r50-500")
    near = str(caught.value).split("Published names close to it: ")[1].split(". ")[0].split(", ")
    assert len(near) >= 2 and set(near) <= set(cat.published_names())  # several, comma-separated


def test_check_variant_lists_several_suggestions(extra_catalogs):
    entry = cat.Entry("x", {"bn_variants": ["flowers", "flowerz"]})
    with pytest.raises(UnknownVariantError, match=r"Did you mean flowers, flowerz\?|Did you mean flowerz, flowers\?"):
        cat.check_variant(entry, "flower")


def test_update_catalog_creates_missing_folders_and_writes_through_a_hidden_sibling(tmp_path, monkeypatch):
    monkeypatch.setenv("ZOO_HOME", str(tmp_path / "home"))
    replaced = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda source, target: replaced.append((source, target)) or real_replace(
        source, target))
    path = tmp_path / "a" / "b" / "catalog.json"
    cat.update_catalog(path, "m", _pin("a" * 40))
    (source, target), = replaced
    source = cat.Path(source)  # a temporary in the same folder (same filesystem: the rename is atomic)
    assert cat.Path(target) == path and source.parent == path.parent
    assert source.name.startswith(".catalog.json.") and source.name.endswith(".tmp")
