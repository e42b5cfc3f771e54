"""Distribution metrics of expanded image folders against the real data, in the guide's feature space.

    python studies/eval_expansion.py checkpoint/digits/expansions/sd_x5 checkpoint/digits/expansions/distdiff_x5
    python studies/eval_expansion.py <folder> --real data/digits/val --out eval.json
    python studies/eval_expansion.py <folder> --inception        # + Inception FID (online/GPU path)

For each folder (an ImageFolder such as expand_distdiff.py writes) and, as a reference row, the
real training split ("original"), against the reference set (default: the dataset's test split):
  * fid: Frechet distance in the guide classifier's penultimate (pre-logits) feature space,
    computed by torchmetrics' FrechetInceptionDistance with the guide as feature extractor;
  * precision / recall (k-NN manifolds, Kynkaanniemi et al. 2019) and density / coverage
    (Naeem et al. 2020), k = --k, in the same feature space;
  * class_proto_dist / group_proto_dist: mean distance of the L2-normalised features (the space
    the guidance energy uses) to the class prototype and to the group prototype the energy picks,
    from the folder's prototypes.npz (blank when it is missing or was built from another guide);
  * guide_acc: the guide's accuracy on the images (label = class folder).
The guide defaults to the dataset's default guide checkpoint (the one expand_distdiff.py uses).
Each folder's row goes to <folder>/eval_metrics.json; --out also writes all rows to one file.
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: idle OpenMP threads sleep, not spin

import sys
from pathlib import Path

import yaml

from distdiff import DistDiffError
from distdiff import datasets as ds
from distdiff import registry
from distdiff.config import str2bool
from distdiff.devices import configure_cpu
from distdiff.domains import COUNT, OneLineParser
from distdiff.fileio import atomic_write_json
from studies.metrics import FeatureSpaceEvaluator, InceptionFID, load_eval_classifier, prototypes_match
from distdiff.options import add_threads_flag, run_cli
from distdiff.prototype_store import load_prototypes
from distdiff.runs import default_guide_ckpt, setup_logging

COLUMNS = (("n_images", "n", "{}"), ("fid", "FID (guide)", "{:.3f}"), ("precision", "precision", "{:.3f}"),
           ("recall", "recall", "{:.3f}"), ("density", "density", "{:.3f}"), ("coverage", "coverage", "{:.3f}"),
           ("class_proto_dist", "d(class proto)", "{:.4f}"), ("group_proto_dist", "d(group proto)", "{:.4f}"),
           ("guide_acc", "guide acc", "{:.1%}"), ("fid_inception", "FID (Inception)", "{:.2f}"))


def recorded_args(folder):
    """The expansion's args.yaml as a dict ({} when the folder has none)."""
    path = Path(folder) / "args.yaml"
    return (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}


def resolve_dataset(args, folders):
    """--dataset, else the dataset recorded in the first folder's args.yaml."""
    if args.dataset:
        return args.dataset
    recorded = {recorded_args(f).get("dataset") for f in folders} - {None}
    if len(recorded) > 1:
        raise DistDiffError(f"the folders were expanded from different datasets {sorted(recorded)}; pass --dataset")
    if not recorded:
        raise DistDiffError("no args.yaml in the folders names their dataset; pass --dataset")
    return recorded.pop()


def folder_prototypes(folder, guide_ckpt, spec):
    """The folder's prototypes.npz if it was built from this guide and training split, else None."""
    path = Path(folder) / "prototypes.npz"
    if not path.is_file():
        return None
    protos, recorded = load_prototypes(path), recorded_args(folder)
    train = ds.load_split(spec, spec.train_split, verify=False)
    if not prototypes_match(protos, guide_ckpt, spec.split_dir(spec.train_split), [p for p, _ in train.samples],
                            recorded.get("cluster", "kmeans"), recorded.get("num_groups", 3)):
        print(f"warning: {path} was built from another guide, split, cluster method or K; "
              "prototype distances left blank", file=sys.stderr)
        return None
    return protos


def evaluate_set(name, path, evaluator, protos, inception):
    """One table row: every metric of one image folder."""
    row = {"set": name, "path": str(path), **evaluator.evaluate(path, protos)}
    row["fid_inception"] = None if inception is None else inception.score(path)
    return row


def markdown_table(rows):
    """The rows as a markdown table; blank metrics show as '-'."""
    lines = ["| set | " + " | ".join(title for _, title, _ in COLUMNS) + " |",
             "|---|" + "---|" * len(COLUMNS)]
    for row in rows:
        cells = ["-" if row.get(key) is None else fmt.format(row[key]) for key, _, fmt in COLUMNS]
        lines.append(f"| {row['set']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    args = get_parser().parse_args(argv)
    setup_logging()
    folders = [Path(f) for f in args.folders]
    if args.k < 1:
        raise DistDiffError(f"--k must be at least 1, got {args.k}")
    for folder in folders:
        if not folder.is_dir():
            raise DistDiffError(f"expanded folder {folder} not found")
    spec = registry.get_dataset(resolve_dataset(args, folders))
    registry.ensure_prepared(spec)
    configure_cpu(args.threads)
    guide_ckpt = Path(args.guide_ckpt or default_guide_ckpt(args.checkpoint_root, spec.name))
    model, transform, classes = load_eval_classifier(guide_ckpt, len(registry.class_names(spec)))
    reference = Path(args.real) if args.real else spec.split_dir(spec.test_split)
    inception = InceptionFID(reference) if args.inception else None  # fails fast when offline
    evaluator = FeatureSpaceEvaluator(model, transform, classes, reference, args.k, args.batch_size)
    settings = {"guide_ckpt": str(guide_ckpt), "reference": str(reference), "k": args.k,
                "feature_dim": evaluator.extractor.num_features}
    protos = {folder: folder_prototypes(folder, guide_ckpt, spec) for folder in folders}
    rows = []
    if args.original:  # the real training images, against the same reference
        shared = next((p for p in protos.values() if p is not None), None)
        rows.append(evaluate_set("original", spec.split_dir(spec.train_split), evaluator, shared,
                                 inception))
    for folder in folders:
        row = evaluate_set(folder.name, folder, evaluator, protos[folder], inception)
        atomic_write_json(folder / "eval_metrics.json", {**settings, **row})
        rows.append(row)
    print(f"reference: {reference}; guide: {guide_ckpt} ({settings['feature_dim']}-d features); k = {args.k}")
    print(markdown_table(rows))
    if args.out:
        atomic_write_json(Path(args.out), {**settings, "rows": rows})
    return 0


def get_parser():
    parser = OneLineParser(description=__doc__)
    add = parser.add_argument
    add("folders", nargs="+", help="expanded ImageFolder(s), e.g. checkpoint/digits/expansions/distdiff_x5")
    add("--dataset", default=None, help="dataset name (default: the one in the folders' args.yaml)")
    add("--guide_ckpt", "--guide-ckpt", default=None,
        help="guide classifier (default: <checkpoint_root>/<dataset>/<guide_arch>_unpretrained_lr0.1/seed1/"
             "model_best.pth.tar)")
    add("--checkpoint_root", "--checkpoint-root", default="checkpoint", help="root of the default guide")
    add("--real", default=None, help="reference ImageFolder (default: the dataset's test split)")
    add("--k", type=COUNT, default=3, help="neighbourhood size of precision/recall/density/coverage (papers: 3, 5)")
    add("--original", type=str2bool, default=True,
        help="also score the real training split as a reference row (True/False)")
    add("--inception", action="store_true",
        help="also compute Inception-v3 FID (needs torch-fidelity and a weights download: online/GPU path)")
    add("--out", default=None, help="also write every row to this JSON file")
    add("--batch_size", "--batch-size", type=COUNT, default=64, help="images per forward pass")
    add_threads_flag(parser)
    return parser


if __name__ == "__main__":
    run_cli(main)
