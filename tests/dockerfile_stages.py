"""The Dockerfile as build stages, read with dockerfile-parse (a real parser: continuation lines,
comments, exec and shell forms), for the tests of the image and of the deploy manifests."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from dockerfile_parse import DockerfileParser

from tests.helpers import REPO

DOCKERFILE = REPO / "Dockerfile"


@dataclass(frozen=True)
class Instruction:
    name: str  # FROM, RUN, COPY, ... (upper case)
    value: str  # the arguments, continuation lines joined
    line: int


@dataclass
class Stage:
    name: str
    base: str  # an image, or the name of an earlier stage
    instructions: list[Instruction]

    def all(self, name: str) -> list[Instruction]:
        return [i for i in self.instructions if i.name == name]


@dataclass
class Dockerfile:
    global_args: dict[str, str]  # ARGs before the first FROM, with their defaults
    stages: dict[str, Stage]  # in file order; the last one is what `docker build` builds

    def lineage(self, name: str) -> list[Stage]:
        """The stage and the stages it is built FROM, oldest first."""
        chain = [self.stages[name]]
        while chain[0].base in self.stages:
            chain.insert(0, self.stages[chain[0].base])
        return chain

    def root_image(self, name: str) -> str:
        """The external image a target starts from, its ARG default substituted."""
        base = self.lineage(name)[0].base
        return re.sub(r"\$\{?(\w+)\}?", lambda m: self.global_args.get(m.group(1), m.group(0)), base)

    def inherited(self, name: str, instruction: str) -> list[Instruction]:
        return [i for stage in self.lineage(name) for i in stage.all(instruction)]

    def env(self, name: str) -> dict[str, str]:
        """ENV as the target's containers see it (later values win; no $VAR expansion)."""
        return self._pairs(name, "ENV")

    def labels(self, name: str) -> dict[str, str]:
        """LABELs the target's image carries, its parents' included (later values win)."""
        return self._pairs(name, "LABEL")

    def _pairs(self, name: str, instruction: str) -> dict[str, str]:
        values: dict[str, str] = {}
        for found in self.inherited(name, instruction):
            for pair in shlex.split(found.value):
                key, _, value = pair.partition("=")
                values[key] = value
        return values

    def pip_installs(self, name: str) -> list[list[str]]:
        """Every `pip install ...` command the target and its parents RUN, as word lists."""
        commands = [c for i in self.inherited(name, "RUN") for c in run_commands(i.value)]
        return [c for c in commands if c[:2] == ["pip", "install"] or c[1:4] == ["-m", "pip", "install"]]


def read_dockerfile(path: Path = DOCKERFILE) -> Dockerfile:
    parsed = DockerfileParser(path=str(path)).structure
    global_args: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for item in parsed:
        name, value = item["instruction"], item["value"]
        if name == "COMMENT":
            continue
        if name == "FROM":
            words = value.split()
            base = words[0]
            stage_name = words[2] if len(words) == 3 and words[1].lower() == "as" else str(len(stages))
            current = stages[stage_name] = Stage(stage_name, base, [])
        elif current is None:
            if name == "ARG":
                key, _, default = value.partition("=")
                global_args[key] = default
        else:
            current.instructions.append(Instruction(name, value, item["startline"] + 1))
    return Dockerfile(global_args, stages)


def exec_form(value: str) -> list[str]:
    """The JSON array of an exec-form instruction; raises ValueError for the shell form."""
    try:
        words = json.loads(value)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not in exec form (a JSON array): {value}") from exc
    if not (isinstance(words, list) and all(isinstance(w, str) for w in words)):
        raise ValueError(f"not in exec form (a JSON array of strings): {value}")
    return words


def split_options(words: list[str]) -> tuple[dict[str, str], list[str]]:
    """['--from=x', 'a', 'b'] -> ({'from': 'x'}, ['a', 'b'])."""
    options, words = {}, list(words)
    while words and words[0].startswith("--"):
        key, _, value = words.pop(0)[2:].partition("=")
        options[key] = value
    return options, words


def run_commands(value: str) -> list[list[str]]:
    """A RUN's shell commands as word lists: 'a x && b y > f' -> [['a', 'x'], ['b', 'y', '>', 'f']]."""
    lexer = shlex.shlex(value, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for word in lexer:
        if word in ("&&", "||", ";", "|"):
            commands.append([])
        else:
            commands[-1].append(word)
    _, first = split_options(commands[0])  # RUN's own flags (--mount=...) come before the command
    return [first, *commands[1:]]
