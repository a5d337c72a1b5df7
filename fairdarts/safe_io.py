"""Reading user files with size limits, and outputs that may never replace an input.

* :func:`read_bytes_limited` reads at most ``limit`` bytes of a *regular* file: ``/dev/zero``
  or a multi-gigabyte file given as ``--config`` fails with one line instead of filling memory.
* :func:`load_yaml` is ``yaml.safe_load`` with a cap on alias uses (a "billion laughs" file,
  aliases of aliases, is refused before anything expands it) that refuses a key given twice.
* :func:`short_repr` bounds the text of a value quoted in an error message.
* :func:`check_outputs` is the one rule for every file a command writes outside its run folder:
  never one of its inputs nor inside an input folder (``--data``), resolved through symbolic and
  hard links; never shared by two outputs; an existing file only with ``--overwrite`` or when
  :func:`is_own_output` recognises the tool's earlier output (:func:`mark_output` marks it).
"""
from __future__ import annotations

import os
import reprlib
import stat
from pathlib import Path
from typing import Any, Hashable, Sequence

import yaml

from fairdarts.errors import UserError, one_line

#: Config presets, genotype files, manifests: text a person writes, never near this size.
MAX_TEXT_BYTES = 1 << 20
#: Alias uses in one YAML document; a hand-written config has none or a few.
MAX_YAML_ALIASES = 100

_REPR = reprlib.Repr()
_REPR.maxstring, _REPR.maxother, _REPR.maxlist, _REPR.maxdict, _REPR.maxlevel = 60, 60, 6, 6, 2


def short_repr(value: Any) -> str:
    """``repr(value)`` cut to at most 120 characters (nested and shared containers included)."""
    text = _REPR.repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def read_bytes_limited(path: str | Path, what: str, limit: int = MAX_TEXT_BYTES) -> bytes:
    """The bytes of the regular file ``path`` (``what`` names it in errors), at most ``limit``."""
    path = Path(path)
    try:
        info = path.stat()
    except FileNotFoundError:
        raise UserError(f"{what} {path} not found") from None
    except OSError as exc:
        raise UserError(f"cannot read {what} {path}: {exc.strerror or one_line(exc)}") from None
    if stat.S_ISDIR(info.st_mode):
        raise UserError(f"{what} {path} is a folder, not a file")
    if not stat.S_ISREG(info.st_mode):
        raise UserError(f"{what} {path} is not a regular file (a device, pipe or socket); pass a file")
    if info.st_size > limit:
        raise UserError(f"{what} {path} is {info.st_size} bytes, more than the {limit} a {what} may have")
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as exc:
        raise UserError(f"cannot read {what} {path}: {exc.strerror or one_line(exc)}") from None
    if len(data) > limit:  # it grew while we looked
        raise UserError(f"{what} {path} is more than the {limit} bytes a {what} may have")
    return data


def read_text_limited(path: str | Path, what: str, limit: int = MAX_TEXT_BYTES) -> str:
    """:func:`read_bytes_limited` decoded as UTF-8."""
    try:
        return read_bytes_limited(path, what, limit).decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{what} {path} is not UTF-8 text") from None


class _BoundedLoader(yaml.SafeLoader):
    """``SafeLoader`` that refuses a document using more than :data:`MAX_YAML_ALIASES` aliases."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._aliases = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_YAML_ALIASES:
                raise yaml.YAMLError(f"more than {MAX_YAML_ALIASES} aliases (*name): refused as a possible "
                                     "alias bomb")
        return super().compose_node(parent, index)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        """The mapping, refusing a key given twice (plain YAML would keep the last silently)."""
        lines: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if isinstance(key, Hashable) and key in lines:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {short_repr(key)} is given twice, on lines {lines[key]} and {line}",
                    key_node.start_mark)
            if isinstance(key, Hashable):
                lines[key] = line
        return super().construct_mapping(node, deep)


def load_yaml(text: str) -> Any:
    """``yaml.safe_load(text)`` with the alias cap; raises ``yaml.YAMLError`` like it."""
    loader = _BoundedLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


# ----- outputs against inputs -----------------------------------------------------------------
#: The extended attribute a command sets on every file it writes outside its run folder: a file
#: carrying it is the tool's own earlier output and is replaced without ``--overwrite``.
OUTPUT_MARK = "user.fairdarts.output"

Paths = Sequence[tuple[str, "str | Path | None"]]


def _identity(path: Path) -> tuple[Path, tuple[int, int] | None]:
    """(resolved path, (device, inode) when the file exists): two names of one file share the second."""
    resolved = Path(os.path.abspath(path)).resolve()
    try:
        info = os.stat(resolved)
    except OSError:
        return resolved, None
    return resolved, (info.st_dev, info.st_ino)


def same_file(a: str | Path, b: str | Path) -> bool:
    """True when ``a`` and ``b`` name one file: the same resolved path, or a hard link of it."""
    (pa, ia), (pb, ib) = _identity(Path(a)), _identity(Path(b))
    return pa == pb or (ia is not None and ia == ib)


def _linked_into(out: Path, folder: Path) -> bool:
    """Whether ``out`` (resolved) is a hard link of a file under ``folder``: looked for only when
    the file has several links, so that a dataset is walked only in that rare case."""
    try:
        info = os.stat(out)
    except OSError:
        return False
    if not stat.S_ISREG(info.st_mode) or info.st_nlink < 2 or not folder.is_dir() \
            or info.st_dev != os.stat(folder).st_dev:
        return False
    for parent, _, names in os.walk(folder):
        for name in names:
            try:
                other = os.stat(os.path.join(parent, name), follow_symlinks=False)
            except OSError:
                continue
            if (other.st_dev, other.st_ino) == (info.st_dev, info.st_ino):
                return True
    return False


def _reads(out: Path, source: Path) -> bool:
    """Whether writing ``out`` would touch ``source``: the same file (links of either kind), or,
    when ``source`` is a folder the command reads, a file inside it."""
    if same_file(out, source):
        return True
    folder = Path(os.path.abspath(source)).resolve()
    if folder.exists() and not folder.is_dir():
        return False  # a file, not the same one; a folder not made yet (--download) may still hold outputs
    resolved = Path(os.path.abspath(out)).resolve()
    return resolved.is_relative_to(folder) or _linked_into(resolved, folder)


def is_own_output(path: str | Path) -> bool:
    """Whether ``path`` carries :data:`OUTPUT_MARK` (a file system without extended attributes:
    never, so ``--overwrite`` is needed there)."""
    try:
        return bool(os.getxattr(path, OUTPUT_MARK))
    except OSError:
        return False


def mark_output(path: str | Path, command: str) -> None:
    """Set :data:`OUTPUT_MARK` (the writing command) on a written output; silently nothing where
    the file system keeps no extended attributes."""
    try:
        os.setxattr(path, OUTPUT_MARK, command.encode())
    except OSError:
        pass


def check_outputs(outputs: Paths, inputs: Paths, overwrite: bool = False) -> None:
    """The one rule for files a command writes outside its run folder, checked before any work.

    Both are ``(flag, path)`` pairs; ``None`` paths are skipped. An input is a file or a folder the
    command reads (``--data``: every file under it). An output is refused (one line) when it is an
    input, lies inside an input folder (resolved through symbolic links; a hard link of a file
    there counts too), is another output or a folder, cannot be written, or exists and is neither
    allowed by ``overwrite`` nor marked as this tool's own earlier output (:func:`is_own_output`).
    """
    given_in = [(flag, Path(p)) for flag, p in inputs if p is not None]
    for flag, p in [*given_in, *outputs]:
        if p is not None:
            check_path_length(p, flag)
    seen: list[tuple[str, Path]] = []
    for flag, p in outputs:
        if p is None:
            continue
        out = Path(p)
        for in_flag, source in given_in:
            if _reads(out, source):
                what = "folder" if source.is_dir() else "file"
                raise UserError(f"{flag} {out} is or lies in the {in_flag} {what} {source} that this command reads; "
                                "writing it would replace its input: choose another path")
        for other_flag, other in seen:
            if same_file(out, other):
                raise UserError(f"{flag} and {other_flag} both name {out}; give each output its own path")
        if out.is_dir():
            raise UserError(f"{flag} {out} is a folder; pass a file path")
        if out.exists() and not out.is_file():
            raise UserError(f"{flag} {out} is a device, pipe or socket, not a file; pass a file path")
        if os.path.lexists(out) and not overwrite and not is_own_output(out):
            raise UserError(f"{flag} {out} exists and was not written by this tool; pass --overwrite to replace it, "
                            "or choose another path")
        check_writable(out, flag)
        seen.append((flag, out))


#: The longest name of one file or folder, and of a whole path, that Linux file systems take.
NAME_MAX, PATH_MAX = 255, 4095


def check_path_length(path: str | Path, flag: str) -> None:
    """Refuse (one line) a path the file system would refuse with "File name too long", which
    every later ``exists()`` or ``mkdir()`` on it would raise as a traceback."""
    absolute = os.fsencode(os.path.abspath(path))
    longest = max(absolute.split(b"/"), key=len)
    if len(longest) > NAME_MAX:
        raise UserError(f"{flag}: the name {short_repr(os.fsdecode(longest))} is {len(longest)} bytes long, more than "
                        f"the {NAME_MAX} a file system allows for one file or folder; choose a shorter one")
    if len(absolute) > PATH_MAX:
        raise UserError(f"{flag}: the path is {len(absolute)} bytes long, more than the {PATH_MAX} a file system "
                        "allows; choose a shorter one")


def check_writable(path: str | Path, flag: str) -> None:
    """Refuse now (one line) an output file that could not be written later: its name must fit
    the file system, and its folder, or the nearest existing folder above it, be a writable folder."""
    check_path_length(path, flag)
    path = Path(os.path.abspath(path))
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"{flag} {path}: {parent} is not a folder; choose another path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {path}: the folder {parent} is not writable; choose another path")
    if path.exists() and not os.access(path, os.W_OK) and not os.access(path.parent, os.W_OK):
        raise UserError(f"{flag} {path} cannot be replaced (no write permission); choose another path")
