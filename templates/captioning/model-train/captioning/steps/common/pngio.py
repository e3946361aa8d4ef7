"""A small PNG encoder and decoder on zlib and numpy (the stages need no Pillow).

``encode_png`` writes 8-bit greyscale, RGB or RGBA images, non-interlaced, every row with the "Up" filter and
zlib level 9: flat shapes compress to a few hundred bytes, and the same pixels always give the same bytes with
the same zlib. ``decode_png`` reads what common encoders write: 8- and 16-bit greyscale, grey+alpha, RGB, RGBA,
palette images (1/2/4/8-bit) and greyscale of 1/2/4 bits, with all five row filters; Adam7-interlaced files are
refused with a clear error. ``to_rgb`` turns any decoded image into an (H, W, 3) uint8 array.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

SIGNATURE = b"\x89PNG\r\n\x1a\n"
_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # colour type -> samples per pixel
MAX_PIXELS = 64 * 1024 * 1024  # refuse decompression bombs: 64 Mpixels is far above what captioning needs


class PNGError(ValueError):
    """The bytes are not a PNG this decoder reads; the message says why."""


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def encode_png(pixels: np.ndarray, level: int = 9) -> bytes:
    """PNG bytes for an (H, W) grey, (H, W, 3) RGB or (H, W, 4) RGBA uint8 array."""
    array = np.asarray(pixels)
    if array.dtype != np.uint8:
        raise PNGError(f"encode_png takes uint8 pixels, got {array.dtype}")
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4) or 0 in array.shape:
        raise PNGError(f"encode_png takes (H, W), (H, W, 3) or (H, W, 4) pixels, got shape {array.shape}")
    height, width, channels = array.shape
    colour_type = {1: 0, 3: 2, 4: 6}[channels]
    rows = array.reshape(height, width * channels)
    previous = np.vstack([np.zeros((1, rows.shape[1]), np.uint8), rows[:-1]])
    filtered = (rows.astype(np.int16) - previous).astype(np.uint8)  # "Up": the byte minus the byte above, mod 256
    raw = np.hstack([np.full((height, 1), 2, np.uint8), filtered]).tobytes()
    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    return (SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(raw, level))
            + _chunk(b"IEND", b""))


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    return b if pb <= pc else c


def _unfilter(raw: bytes, height: int, stride: int, bpp: int) -> np.ndarray:
    """Undo the per-row filters; returns (height, stride) uint8."""
    if len(raw) < height * (stride + 1):
        raise PNGError(f"image data is truncated: {len(raw)} bytes for {height} rows of {stride + 1}")
    data = np.frombuffer(raw, np.uint8, count=height * (stride + 1)).reshape(height, stride + 1)
    out = np.zeros((height, stride), np.uint8)
    prior = np.zeros(stride, np.uint8)
    for y in range(height):
        kind, line = int(data[y, 0]), data[y, 1:]
        if kind == 0:
            row = line.copy()
        elif kind == 2:
            row = (line.astype(np.uint16) + prior).astype(np.uint8)
        elif kind == 1 and stride % bpp == 0:
            # Sub: each byte adds the byte bpp to its left -> a running sum per channel, mod 256
            row = (np.cumsum(line.reshape(-1, bpp).astype(np.uint64), axis=0) % 256).astype(np.uint8).reshape(-1)
        elif kind in (1, 3, 4):
            cur = bytearray(line.tobytes())
            up = prior.tobytes()
            for i in range(stride):
                left = cur[i - bpp] if i >= bpp else 0
                if kind == 1:
                    pred = left
                elif kind == 3:
                    pred = (left + up[i]) >> 1
                else:
                    pred = _paeth(left, up[i], up[i - bpp] if i >= bpp else 0)
                cur[i] = (cur[i] + pred) & 0xFF
            row = np.frombuffer(bytes(cur), np.uint8)
        else:
            raise PNGError(f"row {y} has unknown filter type {kind}")
        out[y] = row
        prior = row
    return out


def decode_png(data: bytes) -> np.ndarray:
    """Pixels of a PNG as uint8 (H, W, C): C is 1 (grey), 2 (grey+alpha), 3 (RGB or palette) or 4 (RGBA)."""
    if not data.startswith(SIGNATURE):
        raise PNGError("not a PNG file (bad signature)")
    pos, header, palette, idat = len(SIGNATURE), None, None, []
    while pos + 8 <= len(data):
        (length,), kind = struct.unpack(">I", data[pos:pos + 4]), data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        if len(body) != length or pos + 12 + length > len(data):
            raise PNGError(f"chunk {kind!r} is truncated")
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        if zlib.crc32(kind + body) & 0xFFFFFFFF != crc:
            raise PNGError(f"chunk {kind!r} fails its CRC check: the file is corrupt")
        pos += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"PLTE":
            palette = np.frombuffer(body, np.uint8).reshape(-1, 3)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
    if header is None or not idat:
        raise PNGError("PNG without IHDR or IDAT chunk")
    width, height, depth, colour_type, compression, filter_method, interlace = header
    if colour_type not in _CHANNELS or compression != 0 or filter_method != 0:
        raise PNGError(f"unsupported PNG header (colour type {colour_type}, compression {compression})")
    if interlace != 0:
        raise PNGError("interlaced (Adam7) PNGs are not supported; save the image without interlacing")
    if depth not in (1, 2, 4, 8, 16) or (depth < 8 and colour_type not in (0, 3)) or (depth == 16 and colour_type == 3):
        raise PNGError(f"unsupported bit depth {depth} for colour type {colour_type}")
    if width == 0 or height == 0 or width * height > MAX_PIXELS:
        raise PNGError(f"image size {width}x{height} is empty or above {MAX_PIXELS} pixels")
    channels = _CHANNELS[colour_type]
    bits = depth * channels
    stride, bpp = (width * bits + 7) // 8, max(1, bits // 8)
    expected = height * (stride + 1)
    decompressor = zlib.decompressobj()
    raw = decompressor.decompress(b"".join(idat), expected)  # never inflate more than the image needs
    rows = _unfilter(raw, height, stride, bpp)
    if depth == 16:
        pixels = rows.reshape(height, width, channels, 2)[..., 0]  # keep the high byte
    elif depth == 8:
        pixels = rows.reshape(height, width, channels)
    else:
        samples = np.unpackbits(rows, axis=1).reshape(height, -1, depth)[:, :width]
        values = samples.dot(1 << np.arange(depth - 1, -1, -1)).astype(np.uint8)
        if colour_type == 0:
            values = (values.astype(np.uint16) * 255 // ((1 << depth) - 1)).astype(np.uint8)
        pixels = values[:, :, None]
    if colour_type == 3:
        if palette is None:
            raise PNGError("palette image without PLTE chunk")
        index = pixels[:, :, 0]
        if int(index.max()) >= len(palette):
            raise PNGError("palette index out of range")
        pixels = palette[index]
    return np.ascontiguousarray(pixels)


def to_rgb(pixels: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 from a decoded image: grey is repeated, alpha is dropped (the colours as drawn)."""
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    channels = pixels.shape[2]
    if channels in (1, 2):
        return np.repeat(pixels[:, :, :1], 3, axis=2)
    return np.ascontiguousarray(pixels[:, :, :3])


def read_rgb(path) -> np.ndarray:
    """(H, W, 3) uint8 pixels of the PNG file at path."""
    with open(path, "rb") as fh:
        return to_rgb(decode_png(fh.read()))
