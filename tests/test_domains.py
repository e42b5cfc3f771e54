"""Every numeric setting of the stage scripts, parse_logs.py, prepare_data.py and train_prior.py
declares its domain (the studies are not covered yet): a walk over their flags with bad
values (wrong type, NaN, infinities, zero, negative, beyond the range, empty) through the real
entry points gives one `error:` line naming the flag and nothing written, or a value inside the
domain. New flags are found by the walk itself (every flag whose type is a Number)."""
import argparse
import contextlib
import io
import os

import pytest

from conftest import run_main, script
from distdiff import DistDiffError
from distdiff.domains import Number
from distdiff.options import run_cli

PROGRAMS = ("expand_distdiff", "train_original", "train_expand", "parse_logs", "scripts.prepare_data",
            "scripts.train_prior")
BAD = ("abc", "nan", "inf", "-inf", "", "0", "-1", "0.5", "1e12")


def numeric_flags(name):
    """(option string, Number) of every flag of a stage script whose type declares a domain."""
    parser = script(name).get_parser()
    return [(a.option_strings[0], a.type) for a in parser._actions
            if a.option_strings and isinstance(a.type, Number)]


def test_every_numeric_flag_of_these_programs_declares_a_domain():
    for name in PROGRAMS:
        parser = script(name).get_parser()
        plain = [a.option_strings[0] for a in parser._actions if a.type in (int, float)]
        assert not plain, f"{name}: flags typed int/float without a domain: {plain}"
        assert numeric_flags(name), name


def beyond(domain):
    """Values just outside each end of the domain, as text."""
    out = []
    if domain.low is not None:
        out.append(repr(domain.low - 1 if domain.kind is int else domain.low - 0.5))
    if domain.high is not None:
        out.append(repr(domain.high + 1))
    return out


@pytest.mark.parametrize("name", PROGRAMS)
def test_bad_numbers_give_one_error_line_naming_the_flag_or_a_value_in_the_domain(name, tmp_path):
    """Parse-time rejection runs before any model loads or any file is written: the whole walk
    (a few hundred command lines) runs in-process in seconds."""
    base = {"expand_distdiff": ["--dataset", "digits", "--out", tmp_path / "out"],
            "train_original": ["digits", "--output", tmp_path / "runs"],
            "train_expand": ["digits", "--exp", "x", "--output", tmp_path / "runs"],
            "parse_logs": [tmp_path / "runs"], "scripts.prepare_data": ["caltech-101", "--source", tmp_path / "src"],
            "scripts.train_prior": ["--out", tmp_path / "prior"]}[name]
    for flag, domain in numeric_flags(name):
        for value in (*BAD, *beyond(domain)):
            argv = [str(a) for a in base] + [f"{flag}={value}"]  # "=": argparse reads a bare -inf as a flag
            try:
                accepted = domain(value)
            except argparse.ArgumentTypeError:
                accepted = None
            if accepted is not None:
                assert domain.contains(accepted), (flag, value)
                continue  # a legal value: its run is the other tests' business
            stderr = io.StringIO()
            with contextlib.redirect_stderr(stderr), pytest.raises(SystemExit) as stop:
                run_cli(script(name).main, argv)
            line = str(stop.value.code)
            assert stop.value.code != 0 and line.startswith("error: argument ") and "\n" not in line, (flag, value, line)
            assert flag.lstrip("-").split("/")[0] in line and domain.describe() in line, (flag, value, line)
            assert not stderr.getvalue(), (flag, value, stderr.getvalue())  # no usage wall, no traceback
    assert not any(tmp_path.iterdir()), sorted(os.listdir(tmp_path))


def test_a_bad_number_in_a_yaml_config_is_one_line_too(tmp_path, digits_ready):
    from distdiff.config import dataset_section, parse_args
    (tmp_path / "digits.yaml").write_text("expand:\n  strength: 1.5\ntrain:\n  epochs: 0\n")
    parser = script("expand_distdiff").get_parser()
    with pytest.raises(DistDiffError, match=r"strength: 1\.5 is not a finite number in \(0, 1\]"):
        parse_args(parser, ["--dataset", "digits"], config=dataset_section("expand", tmp_path))
    with pytest.raises(DistDiffError, match="epochs: 0 is not an integer >= 1"):
        parse_args(script("train_original").get_parser(), ["digits"], config=dataset_section("train", tmp_path))


def test_cross_field_rules_are_one_line_before_any_model_loads(tmp_path, digits_ready):
    with pytest.raises(DistDiffError, match="outside the denoised steps"):
        run_main("expand_distdiff", "--dataset", "digits", "--out", tmp_path / "o", "--num_steps", "10",
                 "--guidance_step", "9", "--model", tmp_path / "no-model", "--guide_ckpt", tmp_path / "no-guide")
    with pytest.raises(DistDiffError, match="--split 4 must be in"):
        run_main("expand_distdiff", "--dataset", "digits", "--split", "4", "--total_split", "4")
    with pytest.raises(DistDiffError, match="--resize_size 20 is smaller than --image_size 32"):
        run_main("train_original", "digits", "--resize_size", "20", "--output", tmp_path / "runs")
    assert not (tmp_path / "o").exists() and not (tmp_path / "runs").exists()


def test_help_shows_each_domain(capsys):
    with pytest.raises(SystemExit):
        script("expand_distdiff").main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(a finite number in (0, 1])" in text and "(none or a finite number >= 0)" in text


def test_legal_but_unusual_values_are_explained():
    from distdiff import expand_flags

    def notes(*argv):
        return " | ".join(expand_flags.unusual_settings(expand_flags.parse(["--dataset", "digits", *argv])))
    assert notes() == ""  # the paper's settings
    assert "weakens the prompt" in notes("--cfg_scale=-2")
    assert "the noise control" in notes("--step_size", "0") and "raises the energy" in notes("--step_size=-1")
    assert "guidance lost for every item" in notes("--lambda_class", "0", "--lambda_group", "0")
    assert "changes nothing" in notes("--radius", "0") and notes("--guidance", "none", "--step_size", "0") == ""


def test_a_yaml_list_is_checked_element_by_element(tmp_path):
    from distdiff.config import load_yaml_config, parse_args
    parser = script("scripts.train_prior").get_parser()
    config = tmp_path / "prior.yaml"
    config.write_text("vae_channels: [16, 32, 64]\nunet_attention: [0, 1, 1]\n")
    args = parse_args(parser, ["--config", str(config)], config=lambda s: (load_yaml_config(s.config), s.config))
    assert args.vae_channels == [16, 32, 64] and args.unet_attention == [0, 1, 1]
    config.write_text("unet_attention: [0, 2, 1]\n")
    with pytest.raises(DistDiffError, match=r"unet_attention: 2 is not an integer in \[0, 1\]"):
        parse_args(parser, ["--config", str(config)], config=lambda s: (load_yaml_config(s.config), s.config))
