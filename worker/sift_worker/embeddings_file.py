"""Reading embeddings that users computed themselves instead of running a built-in model.

Supported layouts, chosen by extension:

- `.npy`: an (N, D) numeric array, plus a text file with one filename per line (by default the
  same stem with `.txt`: `emb.npy` + `emb.txt`).
- `.csv`: a header row `filename,<anything>...`, then `filename,v1,...,vD` per sample.
- `.parquet`: a `filename` column plus either a list / fixed-size-list column `embedding`
  (other columns are then ignored) or D numeric columns (then every other column must be
  numeric, since any of them could be a dimension).

Everything is validated up front (shape, counts, numbers, NaN/inf, duplicate names) because a
bad row discovered halfway through selection wastes the whole run; each error names the file
and the row, line or column to fix. Rows in messages are 0-based array indices; lines are
1-based, as an editor shows them.
"""

from __future__ import annotations

import collections
import csv
import pathlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

_CHUNK_ROWS = 65536  # rows converted at a time, bounding temporaries for large .npy files
_SHOW = 5


class EmbeddingsFileError(ValueError):
    """A user-supplied embeddings file cannot be used; the message says where and why."""


def load_embeddings_file(
    path: pathlib.Path, filenames_path: pathlib.Path | None = None
) -> tuple[list[str], npt.NDArray[np.float32]]:
    """Load (filenames, float32 (N, D) embeddings) from a `.npy`, `.csv` or `.parquet` file.

    `filenames_path` only applies to `.npy`. Raises EmbeddingsFileError for any problem.
    """
    path = pathlib.Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".npy", ".csv", ".parquet"):
        raise EmbeddingsFileError(
            f"{path}: unsupported embeddings format {path.suffix!r}; use .npy, .csv or .parquet"
        )
    if not path.exists():
        raise EmbeddingsFileError(f"{path}: embeddings file does not exist")
    if not path.is_file():
        raise EmbeddingsFileError(f"{path}: not a regular file")
    if path.stat().st_size == 0:
        raise EmbeddingsFileError(f"{path}: file is empty")
    if suffix == ".npy":
        names_path = path.with_suffix(".txt") if filenames_path is None else filenames_path
        filenames, array = _load_npy(path, pathlib.Path(names_path))
    elif suffix == ".csv":
        filenames, array = _load_csv(path)
    else:
        filenames, array = _load_parquet(path)
    _check_filenames(path, filenames)
    return filenames, array


# --- .npy -------------------------------------------------------------------------------------


def _load_npy(
    path: pathlib.Path, names_path: pathlib.Path
) -> tuple[list[str], npt.NDArray[np.float32]]:
    try:
        raw = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise EmbeddingsFileError(f"{path}: not a readable .npy array ({exc})") from None
    if not isinstance(raw, np.ndarray):
        raise EmbeddingsFileError(f"{path}: expected a single array, found {type(raw).__name__}")
    if raw.ndim != 2:
        raise EmbeddingsFileError(
            f"{path}: expected a 2-D (samples, dims) array, got shape {raw.shape}"
        )
    if raw.dtype.kind not in "fiu":
        raise EmbeddingsFileError(f"{path}: expected a numeric array, got dtype {raw.dtype}")
    if raw.shape[0] == 0 or raw.shape[1] == 0:
        raise EmbeddingsFileError(f"{path}: array has shape {raw.shape}; it holds no embeddings")

    filenames = _read_filename_list(names_path, npy_path=path)
    if len(filenames) != raw.shape[0]:
        raise EmbeddingsFileError(
            f"{path} has {raw.shape[0]} rows but {names_path} lists {len(filenames)} filenames"
        )
    array = np.empty(raw.shape, dtype=np.float32)
    with np.errstate(over="ignore", invalid="ignore"):  # float64 -> float32 overflow is checked
        for start in range(0, raw.shape[0], _CHUNK_ROWS):
            chunk = array[start : start + _CHUNK_ROWS]
            chunk[...] = raw[start : start + _CHUNK_ROWS]
            _check_finite(path, chunk, filenames, row_offset=start)
    return filenames, array


def _read_filename_list(names_path: pathlib.Path, *, npy_path: pathlib.Path) -> list[str]:
    if not names_path.is_file():
        raise EmbeddingsFileError(
            f"{npy_path}: filename list {names_path} does not exist; a .npy needs a text file "
            "with one filename per line (same stem, .txt, or pass it explicitly)"
        )
    try:
        lines = names_path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as exc:
        raise EmbeddingsFileError(f"{names_path}: not UTF-8 text ({exc})") from None
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise EmbeddingsFileError(f"{names_path}: filename list is empty")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            raise EmbeddingsFileError(f"{names_path}, line {number}: empty filename")
    return lines


# --- .csv -------------------------------------------------------------------------------------


def _load_csv(path: pathlib.Path) -> tuple[list[str], npt.NDArray[np.float32]]:
    filenames: list[str] = []
    lines: list[int] = []
    rows: list[npt.NDArray[np.float32]] = []
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            header = next((row for row in reader if row), None)
            if header is None:
                raise EmbeddingsFileError(f"{path}: file is empty")
            if header[0].strip().lower() != "filename":
                raise EmbeddingsFileError(
                    f"{path}, line {reader.line_num}: expected a header row starting with "
                    f"'filename', found {header[0]!r}"
                )
            width = len(header)
            if width < 2:
                raise EmbeddingsFileError(
                    f"{path}: header has no embedding columns after 'filename'"
                )
            for row in reader:
                if not row:
                    continue  # blank line
                line = reader.line_num
                if len(row) != width:
                    raise EmbeddingsFileError(
                        f"{path}, line {line}: {len(row)} columns, expected {width} "
                        f"(filename + {width - 1} values, as in the header)"
                    )
                if not row[0].strip():
                    raise EmbeddingsFileError(f"{path}, line {line}: empty filename")
                filenames.append(row[0])
                lines.append(line)
                rows.append(_parse_csv_values(path, line, row, header))
    except UnicodeDecodeError as exc:
        raise EmbeddingsFileError(f"{path}: not UTF-8 text ({exc})") from None
    except csv.Error as exc:
        raise EmbeddingsFileError(f"{path}: malformed CSV ({exc})") from None
    if not rows:
        raise EmbeddingsFileError(f"{path}: header only, no embedding rows")
    array = np.stack(rows)
    non_finite = ~np.isfinite(array).all(axis=1)
    if non_finite.any():
        index = int(np.flatnonzero(non_finite)[0])
        raise EmbeddingsFileError(
            f"{path}, line {lines[index]} (sample {filenames[index]!r}): NaN or infinite value "
            "(a value too large for float32 counts as infinite)"
        )
    return filenames, array


def _parse_csv_values(
    path: pathlib.Path, line: int, row: Sequence[str], header: Sequence[str]
) -> npt.NDArray[np.float32]:
    try:
        # numpy parses the strings in C; fall back to per-cell parsing only to locate an error.
        return np.array(row[1:], dtype=np.float32)
    except ValueError:
        pass
    for column, cell in enumerate(row[1:], start=2):
        try:
            float(cell)
        except ValueError:
            raise EmbeddingsFileError(
                f"{path}, line {line}, column {column} ({header[column - 1]!r}): "
                f"{cell!r} is not a number"
            ) from None
    raise EmbeddingsFileError(f"{path}, line {line}: could not parse values")  # pragma: no cover


# --- .parquet ---------------------------------------------------------------------------------


def _load_parquet(path: pathlib.Path) -> tuple[list[str], npt.NDArray[np.float32]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
    except (pa.ArrowException, OSError) as exc:
        raise EmbeddingsFileError(f"{path}: not a readable Parquet file ({exc})") from None
    names = list(schema.names)
    if "filename" not in names:
        raise EmbeddingsFileError(
            f"{path}: no 'filename' column (columns: {', '.join(names) or 'none'})"
        )
    name_type = schema.field("filename").type
    if not (pa.types.is_string(name_type) or pa.types.is_large_string(name_type)):
        raise EmbeddingsFileError(f"{path}: column 'filename' must hold strings, not {name_type}")
    if "embedding" in names:
        value_columns = ["embedding"]
    else:
        value_columns = [name for name in names if name != "filename"]
        if not value_columns:
            raise EmbeddingsFileError(
                f"{path}: no embedding data: add an 'embedding' list column or numeric columns"
            )
        for name in value_columns:
            kind = schema.field(name).type
            if not (pa.types.is_integer(kind) or pa.types.is_floating(kind)):
                raise EmbeddingsFileError(
                    f"{path}: column {name!r} has type {kind}; without an 'embedding' list "
                    "column every column besides 'filename' must be numeric"
                )
    try:
        table = pq.read_table(path, columns=["filename", *value_columns])
    except (pa.ArrowException, OSError) as exc:
        raise EmbeddingsFileError(f"{path}: cannot read Parquet data ({exc})") from None
    if table.num_rows == 0:
        raise EmbeddingsFileError(f"{path}: no rows")

    name_column = table.column("filename")
    if name_column.null_count:
        row = _first_null(name_column)
        raise EmbeddingsFileError(f"{path}, row {row}: column 'filename' is null")
    filenames: list[str] = name_column.to_pylist()
    for row, name in enumerate(filenames):
        if not name.strip():
            raise EmbeddingsFileError(f"{path}, row {row}: empty filename")

    if value_columns == ["embedding"]:
        array = _parquet_list_column(path, table.column("embedding"), filenames)
    else:
        array = np.empty((table.num_rows, len(value_columns)), dtype=np.float32)
        for j, name in enumerate(value_columns):
            column = table.column(name)
            if column.null_count:
                row = _first_null(column)
                raise EmbeddingsFileError(
                    f"{path}, row {row} (sample {filenames[row]!r}), column {name!r}: null value"
                )
            with np.errstate(over="ignore", invalid="ignore"):
                array[:, j] = column.to_numpy()
    _check_finite(path, array, filenames, row_offset=0)
    return filenames, array


def _parquet_list_column(
    path: pathlib.Path, column: Any, filenames: list[str]
) -> npt.NDArray[np.float32]:
    import pyarrow as pa
    import pyarrow.compute as pc

    kind = column.type
    if not (
        pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)
    ):
        raise EmbeddingsFileError(
            f"{path}: column 'embedding' has type {kind}; expected a list of numbers"
        )
    value_type = kind.value_type
    if not (pa.types.is_integer(value_type) or pa.types.is_floating(value_type)):
        raise EmbeddingsFileError(
            f"{path}: column 'embedding' holds {value_type} values; expected numbers"
        )
    if column.null_count:
        row = _first_null(column)
        raise EmbeddingsFileError(
            f"{path}, row {row} (sample {filenames[row]!r}): 'embedding' is null"
        )
    combined = column.combine_chunks()
    lengths = pc.list_value_length(combined).to_numpy(zero_copy_only=False)
    dim = int(lengths[0])
    if dim == 0:
        raise EmbeddingsFileError(f"{path}, row 0 (sample {filenames[0]!r}): empty embedding")
    ragged = np.flatnonzero(lengths != dim)
    if ragged.size:
        row = int(ragged[0])
        raise EmbeddingsFileError(
            f"{path}, row {row} (sample {filenames[row]!r}): embedding has {int(lengths[row])} "
            f"values, but row 0 has {dim}"
        )
    values = combined.flatten()
    if values.null_count:
        row = int(np.flatnonzero(values.is_null().to_numpy(zero_copy_only=False))[0]) // dim
        raise EmbeddingsFileError(
            f"{path}, row {row} (sample {filenames[row]!r}): 'embedding' contains a null value"
        )
    raw: npt.NDArray[Any] = values.to_numpy(zero_copy_only=False)
    with np.errstate(over="ignore", invalid="ignore"):
        # float32 data comes back as a read-only view of Arrow memory; callers get their own.
        flat = raw.astype(np.float32, copy=not raw.flags.writeable)
    return flat.reshape(len(filenames), dim)


def _first_null(column: Any) -> int:
    mask = column.is_null()
    return int(np.flatnonzero(mask.to_numpy(zero_copy_only=False))[0])


# --- shared checks ----------------------------------------------------------------------------


def _check_finite(
    path: pathlib.Path,
    array: npt.NDArray[np.float32],
    filenames: Sequence[str],
    *,
    row_offset: int,
) -> None:
    bad = ~np.isfinite(array).all(axis=1)
    if bad.any():
        row = int(np.flatnonzero(bad)[0]) + row_offset
        raise EmbeddingsFileError(
            f"{path}, row {row} (sample {filenames[row]!r}): NaN or infinite value "
            "(a value too large for float32 counts as infinite)"
        )


def _check_filenames(path: pathlib.Path, filenames: Sequence[str]) -> None:
    counts = collections.Counter(filenames)
    if len(counts) == len(filenames):
        return
    duplicated = [name for name, count in counts.items() if count > 1]
    shown = ", ".join(f"{name!r} ({counts[name]}x)" for name in duplicated[:_SHOW])
    more = f" and {len(duplicated) - _SHOW} more" if len(duplicated) > _SHOW else ""
    raise EmbeddingsFileError(f"{path}: duplicate filenames: {shown}{more}")
