"""The README and the manual (docs/) tell the truth: every `deeplense ...` command they show
exists with the flags they give it, their links resolve, the plugin example registers a
working architecture, and the site builds with `mkdocs build --strict` (broken links, anchors
and API references fail it)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import click
import pytest

from deeplense_cli.cli import cli

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

FENCE = re.compile(r"^```[a-z]*\n(.*?)^```", re.S | re.M)
SPAN = re.compile(r"`(deeplense [^`]+)`")
LINK = re.compile(r"\]\(([^)\s]+)\)")
ENDS = {"|", "||", "&&", ";", ">", "2>", ">>", "<"}


def _commands(text: str) -> list[str]:
    """Every `deeplense ...` invocation in fenced blocks and inline code spans, with
    continuation lines joined and comments cut."""
    found: list[str] = []
    for block in FENCE.findall(text):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s#.*$", "", line.removeprefix("$ "))
            for part in re.split(r"&&|\|\||;", line):
                match = re.search(r"(?:^|\s|/)deeplense(\s.*)?$", part.strip())
                if match and "import" not in part:
                    found.append("deeplense" + (match.group(1) or ""))
    found += SPAN.findall(text)
    return found


def _check(invocation: str) -> str | None:
    """None when the command path and every flag exist, else what is wrong."""
    tokens = [t.strip("[]'\",") for t in invocation.split()[1:]]
    command: click.Command = cli
    ctx = click.Context(cli, info_name="deeplense")
    path = ["deeplense"]
    for token in tokens:
        if token in ENDS:
            break
        if isinstance(command, click.Group) and not token.startswith("-") and token != "...":
            sub = command.get_command(ctx, token)
            if sub is None:
                return f"{' '.join(path)} has no command {token!r}"
            command, path = sub, [*path, token]
            ctx = click.Context(sub, parent=ctx, info_name=token)
            continue
        if token.startswith("-") and not re.fullmatch(r"-\d.*", token):
            flag = token.split("=", 1)[0]
            known = {opt for p in command.params for opt in (*p.opts, *p.secondary_opts)}
            known |= {"--help", "-h"}
            if flag not in known:
                return f"{' '.join(path)} has no option {flag}"
    return None


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_command_a_page_shows_exists_with_its_flags(page: Path) -> None:
    invocations = _commands(page.read_text())
    problems = [f"{inv!r}: {why}" for inv in invocations if (why := _check(inv))]
    assert not problems, "\n".join(problems)


def test_the_command_check_catches_what_does_not_exist() -> None:
    assert _check("deeplense train --model cvt --max-minutes 5") is None
    assert _check("deeplense data simulate Model_III --seed 1") is None
    assert "no command 'simulat'" in str(_check("deeplense data simulat Model_III"))
    assert "no option --max-mins" in str(_check("deeplense train --max-mins 5"))
    assert _commands("```\ndeeplense train -m cvt \\\n    --epochs 3  # three\n```\n") == [
        "deeplense train -m cvt      --epochs 3"
    ]


def _slug(heading: str) -> str:
    """The anchor of a heading, as the site (mkdocs.yml's toc slugify) and GitHub make it."""
    from pymdownx.slugs import slugify

    return str(slugify(case="lower")(heading.replace("`", "").strip(), "-"))


def _anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text())
    return {_slug(m) for m in re.findall(r"^#{1,6} (.+)$", text, re.M)}


@pytest.mark.parametrize("page", [REPO / "README.md", REPO / "BENCHMARKS.md"], ids=lambda p: p.name)
def test_links_on_the_pages_outside_the_site_resolve(page: Path) -> None:
    # docs/ is checked by `mkdocs build --strict`; these two are read on GitHub
    problems = []
    for target in LINK.findall(FENCE.sub("", page.read_text())):
        if re.match(r"[a-z]+://|mailto:", target):
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            problems.append(f"{target}: no file {file}")
        elif anchor and file.suffix == ".md" and anchor not in _anchors(file):
            problems.append(f"{target}: no heading with anchor #{anchor} in {file.name}")
    assert not problems, "\n".join(problems)


def test_the_readme_is_a_front_page() -> None:
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= 200
    first_screen = "\n".join(lines[:45])
    assert "bash examples/quickstart.sh" in first_screen
    assert ".venv/bin/pytest --slow" in first_screen
    # the test command is the one CI runs
    ci = (REPO / ".ci" / "run").read_text()
    test_command = next(line for line in lines if line.startswith("bash .ci/slurm.sh install"))
    assert test_command.split("&& python3 -m venv", 1)[1] in ci


def test_the_readme_plugin_example_registers_an_architecture_that_passes_the_contract() -> None:
    from deeplense_cli import Architecture, check_architecture

    text = (REPO / "README.md").read_text()
    code = next(b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "hookimpl" in b)
    namespace: dict[str, object] = {}
    exec(compile(code, "README.md", "exec"), namespace)
    registered: list[Architecture] = []
    namespace["register_architectures"](registered.append)  # type: ignore[operator]
    assert [a.name for a in registered] == ["TinyCNN"]
    check_architecture(registered[0])


def test_the_manual_builds_strict(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env={"NO_MKDOCS_2_WARNING": "1", "PATH": str(Path(sys.executable).parent)},
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    site = tmp_path / "site"
    # the generated references are there: every command's flags, the API's functions
    cli_page = (site / "cli-reference" / "index.html").read_text()
    for flag in ("--max-minutes", "--reject-ood", "--nproc-per-node", "--task"):
        assert flag in cli_page
    assert "load_model" in (site / "api-reference" / "index.html").read_text()
    assert (site / "benchmarks" / "index.html").is_file()
    assert (site / "plugin-guide" / "index.html").is_file()
