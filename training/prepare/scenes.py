"""Single-label domains: RESISC45, UC Merced, pediatric chest X-ray, Oxford Flowers-102, DomainNet, BDD100K weather.

Splits follow the HPT study (cjrd/self-supervised-pretraining): the study's own split lists for RESISC45
and UC Merced (its utils/raw-tf-splits, the TensorFlow-datasets splits; shipped in splits/), the official
splits elsewhere; where the official release has no validation split, a seeded 10% of the official
training images becomes `val` and the official test (or validation) split is `test` (recorded in the
manifest's notes).
"""
from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

from .core import Item, Plan, PrepareError, carve, file_reader, png_reader, require

SPLIT_LISTS = Path(__file__).parent / "splits"
VAL_FRACTION = 0.1


def _study_list(name: str, split: str) -> list[str]:
    with gzip.open(SPLIT_LISTS / f"{name}_{split}.txt.gz", "rt") as handle:
        return [line.strip() for line in handle if line.strip()]


def _from_study_lists(download: Path, root: Path, list_name: str, pattern: str, reader, obtain: str,
                      expected: int, study: str) -> Plan:
    """RESISC45 / UC Merced: file names from the study's lists, class = the name without its number."""
    class_of = re.compile(pattern)
    names = {split: _study_list(list_name, split) for split in ("train", "val", "test")}
    classes = sorted({class_of.match(n).group(1) for files in names.values() for n in files})
    folders = [p.name for p in root.iterdir() if p.is_dir()] if root.is_dir() else []
    if not folders:
        raise PrepareError(f"no class folders under {root}. {obtain}")
    items = []
    for split, files in names.items():
        for name in files:
            label = class_of.match(name).group(1)
            items.append(Item(split, str((root / label / name).relative_to(download)),
                              reader(root / label / name), classes.index(label)))
    return Plan(items, classes, False, expected={"all": expected},
                notes={"splits": f"the HPT study's split lists ({study}; utils/raw-tf-splits in "
                                 "cjrd/self-supervised-pretraining, the TFDS splits)"})


def resisc(download: Path, **_) -> Plan:
    obtain = ("Download NWPU-RESISC45.rar (Cheng et al., 2017) and extract it: "
              "<download>/NWPU-RESISC45/<class>/<class>_NNN.jpg")
    root = download / "NWPU-RESISC45" if (download / "NWPU-RESISC45").is_dir() else download
    return _from_study_lists(download, root, "resisc45", r"(.+)_\d+\.jpg$", file_reader, obtain, 31500,
                             "18,900 / 6,300 / 6,300")


def ucmerced(download: Path, **_) -> Plan:
    obtain = ("Download UCMerced_LandUse.zip (http://weegee.vision.ucmerced.edu/datasets/landuse.html) and "
              "extract it: <download>/UCMerced_LandUse/Images/<class>/<class>NN.tif")
    root = download / "UCMerced_LandUse" / "Images"
    if not root.is_dir():
        root = download / "Images" if (download / "Images").is_dir() else download
    return _from_study_lists(download, root, "uc_merced", r"([a-z]+)\d+\.tif$", png_reader, obtain, 2100,
                             "1,260 / 420 / 420")


def chest_xray_kids(download: Path, seed: int = 0, **_) -> Plan:
    """Kermany et al. (Mendeley "ChestXRay2017.zip", also on Kaggle as chest-xray-pneumonia):
    chest_xray/{train,test}[/val]/{NORMAL,PNEUMONIA}/*.jpeg. Classes = the class folders (2)."""
    obtain = ("Download ChestXRay2017.zip (Kermany et al., Mendeley Data, doi:10.17632/rscbjbr9sj) and extract "
              "it: <download>/chest_xray/{train,test}/{NORMAL,PNEUMONIA}/*.jpeg")
    root = download / "chest_xray" if (download / "chest_xray").is_dir() else download
    require(root / "train", "chest_xray/train", obtain)
    require(root / "test", "chest_xray/test", obtain)
    classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
    if not classes:
        raise PrepareError(f"no class folders under {root / 'train'}. {obtain}")
    items = []
    for official in ("train", "val", "test"):  # Kaggle's 16-image val was cut from train: folded back in
        folder = root / official
        if not folder.is_dir():
            continue
        for label, name in enumerate(classes):
            for path in sorted((folder / name).glob("*")):
                if path.suffix.lower() in (".jpeg", ".jpg", ".png"):
                    items.append(Item("test" if official == "test" else "train", str(path.relative_to(download)),
                                      file_reader(path), label))
    record = carve([i for i in items if i.split == "train"], VAL_FRACTION, seed)
    return Plan(items, classes, False, expected={"all": 5856}, image_mode="L",
                notes={"splits": {"test": "official test folder", "val": record,
                                  "train": "official train (+ Kaggle's val folder, if present)"},
                       "classes": "the class folders of the download (NORMAL, PNEUMONIA)"})


def flowers(download: Path, **_) -> Plan:
    """Oxford Flowers-102: jpg/image_NNNNN.jpg, imagelabels.mat (1..102), setid.mat (trnid/valid/tstid)."""
    from scipy.io import loadmat

    obtain = ("Download 102flowers.tgz, imagelabels.mat and setid.mat from "
              "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/ into <download>/ and extract the tgz (-> jpg/)")
    labels_file = require(download / "imagelabels.mat", "imagelabels.mat", obtain)
    setid_file = require(download / "setid.mat", "setid.mat", obtain)
    require(download / "jpg", "the jpg/ folder (from 102flowers.tgz)", obtain)
    labels = loadmat(labels_file)["labels"].ravel().astype(int)
    setid = loadmat(setid_file)
    items = []
    for split, key in (("train", "trnid"), ("val", "valid"), ("test", "tstid")):
        for image_id in setid[key].ravel().astype(int):
            path = download / "jpg" / f"image_{image_id:05d}.jpg"
            items.append(Item(split, str(path.relative_to(download)), file_reader(path), int(labels[image_id - 1]) - 1))
    names = [f"class_{i:03d}" for i in range(1, 103)]  # the release names classes by number only
    return Plan(items, names, False, expected={"train": 1020, "val": 1020, "test": 6149},
                metadata_files=[labels_file, setid_file], notes={"splits": "official setid.mat (trnid/valid/tstid)"})


DOMAINNET_SIZES = {"clipart": 48837, "infograph": 53201, "painting": 75759, "quickdraw": 172500, "real": 175327,
                   "sketch": 70386}


def domainnet(style: str):
    def prepare(download: Path, seed: int = 0, **_) -> Plan:
        obtain = (f"Download {style}.zip, {style}_train.txt and {style}_test.txt from http://ai.bu.edu/M3SDA/ "
                  f"into <download>/ and extract the zip (-> {style}/<class>/*.jpg)")
        lists = {split: require(download / f"{style}_{split}.txt", f"{style}_{split}.txt", obtain)
                 for split in ("train", "test")}
        require(download / style, f"the {style}/ image folder", obtain)
        entries, names = [], {}
        for split, list_file in lists.items():
            for line_number, line in enumerate(list_file.read_text().splitlines(), 1):
                if not line.strip():
                    continue
                parts = line.split()
                if len(parts) != 2 or not parts[1].isdigit() or ".." in parts[0] or parts[0].startswith("/"):
                    raise PrepareError(f"{list_file}:{line_number}: expected '<{style}/class/file.jpg> <label>', "
                                       f"got {line!r}")
                label = int(parts[1])
                names.setdefault(label, Path(parts[0]).parent.name)
                entries.append((split, parts[0], label))
        classes = [names.get(i, f"class_{i}") for i in range(345)]
        items = [Item(split, rel, file_reader(download / rel), label) for split, rel, label in entries]
        record = carve([i for i in items if i.split == "train"], VAL_FRACTION, seed)
        return Plan(items, classes, False, expected={"all": DOMAINNET_SIZES[style]},
                    metadata_files=list(lists.values()),
                    notes={"splits": {"test": f"official {style}_test.txt", "val": record,
                                      "train": f"official {style}_train.txt minus val"}})
    return prepare


BDD_WEATHER = ("clear", "foggy", "overcast", "partly cloudy", "rainy", "snowy")  # "undefined" is left out


def bdd(download: Path, seed: int = 0, **_) -> Plan:
    """BDD100K: images/100k/{train,val}/*.jpg + labels/bdd100k_labels_images_{train,val}.json (weather
    attribute). Official val (10k) is our test; val is a seeded 10% of official train."""
    obtain = ("Download bdd100k_images_100k.zip and bdd100k_labels_release.zip from https://bdd-data.berkeley.edu "
              "and extract both into <download>/ (-> bdd100k/images/100k/, bdd100k/labels/)")
    root = download / "bdd100k" if (download / "bdd100k").is_dir() else download
    items, files = [], []
    for official, split in (("train", "train"), ("val", "test")):
        label_file = require(root / "labels" / f"bdd100k_labels_images_{official}.json",
                             f"bdd100k_labels_images_{official}.json", obtain)
        image_dir = require(root / "images" / "100k" / official, f"images/100k/{official}", obtain)
        files.append(label_file)
        try:
            frames = json.loads(label_file.read_text())
        except json.JSONDecodeError as error:
            raise PrepareError(f"{label_file} is not valid JSON ({error}); re-download the labels archive") from None
        for frame in frames:
            weather = (frame.get("attributes") or {}).get("weather")
            name = frame.get("name", "")
            if weather not in BDD_WEATHER or "/" in name or name.startswith("."):
                continue
            path = image_dir / name
            items.append(Item(split, str(path.relative_to(download)), file_reader(path), BDD_WEATHER.index(weather)))
    record = carve([i for i in items if i.split == "train"], VAL_FRACTION, seed)
    return Plan(items, list(BDD_WEATHER), False, metadata_files=files,
                notes={"splits": {"test": "official val", "val": record, "train": "official train minus val"},
                       "labels": "frame attribute 'weather'; frames marked 'undefined' are left out"})
