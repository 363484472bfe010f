"""Is an image file whole? A check before SimpleITK reads it.

SimpleITK reads a ``.nii`` or ``.nii.gz`` whose data ends early (an interrupted copy or download) without
an error and fills the missing voxels with 0. ``check_complete`` compares what the header promises
(``vox_offset`` + voxels x bytes per voxel) with what the file holds:

- ``.nii``: the file's size;
- ``.nii.gz``: the gzip trailer's ISIZE (the uncompressed length modulo 2^32, the file's last 4 bytes) is
  compared first, which costs no read of the data; only when it disagrees (a cut-short stream, whose last
  bytes are compressed data; a file of several gzip members; a whole stream of too little data) is the
  stream decompressed once to measure what it holds;
- ``.mha``/``.mhd``: ITK raises for a short data part but says "No such file or directory"; the header's
  sizes give the message here (``CompressedDataSize`` for compressed data).

NRRD: ITK (teem) raises with the amount read; ``nrrd_message`` turns that into the same message.
"""
from __future__ import annotations

import re
import struct
import zlib
from pathlib import Path
from typing import Optional, Tuple

from OrganGuidanceLib.image_files import ImageReadError, image_suffix

_CHUNK = 1 << 20
# MetaImage element types of a fixed size (MET_LONG/MET_ULONG depend on the writer's platform: not checked)
_MET_SIZES = {"MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
              "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4, "MET_DOUBLE": 8}


def size_text(count: int) -> str:
    """A byte count for a message: ``6.2 MB``, ``312 kB``, ``80 bytes``."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} bytes"


def _short(name: str, present: int, expected: int, what: str = "image data") -> ImageReadError:
    present = max(present, 0)
    percent = int(100 * present / expected) if expected else 0
    return ImageReadError(f"{name}: the {what} ends early: {size_text(present)} of {size_text(expected)} "
                          f"({percent} %), the file is cut short (an interrupted copy or download?)")


def nifti_layout(header: bytes) -> Optional[Tuple[int, int]]:
    """(data offset, data bytes) from a NIfTI-1 or NIfTI-2 single-file header, or None when it is not one."""
    for endian in "<>":
        if len(header) >= 348 and struct.unpack(f"{endian}i", header[:4])[0] == 348 and header[344:347] == b"n+1":
            dims = struct.unpack(f"{endian}8h", header[40:56])
            bitpix = struct.unpack(f"{endian}h", header[72:74])[0]
            offset, minimum = int(struct.unpack(f"{endian}f", header[108:112])[0]), 352
        elif len(header) >= 540 and struct.unpack(f"{endian}i", header[:4])[0] == 540 and header[4:7] == b"n+2":
            dims = struct.unpack(f"{endian}8q", header[16:80])
            bitpix = struct.unpack(f"{endian}h", header[14:16])[0]
            offset, minimum = struct.unpack(f"{endian}q", header[168:176])[0], 544
        else:
            continue
        rank = dims[0]
        if not 1 <= rank <= 7 or bitpix <= 0 or any(d <= 0 for d in dims[1: rank + 1]):
            return None  # not a header we can vouch for: ITK's own reader decides
        voxels = 1
        for d in dims[1: rank + 1]:
            voxels *= int(d)
        return max(offset, minimum), voxels * bitpix // 8  # the data never starts inside the header
    return None


def _gzip_length(path: Path, name: str) -> Tuple[int, bool]:
    """(bytes the gzip stream(s) of ``path`` decompress to, whether the last stream ended properly)."""
    total, ended = 0, False
    inflater = zlib.decompressobj(31)
    with open(path, "rb") as stream:
        pending = stream.read(_CHUNK)
        while pending:
            try:
                total += len(inflater.decompress(pending, _CHUNK))
                while inflater.unconsumed_tail:
                    total += len(inflater.decompress(inflater.unconsumed_tail, _CHUNK))
            except zlib.error:
                return total, False  # damaged compressed data: as far as it goes
            if inflater.eof:
                ended, rest = True, inflater.unused_data
                if rest.strip(b"\x00"):  # another gzip member follows (e.g. bgzip); zero padding does not
                    inflater, ended = zlib.decompressobj(31), False
                    pending = rest
                    continue
            pending = stream.read(_CHUNK)
    return total, ended


def _check_nifti_gz(path: Path, name: str) -> None:
    with open(path, "rb") as stream:
        start = stream.read(2)
        if start != b"\x1f\x8b":
            return _check_nifti(path, name)  # an uncompressed file under a .gz name: ITK reads it as such
        stream.seek(0)
        head = stream.read(65536)
        stream.seek(-4, 2)
        isize = struct.unpack("<I", stream.read(4))[0]
    try:
        header = zlib.decompressobj(31).decompress(head, 544)
    except zlib.error:
        return None  # not a gzip stream after all: ITK's reader gives its error
    layout = nifti_layout(header)
    if layout is None:
        return None
    offset, data = layout
    if isize == (offset + data) % (1 << 32):
        return None  # the trailer of a whole stream of the promised length
    length, _ = _gzip_length(path, name)
    if length < offset + data:
        raise _short(name, length - offset, data)
    return None


def _check_nifti(path: Path, name: str) -> None:
    with open(path, "rb") as stream:
        layout = nifti_layout(stream.read(544))
    if layout is not None:
        offset, data = layout
        size = path.stat().st_size
        if size < offset + data:
            raise _short(name, size - offset, data)


def _check_metaimage(path: Path, name: str) -> None:
    with open(path, "rb") as stream:
        head = stream.read(65536)
    fields, data_start = {}, None
    for line in head.splitlines(keepends=True):
        text = line.decode("latin-1").strip()
        key, _, value = text.partition("=")
        fields[key.strip()] = value.strip()
        if key.strip() == "ElementDataFile":
            data_start = head.index(line) + len(line)
            break
    data_file = fields.get("ElementDataFile")
    size = fields.get("ElementType")
    if data_file is None or size not in _MET_SIZES or fields.get("HeaderSize", "0") not in ("0", ""):
        return
    try:
        dims = [int(d) for d in fields["DimSize"].split()]
        channels = int(fields.get("ElementNumberOfChannels", "1"))
    except (KeyError, ValueError):
        return
    expected = _MET_SIZES[size] * channels
    for d in dims:
        expected *= d
    compressed = fields.get("CompressedData", "False").lower() == "true"
    if compressed:
        if "CompressedDataSize" not in fields or not fields["CompressedDataSize"].isdigit():
            return
        expected = int(fields["CompressedDataSize"])
    if data_file == "LOCAL":
        present = path.stat().st_size - (data_start or 0)
    elif data_file == "LIST" or "%" in data_file or not (path.parent / data_file).is_file():
        return  # slices in several files, or a missing data file (ITK names it)
    else:
        present = (path.parent / data_file).stat().st_size
    if present < expected:
        raise _short(name, present, expected, "compressed image data" if compressed else "image data")


def check_complete(path: Path, name: str) -> None:
    """Raise ``ImageReadError`` (naming ``name`` and the amount missing) when the data of ``path`` ends early."""
    suffix = image_suffix(path)
    try:
        if suffix == ".nii.gz":
            _check_nifti_gz(path, name)
        elif suffix == ".nii":
            _check_nifti(path, name)
        elif suffix in (".mha", ".mhd"):
            _check_metaimage(path, name)
    except (OSError, struct.error):
        return  # an unreadable or tiny file: ITK's reader gives its own error


def nrrd_message(error: str, name: str) -> Optional[str]:
    """ITK's (teem's) error for a NRRD file whose data ends early, as our message; None for other errors."""
    raw = re.search(r"fread got only (\d+) (\d+)-sized things, not (\d+)", error)
    if raw:
        read, item, wanted = (int(g) for g in raw.groups())
        return str(_short(name, read * item, wanted * item))
    packed = re.search(r"expected (\d+) bytes but received (\d+)", error)
    if packed:
        return str(_short(name, int(packed.group(2)), int(packed.group(1))))
    return None
