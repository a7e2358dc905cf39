"""The command line explains itself: version, plain help with working examples, resolved settings, honest output."""

import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from hinas import __version__
from hinas.cli import COMMANDS, EXAMPLES, build_parser, main, settings
from hinas.engine.settings import PRESETS, EvalConfig, SearchConfig, load_section, resolve
from hinas.errors import ConfigError
from hinas.hardware import auto_threads, busy_between, busy_cores, set_threads

ROOT = Path(__file__).resolve().parents[1]


def _help(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as done:
        main([*argv, "--help"])
    assert done.value.code == 0
    return capsys.readouterr().out


def test_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"hinas {__version__}"


@pytest.mark.parametrize("command", [None, *EXAMPLES])
def test_help_is_plain_text_with_examples(command, capsys):
    text = _help([command] if command else [], capsys)
    assert "`" not in text and ":class:" not in text  # no reST markup leaks into the terminal
    if command:
        assert "examples:\n" in text and all(f"  {example}\n" in text for example in EXAMPLES[command])


@pytest.mark.parametrize("example", [e for examples in EXAMPLES.values() for e in examples])
def test_every_help_example_parses_and_its_settings_resolve(example, monkeypatch):
    monkeypatch.chdir(ROOT)  # examples name params.yaml sections as the repository has them
    argv = shlex.split(example.split(" > ")[0])
    assert argv[0] == "hinas"
    args = build_parser().parse_args(argv[1:])
    if args.command in COMMANDS and not getattr(args, "resume", None) or args.command == "config":
        assert isinstance(settings(args), tuple(COMMANDS.values()))
    if args.command == "prepare":
        from hinas.config import from_dict
        from hinas.studies.pipeline import DataConfig

        assert from_dict(DataConfig, load_section(args.config), args.config).denoise


def test_the_evaluate_example_keys_are_evaluate_keys():
    args = build_parser().parse_args(["evaluate", "--model", "runs/retrain", "--set", "sigmas=[15,25]"])
    assert settings(args).sigmas == (15, 25)
    with pytest.raises(ConfigError, match="epochs"):  # what the old help suggested
        settings(build_parser().parse_args(["evaluate", "--set", "epochs=10"]))


def test_prepare_help_names_the_sources(capsys):
    from hinas.data.fetch import SOURCES

    text = _help(["prepare"], capsys)
    assert all(name in text for name in SOURCES)


def test_demo_help_promises_one_time_per_preset(capsys):
    from hinas.cli import DEMO_TIME

    text = _help(["demo"], capsys)
    assert all(f"{preset} {time}" in text for preset, time in DEMO_TIME.items())


def test_config_show_lists_presets_and_prints_settings_that_read_back(tmp_path, capsys):
    assert main(["config", "show", "search", "--preset", "cpu-demo", "--set", "seed=3", "--set", "space.filters=5"]) == 0
    text = capsys.readouterr().out
    assert f"# presets: {', '.join(PRESETS[SearchConfig])}" in text
    assert "seed: 3" in text and "# default 0" in text.split("seed: 3")[1].splitlines()[0]
    assert "  filters: 5" in text and "First epoch whose validation score may select the genotype" in text
    (tmp_path / "search.yaml").write_text(text)
    expected = resolve(SearchConfig, "cpu-demo", overrides=["seed=3", "space.filters=5"])
    assert resolve(SearchConfig, file=tmp_path / "search.yaml") == expected
    assert main(["search", "--config", str(tmp_path / "search.yaml"), "--set", "epochs=0"]) == 2  # the file is checked like any
    assert "search.epochs: must be at least 1" in capsys.readouterr().err


def test_config_show_refuses_an_unknown_key(capsys):
    assert main(["config", "show", "evaluate", "--set", "epochs=10"]) == 2
    assert "epochs" in capsys.readouterr().err


def test_without_dot_search_warns_on_stderr_and_names_no_drawing(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert main(["search", "--preset", "smoke", "--out", str(tmp_path / "s"), "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert "warning: Graphviz's `dot` program was not found" in err and "apt-get install graphviz" in err
    assert "drawing:" not in out and "genotype:" in out and "width path: stem" in out
    assert not (tmp_path / "s" / "genotype.svg").exists()
    assert main(["show", str(tmp_path / "s"), "--out", str(tmp_path / "g")]) == 2  # show's job is the drawing
    out, err = capsys.readouterr()
    assert "layer 1:" in out and "apt-get install graphviz" in err


def test_with_dot_search_names_the_drawing_it_made(tmp_path, capsys):
    assert main(["search", "--preset", "smoke", "--out", str(tmp_path / "s"), "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert f"drawing: {tmp_path / 's' / 'genotype.svg'}" in out and "warning" not in err
    assert (tmp_path / "s" / "genotype.svg").exists()


def test_threads_auto_never_raises_the_setting_and_explicit_counts_apply():
    before = torch.get_num_threads()
    try:
        assert set_threads(1) == 1 == torch.get_num_threads()
        assert auto_threads() == 1 and set_threads(0) == 1  # auto stays within what is set (as OMP_NUM_THREADS=1 would)
        with pytest.raises(ConfigError, match="threads"):
            set_threads(-1)
    finally:
        torch.set_num_threads(before)


def test_busy_cores_counts_each_cores_share_of_non_idle_time_between_two_readings():
    before = "cpu  300 0 0 300 0 0 0 0 0 0\ncpu0 100 0 0 100 0 0 0 0 0 0\ncpu1 200 0 0 200 0 0 0 0 0 0\nintr 5\n"
    # cpu0: 100 ticks, all user; cpu1: 100 ticks, 25 system, 50 idle, 25 waiting on I/O (idle too)
    after = "cpu  500 0 0 400 0 0 0 0 0 0\ncpu0 200 0 0 100 0 0 0 0 0 0\ncpu1 200 0 25 250 25 0 0 0 0 0\nintr 9\n"
    assert busy_between(before, after, [0, 1]) == pytest.approx(1.25)
    assert busy_between(before, after, [1]) == pytest.approx(0.25)  # only the cores this process may use
    assert busy_between(before, after, [1, 7]) == pytest.approx(0.25)  # a core /proc/stat does not list: idle
    steal = "cpu0 100 0 0 100 0 0 0 60 0 0\n"  # 60 of 100 ticks given to other guests: not available here
    assert busy_between("cpu0 100 0 0 60 0 0 0 0 0 0\n", steal, [0]) == pytest.approx(0.6)


def test_a_core_kept_busy_by_another_process_is_not_counted_idle():
    cpu = sorted(os.sched_getaffinity(0))[0]
    spin = subprocess.Popen([sys.executable, "-c", f"import os; os.sched_setaffinity(0, {{{cpu}}})\nwhile True: pass"])
    try:
        time.sleep(0.5)
        assert busy_cores([cpu]) > 0.8
    finally:
        spin.kill()
        spin.wait()


def test_threads_is_a_validated_setting(capsys):
    assert main(["config", "show", "retrain", "--set", "threads=-2"]) == 2
    assert "train.threads: must not be negative" in capsys.readouterr().err
    assert resolve(EvalConfig, overrides=["threads=2"]).threads == 2
