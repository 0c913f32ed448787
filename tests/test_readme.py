"""
The README's promises that a reader acts on: its links and anchors resolve, its Python snippets
run, and every command names a tool, flags and files that exist.
"""

import os
import re
import shlex
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(REPO, "README.md")
DOCS_DIR = os.path.join(REPO, "docs")
DOCS = sorted(os.path.join(DOCS_DIR, f) for f in os.listdir(DOCS_DIR) if f.endswith(".md"))


def _read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def _anchors(markdown):
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    out = set()
    for heading in re.findall(r"^#+\s+(.*)$", markdown, flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        out.add(slug)
    return out


def _links(path):
    text = re.sub(r"```.*?```", "", _read(path), flags=re.S)  # not inside code blocks
    return re.findall(r"\]\(([^)\s]+)\)", text)


@pytest.mark.parametrize("path", [README, *DOCS], ids=lambda p: os.path.relpath(p, REPO))
def test_every_relative_link_and_anchor_resolves(path):
    broken = []
    for link in _links(path):
        if re.match(r"[a-z]+://", link) or link.startswith("mailto:"):
            continue
        target, _, anchor = link.partition("#")
        target_path = path
        if target:
            target_path = os.path.normpath(os.path.join(os.path.dirname(path), target))
        if not os.path.exists(target_path):
            broken.append(f"{link}: no file {os.path.relpath(target_path, REPO)}")
        elif anchor and target_path.endswith(".md") and anchor not in _anchors(_read(target_path)):
            broken.append(f"{link}: no heading #{anchor}")
    assert not broken, f"{os.path.relpath(path, REPO)}: " + "; ".join(broken)


def test_the_anchor_rule_matches_github():
    # a wrong slug rule would let every anchor check pass or fail together
    assert _anchors("## Compiled: torch.compile\n# Rules against native autograd\n") == {
        "compiled-torchcompile",
        "rules-against-native-autograd",
    }


def _blocks(language):
    return re.findall(rf"```{language}\n(.*?)```", _read(README), flags=re.S)


def test_the_readme_is_short():
    assert len(_read(README).splitlines()) <= 250


@pytest.mark.slow
@pytest.mark.parametrize("index", range(3))
def test_python_snippets_run(index):
    blocks = _blocks("python")
    assert len(blocks) == 3, "the README's three ways in (yacs, LazyConfig, PyTorch)"
    result = subprocess.run(
        [sys.executable, "-c", blocks[index] + "\nprint('snippet ran')"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0 and "snippet ran" in result.stdout, result.stderr[-3000:]


def _commands():
    """The README's shell commands that run a tool, with $CFG and $OUT substituted."""
    text = "\n".join(_blocks("bash"))
    text = text.replace("\\\n", " ")
    variables = dict(re.findall(r"^(\w+)=(\S+)", text, flags=re.M))
    commands = []
    for line in text.splitlines():
        line = line.split("  #")[0].strip()
        if not line.startswith("python tools/"):
            continue
        for name, value in variables.items():
            line = line.replace(f"${name}", value)
        commands.append(shlex.split(line))
    return variables, commands


def test_the_commands_name_existing_tools_and_config_files():
    variables, commands = _commands()
    assert len(commands) >= 10
    for words in commands:
        assert os.path.exists(os.path.join(REPO, words[1])), words
        for flag, value in zip(words, words[1:]):
            if flag == "--config-file":
                assert os.path.exists(os.path.join(REPO, value)), (words, value)
    out = variables["OUT"]
    cfg = _read(os.path.join(REPO, variables["CFG"]))
    inherited = _read(os.path.join(REPO, os.path.dirname(variables["CFG"]), "Base-Shapes.yaml"))
    assert f'OUTPUT_DIR: "{out}"' in cfg + inherited, "OUT must be CFG's output folder"


@pytest.mark.slow
def test_the_commands_flags_are_the_tools_flags():
    _, commands = _commands()
    helps = {}
    for words in commands:
        tool = words[1]
        if tool not in helps:
            result = subprocess.run(
                [sys.executable, tool, "--help"], cwd=REPO, capture_output=True, text=True
            )
            assert result.returncode == 0, (tool, result.stderr[-2000:])
            helps[tool] = result.stdout
        for word in words[2:]:
            if word.startswith("--"):
                assert re.search(rf"(^|\s|,){re.escape(word)}\b", helps[tool]), (tool, word)


# --- references in comments, docstrings and documents -------------------------------------------

# Where references to a document, a section or a file are written.
SCANNED = (
    "bio_detectron",
    "tools",
    "configs",
    "docs",
    "tests",
    "README.md",
    "CHANGELOG.md",
    "Makefile",
    "setup.py",
)
# A document's section, quoted after it: README, "Heading" / docs/usage.md, 'Heading'.
SECTION = re.compile(r"\b(README|docs/[\w-]+\.md)[,:]?\s+(?:section\s+)?[\"']([^\"'\n]+)[\"']")
# A document's anchor: docs/usage.md#installing-as-a-library.
ANCHOR = re.compile(r"\b(README\.md|docs/[\w-]+\.md)#([\w-]+)")
# A file of the repository: bio_detectron/..., tools/..., configs/..., docs/..., tests/...; not
# one of detectron2's own ("detectron2's configs/common/train.py").
PATH = re.compile(
    r"(?<![\w/.-])(?<!detectron2's )(?<!detectron2's ``)"
    r"((?:bio_detectron|tools|configs|docs|tests)/[\w/.-]*\w\.(?:py|yaml|md|sh|png))"
)


def _scanned_files():
    for entry in SCANNED:
        path = os.path.join(REPO, entry)
        if os.path.isfile(path):
            yield path
            continue
        for folder, dirs, files in os.walk(path):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            for f in sorted(files):
                if f.endswith((".py", ".yaml", ".md", ".sh")):
                    yield os.path.join(folder, f)


def _headings(markdown):
    return {h.strip() for h in re.findall(r"^#+\s+(.*)$", markdown, flags=re.M)}


def _broken_references(text):
    """The references in ``text`` that do not resolve, as messages."""
    broken = []
    for doc, section in SECTION.findall(text):
        target = README if doc == "README" else os.path.join(REPO, doc)
        if not os.path.exists(target):
            broken.append(f"{doc}: no such file")
        elif section not in _headings(_read(target)):
            broken.append(f'{doc}, "{section}": no such heading')
    for doc, anchor in ANCHOR.findall(text):
        target = os.path.join(REPO, doc)
        if not os.path.exists(target):
            broken.append(f"{doc}: no such file")
        elif anchor not in _anchors(_read(target)):
            broken.append(f"{doc}#{anchor}: no such heading")
    for path in PATH.findall(text):
        if not os.path.exists(os.path.join(REPO, path)):
            broken.append(f"{path}: no such file")
    return sorted(set(broken))


def test_every_reference_to_a_document_section_or_file_resolves():
    broken = []
    for path in _scanned_files():
        if path == os.path.abspath(__file__):
            continue  # its examples below
        broken += [f"{os.path.relpath(path, REPO)}: {b}" for b in _broken_references(_read(path))]
    assert not broken, "\n".join(broken)


def test_the_reference_forms_are_recognised():
    # A form the scan stopped recognising would let every reference pass unchecked.
    text = (
        "see README, \"Set-up: two commands\"; docs/usage.md, 'LazyConfig'; "
        "docs/usage.md#installing-as-a-library; tools/demo.py; bio_detectron/core/rules.py"
    )
    assert _broken_references(text) == []
    wrong = (
        'README, "Speed"; docs/usage.md, "Scale"; docs/usage.md#speed; docs/DATASETS.md#x; '
        "tools/no_such_tool.py; bio_detectron/rules.py"
    )
    assert _broken_references(wrong) == sorted(
        [
            'README, "Speed": no such heading',
            'docs/usage.md, "Scale": no such heading',
            "docs/usage.md#speed: no such heading",
            "docs/DATASETS.md: no such file",
            "tools/no_such_tool.py: no such file",
            "bio_detectron/rules.py: no such file",
        ]
    )
    # detectron2's own files are not ours to resolve
    assert _broken_references("detectron2's configs/common/train.py") == []
