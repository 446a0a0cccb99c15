"""Multi-label domains: CheXpert, COCO 2014, Pascal VOC 07+12, VIPER, xView (mean AUROC in the study).

Label semantics follow the study's OpenSelfSup configs (cjrd/self-supervised-pretraining,
configs/hpt-pretrain/<domain>/linear-eval): CheXpert's 5 competition labels with its class map
{'1.0': 1, '0.0': 0, '-1.0': 0, '': 0} (uncertain -> negative, "U-Zeros"; `uncertain="ones"` is the
alternative), VOC's {'1': 1, '0': 0, '-1': 0} (an object marked only "difficult" is not a positive).
The study did not publish which 23 VIPER classes or 36 xView classes it kept, nor its VIPER/xView chip
lists: ours are the classes present in the most training images (ties by class id), recorded in the
manifest, and xView chips are the 512-px grid of each tile (the study's detection experiments used 512-px
xView chips). Splits: see each function; carved splits are seeded and recorded.
"""
from __future__ import annotations

import csv
import functools
import io
import json
import re
import xml.etree.ElementTree as ElementTree
from collections import Counter
from pathlib import Path

import numpy as np

from .core import Item, Plan, PrepareError, carve, file_reader, require

VAL_FRACTION = 0.1

# ---------------------------------------------------------------- CheXpert
CHEXPERT_LABELS = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")
UNCERTAIN_POLICIES = {"zeros": {"1.0": 1, "0.0": 0, "-1.0": 0, "": 0},  # the study's class_map
                      "ones": {"1.0": 1, "0.0": 0, "-1.0": 1, "": 0}}


def chexpert(download: Path, seed: int = 0, uncertain: str = "zeros", **_) -> Plan:
    """CheXpert-v1.0(-small)/{train,valid}.csv + images. valid.csv (234 radiographs, labelled by
    radiologists) is the test split; val is a seeded 10% of train.csv's patients (no patient in two splits)."""
    obtain = ("Request CheXpert-v1.0-small.zip at https://stanfordmlgroup.github.io/competitions/chexpert/ and "
              "extract it into <download>/ (-> CheXpert-v1.0-small/{train.csv,valid.csv,train/,valid/})")
    if uncertain not in UNCERTAIN_POLICIES:
        raise ValueError(f"uncertain must be one of {sorted(UNCERTAIN_POLICIES)}, not {uncertain!r}")
    policy = UNCERTAIN_POLICIES[uncertain]
    root = next((download / name for name in ("CheXpert-v1.0-small", "CheXpert-v1.0")
                 if (download / name / "train.csv").is_file()), download)
    files = {split: require(root / name, name, obtain) for split, name in (("train", "train.csv"),
                                                                          ("test", "valid.csv"))}
    items = []
    for split, csv_file in files.items():
        with open(csv_file, newline="") as handle:
            reader = csv.DictReader(handle)
            lacking = [c for c in ("Path", *CHEXPERT_LABELS) if c not in (reader.fieldnames or [])]
            if lacking:
                raise PrepareError(f"{csv_file} lacks the column(s) {lacking}; is it CheXpert's {csv_file.name}?")
            for row in reader:
                relative = Path(row["Path"])
                if relative.is_absolute() or ".." in relative.parts:
                    raise PrepareError(f"{csv_file}: refusing path {row['Path']!r}")
                # paths start with the dataset folder's name ("CheXpert-v1.0-small/train/...")
                path = download / relative if root != download else download / Path(*relative.parts[1:])
                values = [row[label].strip() for label in CHEXPERT_LABELS]
                try:
                    labels = tuple(i for i, v in enumerate(values) if policy[v if v in policy else f"{float(v):.1f}"])
                except ValueError:
                    raise PrepareError(f"{csv_file}: unexpected label value in {values}") from None
                patient = next((p for p in relative.parts if p.startswith("patient")), str(relative.parent))
                items.append(Item(split, str(path.relative_to(download)), file_reader(path), labels, group=patient))
    record = carve([i for i in items if i.split == "train"], VAL_FRACTION, seed)
    return Plan(items, list(CHEXPERT_LABELS), True, expected={"train": 223414, "test": 234},
                metadata_files=list(files.values()), image_mode="L",
                notes={"labels": f"the 5 competition labels; uncertain policy '{uncertain}' {policy}",
                       "splits": {"test": "official valid.csv", "val": record, "train": "train.csv minus val"}})


# ---------------------------------------------------------------- COCO 2014
def coco_2014(download: Path, seed: int = 0, **_) -> Plan:
    """train2014 (82,783) -> train + a seeded 10% val; val2014 (40,504) -> test. Labels: the 80
    categories with at least one instance annotation in the image."""
    obtain = ("Download train2014.zip, val2014.zip and annotations_trainval2014.zip from https://cocodataset.org "
              "and extract them into <download>/ (-> train2014/, val2014/, annotations/instances_*2014.json)")
    items, names, files = [], None, []
    for official, split in (("train2014", "train"), ("val2014", "test")):
        annotation_file = require(download / "annotations" / f"instances_{official}.json",
                                  f"annotations/instances_{official}.json", obtain)
        image_dir = require(download / official, f"{official}/", obtain)
        files.append(annotation_file)
        data = json.loads(annotation_file.read_text())
        categories = sorted(data["categories"], key=lambda c: c["id"])
        if names is None:
            names = [c["name"] for c in categories]
            column = {c["id"]: i for i, c in enumerate(categories)}
        labels: dict[int, set] = {}
        for annotation in data["annotations"]:
            labels.setdefault(annotation["image_id"], set()).add(column[annotation["category_id"]])
        for image in sorted(data["images"], key=lambda im: im["id"]):
            name = image["file_name"]
            if "/" in name or name.startswith("."):
                raise PrepareError(f"{annotation_file}: refusing file name {name!r}")
            path = image_dir / name
            items.append(Item(split, str(path.relative_to(download)), file_reader(path),
                              tuple(sorted(labels.get(image["id"], ())))))
    record = carve([i for i in items if i.split == "train"], VAL_FRACTION, seed, stratify=False)
    return Plan(items, names, True, expected={"train": 82783, "test": 40504}, metadata_files=files,
                notes={"splits": {"test": "official val2014", "val": record, "train": "train2014 minus val"},
                       "labels": "categories with >= 1 instance annotation (crowd included)"})


# ---------------------------------------------------------------- Pascal VOC 07+12
VOC_LABELS = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
              "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor")


def _voc_labels(xml_file: Path) -> tuple | None:
    if not xml_file.is_file():
        return None
    root = ElementTree.parse(xml_file).getroot()
    found = set()
    for obj in root.iter("object"):
        name = (obj.findtext("name") or "").strip()
        if name in VOC_LABELS and (obj.findtext("difficult") or "0").strip() != "1":
            found.add(VOC_LABELS.index(name))
    return tuple(sorted(found))


def pascal(download: Path, seed: int = 0, **_) -> Plan:
    """VOC2007 trainval + VOC2012 trainval -> train + a seeded 10% val; VOC2007 test -> test."""
    obtain = ("Download VOCtrainval_06-Nov-2007.tar, VOCtest_06-Nov-2007.tar and VOCtrainval_11-May-2012.tar "
              "(http://host.robots.ox.ac.uk/pascal/VOC/) and extract them into <download>/ (-> VOCdevkit/VOC2007, "
              "VOCdevkit/VOC2012)")
    devkit = download / "VOCdevkit" if (download / "VOCdevkit").is_dir() else download
    sets = [("VOC2007", "trainval", "train"), ("VOC2007", "test", "test"), ("VOC2012", "trainval", "train")]
    items, files, notes = [], [], {}
    for year, image_set, split in sets:
        list_file = devkit / year / "ImageSets" / "Main" / f"{image_set}.txt"
        if year == "VOC2012" and not (devkit / year).exists():
            notes["voc2012"] = "not in the download: VOC2007 trainval only (the study used 07+12)"
            continue
        require(list_file, f"{year}/ImageSets/Main/{image_set}.txt", obtain)
        files.append(list_file)
        for image_id in list_file.read_text().split():
            if "/" in image_id or image_id.startswith("."):
                raise PrepareError(f"{list_file}: refusing image id {image_id!r}")
            path = devkit / year / "JPEGImages" / f"{image_id}.jpg"
            labels = _voc_labels(devkit / year / "Annotations" / f"{image_id}.xml")
            items.append(Item(split, str(path.relative_to(download)), file_reader(path) if labels is not None else None,
                              labels or ()))
    record = carve([i for i in items if i.split == "train"], VAL_FRACTION, seed, stratify=False)
    expected = {"train": 5011 + (11540 if "voc2012" not in notes else 0), "test": 4952}
    return Plan(items, list(VOC_LABELS), True, expected=expected, metadata_files=files,
                notes={**notes, "splits": {"test": "VOC2007 test", "val": record,
                                           "train": "VOC2007 + VOC2012 trainval minus val"},
                       "labels": "a class is positive when a non-difficult object of it is annotated "
                                 "(the study's class_map: 1 -> 1, 0 (difficult only) and -1 -> 0)"})


# ---------------------------------------------------------------- VIPER
VIPER_CLASSES = ("unlabeled", "ambiguous", "sky", "road", "sidewalk", "railtrack", "terrain", "tree", "vegetation",
                 "building", "infrastructure", "fence", "billboard", "trafficlight", "trafficsign", "mobilebarrier",
                 "firehydrant", "chair", "trash", "trashcan", "person", "animal", "bicycle", "motorcycle", "car", "van",
                 "bus", "truck", "trailer", "train", "plane", "boat")
VIPER_KEEP = 23


def _viper_class_ids(path: Path, colours: dict | None) -> set:
    from PIL import Image

    with Image.open(path) as image:
        if image.mode in ("P", "L", "I", "I;16"):
            ids = np.unique(np.asarray(image))
        elif colours:
            rgb = np.asarray(image.convert("RGB")).reshape(-1, 3)
            packed = np.unique((rgb[:, 0].astype(np.int64) << 16) | (rgb[:, 1].astype(np.int64) << 8) | rgb[:, 2])
            ids = [colours[int(v)] for v in packed if int(v) in colours]
        else:
            raise PrepareError(f"{path} is an RGB class map and the download has no classes.csv to map colours")
    return {int(i) for i in ids if 2 <= int(i) < len(VIPER_CLASSES)}


def _viper_colours(root: Path) -> dict | None:
    table = root / "classes.csv"
    if not table.is_file():
        return None
    colours = {}
    with open(table, newline="") as handle:
        for index, row in enumerate(csv.reader(handle)):
            numbers = [int(v) for v in row if v.strip().isdigit()]
            if len(numbers) >= 3:
                r, g, b = numbers[-3:]
                colours[(r << 16) | (g << 8) | b] = len(colours)
    return colours


def viper(download: Path, seed: int = 0, **_) -> Plan:
    """VIPER (Richter et al. 2017): {train,val}/img/<seq>/<seq>_<frame>.jpg with class maps in
    {train,val}/cls/<seq>/<seq>_<frame>.png. Official val -> test; val = a seeded 10% of the training
    sequences. Labels: the classes visible in a frame, restricted to the 23 seen in the most training frames."""
    obtain = ("Download VIPER's train/val 'img' (jpg) and 'cls' archives from https://playing-for-benchmarks.org "
              "and extract them into <download>/ (-> train/img, train/cls, val/img, val/cls)")
    colours = _viper_colours(download)
    frames = []
    for official, split in (("train", "train"), ("val", "test")):
        image_dir = require(download / official / "img", f"{official}/img", obtain)
        class_dir = require(download / official / "cls", f"{official}/cls", obtain)
        for image in sorted(p for p in image_dir.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png")):
            class_map = class_dir / image.relative_to(image_dir).with_suffix(".png")
            present = _viper_class_ids(class_map, colours) if class_map.is_file() else None
            frames.append((split, image, present, image.parent.name))
    counts = Counter(c for split, _, present, _ in frames if split == "train" and present for c in present)
    kept = sorted(sorted(counts, key=lambda c: (-counts[c], c))[:VIPER_KEEP])
    if len(kept) < VIPER_KEEP:
        raise PrepareError(f"VIPER: only {len(kept)} classes occur in the training class maps under {download}; "
                           f"the study's task has {VIPER_KEEP}. Is the 'cls' archive extracted?")
    items = [Item(split, str(image.relative_to(download)), file_reader(image) if present is not None else None,
                  tuple(kept.index(c) for c in sorted(present or ()) if c in kept), group=sequence)
             for split, image, present, sequence in frames]
    record = carve([i for i in items if i.split == "train"], VAL_FRACTION, seed)
    return Plan(items, [VIPER_CLASSES[c] for c in kept], True,
                notes={"labels": f"the {VIPER_KEEP} classes present in the most training frames (ids {kept}); "
                                 "a frame is positive for a class with >= 1 pixel of it",
                       "splits": {"test": "official val", "val": record, "train": "official train minus val"}})


# ---------------------------------------------------------------- xView
XVIEW_CLASSES = {
    11: "Fixed-wing Aircraft", 12: "Small Aircraft", 13: "Cargo Plane", 15: "Helicopter", 17: "Passenger Vehicle",
    18: "Small Car", 19: "Bus", 20: "Pickup Truck", 21: "Utility Truck", 23: "Truck", 24: "Cargo Truck",
    25: "Truck w/Box", 26: "Truck Tractor", 27: "Trailer", 28: "Truck w/Flatbed", 29: "Truck w/Liquid",
    32: "Crane Truck", 33: "Railway Vehicle", 34: "Passenger Car", 35: "Cargo Car", 36: "Flat Car", 37: "Tank car",
    38: "Locomotive", 40: "Maritime Vessel", 41: "Motorboat", 42: "Sailboat", 44: "Tugboat", 45: "Barge",
    47: "Fishing Vessel", 49: "Ferry", 50: "Yacht", 51: "Container Ship", 52: "Oil Tanker", 53: "Engineering Vehicle",
    54: "Tower crane", 55: "Container Crane", 56: "Reach Stacker", 57: "Straddle Carrier", 59: "Mobile Crane",
    60: "Dump Truck", 61: "Haul Truck", 62: "Scraper/Tractor", 63: "Front loader/Bulldozer", 64: "Excavator",
    65: "Cement Mixer", 66: "Ground Grader", 71: "Hut/Tent", 72: "Shed", 73: "Building", 74: "Aircraft Hangar",
    76: "Damaged Building", 77: "Facility", 79: "Construction Site", 83: "Vehicle Lot", 84: "Helipad",
    86: "Storage Tank", 89: "Shipping container lot", 91: "Shipping Container", 93: "Pylon", 94: "Tower",
}
XVIEW_KEEP = 36
XVIEW_CHIP = 512


@functools.lru_cache(maxsize=1)
def _tile_pixels(path: str) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _chip_reader(tile: Path, box: tuple):
    def read() -> bytes:
        from PIL import Image

        x, y, w, h = box
        buffer = io.BytesIO()
        Image.fromarray(_tile_pixels(str(tile))[y:y + h, x:x + w]).save(buffer, "PNG")
        return buffer.getvalue()
    return read


def xview(download: Path, seed: int = 0, chip: int = XVIEW_CHIP, **_) -> Plan:
    """xView 1 train_images/*.tif + xView_train.geojson (the validation labels were never released).
    Chips: the `chip`-px grid of each tile (edge remainders dropped; a tile smaller than a chip is one chip).
    A chip's labels: the classes of the boxes whose centre lies in it. Splits by tile (no tile in two
    splits): seeded 20% of tiles -> test, then 10% of the rest -> val."""
    from PIL import Image

    obtain = ("Download train_images.tgz and train_labels.tgz (xView_train.geojson) from https://xviewdataset.org "
              "and extract them into <download>/ (-> train_images/*.tif, xView_train.geojson)")
    labels_file = require(download / "xView_train.geojson", "xView_train.geojson", obtain)
    tiles_dir = require(download / "train_images", "train_images/", obtain)
    boxes: dict[str, list] = {}
    for feature in json.loads(labels_file.read_text()).get("features", []):
        props = feature.get("properties", {})
        try:
            x1, y1, x2, y2 = (float(v) for v in str(props["bounds_imcoords"]).split(","))
            boxes.setdefault(str(props["image_id"]), []).append(((x1 + x2) / 2, (y1 + y2) / 2, int(props["type_id"])))
        except (KeyError, ValueError):
            continue  # a malformed feature: the official file has none; skip rather than guess
    chips = []
    for tile_id in sorted(boxes):
        if not re.fullmatch(r"[\w.-]+\.tif", tile_id):
            raise PrepareError(f"{labels_file}: refusing image_id {tile_id!r}")
        tile = tiles_dir / tile_id
        if not tile.is_file():
            chips.append((tile, None, (), tile_id))
            continue
        with Image.open(tile) as image:
            width, height = image.size
        xs = range(0, max(width - chip, 0) + 1, chip)
        ys = range(0, max(height - chip, 0) + 1, chip)
        for y in ys:
            for x in xs:
                inside = {t for cx, cy, t in boxes[tile_id] if x <= cx < x + chip and y <= cy < y + chip}
                chips.append((tile, (x, y, min(chip, width), min(chip, height)), inside, tile_id))
    counts = Counter(t for _, box, inside, _ in chips if box for t in inside)
    kept = sorted(sorted((t for t in counts if t in XVIEW_CLASSES), key=lambda t: (-counts[t], t))[:XVIEW_KEEP])
    if len(kept) < XVIEW_KEEP:
        raise PrepareError(f"xView: only {len(kept)} classes occur in the chips of {tiles_dir}; the study's task has "
                           f"{XVIEW_KEEP}. Are train_images/ complete?")
    items = [Item("train", f"{tile.relative_to(download)}@{box[0]},{box[1]}" if box else str(tile.relative_to(download)),
                  _chip_reader(tile, box) if box else None, tuple(kept.index(t) for t in sorted(inside) if t in kept),
                  group=tile_id) for tile, box, inside, tile_id in chips]
    test = carve(items, 0.2, seed, into="test")
    val = carve([i for i in items if i.split == "train"], VAL_FRACTION, seed + 1)
    return Plan(items, [XVIEW_CLASSES[t] for t in kept], True, metadata_files=[labels_file],
                notes={"labels": f"the {XVIEW_KEEP} classes found in the most chips (type ids {kept}); a chip is "
                                 "positive for a class whose box centre lies in it",
                       "chips": f"{chip}-px grid per tile, stored as lossless PNG", "splits": {"test": test, "val": val}})
