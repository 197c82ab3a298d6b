"""Reading a .safetensors file into numpy arrays, bfloat16 included (numpy has no bfloat16:
`safetensors.numpy` refuses it, so those files are read here from the format itself and their
tensors widened to float32, which is exact). Only bytes are read; nothing is executed."""

import json
from pathlib import Path

import numpy as np

_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}


def load_file(path: Path) -> dict[str, np.ndarray]:
    """All tensors of the file; bfloat16 ones as float32."""
    from safetensors.numpy import load_file as numpy_load_file

    try:
        tensors = numpy_load_file(path)
    except TypeError as error:  # "data type 'bfloat16' not understood" (no ml_dtypes)
        if "bfloat16" not in str(error):
            raise
        return _load_with_bfloat16(Path(path))
    # With ml_dtypes registered (jax imports it) numpy knows bfloat16, but it is no
    # np.floating: widen it here.
    return {
        name: value.astype(np.float32) if value.dtype.name == "bfloat16" else value
        for name, value in tensors.items()
    }


def bfloat16_to_float32(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) as float32: the 16 bits are float32's upper half."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def _load_with_bfloat16(path: Path) -> dict[str, np.ndarray]:
    raw = np.memmap(path, dtype=np.uint8, mode="r")
    if raw.size < 8:
        raise ValueError(f"{path} is too short to be a safetensors file.")
    header_size = int(raw[:8].view("<u8")[0])
    if header_size > raw.size - 8:
        raise ValueError(f"{path}: header of {header_size} bytes runs past the file end.")
    header = json.loads(bytes(raw[8 : 8 + header_size]).decode("utf-8"))
    data = raw[8 + header_size :]
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        kind, shape, (begin, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
        width = 2 if kind == "BF16" else np.dtype(_DTYPES.get(kind, np.uint8)).itemsize
        if kind != "BF16" and kind not in _DTYPES:
            raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {kind!r}.")
        if not 0 <= begin <= end <= data.size or end - begin != width * int(np.prod(shape)):
            raise ValueError(
                f"{path}: tensor {name!r} has offsets {[begin, end]} that do not fit its shape "
                f"{shape} ({kind}) or the file's {data.size} data bytes."
            )
        chunk = data[begin:end].tobytes()
        if kind == "BF16":
            tensors[name] = bfloat16_to_float32(np.frombuffer(chunk, "<u2")).reshape(shape)
        else:
            dtype = np.dtype(_DTYPES[kind]).newbyteorder("<")
            tensors[name] = np.frombuffer(chunk, dtype=dtype).reshape(shape)
    return tensors
