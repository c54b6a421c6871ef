"""An ``.npz`` written block by block: memory holds one block of rows, not the array.

``np.savez`` needs every array whole.  :class:`NpzWriter` opens the zip entry of
one large array with its final shape in the ``.npy`` header and appends row blocks
as they are computed; small arrays are added whole.  ``np.load`` reads the result
like any ``.npz``.  Wrap it in :func:`~sde_diffusion.atomic.atomic_path` so a failed
run leaves no partial file.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from .errors import ArgumentError

__all__ = ["NpzWriter"]


class NpzWriter:
    """``.npz`` at ``path`` whose array ``name`` of ``shape``/``dtype`` arrives in row blocks.

    Use as a context manager: :meth:`write` the rows in order, :meth:`add` other
    arrays after the last row; leaving the block checks that every row came.
    """

    def __init__(self, path: str | Path, name: str, shape: tuple[int, ...], dtype=np.float32):
        self.name, self.shape, self.dtype = name, tuple(int(n) for n in shape), np.dtype(dtype)
        self.rows = 0
        self._zip = zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True)
        self._entry = self._zip.open(f"{name}.npy", "w", force_zip64=True)
        header = {
            "descr": np.lib.format.dtype_to_descr(self.dtype),
            "fortran_order": False,
            "shape": self.shape,
        }
        np.lib.format.write_array_header_2_0(self._entry, header)

    def write(self, rows: np.ndarray) -> None:
        """Append the next rows (shape ``(k, *shape[1:])``)."""
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        if rows.shape[1:] != self.shape[1:] or self.rows + len(rows) > self.shape[0]:
            raise ArgumentError(
                f"{self.name}: rows of shape {rows.shape} after {self.rows} of {self.shape}"
            )
        self._entry.write(rows.tobytes())
        self.rows += len(rows)

    def add(self, name: str, array) -> None:
        """A whole (small) array, after the streamed one is complete."""
        self._finish_rows()
        with self._zip.open(f"{name}.npy", "w", force_zip64=True) as entry:
            np.lib.format.write_array(entry, np.asanyarray(array), allow_pickle=False)

    def _finish_rows(self) -> None:
        if self._entry is None:
            return
        if self.rows != self.shape[0]:
            raise ArgumentError(f"{self.name}: {self.rows} of {self.shape[0]} rows were written")
        self._entry.close()
        self._entry = None

    def __enter__(self) -> NpzWriter:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        try:
            if kind is None:
                self._finish_rows()
        finally:
            if self._entry is not None:  # a failed run: the file is discarded anyway
                self._entry.close()
            self._zip.close()
