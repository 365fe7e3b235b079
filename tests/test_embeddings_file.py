"""User-supplied embeddings: each format round-trips, each problem names the file and the spot."""

from __future__ import annotations

import pathlib
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sift_worker.embeddings_file import EmbeddingsFileError, load_embeddings_file

NAMES = ["a.jpg", "dir/b.png", "c d.jpg"]
VECTORS = np.array([[0.5, -1.25, 3.0], [1e-3, 2.0, -7.5], [0.0, 0.0, 1.0]], dtype=np.float64)


def _npy(tmp_path: pathlib.Path, array: object, names: list[str] | None = NAMES) -> pathlib.Path:
    path = tmp_path / "emb.npy"
    np.save(path, np.asarray(array))
    if names is not None:
        (tmp_path / "emb.txt").write_text("".join(f"{n}\n" for n in names), encoding="utf-8")
    return path


def _csv(tmp_path: pathlib.Path, text: str) -> pathlib.Path:
    path = tmp_path / "emb.csv"
    path.write_text(text, encoding="utf-8")
    return path


def _parquet(tmp_path: pathlib.Path, columns: dict[str, object]) -> pathlib.Path:
    path = tmp_path / "emb.parquet"
    pq.write_table(pa.table(columns), path)
    return path


def _raises(path: pathlib.Path, pattern: str, **kwargs: pathlib.Path) -> str:
    with pytest.raises(EmbeddingsFileError, match=pattern) as info:
        load_embeddings_file(path, **kwargs)
    message = str(info.value)
    assert str(path) in message or any(str(p) in message for p in kwargs.values())
    return message


def _check(result: tuple[list[str], np.ndarray]) -> None:
    names, array = result
    assert names == NAMES
    assert array.dtype == np.float32
    assert array.shape == (3, 3)
    assert array.flags.writeable
    np.testing.assert_array_equal(array, VECTORS.astype(np.float32))


# --- round trips ------------------------------------------------------------------------------


def test_npy_with_default_filename_list(tmp_path: pathlib.Path) -> None:
    _check(load_embeddings_file(_npy(tmp_path, VECTORS)))


def test_npy_with_explicit_filename_list_and_crlf(tmp_path: pathlib.Path) -> None:
    path = _npy(tmp_path, VECTORS.astype(np.float16).astype(np.float64), names=None)
    names = tmp_path / "names.list"
    names.write_bytes(("\r\n".join(NAMES) + "\r\n\r\n").encode())
    result = load_embeddings_file(path, filenames_path=names)
    assert result[0] == NAMES


def test_npy_integer_array(tmp_path: pathlib.Path) -> None:
    _, array = load_embeddings_file(_npy(tmp_path, np.arange(9).reshape(3, 3)))
    assert array.dtype == np.float32
    assert array[2, 2] == 8


def test_npy_large_is_converted_in_chunks(tmp_path: pathlib.Path) -> None:
    rows = 70_000  # more than one conversion chunk
    array = np.random.default_rng(0).standard_normal((rows, 2))
    names = [f"{i}.jpg" for i in range(rows)]
    loaded_names, loaded = load_embeddings_file(_npy(tmp_path, array, names))
    assert loaded_names == names
    np.testing.assert_array_equal(loaded, array.astype(np.float32))


def test_csv(tmp_path: pathlib.Path) -> None:
    lines = ["filename,e0,e1,e2"] + [
        ",".join([f'"{n}"' if " " in n else n, *map(repr, v)])
        for n, v in zip(NAMES, VECTORS.tolist(), strict=True)
    ]
    _check(load_embeddings_file(_csv(tmp_path, "\n".join(lines) + "\n\n")))


def test_parquet_list_column_ignores_other_columns(tmp_path: pathlib.Path) -> None:
    path = _parquet(
        tmp_path,
        {"filename": NAMES, "embedding": VECTORS.tolist(), "label": ["x", "y", "z"]},
    )
    _check(load_embeddings_file(path))


def test_parquet_fixed_size_list_column(tmp_path: pathlib.Path) -> None:
    values = pa.array(VECTORS.astype(np.float32).ravel())
    embedding = pa.FixedSizeListArray.from_arrays(values, 3)
    _check(load_embeddings_file(_parquet(tmp_path, {"filename": NAMES, "embedding": embedding})))


def test_parquet_numeric_columns(tmp_path: pathlib.Path) -> None:
    columns: dict[str, object] = {"filename": NAMES}
    columns.update({f"d{j}": VECTORS[:, j] for j in range(3)})
    _check(load_embeddings_file(_parquet(tmp_path, columns)))


# --- errors: general --------------------------------------------------------------------------


def test_missing_file(tmp_path: pathlib.Path) -> None:
    _raises(tmp_path / "nope.npy", "does not exist")


@pytest.mark.parametrize("suffix", [".npy", ".csv", ".parquet"])
def test_empty_file(tmp_path: pathlib.Path, suffix: str) -> None:
    path = tmp_path / f"emb{suffix}"
    path.write_bytes(b"")
    _raises(path, "empty")


def test_unsupported_extension(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "emb.json"
    path.write_text("{}")
    _raises(path, r"\.npy, \.csv or \.parquet")


def test_error_is_value_error() -> None:
    assert issubclass(EmbeddingsFileError, ValueError)


# --- errors: .npy -----------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(3,), (3, 1, 3)])
def test_npy_wrong_dims(tmp_path: pathlib.Path, shape: tuple[int, ...]) -> None:
    _raises(
        _npy(tmp_path, np.zeros(shape)), re.escape(f"2-D (samples, dims) array, got shape {shape}")
    )


def test_npy_count_mismatch(tmp_path: pathlib.Path) -> None:
    message = _raises(_npy(tmp_path, VECTORS, NAMES[:2]), "has 3 rows but .* lists 2 filenames")
    assert "emb.txt" in message


def test_npy_missing_filename_list(tmp_path: pathlib.Path) -> None:
    message = _raises(_npy(tmp_path, VECTORS, names=None), "filename list .* does not exist")
    assert "emb.txt" in message


def test_npy_blank_line_in_filename_list(tmp_path: pathlib.Path) -> None:
    path = _npy(tmp_path, VECTORS, names=None)
    names = tmp_path / "emb.txt"
    names.write_text("a.jpg\n\nc.jpg\n")
    _raises(path, "line 2: empty filename", filenames_path=names)


@pytest.mark.parametrize("bad", [np.nan, np.inf, 1e300])
def test_npy_non_finite_names_sample(tmp_path: pathlib.Path, bad: float) -> None:
    array = VECTORS.copy()
    array[1, 2] = bad
    _raises(_npy(tmp_path, array), r"row 1 \(sample 'dir/b.png'\): NaN or infinite")


def test_npy_non_numeric_dtype(tmp_path: pathlib.Path) -> None:
    _raises(_npy(tmp_path, np.array([["a", "b"], ["c", "d"]])), "numeric array")


def test_npy_object_array_is_refused(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "emb.npy"
    np.save(path, np.array([[1, None]], dtype=object), allow_pickle=True)
    _raises(path, r"not a readable \.npy array")


def test_npy_duplicate_filenames(tmp_path: pathlib.Path) -> None:
    _raises(_npy(tmp_path, VECTORS, ["a.jpg", "b.jpg", "a.jpg"]), r"duplicate.*'a\.jpg' \(2x\)")


# --- errors: .csv -----------------------------------------------------------------------------


def test_csv_non_numeric_names_line_and_column(tmp_path: pathlib.Path) -> None:
    path = _csv(tmp_path, "filename,x,y\na.jpg,1,2\nb.jpg,3,oops\n")
    _raises(path, r"line 3, column 3 \('y'\): 'oops' is not a number")


def test_csv_empty_cell(tmp_path: pathlib.Path) -> None:
    _raises(_csv(tmp_path, "filename,x,y\na.jpg,,2\n"), r"line 2, column 2 \('x'\): ''")


def test_csv_ragged_row(tmp_path: pathlib.Path) -> None:
    path = _csv(tmp_path, "filename,x,y\na.jpg,1,2\nb.jpg,3\n")
    _raises(path, "line 3: 2 columns, expected 3")


def test_csv_nan(tmp_path: pathlib.Path) -> None:
    path = _csv(tmp_path, "filename,x\na.jpg,1\nb.jpg,nan\n")
    _raises(path, r"line 3 \(sample 'b\.jpg'\): NaN or infinite")


def test_csv_missing_header(tmp_path: pathlib.Path) -> None:
    _raises(_csv(tmp_path, "a.jpg,1,2\n"), "header row starting with 'filename'")


def test_csv_header_only(tmp_path: pathlib.Path) -> None:
    _raises(_csv(tmp_path, "filename,x\n"), "no embedding rows")


def test_csv_no_value_columns(tmp_path: pathlib.Path) -> None:
    _raises(_csv(tmp_path, "filename\na.jpg\n"), "no embedding columns")


def test_csv_duplicate_filenames(tmp_path: pathlib.Path) -> None:
    _raises(_csv(tmp_path, "filename,x\na.jpg,1\na.jpg,2\n"), r"duplicate.*'a\.jpg'")


# --- errors: .parquet -------------------------------------------------------------------------


def test_parquet_ragged_embedding(tmp_path: pathlib.Path) -> None:
    path = _parquet(tmp_path, {"filename": NAMES, "embedding": [[1.0, 2.0], [1.0], [3.0, 4.0]]})
    _raises(path, r"row 1 \(sample 'dir/b\.png'\): embedding has 1 values, but row 0 has 2")


def test_parquet_null_embedding(tmp_path: pathlib.Path) -> None:
    path = _parquet(tmp_path, {"filename": NAMES, "embedding": [[1.0], [2.0], None]})
    _raises(path, r"row 2 \(sample 'c d\.jpg'\): 'embedding' is null")


def test_parquet_null_inside_embedding(tmp_path: pathlib.Path) -> None:
    path = _parquet(tmp_path, {"filename": NAMES, "embedding": [[1.0, 2.0], [2.0, None], [1, 1]]})
    _raises(path, r"row 1 .*contains a null value")


def test_parquet_nan_in_numeric_columns(tmp_path: pathlib.Path) -> None:
    path = _parquet(tmp_path, {"filename": NAMES, "x": [1.0, 2.0, 3.0], "y": [0.0, 0.0, np.inf]})
    _raises(path, r"row 2 \(sample 'c d\.jpg'\): NaN or infinite")


def test_parquet_non_numeric_column(tmp_path: pathlib.Path) -> None:
    path = _parquet(tmp_path, {"filename": NAMES, "x": [1.0, 2.0, 3.0], "label": ["a", "b", "c"]})
    _raises(path, "column 'label' has type string")


def test_parquet_null_in_numeric_column(tmp_path: pathlib.Path) -> None:
    path = _parquet(tmp_path, {"filename": NAMES, "x": [1.0, None, 3.0]})
    _raises(path, r"row 1 \(sample 'dir/b\.png'\), column 'x': null value")


def test_parquet_without_filename_column(tmp_path: pathlib.Path) -> None:
    _raises(_parquet(tmp_path, {"name": NAMES, "x": [1, 2, 3]}), "no 'filename' column")


def test_parquet_embedding_of_strings(tmp_path: pathlib.Path) -> None:
    path = _parquet(tmp_path, {"filename": NAMES, "embedding": [["a"], ["b"], ["c"]]})
    _raises(path, "holds string values")


def test_parquet_duplicate_filenames(tmp_path: pathlib.Path) -> None:
    path = _parquet(tmp_path, {"filename": ["x", "x", "y"], "embedding": [[1.0], [2.0], [3.0]]})
    _raises(path, r"duplicate filenames: 'x' \(2x\)")


def test_parquet_no_rows(tmp_path: pathlib.Path) -> None:
    table = pa.table({"filename": pa.array([], pa.string()), "x": pa.array([], pa.float32())})
    path = tmp_path / "emb.parquet"
    pq.write_table(table, path)
    _raises(path, "no rows")


def test_not_a_parquet_file(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "emb.parquet"
    path.write_text("filename,x\n")
    _raises(path, "not a readable Parquet file")
