"""How each kind of stage output is read and written (the catalog's dataset types).

Each format is small and typed: a parquet ``Table`` checked against its schema, ``Json`` and
``Yaml`` optionally validated by a pydantic model, ``Text``, ``Csv`` (a table people edit),
``Toml`` (configs other tools read), ``Png``, a ``Folder`` that the stage fills itself, and
``Embeddings`` (named arrays of item vectors with the models that made
them). Writes are atomic where a reader could otherwise see half a file.
"""

from __future__ import annotations

import csv
import io
import json
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import yaml
from pydantic import BaseModel, ValidationError

from .errors import StageError


class Format(Protocol):
    kind: str

    def exists(self, path: Path) -> bool: ...
    def read(self, path: Path) -> Any: ...
    def write(self, path: Path, data: Any) -> None: ...


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def _missing(path: Path) -> StageError:
    return StageError(f"{path} is missing: run the stage that writes it first")


class _File:
    kind = "file"

    def exists(self, path: Path) -> bool:
        return path.is_file()


@dataclass(frozen=True)
class Table(_File):
    """Parquet rows checked against ``schema``; read returns a ``pyarrow.Table``."""

    schema: Any  # pyarrow.Schema
    kind: str = "parquet"

    def read(self, path: Path) -> Any:
        from .tables import read_table

        return read_table(path, self.schema)

    def write(self, path: Path, data: Any) -> None:
        from .tables import write_table

        write_table(path, list(data), self.schema)


def _validated(model: type[BaseModel] | None, data: Any, path: Path) -> Any:
    if model is None:
        return data
    try:
        return model.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise StageError(f"{path}: {where}: {first['msg']}: it was written by another version; re-run its stage") from None


def _plain(data: Any) -> Any:
    return data.model_dump(mode="json") if isinstance(data, BaseModel) else data


@dataclass(frozen=True)
class Json(_File):
    model: type[BaseModel] | None = None
    kind: str = "json"

    def read(self, path: Path) -> Any:
        if not path.is_file():
            raise _missing(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise StageError(f"{path} is not valid JSON ({e}): re-run the stage that writes it") from None
        return _validated(self.model, data, path)

    def write(self, path: Path, data: Any) -> None:
        _atomic_write(path, (json.dumps(_plain(data), indent=2, default=float) + "\n").encode())


@dataclass(frozen=True)
class Yaml(_File):
    model: type[BaseModel] | None = None
    kind: str = "yaml"

    def read(self, path: Path) -> Any:
        if not path.is_file():
            raise _missing(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise StageError(f"{path} is not valid YAML ({e}): re-run the stage that writes it") from None
        return _validated(self.model, data, path)

    def write(self, path: Path, data: Any) -> None:
        _atomic_write(path, yaml.safe_dump(_plain(data), sort_keys=False, allow_unicode=True).encode())


@dataclass(frozen=True)
class Text(_File):
    kind: str = "text"

    def read(self, path: Path) -> str:
        if not path.is_file():
            raise _missing(path)
        return path.read_text(encoding="utf-8")

    def write(self, path: Path, data: str) -> None:
        _atomic_write(path, data.encode("utf-8"))


@dataclass(frozen=True)
class Csv(_File):
    """Rows with the given ``columns`` (first, in order); read returns a list of dicts of strings.

    For tables a person edits in a spreadsheet: UTF-8 with a byte-order mark (so Excel reads the
    accents), read back with or without it. Extra columns a person adds are kept on read.
    """

    columns: tuple[str, ...] = ()
    kind: str = "csv"

    def read(self, path: Path) -> list[dict[str, str]]:
        if not path.is_file():
            raise _missing(path)
        try:
            rows = list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8-sig"), newline="")))
        except (UnicodeDecodeError, csv.Error) as e:
            raise StageError(f"{path} is not a UTF-8 CSV file ({e})") from None
        header = list(rows[0]) if rows else _csv_header(path)
        missing = [c for c in self.columns if c not in header]
        if missing:
            raise StageError(f"{path} lacks the columns {missing}: keep the header row as it was written")
        return [{k: (v or "") for k, v in row.items() if k is not None} for row in rows]

    def write(self, path: Path, data: Any) -> None:
        buf = io.StringIO(newline="")
        writer = csv.DictWriter(buf, fieldnames=list(self.columns), extrasaction="raise", lineterminator="\n")
        writer.writeheader()
        writer.writerows(data)
        _atomic_write(path, buf.getvalue().encode("utf-8-sig"))


def _csv_header(path: Path) -> list[str]:
    first = path.read_text(encoding="utf-8-sig").splitlines()[:1]
    return next(csv.reader(first), []) if first else []


@dataclass(frozen=True)
class Toml(_File):
    """A TOML document (tables, arrays of tables, strings, numbers, booleans, lists of scalars)."""

    kind: str = "toml"

    def read(self, path: Path) -> dict[str, Any]:
        if not path.is_file():
            raise _missing(path)
        try:
            return tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise StageError(f"{path} is not valid TOML ({e}): re-run the stage that writes it") from None

    def write(self, path: Path, data: Any) -> None:
        comments = data.pop("#", None) if isinstance(data, dict) else None
        head = "".join(f"# {line}\n" for line in (comments or []))
        _atomic_write(path, (head + toml_text(data)).encode("utf-8"))


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)  # a JSON string is a valid TOML basic string
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"no TOML value for {type(v).__name__}")


def toml_text(data: dict[str, Any], prefix: str = "") -> str:
    """``data`` as TOML: scalars first, then sub-tables, then arrays of tables (recursively)."""
    lines = [f"{k} = {_toml_value(v)}" for k, v in data.items() if not _is_table(v) and not _is_tables(v)]
    out = "\n".join(lines) + ("\n" if lines else "")
    for k, v in data.items():
        name = f"{prefix}{k}"
        if _is_table(v):
            out += f"\n[{name}]\n" + toml_text(v, f"{name}.")
        elif _is_tables(v):
            for table in v:
                out += f"\n[[{name}]]\n" + toml_text(table, f"{name}.")
    return out


def _is_table(v: Any) -> bool:
    return isinstance(v, dict)


def _is_tables(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)


@dataclass(frozen=True)
class Png(_File):
    kind: str = "png"

    def read(self, path: Path) -> Any:
        from PIL import Image

        if not path.is_file():
            raise _missing(path)
        with Image.open(path) as im:
            return im.copy()

    def write(self, path: Path, data: Any) -> None:
        data.save(path, format="PNG")


@dataclass(frozen=True)
class Folder:
    """A folder the stage fills itself; reading gives its path."""

    kind: str = "folder"

    def exists(self, path: Path) -> bool:
        return path.is_dir()

    def read(self, path: Path) -> Path:
        if not path.is_dir():
            raise _missing(path)
        return path

    def write(self, path: Path, data: Any) -> None:
        path.mkdir(parents=True, exist_ok=True)


@dataclass
class EmbeddingSet:
    """Named item embeddings: name -> (item ids, rows), and the model reference behind each."""

    vectors: dict[str, tuple[list[str], Any]]
    models: dict[str, str]


INDEX_NAME = "index.json"


@dataclass(frozen=True)
class Embeddings:
    """``<name>.npy`` float32 arrays plus ``index.json`` (row order and models)."""

    kind: str = "embeddings"

    def exists(self, path: Path) -> bool:
        return (path / INDEX_NAME).is_file()

    def read(self, path: Path) -> EmbeddingSet:
        import numpy as np

        index = Json().read(path / INDEX_NAME)
        models = index.pop("models", {})
        vectors = {name: (entry["item_ids"], np.load(path / entry["file"])) for name, entry in index.items()}
        return EmbeddingSet(vectors, models)

    def write(self, path: Path, data: EmbeddingSet) -> None:
        import numpy as np

        path.mkdir(parents=True, exist_ok=True)
        index: dict[str, Any] = {}
        for name, (rows, emb) in data.vectors.items():
            np.save(path / f"{name}.npy", np.asarray(emb, dtype=np.float32))
            index[name] = {"file": f"{name}.npy", "item_ids": list(rows),
                           "dim": int(emb.shape[1]) if emb.ndim == 2 else 0}
        index["models"] = dict(data.models)
        Json().write(path / INDEX_NAME, index)
