"""What `read_clip` is given: a path, bytes or a binary file object (`Source`), and what the file is
(`sniff`), named before a decoder gives a cryptic error about it. `VideoError` is the error of every file
that cannot be used as a video; `timesformer.video` exports it."""

from __future__ import annotations

import io
import os
from pathlib import Path


class VideoError(ValueError):
    """A file that cannot be used as a video, with a message for the user."""


_IMAGE_MAGIC = [
    (b"\x89PNG\r\n\x1a\n", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"BM", "a BMP image"),
    (b"II*\x00", "a TIFF image"), (b"MM\x00*", "a TIFF image"),
]
_AUDIO_MAGIC = [(b"ID3", "an MP3 audio file"), (b"fLaC", "a FLAC audio file"), (b"OggS", None)]


def sniff(head: bytes) -> str | None:
    """'gif', or None to try the decoders; raises VideoError for input that is certainly not a video."""
    if not head:
        raise VideoError("empty file (0 bytes): not a video")
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        raise VideoError("this is a WebP image, not a video")
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        raise VideoError("this is a WAV audio file: no video stream")
    for magic, what in _IMAGE_MAGIC + _AUDIO_MAGIC:
        if head.startswith(magic) and what is not None:
            kind = "image" if "image" in what else "audio"
            raise VideoError(f"this is {what}, not a video" + (" (no video stream)" if kind == "audio" else ""))
    if head.startswith(b"%PDF"):
        raise VideoError("this is a PDF document, not a video")
    if head.startswith(b"PK\x03\x04"):
        raise VideoError("this is a ZIP archive, not a video")
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and all(c.isprintable() or c in "\r\n\t" for c in text):
        raise VideoError("this is a text file, not a video")
    return None


class Source:
    """A path or in-memory bytes, with the first bytes read for sniffing."""

    def __init__(self, source):
        self.path: str | None = None
        self.data: bytes | None = None
        if isinstance(source, (str, os.PathLike)):
            p = Path(source)
            if not p.exists():
                raise VideoError(f"no such file: {p}")
            if p.is_dir():
                raise VideoError(f"{p} is a folder, not a video file")
            self.path = str(p)
            self.name = p.name
            with open(p, "rb") as f:
                self.head = f.read(4096)
        elif isinstance(source, (bytes, bytearray, memoryview)):
            self.data = bytes(source)
            self.name = "<bytes>"
        elif hasattr(source, "read"):
            if isinstance(source, io.TextIOBase):
                raise VideoError("the file object is opened in text mode: open the video with 'rb'")
            data = source.read()
            if isinstance(data, str):
                raise VideoError("the file object is opened in text mode: open the video with 'rb'")
            self.data = bytes(data)
            self.name = getattr(source, "name", "<file>")
        else:
            raise TypeError(f"read_clip takes a path, bytes or a binary file object, not {type(source).__name__}")
        if self.data is not None:
            self.head = self.data[:4096]

    def open(self):
        """What the decoders take: the path, or a fresh BytesIO."""
        return self.path if self.path is not None else io.BytesIO(self.data)
