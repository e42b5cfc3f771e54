"""What a retraining run does before its first step: image decodes and seconds (CPU).

    python studies/bench_train_start.py                          # this checkout
    PYTHONPATH=/tmp/old python /tmp/old/studies/bench_train_start.py --out bench/x.json   # another one

It writes, once, a folder dataset shaped like the paper's retraining input (Caltech-like JPEGs of
about 300x200 for train and test, plus an expansion of 512x512 PNGs, 5 per training image, as
SD-1.4 writes them) into --workdir, then calls the library's `distdiff.training.build_datasets`
as train_expand.py does (224-px crops from a 256 resize, the decoded-image cache on) and counts
every image decode PIL performs (ImageFile.load calls that still have data to decode). Each image
should be decoded once: the cache keeps its resized pixels and checks that it opens.
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: idle OpenMP threads sleep, not spin

import time
from collections import Counter
from inspect import signature
from pathlib import Path

from PIL import ImageFile

from distdiff import registry
from distdiff.domains import COUNT, INDEX, OneLineParser
from distdiff.fileio import atomic_write_json
from distdiff.options import run_cli
from distdiff.training import TrainConfig, build_datasets
from embedded.rehearsal import fabricate_folder_dataset, fabricate_image


def make_data(root, classes, train, test, ratio):
    """<root>/{train,test}/<class>/*.jpg and <root>_expanded/<class>/*.png, once."""
    expanded = root.parent / f"{root.name}_expanded"
    if (root / "done").is_file():
        return root, expanded
    for label in range(classes):
        (expanded / f"class_{label:03d}").mkdir(parents=True, exist_ok=True)
        for i in range(train):
            for k in range(ratio):
                fabricate_image(label, 1000 * k + i, (512, 512)).save(
                    expanded / f"class_{label:03d}" / f"{i:04d}_expand_{k}.png")
    return fabricate_folder_dataset(root, classes, train, test), expanded  # its `done` marker comes last


def count_decodes():
    """Patch PIL so that every decode of image data is counted by file name; returns the Counter."""
    decodes, load = Counter(), ImageFile.ImageFile.load

    def counted(self):
        if self.tile:  # data left to decode (a second load() of the same image returns early)
            decodes[getattr(self, "filename", "?")] += 1
        return load(self)
    ImageFile.ImageFile.load = counted
    return decodes


def get_parser():
    parser = OneLineParser(description=__doc__)
    parser.add_argument("--workdir", default="bench/train_start", help="where the generated images go")
    parser.add_argument("--classes", type=COUNT, default=10, help="classes")
    parser.add_argument("--train_per_class", type=COUNT, default=30, help="training images per class (the paper's 30)")
    parser.add_argument("--test_per_class", type=COUNT, default=30, help="test images per class")
    parser.add_argument("--expand_ratio", type=COUNT, default=5, help="expanded images per training image")
    parser.add_argument("--workers", type=INDEX, default=0,
                        help="--workers of the run: the start-up decodes on max(1, workers) threads, as "
                             "train_classifier does (0 is the CPU default)")
    parser.add_argument("--out", default="bench/train_start.json", help="JSON report")
    return parser


def main(argv=None):
    args = get_parser().parse_args(argv)
    root, expanded = make_data(Path(args.workdir).resolve() / "data", args.classes, args.train_per_class,
                               args.test_per_class, args.expand_ratio)
    spec = registry.get_dataset(f"folder:{root}")
    cfg = TrainConfig(dataset=spec.name, image_size=224, resize_size=256, workers=args.workers)
    # The decode threads train_classifier gives build_datasets (code before them takes none).
    threads = {"threads": max(1, args.workers)} if "threads" in signature(build_datasets).parameters else {}
    decodes = count_decodes()
    start = time.time()
    train, val, test, classes, n_original, cache_mb = build_datasets(spec, cfg, [expanded], **threads)
    seconds = time.time() - start
    images = len(train) + len(test) + (len(val) if val is not None else 0)
    report = {"images": images, "decodes": sum(decodes.values()), "decodes_per_image": sum(decodes.values()) / images,
              "images_decoded_more_than_once": sum(n > 1 for n in decodes.values()), "seconds": round(seconds, 2),
              "cache_mb": cache_mb, "workers": args.workers}
    atomic_write_json(args.out, report)
    print(f"build_datasets on {images} images ({len(train)} train incl. {len(train) - n_original} expanded at 512 px, "
          f"{len(test)} test): {report['decodes']} decodes ({report['decodes_per_image']:.2f} per image, "
          f"{report['images_decoded_more_than_once']} images more than once), {seconds:.1f} s, cache {cache_mb} MB")
    return 0


if __name__ == "__main__":
    run_cli(main)
