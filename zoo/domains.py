"""The registry of data domains: the 16 targets of the HPT study, ImageNet, and the offline real sets.

One place that the zoo (names, preprocessing, model cards) and training (data, evaluation)
both read, so a domain's channels, statistics and usage terms cannot disagree between them.
"""
from __future__ import annotations

from dataclasses import dataclass, field

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Domain:
    name: str
    title: str
    group: str  # aerial, driving, medical, natural, domainnet, base, offline
    task: str  # "single-label" | "multi-label"
    num_classes: int
    channels: int = 3
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    # Whether mean/std were measured on this dataset; False means "ImageNet statistics used as a
    # stand-in" and cards say so instead of pretending.
    stats_measured: bool = False
    stats_source: str = ""  # where mean/std come from
    image_size: int = 224
    native_size: int | None = None
    splits: str = ""
    size: str = ""
    license: str = ""
    terms: str = ""  # usage terms a model card must repeat
    obtain: str = ""  # how a user gets the data
    aliases: tuple = field(default_factory=tuple)

    @property
    def metric(self) -> str:
        return "mean_auroc" if self.task == "multi-label" else "top1"


_AGREEMENT = "Obtain the data from its owners and accept their terms; the zoo does not redistribute it."

DOMAINS: dict[str, Domain] = {}


def _register(domain: Domain) -> None:
    DOMAINS[domain.name] = domain


_register(Domain(
    "imagenet", "ImageNet-1k (ILSVRC 2012)", "base", "single-label", 1000,
    stats_measured=True, splits="1.28M train / 50k val", size="1.28M images",
    license="ImageNet terms of access (non-commercial research)",
    terms="Trained on ImageNet-1k: research and educational use under the ImageNet terms of access.",
    obtain="https://image-net.org (account required); folder layout train/<wnid>/*.JPEG",
    aliases=("in1k", "ilsvrc"),
))
# The 16 targets. mean/std: the values the HPT study trained and evaluated with (its
# utils/pretrain-configs/*.sh and linear-eval configs, cjrd/self-supervised-pretraining); `prepare`
# also measures them on the training split with the study's rule and records them in the manifest.
# `obtain`: the official archives; `python -m training prepare <domain> <download>` reads them.
_STUDY = "the HPT study's configs (cjrd/self-supervised-pretraining)"
_TARGETS = [
    # name, title, group, task, classes, channels, mean, std, size, splits, license, obtain, aliases
    ("resisc", "NWPU-RESISC45 aerial scenes", "aerial", "single-label", 45, 3, (0.368, 0.381, 0.3436),
     (0.2035, 0.1854, 0.1849), "31,500 images", "the study's lists: 18,900 / 6,300 / 6,300", "research use (NWPU)",
     "NWPU-RESISC45.rar (Cheng et al. 2017) extracted to <download>/NWPU-RESISC45/<class>/*.jpg", ("resisc45",)),
    ("ucmerced", "UC Merced land use", "aerial", "single-label", 21, 3, (0.4842, 0.4901, 0.4505),
     (0.2180, 0.2021, 0.1958), "2,100 images", "the study's lists: 1,260 / 420 / 420", "research use (USGS imagery)",
     "UCMerced_LandUse.zip (weegee.vision.ucmerced.edu) extracted to <download>/UCMerced_LandUse/Images/", ("uc_merced",)),
    # the study reused RESISC45's statistics for xView (its xview.sh); kept for fidelity, measured ones are in the manifest
    ("xview", "xView overhead chips", "aerial", "multi-label", 36, 3, (0.368, 0.381, 0.3436), (0.2035, 0.1854, 0.1849),
     "xView chips", "by tile: 20% test, 10% of the rest val (seeded)", "xView license (CC BY-NC-SA 4.0)",
     "train_images.tgz + train_labels.tgz (xviewdataset.org) extracted to <download>/{train_images/,xView_train.geojson}",
     ()),
    ("bdd", "BDD100K weather", "driving", "single-label", 6, 3, (0.2789, 0.2929, 0.2902), (0.2474, 0.2653, 0.2761),
     "~100k images", "official val = test; 10% of train = val (seeded)", "BDD100K license",
     "bdd100k_images_100k.zip + bdd100k_labels_release.zip (bdd-data.berkeley.edu) extracted to <download>/bdd100k/",
     ("bdd100k",)),
    ("viper", "VIPER synthetic driving", "driving", "multi-label", 23, 3, (0.3485, 0.3422, 0.3395),
     (0.2449, 0.2408, 0.2390), "~254k frames", "official val = test; 10% of train sequences = val",
     "VIPER terms (research use)",
     "VIPER train/val img + cls archives (playing-for-benchmarks.org) extracted to <download>/{train,val}/{img,cls}/",
     ()),
    ("flowers", "Oxford 102 Flowers", "natural", "single-label", 102, 3, (0.4355, 0.3777, 0.2880),
     (0.2970, 0.2459, 0.2705), "8,189 images", "official setid.mat: 1,020 / 1,020 / 6,149", "research use",
     "102flowers.tgz + imagelabels.mat + setid.mat (robots.ox.ac.uk/~vgg/data/flowers/102) in <download>/",
     ("flowers102",)),
    ("coco_2014", "MS-COCO 2014", "natural", "multi-label", 80, 3, (0.4702, 0.4470, 0.4076), (0.2785, 0.2740, 0.2889),
     "~123k images", "val2014 = test; 10% of train2014 = val (seeded)", "CC BY 4.0 annotations; Flickr image terms",
     "train2014.zip + val2014.zip + annotations_trainval2014.zip (cocodataset.org) extracted to <download>/",
     ("coco",)),
    ("pascal", "Pascal VOC 07+12", "natural", "multi-label", 20, 3, (0.4511, 0.4292, 0.3967), (0.2764, 0.2729, 0.2849),
     "VOC 07+12", "VOC2007 test = test; 10% of 07+12 trainval = val (seeded)", "Flickr image terms",
     "VOCtrainval_06-Nov-2007.tar + VOCtest_06-Nov-2007.tar + VOCtrainval_11-May-2012.tar extracted to "
     "<download>/VOCdevkit/", ("voc",)),
    ("chest_xray_kids", "Pediatric chest X-ray (pneumonia)", "medical", "single-label", 2, 1, (0.4815,), (0.2377,),
     "5,856 images", "official test; 10% of train = val (seeded)", "CC BY 4.0",
     "ChestXRay2017.zip (Kermany et al., Mendeley Data) extracted to <download>/chest_xray/{train,test}/"
     "{NORMAL,PNEUMONIA}/", ("kids", "chest_xray")),
]
for (name, title, group, task, classes, channels, mean, std, size, splits, lic, obtain, aliases) in _TARGETS:
    _register(Domain(name, title, group, task, classes, channels=channels, mean=mean, std=std, stats_measured=True,
                     stats_source=_STUDY, size=size, splits=splits, license=lic, terms=f"{lic}. {_AGREEMENT}",
                     aliases=aliases, obtain=f"Download {obtain}, then run python -m training prepare {name} <download>"))
_register(Domain(
    "chexpert", "CheXpert chest radiographs", "medical", "multi-label", 5, channels=1,
    mean=(0.5028,), std=(0.2919,), stats_measured=True, stats_source=_STUDY, size="224,316 images",
    splits="official valid.csv = test; 10% of train.csv patients = val (seeded)",
    license="Stanford CheXpert research use agreement",
    terms="CheXpert Dataset Research Use Agreement: non-commercial research only; no redistribution "
          "of the data; cite Irvin et al. 2019.",
    obtain="Request access at https://stanfordmlgroup.github.io/competitions/chexpert/ and download "
           "CheXpert-v1.0-small.zip, extracted to <download>/CheXpert-v1.0-small/{train.csv,valid.csv,train/,valid/}, "
           "then run python -m training prepare chexpert <download>",
))
_DOMAINNET = {"clipart": ("48.1k", (0.7362, 0.7167, 0.6834), (0.3642, 0.3654, 0.3887)),
              "infograph": ("51.6k", (0.6888, 0.6970, 0.6648), (0.3331, 0.3094, 0.3281)),
              "painting": ("72.3k", (0.5743, 0.5466, 0.5083), (0.3088, 0.3007, 0.3168)),
              "quickdraw": ("172.5k", (0.9525, 0.9525, 0.9525), (0.2128, 0.2128, 0.2128)),
              "real": ("172.9k", (0.6059, 0.5890, 0.5558), (0.3344, 0.3279, 0.3493)),
              "sketch": ("69.1k", (0.8327, 0.8270, 0.8179), (0.2727, 0.2753, 0.2810))}
for suffix, (size, mean, std) in _DOMAINNET.items():
    _register(Domain(
        f"domain_net_{suffix}", f"DomainNet {suffix}", "domainnet", "single-label", 345, mean=mean, std=std,
        stats_measured=True, stats_source=_STUDY, size=f"{size} images",
        splits=f"official {suffix}_test.txt = test; 10% of {suffix}_train.txt = val (seeded)",
        license="DomainNet: fair use for research",
        terms=f"DomainNet images are collected from the web for research use only. {_AGREEMENT}",
        obtain=f"http://ai.bu.edu/M3SDA/ : download {suffix}.zip + {suffix}_train.txt + {suffix}_test.txt into "
               f"<download>/ and extract the zip, then run python -m training prepare domain_net_{suffix} <download>",
        aliases=(suffix,),
    ))

# Offline real sets: reachable from package registries, used by tests and benchmarks.
_register(Domain(
    "fashion_mnist", "Fashion-MNIST", "offline", "single-label", 10, channels=1,
    mean=(0.2860,), std=(0.3530,), stats_measured=True, image_size=64, native_size=28,
    splits="60k train / 10k test", size="70,000 images", license="MIT",
    terms="MIT license (Zalando Research).",
    obtain="apt-get install dataset-fashion-mnist  (files in /usr/share/datasets/fashion-mnist), "
           "or set FASHION_MNIST_DIR to a folder with the four *-idx*-ubyte.gz files",
    aliases=("fashion", "fmnist", "fashion-mnist"),
))
_register(Domain(
    "animals", "Animal silhouettes (animal-mnist)", "offline", "single-label", 10, channels=1,
    mean=(0.2734,), std=(0.4055,), stats_measured=True, image_size=64, native_size=28,
    splits="9,716 unique images, split by the loader", size="10,000 images (9,716 unique)",
    license="MIT", terms="MIT license (animal-mnist).",
    obtain="pip install --no-deps animal-mnist==0.4",
    aliases=("animal_mnist", "animal-mnist", "silhouettes"),
))
_register(Domain(
    "digits", "scikit-learn digits", "offline", "single-label", 10, channels=1,
    mean=(0.3063,), std=(0.3762,), stats_measured=True, image_size=32, native_size=8, size="1,797 images", license="BSD-3-Clause",
    terms="BSD-3-Clause (scikit-learn).", obtain="pip install scikit-learn",
))

HPT_TARGETS = (
    "resisc", "ucmerced", "xview", "bdd", "viper", "chexpert", "chest_xray_kids", "flowers", "coco_2014",
    "pascal", "domain_net_clipart", "domain_net_infograph", "domain_net_painting", "domain_net_quickdraw",
    "domain_net_real", "domain_net_sketch",
)
HPT_CHAINS = (("chexpert", "chest_xray_kids"), ("resisc", "ucmerced"), ("domain_net_clipart", "domain_net_sketch"))

_ALIASES = {alias: d.name for d in DOMAINS.values() for alias in d.aliases}


def resolve_domain_name(name: str) -> str | None:
    """Canonical domain name for a name or alias, or None."""
    key = name.lower().replace("-", "_")
    if key in DOMAINS:
        return key
    return _ALIASES.get(name.lower()) or _ALIASES.get(key)


def get_domain(name: str) -> Domain:
    from .errors import UnknownNameError

    canonical = resolve_domain_name(name)
    if canonical is None:
        raise UnknownNameError("domain", name, list(DOMAINS) + list(_ALIASES))
    return DOMAINS[canonical]
