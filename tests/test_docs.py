"""The commands shown in README.md and docs/*.md still work, and the docs site builds.

Every `python run.py ...` command shown (in a fenced code block or an inline span) is composed by
Hydra in this process, as run.py composes it (nothing is trained, no dataset is read), so a renamed
key, a removed group option or a wrong value type fails here, the test id naming the page and line.
A few are also run as `python run.py ... --cfg job` and must print the same config. Each
`python -m scn.<tool>` shown runs once with `--help` (all in one subprocess), and every `--option`
the docs give it must appear there. `make <target>` must be a Makefile target, and
`wandb sweep <file>` a sweep file whose every value composes. `mkdocs build --strict` builds the
site (no broken links or anchors), and README's links into docs/ must name pages and headings that
exist.

How commands are read, so that docs can be written to be checked:

- One command per line of a fenced code block; a trailing backslash continues it on the next line;
  `#` at the start of a word (outside quotes) starts a comment; a leading `$ ` prompt, environment
  assignments (`CUDA_VISIBLE_DEVICES=0 python run.py ...`) and launchers in front (`srun`,
  `torchrun --nproc_per_node=4 run.py ...`) are skipped. Lines that are not commands (outputs,
  trees, `#SBATCH`) are ignored. Inline code spans that start with `python run.py`, `torchrun` or
  `python -m scn.` are commands too, unless they hold `…` or `...` (a synopsis: `python run.py -m …`).
- Placeholders need no substitution: composing reads no file, so `/datasets/raf-basic`,
  `path/to/weights.pth` and a `ckpt_path` are only strings. `<...>` (`<run dir>`, `<date>_<time>`)
  becomes one word (`<run dir>/best.pt` -> `run_dir/best.pt`), and a shell variable `$NAME` becomes
  `NAME`. Don't write `…` inside a `python run.py` override: Hydra's grammar refuses it (write
  `<run dir>`).
- A `-m` command is composed once with the first value of every sweep, then once per further value
  of each sweep (the others at their first): comma lists, `range(...)`, `choice(...)`, `glob(...)`
  over the group's options; `interval(...)` by its lower end. `'[a,b]'` is one list value, not a
  sweep. Sweeps inside `hparams_search=` files are config and compose as they are.
- Hydra's own flags (`--cfg job`, `--resolve`, `-c`, `--info`, `--help`) are dropped before composing.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, ValueType
from omegaconf import OmegaConf

from scn.config import to_container
from tests.conftest import CONF, ROOT, compose_cfg

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# Hydra's command-line flags: those that take a value, and those that don't
HYDRA_VALUE_FLAGS = {"--cfg", "-c", "--package", "-p", "--experimental-rerun"}
HYDRA_BARE_FLAGS = {"-m", "--multirun", "--resolve", "--help", "-h", "--hydra-help", "--version"}
HYDRA_INFO = {"all", "config", "defaults", "defaults-tree", "plugins", "searchpath"}
LAUNCH_PREFIXES = {"srun", "time", "nohup", "exec"}
SHELL_OPERATORS = {"|", "||", "&&", ";", "&", ">", ">>", "2>", "2>&1", "<"}


@dataclass(frozen=True)
class Command:
    """One command of the docs: where it is, as written, and what it runs."""

    file: str  # relative to the repository root
    line: int  # first line of the command
    text: str  # the logical line, continuations joined, comment removed
    kind: str  # "run" (python run.py / torchrun run.py), "module", "make", "wandb-sweep"
    args: tuple[str, ...]  # run: run.py's arguments; module: the tool's; make / wandb-sweep: [name]
    module: str = ""  # kind == "module": scn.<tool>

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


def fenced_lines(text: str):
    """(line number, line) of every line inside a fenced code block (``` or ~~~, may be indented)."""
    fence = None
    for number, line in enumerate(text.splitlines(), 1):
        m = re.match(r"\s*(`{3,}|~{3,})", line)
        if fence is None:
            if m:
                fence = m.group(1)
        elif m and m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence):
            if not line.strip()[len(m.group(1)) :].strip():
                fence = None
        else:
            yield number, line


def strip_comment(line: str) -> str:
    """The line without its shell comment: `#` at a word's start, outside quotes."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def logical_lines(text: str):
    """(first line number, command) with backslash continuations joined and comments removed."""
    start, parts = None, []
    for number, raw in fenced_lines(text):
        line = strip_comment(raw).rstrip()
        if start is None:
            start = number
        if line.endswith("\\"):
            parts.append(line[:-1])
            continue
        parts.append(line)
        joined = " ".join(p.strip() for p in parts).strip()
        if joined:
            yield start, joined
        start, parts = None, []
    if parts and " ".join(parts).strip():
        yield start, " ".join(p.strip() for p in parts).strip()


def expand_placeholders(text: str) -> str:
    """`<run dir>` -> `run_dir`; `$NAME` / `${NAME}` -> `NAME` (outside single quotes)."""
    text = re.sub(r"<([^<>\n]+)>", lambda m: re.sub(r"\W+", "_", m.group(1)).strip("_"), text)
    out = []
    for chunk in re.split(r"('[^']*')", text):  # single-quoted chunks are kept as written
        if chunk.startswith("'") and chunk.endswith("'") and len(chunk) > 1:
            out.append(chunk)
            continue
        out.append(re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", r"\1", chunk))
    return "".join(out)


def parse_command(file: str, line: int, text: str) -> Command | None:
    """The command a logical line runs, or None when it runs nothing the docs test checks."""
    text = re.sub(r"^\$\s+", "", text)
    try:
        tokens = shlex.split(expand_placeholders(text))
    except ValueError:  # not shell (an unbalanced quote in an output block)
        return None
    for i, tok in enumerate(tokens):
        if tok in SHELL_OPERATORS:
            tokens = tokens[:i]
            break
    i = 0
    while i < len(tokens) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", tokens[i]):
        i += 1  # environment assignments
    tokens = tokens[i:]
    if not tokens:
        return None
    if tokens[0] == "make" and len(tokens) > 1:
        return Command(file, line, text, "make", tuple(tokens[1:2]))
    if tokens[:2] == ["wandb", "sweep"] and len(tokens) > 2:
        return Command(file, line, text, "wandb-sweep", tuple(tokens[-1:]))
    j = 0
    if tokens[0] in LAUNCH_PREFIXES:  # srun [its options] torchrun ..., time python ...
        j = 1
        while j < len(tokens) and tokens[j].startswith("-"):
            j += 1
    exe, rest = Path(tokens[j]).name if j < len(tokens) else "", tokens[j + 1 :]
    if re.fullmatch(r"python(3(\.\d+)?)?", exe) and rest:
        if Path(rest[0]).name == "run.py":
            return Command(file, line, text, "run", tuple(rest[1:]))
        if rest[0] == "-m" and len(rest) > 1 and rest[1].startswith("scn."):
            return Command(file, line, text, "module", tuple(rest[2:]), rest[1])
    if exe == "torchrun":
        at = next((k for k, tok in enumerate(rest) if Path(tok).name == "run.py"), None)
        if at is not None:
            return Command(file, line, text, "run", tuple(rest[at + 1 :]))
    return None


INLINE = re.compile(
    r"(?<!`)`((?:python3? run\.py|python3? -m scn\.|torchrun )(?:[^`\n]|\n(?!\s*\n))*)`"
)


def inline_commands(text: str):
    """(line number, command) of inline code spans outside fenced blocks that start a command;
    a span holding `…` or `...` is a synopsis, not a command, and is left out."""
    fenced = {n for n, _ in fenced_lines(text)}
    fenced |= {n for n, line in enumerate(text.splitlines(), 1) if re.match(r"\s*(```|~~~)", line)}
    masked = "\n".join("" if n in fenced else line for n, line in enumerate(text.splitlines(), 1))
    for m in INLINE.finditer(masked):
        command = " ".join(m.group(1).split())
        if "…" not in command and "..." not in command:
            yield masked.count("\n", 0, m.start()) + 1, command


def collect(text: str, file: str) -> list[Command]:
    lines = sorted([*logical_lines(text), *inline_commands(text)])
    return [c for n, t in lines if (c := parse_command(file, n, t)) is not None]


def doc_commands() -> list[Command]:
    return [c for p in DOCS for c in collect(p.read_text(), str(p.relative_to(ROOT)))]


def split_hydra_flags(args: tuple[str, ...] | list[str]) -> tuple[list[str], bool]:
    """run.py's arguments -> (overrides, multirun); Hydra's flags are dropped."""
    overrides, multirun, i = [], False, 0
    args = list(args)
    while i < len(args):
        arg = args[i]
        flag = arg.split("=", 1)[0]
        if flag in ("-m", "--multirun"):
            multirun = True
        elif flag in HYDRA_VALUE_FLAGS and "=" not in arg:
            i += 1  # skip its value (`--cfg job`)
        elif flag in HYDRA_VALUE_FLAGS:
            pass
        elif flag in ("--info", "-i"):
            if "=" not in arg and i + 1 < len(args) and args[i + 1] in HYDRA_INFO:
                i += 1
        elif flag in HYDRA_BARE_FLAGS:
            pass
        elif arg.startswith("-"):
            raise ValueError(f"{arg!r} is not a flag of run.py (Hydra)")
        else:
            overrides.append(arg)
        i += 1
    return overrides, multirun


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def sweep_values(o: Override) -> list[str]:
    """The values a sweep override runs, as override strings."""
    if o.value_type == ValueType.GLOB_CHOICE_SWEEP:
        return list(o.value().filter(group_options(o.key_or_group)))
    if o.is_discrete_sweep():
        return list(o.sweep_string_iterator())
    return [str(o.value().start)]  # interval(a, b): its lower end


def jobs(args: tuple[str, ...] | list[str]) -> list[list[str]]:
    """The override lists to compose for a command: one, or one per sweep value for `-m`."""
    overrides, multirun = split_hydra_flags(args)
    if not multirun:
        return [overrides]
    parsed = OverridesParser.create().parse_overrides(overrides)
    values = {
        i: sweep_values(o) for i, o in enumerate(parsed) if o.is_sweep_override()
    }  # position -> its values
    for i, vals in values.items():
        if not vals:
            raise ValueError(f"{parsed[i].input_line!r} sweeps over nothing")

    def job(choice: dict[int, str]) -> list[str]:
        return [
            f"{o.get_key_element()}={choice.get(i, values[i][0])}" if i in values else o.input_line
            for i, o in enumerate(parsed)
        ]

    out = [job({})]
    for i, vals in values.items():
        out += [job({i: v}) for v in vals[1:]]
    return out


def compose_job(overrides: list[str], tmp_path: Path):
    """Compose like run.py, then resolve every interpolation of the job's config."""
    cfg = compose_cfg(overrides, tmp_path / "run")
    to_container(cfg)
    return cfg


@functools.cache
def compose_error(overrides: tuple[str, ...]) -> str | None:
    """Why these overrides don't compose, or None (pages repeat commands: each list once)."""
    try:
        compose_job(list(overrides), Path(tempfile.gettempdir()))
    except Exception as e:  # noqa: BLE001  (any failure is the doc's; the message says which)
        return f"{type(e).__name__}: {e}"
    return None


COMMANDS = doc_commands()
RUN = [c for c in COMMANDS if c.kind == "run"]
MODULES = sorted({c.module for c in COMMANDS if c.kind == "module"})
MAKE = [c for c in COMMANDS if c.kind == "make"]
WANDB_SWEEPS = [c for c in COMMANDS if c.kind == "wandb-sweep"]


# -- the reader itself, on text whose commands are known ------------------------------------------

SAMPLE = r"""
Prose with `python run.py inline=1` and `python run.py -m …` (a synopsis) and `python -m pytest`,
a span over two lines `python run.py
two=2` and `python -m scn.bench [--out OUT]`.

```bash
$ python run.py a=1 'b=[x,y]'   # a comment with python run.py c=2
CUDA_VISIBLE_DEVICES=0 python run.py \
    d=3 \
    e=4    # trailing
torchrun --nnodes=2 --rdzv_endpoint=$HEAD:29500 run.py hydra.run.dir=out/$SLURM_JOB_ID
python run.py -m x=1,2,3 y=p,q z='[1,2]' experiment='glob(demo)' --cfg job
python run.py task=eval ckpt_path=<run dir>/best.pt
python -m scn.report multirun/<date>_<time> --out rep
make demo   # a target
#SBATCH --nodes=2
run.py           the entry point (python run.py in a layout tree is no command)
```

```
test/acc 0.7 at epoch 1
```
"""


def test_reader_finds_exactly_the_commands_of_the_docs():
    got = [(c.line, c.kind, c.args, c.module) for c in collect(SAMPLE, "x.md")]
    assert got == [
        (2, "run", ("inline=1",), ""),
        (3, "run", ("two=2",), ""),
        (4, "module", ("[--out", "OUT]"), "scn.bench"),
        (7, "run", ("a=1", "b=[x,y]"), ""),
        (8, "run", ("d=3", "e=4"), ""),
        (11, "run", ("hydra.run.dir=out/SLURM_JOB_ID",), ""),
        (
            12,
            "run",
            ("-m", "x=1,2,3", "y=p,q", "z=[1,2]", "experiment=glob(demo)", "--cfg", "job"),
            "",
        ),
        (13, "run", ("task=eval", "ckpt_path=run_dir/best.pt"), ""),
        (14, "module", ("multirun/date_time", "--out", "rep"), "scn.report"),
        (15, "make", ("demo",), ""),
    ]


def test_a_multirun_composes_each_value_of_each_sweep_once():
    args = ("-m", "x=1,2,3", "y=p,q", "z=[1,2]", "experiment=glob(demo*)", "--cfg", "job")
    assert jobs(args) == [
        ["x=1", "y=p", "z=[1,2]", "experiment=demo"],
        ["x=2", "y=p", "z=[1,2]", "experiment=demo"],
        ["x=3", "y=p", "z=[1,2]", "experiment=demo"],
        ["x=1", "y=q", "z=[1,2]", "experiment=demo"],
    ]
    assert jobs(("-m", "trainer.seed=range(0,3)")) == [
        ["trainer.seed=0"],
        ["trainer.seed=1"],
        ["trainer.seed=2"],
    ]
    assert jobs(("a=1", "--resolve", "-c", "job")) == [["a=1"]]


def test_the_docs_hold_the_headline_commands():
    """Guards the reader: if it stopped finding commands, every check below would pass vacuously."""
    readme = {c.args for c in RUN if c.file == "README.md"}
    assert ("backbone=iresnet18", "scn.margin_1=0.07") in readme
    assert ("-m", "scn.margin_1=0.05,0.07,0.15") in readme
    assert len(RUN) >= 50, f"only {len(RUN)} python run.py commands found in the docs"
    assert any(c.text.startswith("torchrun") for c in RUN)
    assert {"scn.report", "scn.predict", "scn.features", "scn.inspect"} <= set(MODULES)


# -- every python run.py command composes ----------------------------------------------------------


@pytest.mark.parametrize("cmd", RUN, ids=[c.where for c in RUN])
def test_doc_command_composes(cmd: Command):
    try:
        variants = jobs(cmd.args)
    except Exception as e:  # noqa: BLE001  (any parse error is the doc's fault; say where)
        pytest.fail(f"{cmd.where}: `{cmd.text}`: {type(e).__name__}: {e}", pytrace=False)
    for overrides in variants:
        if error := compose_error(tuple(overrides)):
            pytest.fail(
                f"{cmd.where}: `{cmd.text}` does not compose (overrides {overrides}):\n{error}",
                pytrace=False,
            )


def run_cfg_job(overrides: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "run.py", *overrides, "--cfg", "job"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _cross_checked() -> list[Command]:
    """A handful of commands of different shapes: the first of README, of torchrun, of a sweep
    with a list value, of an experiment."""
    shapes = [
        lambda c: c.file == "README.md",
        lambda c: c.text.startswith("torchrun"),
        lambda c: "-m" in c.args,
        lambda c: any("=[" in a for a in c.args),
        lambda c: any(a.startswith("experiment=") for a in c.args),
    ]
    picks = [next((c for c in RUN if shape(c)), None) for shape in shapes]
    return list(dict.fromkeys(c for c in picks if c is not None))


@pytest.mark.parametrize("cmd", _cross_checked(), ids=lambda c: c.where)
def test_run_py_prints_the_config_composed_here(cmd: Command, tmp_path):
    """In-process composition is what run.py composes: `--cfg job` prints the same config."""
    overrides = jobs(cmd.args)[-1]
    proc = run_cfg_job(overrides)
    assert proc.returncode == 0, f"{cmd.where}: `{cmd.text}`:\n{proc.stderr}"
    here = compose_job(overrides, tmp_path)
    job = OmegaConf.masked_copy(here, [k for k in here if k != "hydra"])
    assert yaml.safe_load(proc.stdout) == yaml.safe_load(OmegaConf.to_yaml(job)), cmd.where


def test_a_renamed_key_in_a_doc_command_fails_here_and_in_run_py(tmp_path):
    """What the docs test exists for: a doc still using a key's old name fails."""
    cmd = next(c for c in RUN if c.file == "README.md" and "scn.margin_1=0.07" in c.args)
    renamed = collect(f"```\n{cmd.text.replace('scn.margin_1=', 'scn.margin_one=')}\n```", "x.md")
    (overrides,) = jobs(renamed[0].args)
    assert "scn.margin_one=0.07" in overrides
    compose_job(jobs(cmd.args)[0], tmp_path)  # the real one composes...
    with pytest.raises(Exception, match="margin_one"):
        compose_job(overrides, tmp_path)  # ...the renamed one does not
    proc = run_cfg_job(overrides)
    assert proc.returncode == 2 and "margin_one" in proc.stderr, proc.stderr


# -- python -m scn.<tool>, make, wandb sweep -------------------------------------------------------


# Runs each tool as `python -m <tool> --help` would (runpy, argv, __main__), in one interpreter so
# that torch and timm load once instead of once per tool.
HELP_DRIVER = """
import contextlib, io, json, runpy, sys, traceback
out = {}
for module in sys.argv[1:]:
    buf, code = io.StringIO(), 0
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        sys.argv = [module, "--help"]
        try:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:
            traceback.print_exc()
            code = 1
    out[module] = {"rc": code, "help": buf.getvalue()}
print(json.dumps(out))
"""


@pytest.fixture(scope="module", autouse=True)
def tool_helps_running():
    """Starts the tools' --help at the module's start, so torch loads while configs compose."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HELP_DRIVER, *MODULES],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    yield proc
    if proc.poll() is None:  # its tests were deselected
        proc.kill()
    proc.communicate()


@pytest.fixture(scope="module")
def tool_helps(tool_helps_running) -> dict[str, dict]:
    out, err = tool_helps_running.communicate(timeout=300)
    assert tool_helps_running.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.parametrize("module", MODULES)
def test_doc_tool_has_the_options_the_docs_give(module, tool_helps):
    uses = [c for c in COMMANDS if c.module == module]
    result = tool_helps[module]
    out = result["help"]
    shown = "\n".join(f"  {c.where}: {c.text}" for c in uses)
    assert result["rc"] == 0, f"python -m {module} --help failed; the docs show\n{shown}\n{out}"
    for c in uses:
        args = [a.strip("[]") for a in c.args]  # a synopsis: [--out OUT]
        for opt in (a.split("=", 1)[0] for a in args if re.match(r"--?[A-Za-z]", a)):
            assert re.search(rf"(?<![\w-]){re.escape(opt)}(?![\w-])", out), (
                f"{c.where}: `{c.text}` gives {opt}, which `python -m {module} --help` does not list"
            )


def test_make_targets_in_the_docs_exist():
    targets = set(re.findall(r"^([A-Za-z][\w.-]*):", (ROOT / "Makefile").read_text(), re.M))
    missing = [f"{c.where}: make {c.args[0]}" for c in MAKE if c.args[0] not in targets]
    assert MAKE and not missing, missing


@pytest.mark.parametrize("cmd", WANDB_SWEEPS, ids=[c.where for c in WANDB_SWEEPS])
def test_wandb_sweep_file_values_compose(cmd: Command):
    path = ROOT / cmd.args[0]
    assert path.is_file(), f"{cmd.where}: {cmd.args[0]} does not exist"
    sweep = yaml.safe_load(path.read_text())
    assert sweep["program"] == "run.py", cmd.where
    for key, spec in sweep["parameters"].items():
        for value in spec.get("values", [spec.get("value")]):
            error = compose_error((f"{key}={value}",))
            assert error is None, f"{cmd.args[0]}: {key}={value} does not compose: {error}"


# -- the site and README's links into it ------------------------------------------------------------


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("material") is None:
        pytest.skip("mkdocs / mkdocs-material not installed (pip install -e '.[dev]')")
    out = tmp_path_factory.mktemp("site")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    return out


def test_mkdocs_build_strict(site):
    pages = sorted(p.stem for p in (ROOT / "docs").glob("*.md"))
    built = [p for p in pages if (site / ("" if p == "index" else p) / "index.html").is_file()]
    assert built == pages


def test_readme_links_into_docs_exist(site):
    links = re.findall(r"\]\((docs/[^)#\s]*)(?:#([^)\s]*))?\)", (ROOT / "README.md").read_text())
    assert links
    bad = []
    for target, anchor in links:
        page = ROOT / target
        if not page.exists():
            bad.append(f"{target}: no such file")
            continue
        if anchor:
            stem = page.stem
            html = (site / ("" if stem == "index" else stem) / "index.html").read_text()
            if f'id="{anchor}"' not in html:
                bad.append(f"{target}#{anchor}: no such heading")
    assert not bad, "README.md links:\n" + "\n".join(bad)


def teardown_module():
    GlobalHydra.instance().clear()
