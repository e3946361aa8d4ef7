"""The CLI's shared options: --store and --json before or after any command (and TRAINYARD_STORE), `init` saving
the store it is given, JSON that parses from every command that prints data, short flags that mean one thing
everywhere, help text on every option, documented exit codes, shell completion, and a README that matches --help."""

from __future__ import annotations

import json
import re
import shutil
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO
from trainyard.cli import main
from trainyard.store import open_store

MNIST = REPO / "templates" / "mnist"
# Pachyderm's "Pipeline Specification" minimum spec (the reference's wordcount), as a user brings it.
WORDCOUNT = {"pipeline": {"name": "wordcount"}, "transform": {"image": "wordcount-image",
                                                              "cmd": ["/binary", "/pfs/data", "/pfs/out"]},
             "input": {"pfs": {"repo": "data", "glob": "/*"}}}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, airflow_db):
    """A store holding one real run: the mnist template deployed and trained in-process, one model."""
    root = tmp_path_factory.mktemp("trained")
    shutil.copytree(MNIST / "model-train", root / "src")
    shutil.copytree(MNIST / "data", root / "data")
    uri = f"file://{root / 'store'}"
    assert main(["--store", uri, "deploy", "-s", str(root / "src"), "-d", str(root / "data"), "--local",
                 "-h", '{"kernel": ["linear"]}', "--json"]) == 0
    (run,) = [k for k in open_store(uri).backend.list("runs/train_pipeline/") if k.endswith("/_results.json")]
    return uri, open_store(uri).get_json(run)


def _out(capsys, argv: list[str], code: int = 0) -> str:
    capsys.readouterr()
    got = main(argv)
    captured = capsys.readouterr()
    assert got == code, (argv, captured.err[-2000:])
    return captured.out


def test_store_before_or_after_the_command_or_from_the_env_reads_that_store(trained, capsys, monkeypatch):
    uri, run = trained
    run_id = run["parameters"]["run_id"]
    monkeypatch.delenv("TRAINYARD_STORE", raising=False)
    assert json.loads(_out(capsys, ["list", "--json"])) == []  # the default store (airflow.cfg's) is another one
    before = json.loads(_out(capsys, ["--store", uri, "list", "--json"]))
    after = json.loads(_out(capsys, ["list", "--store", uri, "--json"]))
    json_first = json.loads(_out(capsys, ["--json", "list", "--store", uri]))
    monkeypatch.setenv("TRAINYARD_STORE", uri)
    from_env = json.loads(_out(capsys, ["list", "--json"]))
    assert [r["parameters"]["run_id"] for r in before] == [run_id]
    assert before == after == json_first == from_env
    # in a group, between its name and the command, too; given twice, the one after the command wins
    monkeypatch.delenv("TRAINYARD_STORE")
    assert json.loads(_out(capsys, ["data", "--store", uri, "--json", "repos"])) == ["features", "mnist"]
    assert json.loads(_out(capsys, ["--store", "file:///nonexistent", "data", "repos", "--store", uri,
                                    "--json"])) == ["features", "mnist"]


@pytest.mark.parametrize("where", ["after", "before"])
def test_init_saves_the_store_it_is_given_before_or_after_the_command(tmp_path, capsys, monkeypatch, where):
    monkeypatch.setenv("TRAINYARD_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("TRAINYARD_PASSWORD", "not-printed")
    store = "s3://team-bucket/store"
    init = ["init", "-e", "http://127.0.0.1:9", "--no-check"]
    argv = [*init, "--store", store, "--json"] if where == "after" else ["--store", store, "--json", *init]
    printed = _out(capsys, argv)
    assert json.loads((tmp_path / "config" / "config.json").read_text())["store"] == store
    assert json.loads(printed)["store"] == store and "not-printed" not in printed
    assert json.loads(_out(capsys, ["config", "store", "--json"])) == {"store": store}  # the profile's store is used


def test_json_of_every_command_that_prints_data_parses(trained, tmp_path, capsys, monkeypatch):
    uri, run = trained
    model_id = run["models"][0]["model_id"]
    monkeypatch.chdir(tmp_path)
    put = tmp_path / "words.txt"
    put.write_text("a\nb\n")
    spec = tmp_path / "wordcount.json"
    spec.write_text(json.dumps(WORDCOUNT))
    commands = {
        "list": ["list"], "info -i": ["info", "-i", "0"], "info --model": ["info", "--model", model_id[:10]],
        "logs": ["logs"], "logs --step": ["logs", "-i", "0", "--step", "train", "--map-index", "0"],
        "models": ["models"], "models NAME": ["models", "mnist"], "lineage": ["lineage", model_id],
        "get": ["get", "--model", model_id, "-o", str(tmp_path / "model")],
        "deploy --upload-only": ["deploy", "-s", str(MNIST / "model-train"), "-d", str(MNIST / "data"),
                                 "--upload-only"],
        "data repos": ["data", "repos"], "data log": ["data", "log", "features"],
        "data inspect": ["data", "inspect", "features"], "data put": ["data", "put", "words", str(put), "--no-run"],
        "template list": ["template", "list"], "template get": ["template", "get", "mnist", "-o", "copy"],
        "config": ["config"], "config KEY": ["config", "runner"],
        "pipeline create": ["pipeline", "create", "-f", str(spec)], "pipeline list": ["pipeline", "list"],
        "pipeline delete": ["pipeline", "delete", "wordcount"],
    }
    parsed = {name: json.loads(_out(capsys, ["--store", uri, *argv, "--json"])) for name, argv in commands.items()}
    assert parsed["list"][0]["parameters"]["run_id"] == run["parameters"]["run_id"]
    assert parsed["info -i"]["models"][0]["model_id"] == parsed["info --model"]["model_id"] == model_id
    (train_log,) = [c for c in parsed["logs"] if c["task"] == "train"]
    assert parsed["logs --step"] == [train_log] and train_log["map_index"] == 0 and train_log["try"] == 1
    assert "params:" in train_log["text"] and "'kernel': 'linear'" in train_log["text"]
    assert parsed["models"] == ["mnist"] and parsed["models NAME"]["versions"][0]["model_id"] == model_id
    assert ["data", "model"] in parsed["lineage"]["edges"] and parsed["get"]["model_id"] == model_id
    assert parsed["deploy --upload-only"]["uploaded"] == {"blobs": 0, "bytes": 0}
    assert parsed["data repos"] == ["features", "mnist"] and parsed["data put"]["ref"].startswith("words:")
    assert parsed["data log"][0]["files"] == 3 and len(parsed["data inspect"]["manifest"]) == 3
    assert "mnist" in parsed["template list"] and parsed["template get"]["path"] == "copy"
    assert (tmp_path / "copy" / "model-train").is_dir()
    assert parsed["config"]["store"] == uri and parsed["config KEY"] == {"runner": "local"}
    assert [p["name"] for p in parsed["pipeline create"]] == [p["name"] for p in parsed["pipeline list"]] \
        == ["wordcount"]
    assert parsed["pipeline delete"] == {"deleted": ["wordcount"]}


def test_logs_follow_json_is_one_document_per_line(trained, capsys):
    uri, run = trained
    lines = _out(capsys, ["--store", uri, "logs", "--follow", "--json", "--step", "register"]).splitlines()
    assert lines and all(json.loads(line)["task"] == "register" for line in lines)


def test_info_without_a_selector_and_contradicting_options_are_bad_input(trained, capsys):
    uri, _ = trained
    capsys.readouterr()
    assert main(["--store", uri, "info"]) == 2
    assert capsys.readouterr().err == ("error: give --model ID, -i N (a run number from `trainyard list`, 0 is the "
                                       "newest) or --file REPO:PATH\n")
    for argv, message in ((["info", "-i", "0", "--model", "x"], "give only one of --model, -i/--index, --file"),
                          (["logs", "-i", "0", "--run-id", "x"], "give only one of -i/--index, --run-id"),
                          (["lineage", "x", "--dot", "--json"], "give one of --dot (a Graphviz graph) or --json"),
                          (["list", "--limit", "many"], "Invalid value for '--limit'"),
                          (["info", "-s", "accuracy"], "No such option: -s (see `trainyard info --help`)"),
                          (["nosuch"], "No such command 'nosuch'")):
        assert main(["--store", uri, *argv]) == 2, argv
        (line,) = capsys.readouterr().err.splitlines()
        assert line.startswith("error: ") and message in line, line


def test_an_unexpected_error_is_one_line_without_a_traceback(tmp_path, capsys, monkeypatch):
    blocked = tmp_path / "store"
    blocked.write_text("a file where the store's folder should be")
    monkeypatch.delenv("TRAINYARD_DEBUG", raising=False)
    capsys.readouterr()
    assert main(["--store", f"file://{blocked}", "deploy", "-s", str(MNIST / "model-train"), "-d",
                 str(MNIST / "data"), "--upload-only"]) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("error: unexpected ") and "TRAINYARD_DEBUG=1" in line
    monkeypatch.setenv("TRAINYARD_DEBUG", "1")
    with pytest.raises(OSError):
        main(["--store", f"file://{blocked}", "deploy", "-s", str(MNIST / "model-train"), "--upload-only"])


# -- help ---------------------------------------------------------------------------------------------------------

def _help(path: list[str], monkeypatch, capsys) -> str:
    monkeypatch.setenv("COLUMNS", "250")  # as wide as help gets (120): no option's name wraps
    return _out(capsys, [*path, "--help"])


def _commands(text: str) -> list[str]:
    section = text.split("\nCommands:\n", 1)[1] if "\nCommands:\n" in text else ""
    return [m.group(1) for m in re.finditer(r"^  (\S+)  ", section.split("\n\n")[0], re.M)]


def _options(text: str) -> dict[str, tuple[str, str]]:
    """--long -> (its short flag or '', its help text) from a command's help."""
    lines = text.split("\nOptions:\n", 1)[1].split("\n\n")[0].splitlines()
    found = {}
    for at, line in enumerate(lines):
        m = re.match(r"  (?:(-\w), )?(--[\w-]+)(?: \S+)?(?:[ ]{2,}(.*))?$", line)
        if m:  # a help text too wide for the option's line starts on the next one
            after = lines[at + 1] if at + 1 < len(lines) and lines[at + 1].startswith("    ") else ""
            found[m.group(2)] = (m.group(1) or "", (m.group(3) or after).strip())
    return found


def _every_command(monkeypatch, capsys) -> dict[str, str]:
    """'deploy', 'data put', ... -> its --help text."""
    helps, todo = {}, [[]]
    while todo:
        path = todo.pop()
        text = _help(path, monkeypatch, capsys)
        sub = _commands(text)
        todo += [[*path, name] for name in sub]
        if not sub:
            helps[" ".join(path)] = text
    return helps


def test_short_flags_mean_one_thing_everywhere_and_every_option_has_help(monkeypatch, capsys):
    helps = _every_command(monkeypatch, capsys)
    assert len(helps) == 24
    meaning: dict[str, set[str]] = {}
    for command, text in helps.items():
        options = _options(text)
        assert {"--store", "--json", "--help"} <= set(options), command
        for long, (short, help_text) in options.items():
            assert help_text, f"{command} {long} has no help text"
            if short:
                meaning.setdefault(short, set()).add(long)
    assert meaning == {"-s": {"--source"}, "-d": {"--data"}, "-m": {"--manifest"}, "-h": {"--hyperparams"},
                       "-i": {"--index"}, "-o": {"--output"}, "-f": {"--file"}, "-c": {"--conf"},
                       "-e": {"--endpoint"}, "-u": {"--username"}}
    assert "Usage: trainyard deploy [OPTIONS]" in helps["deploy"]  # -h is --hyperparams; --help still helps
    assert "exit codes:\n    0  success" in helps["deploy"] and "4  credentials refused" in helps["init"]


def test_the_readme_command_table_matches_help(monkeypatch, capsys):
    """Each row of the README's command table: usage, the summary --help gives, and exactly its options."""
    readme = (REPO / "README.md").read_text()
    table = readme.split("| command | what it does | options |", 1)[1].split("\n\n", 1)[0]
    rows = {}
    for line in table.strip().splitlines()[1:]:
        usage, summary, options = (cell.strip().replace("\\|", "|") for cell in line.strip("|").split(" | "))
        words = usage.strip("`").split()
        command = " ".join(w for w in words[1:] if w.islower() and not w.startswith("["))
        rows[command] = (" ".join(words), summary, {o.split()[0] for o in re.findall(r"`([^`]+)`", options)})
    helps = _every_command(monkeypatch, capsys)
    assert sorted(rows) == sorted(helps)
    root = _help([], monkeypatch, capsys)
    for command, text in helps.items():
        usage, summary, options = rows[command]
        parent = _help(command.split()[:-1], monkeypatch, capsys) if " " in command else root
        listed = re.search(rf"^  {command.split()[-1]}\s+(.*)$", parent.split("\nCommands:\n")[1], re.M).group(1)
        assert summary == listed, command
        arguments = text.splitlines()[0].split("[OPTIONS]")[1].replace("{", "").replace("}", "").strip()
        assert usage == " ".join(["trainyard", command, arguments]).strip(), command
        expected = {f"{short}/{long}" if short else long for long, (short, _) in _options(text).items()
                    if long not in ("--store", "--json", "--help")}
        assert options == expected, command


def test_shell_completion_comes_with_the_command():
    # typer guesses the shell from the parent processes (shellingham) unless told not to; a test run started from
    # a script or CI has no interactive shell above it to find, so the shell is named explicitly.
    script = subprocess.run([sys.executable, "-m", "trainyard.cli", "--show-completion", "bash"],
                            env={**os.environ, "_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"},
                            capture_output=True, text=True, timeout=60)
    assert script.returncode == 0 and "_TRAINYARD_COMPLETE=complete_bash" in script.stdout
    env = {"_TRAINYARD_COMPLETE": "complete_bash", "COMP_WORDS": "trainyard data p", "COMP_CWORD": "2",
           "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-m", "trainyard.cli"], env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.stdout.split() == ["put"]
