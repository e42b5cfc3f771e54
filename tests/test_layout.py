"""The house's layout: imports run one way (studies and scripts -> embedded -> the library), the
library has no import cycle, and the method stays small and free of instrumentation."""
import ast
from pathlib import Path

import pytest

from conftest import REPO

METHOD = ("prototypes", "features", "guidance", "sampler")


def imports(path, top_level_only=False):
    """Module names a file imports (absolute imports; function-level ones unless top_level_only)."""
    tree = ast.parse(Path(path).read_text())
    nodes = tree.body if top_level_only else ast.walk(tree)
    names = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def package_files(package):
    return sorted((REPO / package).glob("*.py"))


def test_imports_run_one_way():
    for package, forbidden in (("distdiff", ("embedded", "studies", "scripts")), ("embedded", ("studies", "scripts")),
                               ("models", ("distdiff", "embedded", "studies", "scripts"))):
        for path in package_files(package):
            bad = sorted(name for name in imports(path) if name.split(".")[0] in forbidden)
            assert not bad, f"{path.relative_to(REPO)} imports {bad}"


def test_the_library_has_no_import_cycle():
    modules = {p.stem: p for p in package_files("distdiff")}
    graph = {name: {m.split(".")[1] for m in imports(path, top_level_only=True)
                    if m.startswith("distdiff.") and m.split(".")[1] in modules} - {name}
             for name, path in modules.items()}
    state = {}

    def visit(node, trail):
        if state.get(node) == "done":
            return
        assert state.get(node) != "open", f"import cycle: {' -> '.join(trail + [node])}"
        state[node] = "open"
        for nxt in sorted(graph[node]):
            visit(nxt, trail + [node])
        state[node] = "done"
    for name in sorted(graph):
        visit(name, [])


def test_the_method_is_four_small_files_without_timing_or_recording():
    lines = {name: len((REPO / "distdiff" / f"{name}.py").read_text().splitlines()) for name in METHOD}
    assert sum(lines.values()) <= 520, lines  # the "about 500"
    for name in METHOD:
        used = imports(REPO / "distdiff" / f"{name}.py")
        assert not {"time", "distdiff.timing", "distdiff.expansion"} & used, (name, used)


def entry_points():
    """Files run as programs: the stage scripts, scripts/ and studies/ (those with a __main__ block)."""
    files = [*REPO.glob("*.py"), *(REPO / "scripts").glob("*.py"), *(REPO / "studies").glob("*.py")]
    return sorted(p for p in files if '__name__ == "__main__"' in p.read_text())


def test_every_entry_point_sets_passive_openmp_before_any_other_import():
    """libgomp reads OMP_WAIT_POLICY once, when torch loads it: the default must be in os.environ
    before the first import that can load torch (two runs started from a plain shell spin otherwise)."""
    assert len(entry_points()) >= 18
    for path in entry_points():
        body = ast.parse(path.read_text()).body[1:]  # after the docstring
        first_other = next(i for i, node in enumerate(body) if isinstance(node, (ast.Import, ast.ImportFrom))
                           and not (isinstance(node, ast.Import) and [a.name for a in node.names] == ["os"]))
        calls = [ast.unparse(node) for node in body[:first_other] if isinstance(node, ast.Expr)]
        assert "os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')" in calls, path.relative_to(REPO)


def test_datasets_are_registered_through_the_entry_point_not_an_import():
    """A fresh interpreter that imports only the registry finds the embedded datasets (the
    `distdiff.datasets` entry point), and no file imports a package for its side effects."""
    import subprocess
    import sys
    code = ("import sys; from distdiff.registry import get_dataset, dataset_names; "
            "print(get_dataset('digits').name, 'embedded' in sys.modules, len(dataset_names()))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    name, imported, count = out.split()
    assert (name, imported) == ("digits", "True") and int(count) > 10
    needle = "# noqa: " + "F401"  # an import kept only for what importing it does
    for path in [*REPO.glob("*.py"), *REPO.glob("*/*.py"), *REPO.glob("tests/jobs/*.py")]:
        assert needle not in path.read_text(), path.relative_to(REPO)


def test_an_unknown_dataset_lists_the_known_ones():
    import pytest

    from distdiff import DistDiffError, registry
    with pytest.raises(DistDiffError, match="unknown dataset 'nope'; known: .*digits.*folder:<path>"):
        registry.get_dataset("nope")


def test_no_default_of_the_recipes_is_written_again_in_a_library_signature():
    """The expansion's and training's defaults live in their dataclasses (the flags take them from
    there): a library function's parameter of the same name repeats none of them."""
    import dataclasses

    from distdiff.prototype_store import PrototypeConfig
    from distdiff.settings import GuidanceConfig, SampleConfig
    from distdiff.training import TrainConfig
    defaults = {f.name: f.default for cls in (SampleConfig, GuidanceConfig, PrototypeConfig, TrainConfig)
                for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}
    # The same word for another setting: the device rule of every script, the batches of feature
    # extraction (not training), torch's thread default, and torchvision's own resize filter for
    # the test transform of a guide whose checkpoint does not record one.
    other_settings = {"resolve_device(device)", "extract_features(batch_size)", "__init__(batch_size)",
                      "add_runtime_flags(threads)", "test_transform(interpolation)"}
    copies = []
    for path in [*package_files("distdiff"), *package_files("studies")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            args = node.args
            pairs = [*zip(args.args[len(args.args) - len(args.defaults):], args.defaults),
                     *((a, d) for a, d in zip(args.kwonlyargs, args.kw_defaults) if d is not None)]
            for arg, default in pairs:
                if arg.arg in defaults and isinstance(default, ast.Constant) and default.value is not None \
                        and type(default.value) is type(defaults[arg.arg]) and default.value == defaults[arg.arg] \
                        and f"{node.name}({arg.arg})" not in other_settings:
                    copies.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name}({arg.arg}={default.value!r})")
    assert not copies, "\n".join(copies)


def test_a_default_changed_in_its_dataclass_reaches_the_flags_and_args_yaml(monkeypatch):
    """Defaults are written once: changing a dataclass field's default changes what the parser
    gives, the ExpandConfig and the settings args.yaml records, with no other edit."""
    from distdiff import expand_flags
    from distdiff.prototype_store import PrototypeConfig
    from distdiff.settings import GuidanceConfig, SampleConfig
    for cls, field, value in ((SampleConfig, "cfg_scale", 6.0), (GuidanceConfig, "step_size", 3.0),
                              (PrototypeConfig, "num_groups", 4)):  # none of them set by configs/digits.yaml
        monkeypatch.setattr(cls.__dataclass_fields__[field], "default", value)
    assert expand_flags.get_parser().get_default("cfg_scale") == 6.0
    cfg = expand_flags.parse(["--dataset", "digits"])
    assert (cfg.sample.cfg_scale, cfg.guidance.step_size, cfg.prototypes.num_groups) == (6.0, 3.0, 4)
    assert (cfg.settings["cfg_scale"], cfg.settings["step_size"], cfg.settings["num_groups"]) == (6.0, 3.0, 4)


def test_the_launchers_ask_the_recipe_for_the_learning_rate():
    """The shell launchers take the default learning rate from distdiff/recipe.py (through
    `python -m distdiff.runs default lr`), not from a number of their own."""
    import re
    for path in [REPO / "single_exp.sh", *(REPO / "scripts" / "exps").glob("*.sh")]:
        text = path.read_text()
        assert not re.search(r"LR=\$\{[^}]*:-0\.1\}", text), path.relative_to(REPO)
        if re.search(r"^\s*(\[.*\] \|\| )?LR=", text, re.M):
            assert "distdiff.runs default lr" in text, path.relative_to(REPO)


def test_no_launcher_hides_a_failed_background_job():
    """`wait "$a" && wait "$b"` under set -e ignores a failure of $a (a command in an && list does
    not stop the script): every background job is waited for on its own line."""
    import re
    for path in [REPO / "single_exp.sh", *(REPO / "scripts").rglob("*.sh")]:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split(" #")[0] if not line.lstrip().startswith("#") else ""  # comments aside
            assert not re.search(r"\bwait\b[^;|]*&&", code), f"{path.relative_to(REPO)}:{number}: {line.strip()}"


@pytest.mark.slow  # a real expansion (tiny pipeline) under a profiler
def test_argv_travels_through_few_files_and_returns_seldom(tiny_pipe, random_guide, tmp_path):
    """studies/argv_trail.py's measure on a 1-source digits expansion: the calls that receive argv
    or a configuration made from it enter at most 10 files and return at most 20 times to a file
    they had left, twice to the script (parse, then run)."""
    import expand_distdiff
    from studies.argv_trail import follow, measure

    argv = ["--dataset", "digits", "--model", str(tiny_pipe), "--guide_ckpt", str(random_guide), "--out",
            str(tmp_path / "out"), "--limit", "1", "--expand_ratio", "1", "--num_steps", "10", "--guidance_step", "4",
            "--threads", "1"]
    trail, code = follow(expand_distdiff.main, argv)
    numbers = measure(trail, "expand_distdiff.py")
    assert code == 0 and trail[0] == ("expand_distdiff.py", "main"), trail[:3]
    assert {"distdiff/expansion.py", "distdiff/sampler.py"} <= {f for f, _ in trail}, trail  # it reached the method
    assert numbers["files"] <= 10 and numbers["returns"] <= 20 and numbers["back_to_script"] == 2, (numbers, trail)
