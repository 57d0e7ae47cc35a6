"""The README and docs/ say what the code does and what was measured: the install and first commands work as written
(the CPU path installs torch and torchvision together from PyTorch's CPU index; the first nnUNetv2_train command has
the export line nnU-Net needs next to it), every command's options exist, the settings, presets and trainers tables
match the code, the results table is the generated one, and every relative link and image resolves to a file in
the repository."""

from __future__ import annotations

import contextlib
import io
import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [ROOT / "README.md", *DOCS]
CPU_INDEX = "--index-url https://download.pytorch.org/whl/cpu"
TEST_COMMAND = 'pip install -e ".[test]" && python -m pytest -q'
TRAININGS_MD = ROOT / "benchmarks/results/accuracy/trainings_fold0/trainings.md"
MAX_README_LINES = 260  # one sitting: the full tables live in docs/


def commands(text: str) -> list[str]:
    """The indented command lines of a markdown text, in order."""
    return [line.strip() for line in text.splitlines() if line.startswith("    ") and line.strip()]


def joined_commands(text: str) -> list[str]:
    """The indented commands with their backslash continuations joined, comments after `#` dropped."""
    out: list[str] = []
    pending = ""
    for line in commands(text):
        pending += line
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        out.append(re.sub(r"\s+#\s.*$", "", pending))
        pending = ""
    return out


def section(title: str, text: str = README) -> str:
    return text.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def prose(text: str) -> str:
    """The text outside fenced code blocks."""
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def table_rows(text: str, header_start: str) -> list[str]:
    """The body rows of the first markdown table whose header line starts with ``header_start``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append(line)
    return rows


def cells(row: str) -> list[str]:
    return [c.strip() for c in row.strip().strip("|").split("|")]


# --- install and first commands (what .ci/run executes) ---------------------------------------------------------

def test_the_first_train_command_has_the_export_line_before_it():
    first_screen = README.split("## Quick start", 1)[0]
    lines = commands(first_screen)
    train = next(i for i, line in enumerate(lines) if line.startswith("nnUNetv2_train"))
    assert "export nnUNet_extTrainer=$(nnunet-csse trainers-path)" in lines[:train]


def test_every_cpu_torch_install_takes_torchvision_from_the_same_index():
    installs = [line for line in commands(README) if CPU_INDEX in line]
    assert installs, "no CPU install command"
    for line in installs:
        assert re.fullmatch(rf"pip install torch(==\S+)? torchvision(==\S+)? {re.escape(CPU_INDEX)}", line), line
    for title in ("Quick start", "Install"):
        lines = commands(section(title))
        cpu = next(i for i, line in enumerate(lines) if CPU_INDEX in line)
        assert any(line.startswith("pip install .") for line in lines[cpu + 1:]), title  # the package after torch


def test_the_install_size_is_stated_with_how_it_was_measured():
    install = section("Install")
    assert "1.9 GB" in install and "6.4 GB" in install and "was not measured here" in install


def test_the_test_command_is_the_one_ci_runs():
    assert commands(section("Tests"))[0] == TEST_COMMAND
    ci = (ROOT / ".ci/run").read_text()
    install, test = TEST_COMMAND.split(" && ")
    assert install in ci, ".ci/run no longer installs as the README says"
    assert re.search(r"^python3? -m pytest -q\b", ci, flags=re.M), ".ci/run no longer runs the README's test command"
    assert "ruff check ." in ci and "ruff check ." in section("Tests")  # the README names CI's lint step


def test_the_readme_stays_short():
    assert len(README.splitlines()) <= MAX_README_LINES, "move detail to docs/ (results.md, performance.md, ...)"


# --- commands and variables the pages document exist --------------------------------------------------------------

def _help(entry: Callable[[list[str]], object], argv: list[str]) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        entry([*argv, "--help"])
    return out.getvalue()


def _documented(prefix: str) -> list[str]:
    """Every command line starting with ``prefix`` in the pages: indented blocks and inline code spans."""
    found = []
    for page in PAGES:
        text = page.read_text()
        found += [c for c in joined_commands(text) if c.startswith(prefix + " ")]
        found += [c for c in re.findall(r"`([^`]+)`", prose(text)) if c.startswith(prefix + " ")]
    return found


def _options(line: str) -> list[str]:
    tokens = re.sub(r"[\[\]|]", " ", line).split()
    return [t.split("=", 1)[0] for t in tokens if re.fullmatch(r"--?[A-Za-z][\w-]*(=.*)?", t)]


def _check_options(lines: list[str], words: int, entry: Callable[[list[str]], object],
                   subcommands: Callable[[list[str]], list[str]]) -> None:
    helps: dict[tuple[str, ...], str] = {}
    for line in lines:
        rest = line.split()[words:]
        argv = subcommands(rest)
        key = tuple(argv)
        if key not in helps:
            helps[key] = _help(entry, argv)
        for option in _options(" ".join(rest)):
            assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", helps[key]), \
                f"{option} of '{line}' is not an option of that command"


def test_every_nnunet_csse_command_and_option_in_the_docs_exists():
    from nnunet_csse.tools import cli

    names = set(re.findall(r"^    (\S+)", _help(cli.main, []), flags=re.M)) | {"trainers-path"}

    def subcommands(rest: list[str]) -> list[str]:
        assert rest and rest[0] in names, f"nnunet-csse {rest[:1]} is not a command"
        return rest[:2] if rest[0] == "plans" and len(rest) > 1 and not rest[1].startswith("-") else rest[:1]

    lines = _documented("nnunet-csse")
    assert len(lines) > 10
    _check_options(lines, 1, cli.main, subcommands)


def test_every_benchmarks_command_and_option_in_the_docs_exists():
    from benchmarks.__main__ import main

    def subcommands(rest: list[str]) -> list[str]:
        return rest[:1] if rest and rest[0] in ("accuracy", "trainings", "profile", "summary", "authors-quirks") \
            else []

    lines = _documented("python -m benchmarks")
    assert lines
    _check_options(lines, 3, main, subcommands)


def test_every_environment_variable_in_the_docs_is_read_somewhere():
    """nnU-Net's variables by nnunetv2, ours by the package or the benchmark scripts."""
    import nnunetv2

    sources = [*ROOT.glob("nnunet_csse/**/*.py"), *ROOT.glob("benchmarks/*.py"), *ROOT.glob("benchmarks/*.sh"),
               *Path(nnunetv2.__file__).parent.glob("**/*.py")]
    code = "\n".join(p.read_text(errors="replace") for p in sources)
    documented = set()
    for page in PAGES:
        documented |= set(re.findall(r"\b(nnUNet_[a-zA-Z]\w*|GPU_CHECK_[A-Z_]+)\b", page.read_text()))
    assert "nnUNet_extTrainer" in documented
    for name in sorted(documented):
        assert re.search(rf"\b{name}\b", code), f"{name} is documented but read nowhere"


# --- the tables match the code -------------------------------------------------------------------------------------

def test_the_settings_table_lists_every_setting_with_the_csse_trainers_default():
    from nnunet_csse.config import PLANS_KEYS
    from nnunet_csse.training import nnUNetTrainerCSSE

    defaults = nnUNetTrainerCSSE.csse_defaults.to_json()
    fields = set(PLANS_KEYS)
    seen = set()
    for row in table_rows(README, "| key | default (CSSE) |"):
        key_cell, default_cell = cells(row)[:2]
        keys = re.findall(r"`(\w+)`", key_cell)
        separator = " / " if " / " in key_cell else ", "
        values = default_cell.split(separator) if len(keys) > 1 else [default_cell]
        assert len(values) == len(keys), row
        for key, value in zip(keys, values):
            assert key in fields, f"{key} is not a CSSEConfig setting"
            expected = defaults[key]
            assert json.loads(value) == expected, f"{key}: README says {value}, nnUNetTrainerCSSE has {expected!r}"
            seen.add(key)
    assert seen == fields, f"settings missing from the README table: {sorted(fields - seen)}"


def test_the_presets_table_lists_the_shipped_presets():
    from nnunet_csse.presets import list_presets

    listed = [re.findall(r"`(\w+)`", cells(row)[0])[0] for row in table_rows(README, "| preset |")]
    assert sorted(listed) == list_presets()


def test_every_trainer_named_in_the_readme_exists():
    from nnunetv2.training.nnUNetTrainer.variants.training_length import nnUNetTrainer_Xepochs

    import nnunet_csse.ext_trainers.nnunet_csse_trainers as ours

    names = set(re.findall(r"`(nnUNetTrainer\w*)`", README))
    assert "nnUNetTrainerCSSE" in names
    for name in sorted(names):
        assert hasattr(ours, name) or name == "nnUNetTrainer" or hasattr(nnUNetTrainer_Xepochs, name), name
    five = next(row for row in table_rows(README, "| trainer |") if row.startswith("| `..._5epochs`"))
    for short in re.search(r"style; ([\w, ]+)\)", five).group(1).split(", "):
        assert hasattr(ours, f"nnUNetTrainer{short}_5epochs"), short


# --- the results are the generated ones, and the top box quotes them ----------------------------------------------

TRAININGS_HEADER = "| budget | fraction | trainer | trainings |"


def test_the_results_table_is_the_generated_trainings_table():
    generated = table_rows(TRAININGS_MD.read_text(), TRAININGS_HEADER)
    assert table_rows(README, TRAININGS_HEADER) == generated
    results = (ROOT / "docs/results.md").read_text()
    assert table_rows(results, TRAININGS_HEADER) == generated
    per_training = "| budget | fraction | trainer | foreground Dice per training |"
    assert table_rows(results, per_training) == table_rows(TRAININGS_MD.read_text(), per_training)


def test_the_top_box_quotes_the_results_table():
    box = "\n".join(line for line in README.split("## Quick start", 1)[0].splitlines() if line.startswith(">"))
    box = box.replace("−", "-").replace("\n> ", " ")
    csse = next(cells(r) for r in table_rows(README, TRAININGS_HEADER) if cells(r)[2] == "CSSE")
    mean, low, high = (float(v) for v in re.findall(r"[-+]\d\.\d+", csse[6]))
    assert f"{mean:+.3f} [{low:+.3f}, {high:+.3f}]" in box
    assert "no measurable gain" in box


# --- links, images and paths resolve inside the repository --------------------------------------------------------

def _slug(heading: str) -> str:
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    return {_slug(h) for h in re.findall(r"^#{1,6} (.+)$", prose(page.read_text()), flags=re.M)}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_and_image_resolves_to_a_file_in_the_repository(page: Path):
    links = re.findall(r"!?\[[^\]]*\]\(([^)\s]+)\)", prose(page.read_text()))
    for link in links:
        if re.match(r"[a-z]+:", link):
            continue  # http(s), mailto
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        assert target.is_relative_to(ROOT), f"{link} points outside the repository"
        assert target.exists(), f"{link} in {page.name} does not exist"
        if anchor:
            assert target.suffix == ".md" and anchor in _anchors(target), f"{link}: no heading '{anchor}'"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_repository_path_named_in_code_spans_exists(page: Path):
    spans = re.findall(r"`([^`\s]+)`", prose(page.read_text()))
    for span in spans:
        if re.match(r"(benchmarks|docs|nnunet_csse|tests|trainers|plans|\.ci)/", span) and \
                not re.search(r"[<>*]|\.\.\.", span):
            assert (ROOT / span).exists(), f"{span} (in {page.name}) is not in the repository"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_page_points_outside_the_repository(page: Path):
    """Every relative path a page names (``../x``, in prose or code) stays inside the repository, and no page names
    an absolute path of the machine it was written on."""
    text = page.read_text()
    for path in re.findall(r"(?<![\w.])((?:\.\./)+[\w.\-/]+)", text):
        assert (page.parent / path).resolve().is_relative_to(ROOT), f"{page.name} names {path}, outside the repository"
    home = Path.home().as_posix()
    assert not re.search(rf"(?<![\w.]){re.escape(home)}/", text), f"{page.name} names a path under {home}"
