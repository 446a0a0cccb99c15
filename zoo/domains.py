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
for name, title, group, task, classes, size, splits, lic, aliases in [
    ("resisc", "NWPU-RESISC45 aerial scenes", "aerial", "single-label", 45, "31,500 images",
     "VTAB 18.9k / 6.3k / 6.3k", "research use (NWPU)", ("resisc45",)),
    ("ucmerced", "UC Merced land use", "aerial", "single-label", 21, "2,100 images",
     "1,260 / 420 / 420", "research use (USGS imagery)", ("uc_merced",)),
    ("xview", "xView overhead chips", "aerial", "multi-label", 36, "xView chips", "",
     "xView license (CC BY-NC-SA 4.0)", ()),
    ("bdd", "BDD100K weather", "driving", "single-label", 6, "~100k images", "", "BDD100K license", ("bdd100k",)),
    ("viper", "VIPER synthetic driving", "driving", "multi-label", 23, "~254k frames", "",
     "VIPER terms (research use)", ()),
    ("flowers", "Oxford 102 Flowers", "natural", "single-label", 102, "8,189 images", "", "research use", ("flowers102",)),
    ("coco_2014", "MS-COCO 2014", "natural", "multi-label", 80, "~123k images", "",
     "CC BY 4.0 annotations; Flickr image terms", ("coco",)),
    ("pascal", "Pascal VOC 07+12", "natural", "multi-label", 20, "VOC 07+12", "", "Flickr image terms", ("voc",)),
    ("chest_xray_kids", "Pediatric chest X-ray (pneumonia)", "medical", "single-label", 3, "5,856 images", "",
     "CC BY 4.0", ("kids", "chest_xray")),
]:
    _register(Domain(name, title, group, task, classes, size=size, splits=splits, license=lic,
                     terms=f"{lic}. {_AGREEMENT}", aliases=aliases,
                     obtain=f"Download {title}; layout <root>/{{train,val,test}}/<class>/<image> "
                            "or a Hub dataset id you are entitled to use."))
_register(Domain(
    "chexpert", "CheXpert chest radiographs", "medical", "multi-label", 5, channels=1,
    mean=(0.5028,), std=(0.2919,), stats_measured=True, size="224,316 images",
    license="Stanford CheXpert research use agreement",
    terms="CheXpert Dataset Research Use Agreement: non-commercial research only; no redistribution "
          "of the data; cite Irvin et al. 2019.",
    obtain="Request access at https://stanfordmlgroup.github.io/competitions/chexpert/ ; "
           "layout <root>/{train,valid}/... with train.csv / valid.csv",
))
for suffix, size in [("clipart", "48.1k"), ("infograph", "51.6k"), ("painting", "72.3k"),
                     ("quickdraw", "172.5k"), ("real", "172.9k"), ("sketch", "69.1k")]:
    _register(Domain(
        f"domain_net_{suffix}", f"DomainNet {suffix}", "domainnet", "single-label", 345,
        size=f"{size} images", license="DomainNet: fair use for research",
        terms=f"DomainNet images are collected from the web for research use only. {_AGREEMENT}",
        obtain="http://ai.bu.edu/M3SDA/ ; layout <root>/<class>/<image> with the official split lists",
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
