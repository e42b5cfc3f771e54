"""Every script's --help, the one merger's precedence (flag > YAML > default; positional twin ==
named flag), and the one-line error contract of run_cli."""
import argparse

import pytest

from conftest import PROGRAMS, REPO, script
from distdiff import DistDiffError
from distdiff.config import dataset_section, parse_args
from distdiff.options import add_train_expand_flags, add_train_flags, run_cli



@pytest.mark.parametrize("name", PROGRAMS)
def test_help_works_for_every_script(name, capsys):
    with pytest.raises(SystemExit) as stop:
        script(name).main(["--help"])
    assert stop.value.code == 0
    assert "usage:" in capsys.readouterr().out


# The seed README's positional forms and their YAML-settable twins, with a value that differs from
# both the argparse default and the YAML below.
TWINS = {"arch": ("resnet18", "mobilenetv2"), "lr": (0.05, 0.2), "pretrained": (True, False), "gpu": ("3", "1")}


@pytest.fixture
def yaml_dir(tmp_path):
    """configs/toy.yaml setting every twin that a dataset YAML may set."""
    (tmp_path / "toy.yaml").write_text("train:\n  arch: mobilenetv2\n  lr: 0.2\n  pretrained: false\n  gpu: '1'\n"
                                      "  epochs: 7\n")
    return tmp_path


def train_parse(argv, config_dir, expand=False):
    parser = (add_train_expand_flags if expand else add_train_flags)(argparse.ArgumentParser())
    return parse_args(parser, argv, config=dataset_section("train", config_dir))


@pytest.mark.parametrize("name", list(TWINS))
def test_named_flag_beats_yaml_beats_default(name, yaml_dir):
    named, from_yaml = TWINS[name]
    flag = [f"--{name}", str(named)]
    assert getattr(train_parse(["--dataset", "toy", *flag], yaml_dir), name) == named
    assert getattr(train_parse(["toy", *flag], yaml_dir), name) == named
    assert getattr(train_parse(["--dataset", "toy"], yaml_dir), name) == from_yaml
    default = add_train_flags(argparse.ArgumentParser()).get_default(name)
    assert getattr(train_parse(["--dataset", "other"], yaml_dir), name) == default  # no YAML: the default


def test_positional_form_means_the_named_form(yaml_dir):
    positional = train_parse(["toy", "resnet18", "0.05", "True", "3"], yaml_dir)
    named = train_parse(["--dataset", "toy", "--arch", "resnet18", "--lr", "0.05", "--pretrained", "True",
                         "--gpu", "3"], yaml_dir)
    assert vars(positional) == vars(named)
    assert positional.epochs == 7  # YAML still fills what neither form sets
    expand_pos = train_parse(["toy", "resnet18", "0.05", "sd_x5", "True", "3"], yaml_dir, expand=True)
    expand_named = train_parse(["--dataset", "toy", "--arch", "resnet18", "--lr", "0.05", "--exp", "sd_x5",
                                "--pretrained", "True", "--gpu", "3"], yaml_dir, expand=True)
    assert vars(expand_pos) == vars(expand_named) and expand_pos.exp == "sd_x5"


def test_conflicting_twins_and_bad_yaml_are_errors(yaml_dir):
    with pytest.raises(DistDiffError, match="arch given twice"):
        train_parse(["toy", "resnet18", "--arch", "resnet50"], yaml_dir)
    (yaml_dir / "bad.yaml").write_text("train:\n  archh: resnet18\n")
    with pytest.raises(DistDiffError, match=r"unknown key\(s\) \['archh'\]"):
        train_parse(["bad"], yaml_dir)
    (yaml_dir / "badaug.yaml").write_text("train:\n  aug: mixupp\n")
    with pytest.raises(DistDiffError, match="aug='mixupp' is not one of"):
        train_parse(["badaug"], yaml_dir)


def test_the_digits_yaml_is_applied_and_overridable():
    args = train_parse(["--dataset", "digits", "--arch", "resnet18"], REPO / "configs")
    assert args.arch == "resnet18" and args.image_size == 32 and args.hflip is False


def test_run_cli_prints_one_line_and_exits_1(capsys):
    def failing(argv):
        raise DistDiffError("the thing is missing; run make-thing")
    with pytest.raises(SystemExit) as stop:
        run_cli(failing, [])
    assert stop.value.code == "error: the thing is missing; run make-thing"  # sys.exit prints it to stderr, exit 1
    with pytest.raises(SystemExit) as stop:
        run_cli(lambda argv: 0, [])
    assert stop.value.code == 0


def test_runs_cli_answers_the_shell_chain(tmp_path, capsys):
    """single_exp.sh asks `python -m distdiff.runs` instead of reading YAML or joining run paths."""
    from distdiff import runs

    assert runs.main(["arch", "digits"]) == 0 and capsys.readouterr().out == "resnet_small\n"
    common = ["--dataset", "digits", "--arch", "resnet_small", "--lr", "0.1", "--output", str(tmp_path)]
    runs.main(["name", *common, "--exp", "sd_x5"])
    assert capsys.readouterr().out == "resnet_small_unpretrained_sd_x5_lr0.1\n"
    done = runs.train_run_dir(tmp_path, "digits", "resnet_small", False, 0.1, 2, "sd_x5")
    done.mkdir(parents=True)
    (done / "results.json").write_text("{}")
    runs.main(["missing", *common, "--exps", "-", "sd_x5", "--seeds", "1", "2", "1"])
    assert capsys.readouterr().out.splitlines() == ["- 1", "- 2", "sd_x5 1"]  # seed 1 asked once
    runs.main(["dir", *common, "--preset", "authors"])  # the training preset's run dirs
    assert capsys.readouterr().out.strip().endswith("digits/resnet_small_unpretrained_lr0.1_resize-squash_preset-authors")
