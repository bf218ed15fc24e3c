"""How to get the real data sets: ``download(name, root)`` and ``instructions(name)``.

COCO and PASCAL VOC have public archives, fetched and unpacked with torchvision's
``download_and_extract_archive``. NUS-WIDE has no such archive: its images are Flickr photos
listed by URL, and the label files come from its authors' page; ``instructions("nuswide")`` says
where and under which terms. The built-in data needs no download (``mlcl data synth``).

Nothing here runs in the tests (no machine is assumed to reach the internet).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mlcl.errors import DataError


@dataclass(frozen=True)
class Archive:
    url: str
    size: str  # as announced, for the instructions
    md5: str | None = None  # torchvision's checksums for VOC; COCO publishes none


_COCO = "http://images.cocodataset.org"
_VOC = "https://thor.robots.ox.ac.uk/pascal/VOC"  # the mirror torchvision uses
ARCHIVES: dict[str, tuple[Archive, ...]] = {
    "coco2014": (
        Archive(f"{_COCO}/zips/train2014.zip", "13 GB"),
        Archive(f"{_COCO}/zips/val2014.zip", "6 GB"),
        Archive(f"{_COCO}/annotations/annotations_trainval2014.zip", "241 MB"),
    ),
    "coco2017": (
        Archive(f"{_COCO}/zips/train2017.zip", "18 GB"),
        Archive(f"{_COCO}/zips/val2017.zip", "1 GB"),
        Archive(f"{_COCO}/annotations/annotations_trainval2017.zip", "241 MB"),
    ),
    "voc2007": (
        Archive(
            f"{_VOC}/voc2007/VOCtrainval_06-Nov-2007.tar",
            "439 MB",
            "c52e279531787c972589f7e41ab4ae64",
        ),
        Archive(
            f"{_VOC}/voc2007/VOCtest_06-Nov-2007.tar", "431 MB", "b6e924de25625d8de591ea690078ad9f"
        ),
    ),
    "voc2012": (
        Archive(
            f"{_VOC}/voc2012/VOCtrainval_11-May-2012.tar",
            "1.9 GB",
            "6cd6e144f989b92b3379bac3b3de84fd",
        ),
    ),
}

_LAYOUT = {
    "coco2014": "ROOT/train2014/*.jpg, ROOT/val2014/*.jpg, "
    "ROOT/annotations/instances_{train,val}2014.json",
    "coco2017": "ROOT/train2017/*.jpg, ROOT/val2017/*.jpg, "
    "ROOT/annotations/instances_{train,val}2017.json",
    "voc2007": "ROOT/VOCdevkit/VOC2007/{Annotations,ImageSets,JPEGImages}/ "
    "(train = trainval, val = test)",
    "voc2012": "ROOT/VOCdevkit/VOC2012/{Annotations,ImageSets,JPEGImages}/ "
    "(train = train, val = val: the test labels are not public)",
}

_TERMS = {
    "coco2014": "COCO annotations: CC BY 4.0; the images belong to their Flickr owners and are "
    "used under Flickr's terms of use (https://cocodataset.org/#termsofuse).",
    "voc2007": "PASCAL VOC: the images come from Flickr and are used under Flickr's terms of use; "
    "see http://host.robots.ox.ac.uk/pascal/VOC/ for the challenge's conditions.",
}
_TERMS["coco2017"] = _TERMS["coco2014"]
_TERMS["voc2012"] = _TERMS["voc2007"]

NUSWIDE_INSTRUCTIONS = """\
NUS-WIDE (81 concepts, 269,648 Flickr images) is distributed by the Lab for Media Search of the
National University of Singapore: https://lms.comp.nus.edu.sg/wp-content/uploads/2019/research/nuswide/NUS-WIDE.html
There is no single public archive of the images, so mlcl cannot download it for you.

Terms: the data set is offered for non-commercial research; the images belong to their Flickr
owners and are listed by URL (many are no longer online). Read the terms on the page above and cite
Chua et al., "NUS-WIDE: a real-world web image database from National University of Singapore",
CIVR 2009.

1. From the page above, download the ground truth ("Groundtruth"), the image lists ("ImageList")
   and the concept list ("ConceptsList"); unpack them into ROOT.
2. Get the images (the URL list on the same page, or the image archive the lab provides to
   researchers on request) into ROOT/Flickr/<concept folder>/<file>.jpg, the paths that
   ImageList/*.txt name.
3. The layout mlcl reads:
     ROOT/Concepts81.txt  (or ROOT/ConceptsList/Concepts81.txt)
     ROOT/ImageList/TrainImagelist.txt, ROOT/ImageList/TestImagelist.txt
     ROOT/Groundtruth/TrainTestLabels/Labels_<concept>_Train.txt, ..._Test.txt
     ROOT/Flickr/...
   train = the official training list (161,789 images), val = the test list (107,859).
4. Run `mlcl data check nuswide --root ROOT`: it lists every missing or broken image.
"""

SYNTHETIC_INSTRUCTIONS = """\
The built-in data set is drawn by mlcl itself; nothing to download.
  mlcl data synth --out DIR --num-train 2000 --num-val 500 --image-size 128 --seed 0
writes it in COCO format (DIR/images/{train,val}/, DIR/annotations/instances_{train,val}.json).
Training with dataset "synthetic" and an empty root generates the default one on first use under
$MLCL_DATA_DIR (or ~/.cache/mlcl).
"""


CSV_INSTRUCTIONS = """\
csv is your own data; nothing to download. Lay it out as
  ROOT/train.csv, ROOT/val.csv   file_name,labels (labels separated by "|"), one row per image
  ROOT/images/...                the images; file_name is relative to this folder
  ROOT/classes.txt               optional: one class name per line (else the sorted labels)
then check it: mlcl data check csv --root ROOT
"""


def instructions(name: str) -> str:
    """What a user does to get data set ``name``: URLs, sizes, layout, terms, the check command."""
    if name == "synthetic":
        return SYNTHETIC_INSTRUCTIONS
    if name == "nuswide":
        return NUSWIDE_INSTRUCTIONS
    if name == "csv":
        return CSV_INSTRUCTIONS
    if name not in ARCHIVES:
        known = ", ".join([*ARCHIVES, "nuswide", "synthetic", "csv"])
        raise DataError(f"unknown data set {name!r} (known: {known})")
    lines = [
        f"{name}: download and unpack into ROOT (or run `mlcl data download {name} --root ROOT`):"
    ]
    lines += [f"  {archive.url}  ({archive.size})" for archive in ARCHIVES[name]]
    lines += [
        f"Layout: {_LAYOUT[name]}",
        f"Terms: {_TERMS[name]}",
        f"Then check it: mlcl data check {name} --root ROOT",
    ]
    return "\n".join(lines) + "\n"


def download(name: str, root: str | Path) -> Path:
    """Download and unpack the archives of ``name`` into ``root``; return ``root``.

    Only COCO and VOC have public archives; for ``nuswide`` (and ``synthetic``, ``csv``) this raises
    ``DataError`` with :func:`instructions`. Archives already present with the right checksum
    are not downloaded again (torchvision checks them).
    """
    if name not in ARCHIVES:
        raise DataError(f"{name}: no public archive to download.\n{instructions(name)}")
    from torchvision.datasets.utils import download_and_extract_archive

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for archive in ARCHIVES[name]:
        download_and_extract_archive(archive.url, download_root=str(root), md5=archive.md5)
    return root
