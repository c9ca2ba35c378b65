"""PASCAL VOC 2007 image classification (ROOT = VOCdevkit/VOC2007: JPEGImages/, Annotations/*.xml,
ImageSets/Main/{trainval,test}.txt) returning `(image, target, index)`, target a 20-vector with
the benchmark's states: 1 present, 0 absent, -1 difficult (the class occurs only as "difficult"
objects), i.e. the devkit's per-class files with 1 / -1 / 0 renamed as FAIR's
extra_scripts/create_voc_data_files.py does."""
import os
import xml.etree.ElementTree as ET

import numpy as np
import torch
from PIL import Image

from lib.errors import UserError

# alphabetical, as create_voc_data_files.py orders them (it sorts the per-class file names)
CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
           "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor")


def parse_annotation(path):
    """Annotations/ID.xml -> 20-vector: 1 if a non-difficult object of the class is present,
    -1 if only difficult ones are, 0 if none (the devkit's rule for its per-class lists)."""
    t = np.zeros(len(CLASSES), dtype=np.int64)
    try:
        objects = ET.parse(path).getroot().findall("object")
    except (OSError, ET.ParseError) as e:
        raise UserError(f"VOC: cannot read annotation '{path}' ({e})") from None
    for obj in objects:
        name = (obj.findtext("name") or "").strip()
        if name not in CLASSES:
            raise UserError(f"VOC: unknown class '{name}' in '{path}'")
        c = CLASSES.index(name)
        if (obj.findtext("difficult") or "0").strip() == "1":
            t[c] = t[c] or -1  # a non-difficult object of the same class keeps it 1
        else:
            t[c] = 1
    return t


class VOC2007Instance(torch.utils.data.Dataset):
    def __init__(self, root, split="trainval", transform=None):
        ids_file = os.path.join(root, "ImageSets", "Main", f"{split}.txt")
        if not os.path.isfile(ids_file):
            raise UserError(f"VOC: '{ids_file}' is missing (expected the VOCdevkit/VOC2007 layout)")
        with open(ids_file) as f:  # sorted, as create_voc_data_files.py: the order sets the CV folds
            self.ids = sorted(line.split()[0] for line in f if line.strip())
        self.root, self.transform = root, transform
        self.classes = list(CLASSES)  # the class names every feature file and page shows
        self.targets = np.stack([parse_annotation(os.path.join(root, "Annotations", i + ".xml")) for i in self.ids])

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, index):
        path = os.path.join(self.root, "JPEGImages", self.ids[index] + ".jpg")
        try:
            img = Image.open(path).convert("RGB")
        except OSError as e:
            raise UserError(f"VOC: cannot read image '{path}': {e}") from None
        if self.transform is not None:
            img = self.transform(img)
        return img, torch.from_numpy(self.targets[index]), index
