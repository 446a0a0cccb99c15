"""`prepare` on bad downloads, its output format, and the multi-label evaluation pieces it feeds."""
from __future__ import annotations

import json
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

from tests import domain_layouts


def _quiet_prepare(*args, **kwargs):
    from training.prepare import prepare

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return prepare(*args, **kwargs)


def test_missing_metadata_names_the_file_exits_2_and_writes_nothing(tmp_path):
    download = domain_layouts.build("flowers", tmp_path / "download")
    (download / "setid.mat").unlink()
    out = tmp_path / "prepared"
    result = subprocess.run([sys.executable, "-m", "training", "prepare", "flowers", str(download), "--out", str(out)],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert f"setid.mat not found: expected {download / 'setid.mat'}" in result.stderr
    assert "robots.ox.ac.uk" in result.stderr  # where the official file comes from
    assert not out.exists() and not list(tmp_path.glob(".prepared*"))


def test_a_truncated_image_is_skipped_and_reported_or_fails_without_output(tmp_path):
    from training.prepare import PrepareError, prepare, read_manifest

    download = domain_layouts.build("chest_xray_kids", tmp_path / "download")
    broken = sorted((download / "chest_xray" / "train" / "NORMAL").glob("*.jpeg"))[0]
    broken.write_bytes(broken.read_bytes()[:200])  # cut mid-stream, as an interrupted download leaves it
    with pytest.raises(PrepareError, match=f"{broken}: cannot decode"):
        _quiet_prepare("chest_xray_kids", download, tmp_path / "strict", on_bad="fail")
    assert not (tmp_path / "strict").exists() and not list(tmp_path.glob(".strict*"))

    with pytest.warns(UserWarning, match="skipped 1 undecodable image"):
        out = prepare("chest_xray_kids", download, tmp_path / "lenient")
    manifest = read_manifest(out)
    assert [s["source"] for s in manifest["skipped"]] == [str(broken.relative_to(download))]
    assert sum(s["images"] for s in manifest["splits"].values()) == 21  # 22 files, one skipped


def test_partial_download_warns_with_expected_and_found_counts(tmp_path):
    from training.prepare import PartialDownloadWarning, prepare, read_manifest

    download = domain_layouts.build("domain_net_sketch", tmp_path / "download")
    gone = sorted((download / "sketch" / "airplane").glob("*.jpg"))[0]
    gone.unlink()
    with pytest.warns(PartialDownloadWarning) as caught:
        out = prepare("domain_net_sketch", download, tmp_path / "prepared")
    text = " ".join(str(w.message) for w in caught)
    assert "expected 70386 images (official release), found 27" in text
    assert "1 image(s) named by the split lists are not in the download" in text and gone.name in text
    assert "expected 345 classes in train, found 4" in text
    assert read_manifest(out)["missing"]["train" if "train" in read_manifest(out)["missing"] else "test"]["count"] >= 1


def test_existing_output_is_kept_unless_forced(tmp_path):
    from training.prepare import read_manifest

    download = domain_layouts.build("chest_xray_kids", tmp_path / "download")
    out = _quiet_prepare("chest_xray_kids", download, tmp_path / "prepared")
    first = read_manifest(out)["splits"]["train"]["sha256"]
    with pytest.raises(FileExistsError, match="--force"):
        _quiet_prepare("chest_xray_kids", download, out)
    _quiet_prepare("chest_xray_kids", download, out, force=True, seed=1)  # another val carve
    assert read_manifest(out)["splits"]["train"]["sha256"] != first
    assert not list(tmp_path.glob(".prepared*"))


def test_prepared_data_opens_three_ways_and_records_what_was_read(tmp_path, monkeypatch):
    import datasets

    from training.data import open_source
    from training.hpt import data_spec

    download = domain_layouts.build("pascal", tmp_path / "download")
    out = _quiet_prepare("pascal", download, tmp_path / "data" / "pascal")
    monkeypatch.setenv("ZOO_DATA", str(tmp_path / "data"))
    assert data_spec("pascal") == str(out)
    from training.offline_sets import DataNotFoundError
    with pytest.raises(DataNotFoundError, match="holds prepared 'pascal' data, not 'coco_2014'"):
        data_spec("coco_2014", str(out))  # a recipe for one domain never trains on another's prepared data
    train = open_source(data_spec("pascal"), "train", cache=False)
    assert train.multi_label and train.num_classes == 20 and train.domain.name == "pascal"
    reread = datasets.load_from_disk(str(out))  # also a plain `datasets` folder
    assert len(reread["train"]) == len(train) and reread["train"].features["labels"].feature.num_classes == 20
    image = np.array(reread["train"][3]["image"].convert("RGB"))
    assert torch.equal(train.image(3), torch.from_numpy(image).permute(2, 0, 1))  # same pixels, our fast reader
    described = train.describe()
    assert described["prepared_sha256"] == json.loads((out / "manifest.json").read_text())["splits"]["train"]["sha256"]


def test_chexpert_uncertain_policy_is_the_studys_with_the_alternative_as_option(tmp_path):
    from training.data import open_source
    from training.prepare.multilabel import CHEXPERT_LABELS

    download = domain_layouts.build("chexpert", tmp_path / "download")
    zeros = open_source(str(_quiet_prepare("chexpert", download, tmp_path / "zeros")), "train", cache=False)
    ones = open_source(str(_quiet_prepare("chexpert", download, tmp_path / "ones", uncertain="ones")), "train",
                       cache=False)
    import csv
    rows = {r["Path"]: r for r in csv.DictReader(open(download / "CheXpert-v1.0-small" / "train.csv"))}
    for index, source in enumerate(zeros.dataset["source"]):
        row = rows[source]
        expected_zeros = [float(row[c] == "1.0") for c in CHEXPERT_LABELS]
        expected_ones = [float(row[c] in ("1.0", "-1.0")) for c in CHEXPERT_LABELS]
        assert zeros.labels()[index].tolist() == expected_zeros
        assert ones.labels()[ones.dataset["source"].index(source)].tolist() == expected_ones


def test_mean_auroc_follows_the_study_rule_for_one_class_labels():
    from sklearn.metrics import roc_auc_score

    from training.evaluate import auroc_summary, mean_auroc

    rng = np.random.default_rng(0)
    targets = torch.from_numpy((rng.random((40, 3)) > 0.5).astype(np.float32))
    targets[:, 2] = 0  # a label with no positive in this split
    scores = torch.from_numpy(rng.random((40, 3)).astype(np.float32))
    defined = [roc_auc_score(targets[:, i], scores[:, i]) for i in range(2)]
    assert mean_auroc(scores, targets, one_class="study") == pytest.approx(sum(defined) / 3)  # 0 averaged in
    assert mean_auroc(scores, targets) == pytest.approx(sum(defined) / 2)
    summary = auroc_summary(scores, targets)
    assert summary["one_class_labels"] == 1 and summary["value"] < summary["mean_auroc_defined_labels"]


def test_multi_label_knn_is_the_weighted_fraction_of_neighbours_with_the_label():
    from training.evaluate import knn_scores

    train = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    labels = torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0], [0.0, 1.0, 0.0]])
    query = torch.tensor([[1.0, 0.05]])
    scores = knn_scores(train, labels, query, 3, k=2, t=0.1)
    sims = torch.nn.functional.normalize(train, dim=1) @ torch.nn.functional.normalize(query, dim=1).t()
    w = (sims[:2, 0] / 0.1).exp()
    expected = (w[:, None] * labels[:2]).sum(0) / w.sum()
    assert torch.allclose(scores[0], expected, atol=1e-5)


def test_labelled_subset_covers_every_label_present_where_possible():
    from training.evaluate import labelled_subset

    rng = np.random.default_rng(1)
    labels = (rng.random((200, 12)) > 0.9).astype(np.float32)
    labels[:, 11] = 0
    labels[17, 11] = 1  # a label carried by one image only
    chosen = labelled_subset(labels, 20, seed=0)
    assert len(chosen) == 20 and len(set(chosen.tolist())) == 20
    assert (labels[chosen].sum(0) > 0).sum() == (labels.sum(0) > 0).sum() and 17 in chosen
    assert len(labelled_subset(labels, 3, seed=0)) == 3  # fewer images than labels: rarest first, no error


def test_encoded_views_are_seeded_sized_and_match_a_full_decode_crop(tmp_path):
    import io

    from PIL import Image

    from training.encoded_views import EncodedViews, crop_params
    from training.views import InputSpec

    photo = domain_layouts.photo(2, 0, size=640)
    buffer = io.BytesIO()
    photo.save(buffer, "JPEG", quality=95)
    spec = InputSpec(3, 64, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    views = EncodedViews(spec, {"crop_scale": (0.9, 1.0), "jitter": (0, 0, 0, 0), "jitter_p": 0.0, "gray_p": 0.0,
                                "blur_p": 0.0, "flip_p": 0.0})
    torch.manual_seed(5)
    first = views(buffer.getvalue())
    torch.manual_seed(5)
    again = views(buffer.getvalue())
    assert len(first) == 2 and first[0].shape == (3, 64, 64) and torch.equal(first[0], again[0])
    torch.manual_seed(5)  # the same crop from a full-resolution decode: the DCT-scaled decode is close to it
    top, left, h, w = crop_params(640, 640, (0.9, 1.0))
    full = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB").resize((64, 64), Image.BILINEAR,
                                                                             box=(left, top, left + w, top + h))
    reference = (torch.from_numpy(np.array(full)).permute(2, 0, 1).float() / 255 - 0.5) / 0.25
    assert (first[0] - reference).abs().mean() < 0.05  # < ~3 grey levels on average
    gray = EncodedViews(InputSpec(1, 32, (0.5,), (0.25,)), "moco")(buffer.getvalue(), views=1)
    assert gray[0].shape == (1, 32, 32)


def test_training_batches_from_a_prepared_set_use_encoded_views_and_are_reproducible(tmp_path):
    from training.batches import StepBatches
    from training.data import open_source
    from training.encoded_views import EncodedViews, cpu_views
    from training.views import input_spec

    download = domain_layouts.build("domain_net_real", tmp_path / "download")
    source = open_source(str(_quiet_prepare("domain_net_real", download, tmp_path / "prepared")), "train",
                         cache=False)
    spec = input_spec(source.domain, image_size=32)
    transform = cpu_views(source, spec, "moco")
    assert isinstance(transform, EncodedViews)
    batches = StepBatches(source, transform, 4, seed=3)
    first, second, indices = batches[5]
    again = StepBatches(source, cpu_views(source, spec, "moco"), 4, seed=3)[5]
    assert first.shape == second.shape == (4, 3, 32, 32) and not torch.equal(first, second)
    assert torch.equal(first, again[0]) and torch.equal(second, again[1]) and torch.equal(indices, again[2])
    cached = open_source(str(tmp_path / "prepared"), "train")  # small sets are decoded into memory: tensor views
    assert not isinstance(cpu_views(cached, spec, "moco"), EncodedViews)
