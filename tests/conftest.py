"""Shared fixtures. Scripts run in-process through their main(argv) wherever no separate process
is needed (each subprocess pays several seconds of imports); subprocesses are kept for SIGKILL,
the shell launchers and the paper-path rehearsal."""
import contextlib
import importlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# One torch thread in the test process, set before any test module imports torch: the background
# checks hold the second core, and on the tests' tiny tensors a second thread costs more CPU than it
# saves (the quick tier: 31 CPU-s with two, 21 with one). The scripts' subprocesses get one too
# (script_env); a test that needs more asks for it.
os.environ.setdefault("OMP_NUM_THREADS", "1")
DIGITS = tuple(str(i) for i in range(10))
# The authors' expand_diff.sh argument list (their generate_data.py flags), split 0 of 4
# (tests/test_fidelity.py parses it; the paper-path job runs it).
AUTHORS_ARGS = [
    "--guidance_type=transform_guidance", "-a", "resnet50", "-d", "caltech-101",
    "--output_dir", "data/caltech-101_expansion/save/distdiff_batch_5x",
    "--pretrained_model_name_or_path", "CompVis/stable-diffusion-v1-4", "--gradient_checkpointing", "--K", "3",
    "--train_batch_size", "1", "--optimize_targets", "global_prototype-local_prototype", "--strength", "0.5",
    "--num_images_per_prompt", "5", "--guidance_step", "20", "--guidance_period", "2",
    "--encoder_weight_path", "checkpoint/caltech-101/resnet50_unpretrained_lr0.1/seed1/model_best.pth.tar",
    "--guidance_scale", "7.5", "--constraint_value", "0.2", "--rho", "10.0", "--total_split", "4", "--split", "0"]
# A few steps of scripts/train_prior.py; every other setting comes from configs/prior.yaml. Its data
# is half the digits, half their inverted twins (the domain-shift study's path), so that one run
# serves tests/test_prior.py and the sweep's grid (the smoke_prior fixture); it writes SMOKE_PRIOR.
PRIOR_SMOKE = ["--vae_steps", "6", "--steps", "8", "--batch_size", "16", "--vae_batch_size", "4",
               "--latent_copies", "1", "--eval_per_class", "0", "--ckpt_every", "3", "--device", "cpu",
               "--prior_data", "digits:prior=0.5,inverted:prior=0.5"]
SMOKE_PRIOR = "digits_mix_digits0.5_inverted0.5"


# Checks that run only as subprocesses and take long: started in the background as soon as the
# session knows it will run one of the tests that need them (nodeid prefixes), so they use the
# second core while the in-process tests use the first; those tests then wait for them and check
# the outcome. key -> (nodeid prefixes, nice level, command); {work} is the job's own temporary
# folder. All are niced below the in-process tests, and equally: each ends in steps that run one
# after another, so whichever job is starved runs alone on one core at the end (niced 4, 6 and
# 10, the suite ended with 40 s of the GPU script's smoke alone; with the paper path last, 36 s).
# A job under tests/jobs/ with a `prepare(work)` has its stand-in pipeline built here first, in
# the pytest process, which has torch and diffusers imported already (a job process would spend
# 6 s importing them for it).
BACKGROUND_CHECKS = {
    "chain": (("tests/test_chain.py::",), 5, [sys.executable, "tests/jobs/chain.py", "{work}"]),
    "gpu_check_smoke": (("tests/test_gpu_check.py::test_cpu_smoke_runs_every_step_and_writes_the_report",), 5,
                        ["bash", "scripts/gpu_check.sh", "--cpu_smoke", "--workdir", "{work}/work",
                         "--report", "{work}/report.json", "--cap_scale", "5"]),  # it shares the cores: no timing
    "paper_path": (("tests/test_paper_path.py::",), 5, [sys.executable, "tests/jobs/paper_path.py", "{work}"]),
}
_BACKGROUND = {}
_DATA_ROOT = []


def pytest_configure(config):
    """Tests write only to temporary folders: the registered datasets' trees (the embedded digits,
    exported on first use) go to a folder of this session, for the tests and every process they
    start, set before any test module imports distdiff.registry. Removed when the session ends.
    (Here, not at import: the background jobs import this module for its helpers.)"""
    _DATA_ROOT.append(Path(tempfile.mkdtemp(prefix="distdiff-test-data-")))
    os.environ["DISTDIFF_DATA_ROOT"] = str(_DATA_ROOT[0])
    if whole_suite(config):  # every background check is wanted: start them before the collection
        for key in sorted(BACKGROUND_CHECKS, key=has_prepare):  # those that need no pipeline at once
            start_background(key)


def whole_suite(config):
    """The session runs the whole suite, as scripts/test.sh does (no paths, -k, -m or --deselect):
    then the background checks start before the collection, which imports every test module (8-12 s
    on one core) while they use the other, instead of after it."""
    option = config.option
    return (config.args_source == pytest.Config.ArgsSource.TESTPATHS and not option.keyword
            and not option.markexpr and not option.collectonly and not getattr(option, "deselect", None))


def has_prepare(key):
    """Whether a background check's job module has a prepare(work) (tests/jobs/<key>.py)."""
    return (REPO / "tests" / "jobs" / f"{key}.py").is_file() and \
        hasattr(importlib.import_module(f"jobs.{key}"), "prepare")


def pytest_collection_modifyitems(session, config, items):
    """The tests that wait for a background check run last, so the in-process tests keep the first
    core busy meanwhile instead of waiting in front of them."""
    prefixes = tuple(prefix for wanted, _, _ in BACKGROUND_CHECKS.values() for prefix in wanted)
    items.sort(key=lambda item: item.nodeid.startswith(prefixes))  # stable: the order stays otherwise


def pytest_collection_finish(session):
    if session.config.option.collectonly:
        return
    for key, (prefixes, _, _) in BACKGROUND_CHECKS.items():  # those whole_suite did not start
        if any(item.nodeid.startswith(prefixes) for item in session.items):
            start_background(key)


def start_background(key):
    """Start a background check once (niced, so the tests in front keep priority)."""
    if key not in _BACKGROUND:
        work = Path(tempfile.mkdtemp(prefix=f"distdiff-{key}-"))
        if key == "chain":  # before the chain's prepare_digits.py, so only one process exports them
            from distdiff.registry import ensure_prepared, get_dataset
            ensure_prepared(get_dataset("digits"))
        if has_prepare(key):
            with contextlib.redirect_stderr(io.StringIO()):  # the libraries' progress bars
                importlib.import_module(f"jobs.{key}").prepare(work)
        out, err = open(work / "stdout.txt", "w"), open(work / "stderr.txt", "w")
        _, nice, command = BACKGROUND_CHECKS[key]
        proc = subprocess.Popen(["nice", "-n", str(nice), *[part.format(work=work) for part in command]], cwd=REPO,
                                env=script_env(), stdout=out, stderr=err)
        _BACKGROUND[key] = (proc, work, out, err)
    return _BACKGROUND[key]


def background_result(key, timeout=900):
    """(return code, stdout, stderr, work dir) of a background check, started now if it was not."""
    proc, work, out, err = start_background(key)
    code = proc.wait(timeout=timeout)
    out.close()
    err.close()
    return code, (work / "stdout.txt").read_text(), (work / "stderr.txt").read_text(), work


def pytest_sessionfinish(session):
    for proc, work, out, err in _BACKGROUND.values():
        if proc.poll() is None:  # an interrupted session: do not leave it running
            proc.kill()
            proc.wait()
        out.close()
        err.close()
        shutil.rmtree(work, ignore_errors=True)
        if sys.pycache_prefix:  # the bytecode of the paper path's copy of the repository (scripts/test.sh)
            shutil.rmtree(Path(sys.pycache_prefix) / work.relative_to(work.anchor), ignore_errors=True)
    for root in _DATA_ROOT:
        shutil.rmtree(root, ignore_errors=True)


# Every program: the stage scripts, the files of scripts/ and studies/ with a __main__ block, and
# `python -m distdiff.runs` (the shell chain's questions).
PROGRAMS = sorted([p.stem for p in REPO.glob("*.py")] + ["distdiff.runs"] +
                  [f"{p.parent.name}.{p.stem}" for folder in ("scripts", "studies") for p in (REPO / folder).glob("*.py")
                   if '__name__ == "__main__"' in p.read_text()])


def script(name):
    """A script's module by name: 'train_original' (top level) or 'studies.sweep'."""
    return importlib.import_module(name)


def run_main(name, *argv):
    """Call a script's main(argv) in-process, with every argument as a string."""
    return script(name).main([str(a) for a in argv])


def read_summary(run_dir):
    """A training run's summary.csv rows."""
    import csv
    with open(Path(run_dir) / "summary.csv") as f:
        return list(csv.DictReader(f))


def script_env():
    """Environment for script subprocesses: offline, one thread, repo importable."""
    return dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1",
                OMP_WAIT_POLICY="PASSIVE", PYTHONPATH=str(REPO), TQDM_DISABLE="1")


def run_script(*args, check=True, timeout=600, cwd=REPO):
    """Run `python <script> args...` from the repo root; returns CompletedProcess."""
    cmd = [sys.executable, *[str(a) for a in args]]
    proc = subprocess.run(cmd, cwd=cwd, env=script_env(), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def assert_one_line_error(proc, *needles):
    """Non-zero exit, no traceback, and a final 'error: ...' line naming the problem."""
    assert proc.returncode != 0, proc.stdout[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error:"), proc.stderr[-2000:]
    for needle in needles:
        assert needle.lower() in last.lower(), last
    return last


def copy_repo(dest):
    """A fresh-clone-like copy of the repository: the files git tracks (or would track), nothing
    generated (no .venv, data trees or checkpoints)."""
    import shutil
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, files):
        if (REPO / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
    return dest


@pytest.fixture(scope="session")
def digits_ready():
    """The embedded digits dataset exported under the session's DATA_ROOT (idempotent)."""
    from distdiff.registry import ensure_prepared, get_dataset
    ensure_prepared(get_dataset("digits"))
    return get_dataset("digits")


@pytest.fixture(scope="session")
def smoke_prior(tmp_path_factory, digits_ready):
    """The folder PRIOR_SMOKE's run writes its prior into (SMOKE_PRIOR) and its work folder beside it."""
    out = tmp_path_factory.mktemp("prior")
    run_main("scripts.train_prior", *PRIOR_SMOKE, "--out", out)
    return out


@pytest.fixture(scope="session")
def tiny_pipe(tmp_path_factory, digits_ready):
    """An untrained ~1M-parameter SD-shaped pipeline at 16 px with the digits prompts, built once."""
    from embedded.prior import build_tiny_pipeline
    return build_tiny_pipeline(tmp_path_factory.mktemp("tiny_pipe") / "pipe",
                               [digits_ready.prompt(d) for d in DIGITS])


@pytest.fixture(scope="session")
def random_guide(tmp_path_factory):
    """A random resnet_small guide for the digits classes, saved once."""
    from embedded.rehearsal import save_random_guide

    path = tmp_path_factory.mktemp("guide") / "guide.pth.tar"
    save_random_guide(path, DIGITS)
    return path
