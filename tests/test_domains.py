"""Every setting of every program declares its domain (issue 36): a walk over every flag (and
positional) of the stage scripts, scripts/, studies/ and `python -m distdiff.runs`, sub-commands
included, with bad values (wrong type, NaN, infinities, zero, negative, beyond the range, empty)
through the real entry points gives one `error:` line and nothing written, or a value inside the
declared domain. New flags and new programs are found by the walk itself."""
import argparse
import contextlib
import io
import os

import numpy as np
import pytest

from conftest import PROGRAMS, run_main, script
from distdiff import DistDiffError
from distdiff.domains import BOOL, Number, OneLineParser, Text
from distdiff.options import auto_or_bool, run_cli, train_precision

BAD = ("abc", "nan", "inf", "-inf", "", "0", "-1", "0.5", "1e12")
# Types that are domains without being a Number or a Text: True/False, and their auto/on/off forms.
BOOLEANS = (BOOL, auto_or_bool, train_precision)


def parser_of(name):
    module = script(name)
    assert hasattr(module, "get_parser"), f"{name}: no get_parser() to walk"
    return module.get_parser()


def settings(parser, prefix=()):
    """(sub-command words, action) of every argument that reads a value, sub-commands included."""
    for action in parser._actions:  # argparse has no public list of its actions
        if isinstance(action, argparse._SubParsersAction):
            for word, sub in action.choices.items():
                yield from settings(sub, (*prefix, word))
        elif action.nargs != 0 and not isinstance(action, argparse._HelpAction):
            yield prefix, action


def domain_of(action):
    """The argument's type, seen through the positional twins' wrapper (config._keep_suppress)."""
    return getattr(action.type, "domain", action.type)


def declared(action):
    """How an argument declares its domain, or None when it does not."""
    kind = domain_of(action)
    if action.choices is not None:
        return "choices"
    if isinstance(kind, (Number, Text)) or kind in BOOLEANS:
        return "type"
    return None


def placeholder(action):
    """A value inside the domain, for the required arguments around the one under test."""
    kind = domain_of(action)
    if action.choices is not None:
        return str(next(iter(action.choices)))
    if isinstance(kind, Number):
        return "1" if kind.low is None or kind.low <= 1 else str(int(kind.low))
    return {"GPU index": "0"}.get(kind.describe()[:9], "x") if isinstance(kind, Text) else "True"


def command_line(parser, words, tested, value):
    """The sub-command words, a placeholder for each required argument, and `value` for `tested`
    (a positional in its place, after placeholders for the positionals before it)."""
    sub = parser
    for word in words:
        sub = next(a for a in sub._actions if isinstance(a, argparse._SubParsersAction)).choices[word]
    flags, positionals, tested_seen = [], [], False
    for action in sub._actions:
        if isinstance(action, argparse._SubParsersAction):
            continue
        if action is tested:
            tested_seen = True
            if action.option_strings:
                flags.append(f"{action.option_strings[0]}={value}")  # "=": argparse reads a bare -inf as a flag
            else:
                positionals.append(value)
        elif action.option_strings:
            if action.required:
                flags += [action.option_strings[0], placeholder(action)]
        elif action.nargs not in ("?", "*") or not tested_seen and not tested.option_strings:
            positionals.append(placeholder(action))
    return [*words, *flags, "--", *positionals]


@pytest.mark.parametrize("name", PROGRAMS)
def test_every_setting_of_every_program_declares_its_domain(name):
    parser = parser_of(name)
    assert isinstance(parser, OneLineParser), f"{name}: its parser's errors are not one line"
    missing = [(words, action.dest) for words, action in settings(parser) if declared(action) is None]
    assert not missing, f"{name}: settings without a declared domain (type or choices): {missing}"


@pytest.mark.parametrize("name", PROGRAMS)
def test_help_shows_every_domain(name):
    """--help states each argument's domain: a Number's, True/False, a pattern's, or "any text";
    the epilog says that the rest take a non-empty text (choices are argparse's own {a,b})."""
    parser = parser_of(name)
    assert "non-empty text" in (parser.epilog or ""), name
    for words, action in settings(parser):
        kind = domain_of(action)
        stated = isinstance(kind, (Number, type(BOOL))) or isinstance(kind, Text) and (kind.pattern or kind.empty)
        if stated and action.help != argparse.SUPPRESS:
            assert kind.describe() in (action.help or ""), (name, words, action.dest, action.help)


def accepted_value(action, value):
    """The parsed value when `value` is inside the argument's domain, else None."""
    try:
        parsed = action.type(value) if action.type is not None else value
    except (argparse.ArgumentTypeError, ValueError, TypeError):
        return None
    if action.choices is not None and parsed not in action.choices:
        return None
    return parsed


def outside(domain):
    """Values just outside each end of a numeric domain, as text."""
    if not isinstance(domain, Number):
        return []
    step = 1 if domain.kind is int else 0.5
    return [repr(end) for end in ((domain.low - step) if domain.low is not None else None,
                                  (domain.high + step) if domain.high is not None else None) if end is not None]


@pytest.mark.parametrize("name", PROGRAMS)
def test_bad_values_give_one_error_line_or_a_value_in_the_domain(name, tmp_path, monkeypatch):
    """Each rejected value goes through the real entry point (run_cli(main, argv)), in-process:
    parse-time rejection comes before any model loads or any file is written, so the whole walk
    (a few thousand command lines) takes seconds. Accepted values must lie inside the declared
    domain (their runs are the other tests' business)."""
    monkeypatch.chdir(tmp_path)  # a relative default output would land here
    parser = parser_of(name)
    main = script(name).main
    for words, action in settings(parser):
        flag = action.option_strings[0] if action.option_strings else None
        for value in (*BAD, *outside(domain_of(action))):
            parsed = accepted_value(action, value)
            if parsed is not None:
                if isinstance(domain_of(action), Number) and parsed != "auto":
                    assert domain_of(action).contains(parsed), (name, flag, value)
                continue
            argv = command_line(parser, words, action, value)
            stderr = io.StringIO()
            with contextlib.redirect_stderr(stderr), pytest.raises(SystemExit) as stop:
                run_cli(main, argv)
            line = str(stop.value.code)
            shown = (name, argv, line)
            assert stop.value.code not in (0, None) and line.startswith("error: ") and "\n" not in line, shown
            assert not stderr.getvalue(), (shown, stderr.getvalue())  # no usage wall, no traceback
            assert (flag.lstrip("-") if flag else action.metavar or action.dest) in line, shown
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
    with pytest.raises(DistDiffError, match="--first_image_index 5 leaves no copy to make"):
        run_main("expand_distdiff", "--dataset", "digits", "--first_image_index", "5", "--out", tmp_path / "o")
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


def accepted_numbers(name, kinds=(int, float)):
    """(flag, value) for each value of the walk that a Number or True/False flag of `name` accepts,
    other than the flag's default."""
    out = []
    for words, action in settings(parser_of(name)):
        kind = domain_of(action)
        if action.option_strings and (isinstance(kind, Number) and kind.kind in kinds or kind is BOOL and bool in kinds):
            values = [v for v in (*BAD, *outside(kind)) if accepted_value(action, v) not in (None, action.default)]
            out += [(action.option_strings[0], v) for v in values]  # the default's run is every other test's
    return out


def run_outcome(name, argv):
    """(exit code, the one error line or None, stderr) of run_cli(main, argv)."""
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), pytest.raises(SystemExit) as stop:
        run_cli(script(name).main, [str(a) for a in argv])
    code = stop.value.code
    return (0 if code in (0, None) else code), (code if isinstance(code, str) else None), stderr.getvalue()


@pytest.mark.slow
def test_accepted_values_of_the_expander_run_to_valid_images_or_one_line(tiny_pipe, random_guide, tmp_path):
    """Every value of the walk that an expand_distdiff.py number or True/False flag accepts (a
    cfg scale of 1e12, a step of -1, a radius of 0, ...) runs end to end on one source and copy:
    exit 0 with a whole, finite image and a complete manifest, or one `error:` line and no image."""
    from PIL import Image
    cases = accepted_numbers("expand_distdiff", (int, float, bool))
    assert len(cases) >= 20, cases
    for n, (flag, value) in enumerate(cases):
        out = tmp_path / f"run{n}"
        # One prototypes file for every case but --seed's (k-means' groups, and the file, record the
        # seed): computed once.
        prototypes = tmp_path / ("prototypes.npz" if flag != "--seed" else f"prototypes_{n}.npz")
        argv = ["--dataset", "digits", "--model", tiny_pipe, "--guide_ckpt", random_guide, "--out", out,
                "--prototypes", prototypes, "--limit", "1", "--expand_ratio", "1", "--num_steps", "10",
                "--guidance_step", "4", "--threads", "1", f"{flag}={value}"]
        code, line, stderr = run_outcome("expand_distdiff", argv)
        assert "Traceback" not in stderr, (flag, value, stderr)
        pngs = sorted(out.rglob("*.png"))
        if code:
            assert line and line.startswith("error: ") and "\n" not in line and not pngs, (flag, value, line)
            continue
        assert len(pngs) == 1, (flag, value, pngs)
        pixels = np.asarray(Image.open(pngs[0]))
        assert pixels.shape[-1] == 3 and pixels.dtype == np.uint8, (flag, value)
        assert len((out / "manifest_shard0.jsonl").read_text().splitlines()) == 1, (flag, value)


@pytest.mark.slow
def test_accepted_training_numbers_run_to_a_result_or_one_line(digits_ready, tmp_path):
    """train_original.py's float settings at the walk's accepted values (lr 1e12, weight decay 1e12,
    momentum 0, ...), one epoch each: results.json, or one `error:` line (a diverged loss)."""
    cases = accepted_numbers("train_original", (float,))
    assert len(cases) >= 6, cases
    for n, (flag, value) in enumerate(cases):
        out = tmp_path / f"run{n}"
        code, line, stderr = run_outcome("train_original", ["digits", "--epochs", "1", "--batch_size", "8",
                                                            "--threads", "1", "--output", out, f"{flag}={value}"])
        assert "Traceback" not in stderr, (flag, value, stderr)
        if code:
            assert line and line.startswith("error: ") and "\n" not in line, (flag, value, line)
            assert not list(out.rglob("results.json")), (flag, value)
        else:
            assert len(list(out.rglob("results.json"))) == 1, (flag, value)


def test_a_preset_value_meets_the_same_domains(monkeypatch):
    """--preset values pass the check the command line and the YAML pass: a preset table with a
    value outside its flag's domain is one line, not a run with it."""
    from distdiff import expand_flags, presets
    assert expand_flags.parse(["--dataset", "digits", "--preset", "authors"]).prototypes.num_groups == 3
    monkeypatch.setitem(presets.PRESETS, "authors", {**presets.AUTHORS, "num_groups": 0})
    with pytest.raises(DistDiffError, match="--preset: num_groups: 0 is not an integer >= 1"):
        expand_flags.parse(["--dataset", "digits", "--preset", "authors"])
