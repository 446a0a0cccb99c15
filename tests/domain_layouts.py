"""Miniature replicas of the 16 HPT target datasets' official download layouts, built in a test.

Same file names, folder structure and metadata formats (CSV, JSON, GeoJSON, XML, .mat, split lists,
TIFF tiles, palette class maps) as the official archives; a handful of small images per class, cut from
scikit-image's bundled photographs (a different photo region and tint per class, so classes differ).
Only a few classes are present where the real dataset has many: preparing them warns about a partial
download, which the tests also check.
"""
from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 40  # side of the generated images


def _photos() -> list[np.ndarray]:
    from skimage import data

    return [data.astronaut(), data.coffee(), data.chelsea(), data.rocket(), data.immunohistochemistry(),
            np.stack([data.camera()] * 3, -1)]


_PHOTOS: list | None = None


def photo(cls: int, index: int, gray: bool = False, size: int = SIZE) -> Image.Image:
    """A real-photo crop: class picks the photo, region and tint; index shifts the crop a little."""
    global _PHOTOS
    if _PHOTOS is None:
        _PHOTOS = _photos()
    source = _PHOTOS[cls % len(_PHOTOS)]
    rng = np.random.default_rng(cls * 1000 + index)
    side = min(source.shape[:2]) // 2
    y = (cls * 37 + int(rng.integers(0, 20))) % (source.shape[0] - side)
    x = (cls * 53 + int(rng.integers(0, 20))) % (source.shape[1] - side)
    crop = source[y:y + side, x:x + side].astype(np.float32)
    tint = 0.6 + 0.4 * np.array([(cls * 0.37) % 1, (cls * 0.61) % 1, (cls * 0.83) % 1])
    image = Image.fromarray(np.clip(crop * tint, 0, 255).astype(np.uint8)).resize((size, size), Image.BILINEAR)
    return image.convert("L") if gray else image


def _save(image: Image.Image, path: Path, fmt: str = "JPEG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, fmt, **({"quality": 90} if fmt == "JPEG" else {}))


def _study_names(name: str, split: str) -> list[str]:
    from training.prepare.scenes import SPLIT_LISTS

    with gzip.open(SPLIT_LISTS / f"{name}_{split}.txt.gz", "rt") as handle:
        return [line.strip() for line in handle if line.strip()]


def resisc(root: Path, classes: int = 4) -> None:
    import re

    wanted = {"train": 2, "val": 1, "test": 1}
    for split, count in wanted.items():
        taken: dict = {}
        for name in _study_names("resisc45", split):
            label = re.match(r"(.+)_\d+\.jpg$", name).group(1)
            if (label in taken or len(taken) < classes) and len(taken.setdefault(label, [])) < count:
                taken[label].append(name)
        for index, (label, names) in enumerate(sorted(taken.items())):
            for n, name in enumerate(names):
                _save(photo(index, n + 10 * len(split)), root / "NWPU-RESISC45" / label / name)


def ucmerced(root: Path, classes: int = 4) -> None:
    import re

    for split, count in {"train": 2, "val": 1, "test": 1}.items():
        taken: dict = {}
        for name in _study_names("uc_merced", split):
            label = re.match(r"([a-z]+)\d+\.tif$", name).group(1)
            if (label in taken or len(taken) < classes) and len(taken.setdefault(label, [])) < count:
                taken[label].append(name)
        for index, (label, names) in enumerate(sorted(taken.items())):
            for n, name in enumerate(names):
                _save(photo(index, n + 10 * len(split)), root / "UCMerced_LandUse" / "Images" / label / name, "TIFF")


def chest_xray_kids(root: Path) -> None:
    for split, count in (("train", 8), ("test", 3)):
        for cls, name in enumerate(("NORMAL", "PNEUMONIA")):
            for n in range(count):
                kind = "" if cls == 0 else ("_bacteria" if n % 2 else "_virus")
                _save(photo(cls, n + 50 * (split == "test"), gray=True),
                      root / "chest_xray" / split / name / f"person{n}{kind}_{n}.jpeg")


def flowers(root: Path, classes: int = 4) -> None:
    from scipy.io import savemat

    labels = np.array([(i % 102) + 1 for i in range(8189)], dtype=np.uint8)
    savemat(root / "imagelabels.mat", {"labels": labels[None, :]})
    ids = {"trnid": [], "valid": [], "tstid": []}
    for cls in range(1, classes + 1):
        members = [i + 1 for i in range(8189) if labels[i] == cls][:6]
        ids["trnid"] += members[:3]
        ids["valid"] += members[3:4]
        ids["tstid"] += members[4:6]
    savemat(root / "setid.mat", {k: np.array(v, dtype=np.uint16)[None, :] for k, v in ids.items()})
    for key, members in ids.items():
        for image_id in members:
            _save(photo(int(labels[image_id - 1]), image_id), root / "jpg" / f"image_{image_id:05d}.jpg")


DOMAINNET_CLASSES = ("aircraft_carrier", "airplane", "alarm_clock", "ambulance")


def domainnet(style: str):
    def build(root: Path) -> None:
        for split, count in (("train", 5), ("test", 2)):
            lines = []
            for label, name in enumerate(DOMAINNET_CLASSES):
                for n in range(count):
                    relative = f"{style}/{name}/{style}_{label:03d}_{n + 100 * (split == 'test'):06d}.jpg"
                    _save(photo(label, n + 100 * (split == "test")), root / relative)
                    lines.append(f"{relative} {label}")
            (root / f"{style}_{split}.txt").write_text("\n".join(lines) + "\n")
    return build


def bdd(root: Path) -> None:
    from training.prepare.scenes import BDD_WEATHER

    for official, count in (("train", 5), ("val", 2)):
        frames = []
        for cls, weather in enumerate(BDD_WEATHER + ("undefined",)):
            for n in range(count):
                name = f"{cls:04x}{n:04x}-{official[:2]}00cafe.jpg"
                _save(photo(cls, n), root / "bdd100k" / "images" / "100k" / official / name)
                frames.append({"name": name, "attributes": {"weather": weather, "scene": "city street",
                                                            "timeofday": "daytime"}, "timestamp": 10000,
                               "labels": [{"category": "car", "box2d": {"x1": 1, "y1": 1, "x2": 9, "y2": 9}}]})
        labels = root / "bdd100k" / "labels" / f"bdd100k_labels_images_{official}.json"
        labels.parent.mkdir(parents=True, exist_ok=True)
        labels.write_text(json.dumps(frames))


CHEXPERT_COLUMNS = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", "No Finding", "Enlarged Cardiomediastinum",
                    "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema", "Consolidation", "Pneumonia",
                    "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other", "Fracture", "Support Devices")


def chexpert(root: Path) -> None:
    rng = np.random.default_rng(3)
    base = root / "CheXpert-v1.0-small"
    for split, patients, first in (("train", 12, 1), ("valid", 6, 64541)):
        rows = []
        for p in range(patients):
            for view in (1, 2) if split == "train" else (1,):
                relative = f"CheXpert-v1.0-small/{split}/patient{first + p:05d}/study1/view{view}_frontal.jpg"
                values = rng.choice(["1.0", "0.0", "-1.0", ""], size=14, p=[0.35, 0.3, 0.15, 0.2])
                if split == "valid":
                    values = np.where(values == "1.0", "1.0", "0.0")  # valid.csv: radiologists' 0/1 only
                _save(photo(int((values == "1.0").sum()), p * 3 + view, gray=True), root / relative)
                rows.append([relative, "Female", str(40 + p), "Frontal", "AP", *values])
        with open(base / f"{split}.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(CHEXPERT_COLUMNS)
            writer.writerows(rows)


COCO_IDS = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]


def coco_2014(root: Path) -> None:
    rng = np.random.default_rng(4)
    categories = [{"id": i, "name": f"category_{i}", "supercategory": "thing"} for i in COCO_IDS]
    for official, count in (("train2014", 20), ("val2014", 8)):
        images, annotations = [], []
        for n in range(count):
            image_id = 1000 * (official == "val2014") + n + 9
            name = f"COCO_{official}_{image_id:012d}.jpg"
            present = rng.choice(COCO_IDS[:6], size=int(rng.integers(1, 4)), replace=False)
            _save(photo(int(present[0]), n), root / official / name)
            images.append({"id": image_id, "file_name": name, "width": SIZE, "height": SIZE})
            for category in present:
                annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": int(category),
                                    "bbox": [1, 1, 10, 10], "area": 100.0, "iscrowd": 0})
        path = root / "annotations" / f"instances_{official}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))


def pascal(root: Path) -> None:
    from training.prepare.multilabel import VOC_LABELS

    rng = np.random.default_rng(5)
    for year, image_set, count in (("VOC2007", "trainval", 12), ("VOC2007", "test", 8), ("VOC2012", "trainval", 8)):
        base = root / "VOCdevkit" / year
        ids = []
        for n in range(count):
            image_id = f"{2007 if year == 'VOC2007' else 2012}_{n + 100 * (image_set == 'test'):06d}"
            ids.append(image_id)
            present = rng.choice(5, size=int(rng.integers(1, 3)), replace=False)
            _save(photo(int(present[0]), n), base / "JPEGImages" / f"{image_id}.jpg")
            objects = "".join(f"<object><name>{VOC_LABELS[c]}</name><pose>Left</pose><truncated>0</truncated>"
                              f"<difficult>{int(k == 1 and n % 4 == 0)}</difficult><bndbox><xmin>1</xmin><ymin>1</ymin>"
                              f"<xmax>9</xmax><ymax>9</ymax></bndbox></object>" for k, c in enumerate(present))
            annotation = base / "Annotations" / f"{image_id}.xml"
            annotation.parent.mkdir(parents=True, exist_ok=True)
            annotation.write_text(f"<annotation><folder>{year}</folder><filename>{image_id}.jpg</filename>"
                                  f"<size><width>{SIZE}</width><height>{SIZE}</height><depth>3</depth></size>"
                                  f"{objects}</annotation>")
        lists = base / "ImageSets" / "Main"
        lists.mkdir(parents=True, exist_ok=True)
        (lists / f"{image_set}.txt").write_text("\n".join(ids) + "\n")


def viper(root: Path) -> None:
    palette = [v for i in range(256) for v in ((i * 41) % 256, (i * 97) % 256, (i * 13) % 256)]
    for official, sequences in (("train", 4), ("val", 2)):
        for s in range(sequences):
            sequence = f"{s + 1 + 10 * (official == 'val'):03d}"
            for frame in range(3):
                index = s * 3 + frame
                _save(photo(index, frame), root / official / "img" / sequence / f"{sequence}_{frame * 10:05d}.jpg")
                ids = np.full((16, 16), 3, np.uint8)  # road everywhere, then blocks of 8 more classes
                for j in range(8):
                    ids[(j // 4) * 8:(j // 4) * 8 + 8, (j % 4) * 4:(j % 4) * 4 + 4] = 2 + (index * 7 + j) % 30
                class_map = Image.fromarray(ids, "P")
                class_map.putpalette(palette)
                _save(class_map, root / official / "cls" / sequence / f"{sequence}_{frame * 10:05d}.png", "PNG")


def xview(root: Path, tile: int = 192, tiles: int = 5) -> None:
    from training.prepare.multilabel import XVIEW_CLASSES

    rng = np.random.default_rng(6)
    type_ids = sorted(XVIEW_CLASSES)[:40]
    features = []
    for t in range(tiles):
        tile_id = f"{100 + t}.tif"
        _save(photo(t, 0, size=tile), root / "train_images" / tile_id, "TIFF")
        for b in range(40):
            x, y = int(rng.integers(0, tile - 10)), int(rng.integers(0, tile - 10))
            type_id = type_ids[(t * 40 + b) % len(type_ids)]
            features.append({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": []},
                             "properties": {"bounds_imcoords": f"{x},{y},{x + 8},{y + 8}", "type_id": type_id,
                                            "image_id": tile_id, "cat_id": len(features)}})
    (root / "xView_train.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": features}))


BUILDERS = {
    "resisc": resisc, "ucmerced": ucmerced, "xview": xview, "bdd": bdd, "viper": viper, "chexpert": chexpert,
    "chest_xray_kids": chest_xray_kids, "flowers": flowers, "coco_2014": coco_2014, "pascal": pascal,
    **{f"domain_net_{s}": domainnet(s) for s in ("clipart", "infograph", "painting", "quickdraw", "real", "sketch")},
}
# options a tiny replica needs (the real xView tiles are ~3,000 px; ours are 192)
OPTIONS = {"xview": {"chip": 64}}


def build(domain: str, root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    BUILDERS[domain](root)
    return root
