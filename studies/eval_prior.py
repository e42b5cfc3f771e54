"""Quality report for a diffusion prior folder (the embedded digits prior or any SD model).

    python studies/eval_prior.py                                  # checkpoint/prior/digits
    python studies/eval_prior.py --model checkpoint/prior/digits --figure

The protocol (embedded/prior_eval.py) never touches the test split: an independent evaluator
trained on the `prior` split scores text-to-image samples and img2img outputs by class; the VAE
reconstruction error is measured on val. Writes quality.json into the model folder (or
--output) and prints it.
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: idle OpenMP threads sleep, not spin

from dataclasses import fields
from pathlib import Path

from distdiff.config import REPO_ROOT
from distdiff.devices import configure_cpu, resolve_device
from distdiff.domains import COUNT, FINITE, Number, OneLineParser
from distdiff.fileio import atomic_write_json
from distdiff.options import add_runtime_flags, run_cli
from distdiff.pipeline import resolve_model
from distdiff.registry import ensure_prepared, get_dataset
from distdiff.runs import setup_logging
from embedded.prior_eval import EvalProtocol, default_evaluator_cache, evaluate_prior, summary_lines


def add_protocol_flags(parser):
    """One flag per EvalProtocol field, defaulting to the protocol's value."""
    helps = {"per_class": "text-to-image samples per class prompt", "per_image": "img2img outputs per train image",
             "num_steps": "DDIM inference steps", "guidance": "classifier-free guidance scale",
             "strength": "img2img strength", "batch_size": "prompts per pipeline call",
             "evaluator_epochs": "epochs of the evaluator classifier on the prior split"}
    domains = {"guidance": FINITE, "strength": Number(float, 0, 1, low_open=True)}
    for field in fields(EvalProtocol):
        if field.name in helps:
            parser.add_argument(f"--{field.name}", type=domains.get(field.name, COUNT), default=field.default,
                                help=helps[field.name])
    return parser


def get_parser():
    parser = OneLineParser(description=__doc__)
    add = parser.add_argument
    add("--model", default="checkpoint/prior/digits",
        help="pipeline folder, or an SD model id such as CompVis/stable-diffusion-v1-4")
    add("--dataset", default="digits", help="dataset whose prompts and splits are used")
    add_protocol_flags(parser)
    add("--evaluator_cache", default=None, help="evaluator weights file (default: <model>.work/evaluator.pt)")
    add("--output", default=None, help="quality.json path (default: <model>/quality.json)")
    add("--figure", action="store_true", help="also write the samples figure")
    add("--figure_path", default=str(REPO_ROOT / "figure" / "prior_samples.png"), help="where --figure writes")
    add_runtime_flags(parser, seed=0, seed_help="seed of the samplers and the evaluator")
    return parser


def main(argv=None):
    args = get_parser().parse_args(argv)
    setup_logging()
    spec = get_dataset(args.dataset)
    ensure_prepared(spec)
    folder = resolve_model(args.model)  # a missing model fails here, before the evaluator trains
    device = resolve_device(args.device)
    configure_cpu(args.threads)
    cache = Path(args.evaluator_cache) if args.evaluator_cache else \
        default_evaluator_cache(args.model, spec.name, REPO_ROOT / "checkpoint")
    protocol = EvalProtocol(**{f.name: getattr(args, f.name) for f in fields(EvalProtocol)})
    quality = evaluate_prior(folder, spec, cache, device, protocol, Path(args.figure_path) if args.figure else None)
    quality["model"] = str(args.model)
    output = Path(args.output) if args.output else (
        folder / "quality.json" if Path(args.model).is_dir() else cache.parent / "quality.json")
    atomic_write_json(output, quality)
    for line in summary_lines(quality):
        print(line)
    print(f"-> {output}")
    return 0


if __name__ == "__main__":
    run_cli(main)
