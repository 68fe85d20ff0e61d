"""Reading clips from video files: sampling, resizing, cropping and normalising as the paper.

`read_clip(source, ...)` takes a path, bytes or a binary file object and returns `(video, info)`:
`video` is `(spatial_crops, 3, T, size, size)` float32 normalised with the official mean/std, `info` a
`ClipInfo` with the fps, frame count, duration, sampled indices and original size (for the app).

Frames are sampled on the video's time line: where the frames tile the duration at the container's frame
rate (constant-rate video) a stride of `sampling_rate` frames is a stride of frames; where they do not (an AVI
whose index keeps empty slots for dropped frames, a variable-rate mkv, a GIF with uneven delays) it is a
stride of `sampling_rate / fps` seconds, each sample the frame on screen at that time (`_pick_by_time`).
`window=(start, end)` (seconds) samples the part of the video between those times as if it were the video.

The input is sniffed first (`timesformer.videoinput`: an image, audio, text or archive is named as such);
decord decodes (it seeks to the frames it needs); PyAV is the fallback for what decord cannot open (GIF)
and wherever decord fails on a file PyAV can read. Every failure becomes a `VideoError` (a `ValueError`)
whose message says what is wrong with the file: decord raises `RuntimeError` or `decord.DECORDError`
(unrelated types) with a C++ log line as message, which no user should have to read.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .videoinput import Source, VideoError, sniff

MEAN = 0.45  # official TimeSformer normalisation (Kinetics statistics), also HuggingFace's
STD = 0.225
MAX_PIXELS = 8192 * 8192  # larger frames are refused: 8 such frames are already 1.6 GB of RGB
MAX_FRAMES = 10_000_000  # a frame count above this is a broken header, not a video (≈ 4 days at 30 fps)
SPREAD = 0  # the sampling rate that spreads the frames evenly over the whole video
# file suffixes taken as videos in dataset folders, the app's uploads and sample folders
VIDEO_EXTENSIONS = (".mp4", ".webm", ".avi", ".mov", ".mkv", ".gif", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".ogv")


@dataclass
class ClipInfo:
    fps: float  # average frame rate reported by the container (0.0 when unknown)
    num_frames: int  # frames in the video, as decoded (not the container's index entries)
    indices: list[int]  # the frames sampled (0 ≤ i < num_frames), in order; repeated where a frame stays on screen
    width: int  # original frame size
    height: int
    backend: str  # "decord" or "pyav"
    duration: float = 0.0  # seconds from the first frame's presentation time to the end of the last (0.0: unknown)
    frames: np.ndarray | None = field(default=None, repr=False)  # (T, H, W, 3) uint8 when keep_frames=True


# ---------------------------------------------------------------------------------------------
# sampling and transforms (shared with the synthetic dataset, so both see identical pre-processing)
def sample_indices(num_video_frames: int, num_frames: int = 8, sampling_rate: int = 32, train: bool = False,
                   rng: np.random.Generator | None = None) -> list[int]:
    """`num_frames` indices `sampling_rate` apart: the middle span for testing, a random one for training.

    Videos shorter than the span, and every video with `sampling_rate=SPREAD` (0), are sampled uniformly
    over their whole length (frames repeat when the video has fewer frames than asked for: a 4-frame clip
    still gives 8 frames).
    """
    if num_video_frames < 1:
        raise VideoError("the video has no frames")
    span = (num_frames - 1) * sampling_rate + 1
    if sampling_rate != SPREAD and num_video_frames >= span:
        slack = num_video_frames - span
        if train:
            rng = rng if rng is not None else np.random.default_rng()
            start = int(rng.integers(0, slack + 1))
        else:
            start = slack // 2
        return [start + i * sampling_rate for i in range(num_frames)]
    # uniform over the whole video, centred in each of num_frames equal segments
    return [min(num_video_frames - 1, int((i + 0.5) * num_video_frames / num_frames)) for i in range(num_frames)]


def transform_frames(frames: np.ndarray | torch.Tensor, size: int = 224, spatial_crops: int = 1, train: bool = False,
                     rng: np.random.Generator | None = None, mean: float = MEAN, std: float = STD) -> torch.Tensor:
    """uint8 frames (T, H, W, 3) → normalised float32 (spatial_crops, 3, T, size, size).

    Testing: resize the short side to `size`, then 1 centre crop or 3 crops along the long side (start,
    centre, end: the paper's test views). Training: resize the short side to a random length in
    [size, 1.25·size] and take one random crop (no flip: it would swap left/right motion classes).
    """
    if spatial_crops not in (1, 3):
        raise ValueError(f"spatial_crops must be 1 or 3, got {spatial_crops}")
    x = torch.as_tensor(np.ascontiguousarray(frames)) if isinstance(frames, np.ndarray) else frames
    x = x.permute(0, 3, 1, 2).float()  # (T, 3, H, W)
    H, W = x.shape[-2:]
    short = size
    if train:
        rng = rng if rng is not None else np.random.default_rng()
        short = int(rng.integers(size, int(size * 1.25) + 1))
    if min(H, W) != short:
        scale = short / min(H, W)
        new = (max(short, round(H * scale)), max(short, round(W * scale)))
        x = F.interpolate(x, size=new, mode="bilinear", align_corners=False, antialias=True)
        H, W = new
    if train:
        tops, lefts = [int(rng.integers(0, H - size + 1))], [int(rng.integers(0, W - size + 1))]
    elif spatial_crops == 1:
        tops, lefts = [(H - size) // 2], [(W - size) // 2]
    elif H >= W:  # 3 crops along the long side
        tops, lefts = [0, (H - size) // 2, H - size], [(W - size) // 2] * 3
    else:
        tops, lefts = [(H - size) // 2] * 3, [0, (W - size) // 2, W - size]
    crops = [x[:, :, t:t + size, l_:l_ + size] for t, l_ in zip(tops, lefts)]
    v = torch.stack(crops).permute(0, 2, 1, 3, 4)  # (views, 3, T, size, size)
    return ((v / 255.0 - mean) / std).contiguous()


def denormalize(video: torch.Tensor, mean: float = MEAN, std: float = STD) -> np.ndarray:
    """(3, T, H, W) normalised → (T, H, W, 3) uint8, for display and export."""
    x = (video.detach().float().cpu() * std + mean).clamp(0, 1) * 255
    return x.round().to(torch.uint8).permute(1, 2, 3, 0).numpy()


def temporal_median(video: torch.Tensor, dim: int = 2) -> torch.Tensor:
    """The per-pixel median over time (`dim`, kept as size 1): the still background of a clip, without what
    moves — an object that covers a pixel in fewer than half of the frames is gone from it. Normalising is
    affine per channel, so the median of normalised frames is the normalised median."""
    return video.quantile(0.5, dim=dim, keepdim=True)


# ---------------------------------------------------------------------------------------------
def _check_size(width: int, height: int) -> None:
    if width <= 0 or height <= 0:
        raise VideoError(f"the video stream has no picture size ({width}×{height}): the file is corrupt")
    if width * height > MAX_PIXELS:
        raise VideoError(f"frames of {width}×{height} are too large to decode (limit {MAX_PIXELS:,} pixels)")


def _pick_by_time(starts: np.ndarray, duration: float, fps: float, pick, window=None) -> list[int]:
    """The frames `pick` chooses: by index where the n frames tile the duration at `fps` (to a frame), else
    by presentation time — `pick` then chooses among the duration·fps slots of the container's frame grid
    and each slot is read as the frame on screen in its middle (a frame shown over several slots repeats).
    With `window` (start, end) seconds, `pick` chooses among the frames or slots of that part only.

    `starts`: (n,) presentation time of each frame in seconds, ascending."""
    if window is not None:
        pick = _within(pick, window, duration, fps)
    n = len(starts)
    slots = round(duration * fps) if fps > 0 and math.isfinite(duration) else n
    ascending = n < 2 or bool(np.all(np.diff(starts) >= 0))
    if abs(slots - n) <= 1 or not 1 <= slots <= MAX_FRAMES or not ascending:
        return list(pick(n))
    mids = starts[0] + (np.asarray(pick(slots), dtype=np.float64) + 0.5) / fps  # (T,) seconds
    return (np.searchsorted(starts, mids, side="right") - 1).clip(0, n - 1).tolist()


def _within(pick, window: tuple[float, float | None], duration: float, fps: float):
    """`pick` confined to the `window` (start, end) seconds of a `duration`-second video: over m frames or slots
    (which tile the duration at `fps`, or evenly where the rate is unknown), it picks among those of the window
    and gives their indices among the m."""
    start, end = window
    if duration <= 0:
        raise VideoError("the video reports no duration, so it cannot be cut to a time window")
    if start >= duration:
        raise VideoError(f"the window starts at {start:g} s, past the end of the {duration:.2f} s video")
    end = duration if end is None else min(end, duration)

    def picked(m: int) -> list[int]:
        rate = fps if fps > 0 else m / duration  # frames or slots a second
        a = min(int(start * rate + 1e-6), m - 1)  # (float error of a millionth of a frame is not a frame)
        b = max(a + 1, min(m, math.ceil(end * rate - 1e-6)))
        return [a + i for i in pick(b - a)]

    return picked


def _read_decord(src: Source, pick, window=None):
    import decord

    decord.logging.set_level(decord.logging.QUIET)
    try:
        with _native_stderr_hidden():
            vr = decord.VideoReader(src.open(), ctx=decord.cpu(0), num_threads=1)
        n = len(vr)  # the frames it can decode: an AVI's empty dropped-frame slots are not among them
        if n < 1 or n > MAX_FRAMES:
            raise _Fallback(f"decord reports {n} frames")
        h, w = vr[0].shape[:2] if n else (0, 0)
        _check_size(w, h)
        fps = float(vr.get_avg_fps() or 0.0)
        fps = fps if math.isfinite(fps) else 0.0
        times = np.asarray(vr.get_frame_timestamp(np.arange(n)), dtype=np.float64)  # (n, 2) start, end in s
        duration = float(times[-1, 1] - times[0, 0])
        if not math.isfinite(duration) or duration <= 0:
            duration = n / fps if fps else 0.0
        indices = _pick_by_time(times[:, 0], duration, fps, pick, window)
        frames = vr.get_batch(indices).asnumpy()
    except (RuntimeError, decord.DECORDError) as e:  # two unrelated types; both only mean "decord failed"
        raise _Fallback(str(e)) from None
    if frames.shape[0] != len(indices) or frames.ndim != 4 or frames.shape[-1] != 3:
        raise _Fallback(f"decord returned frames of shape {frames.shape}")
    return frames, ClipInfo(fps, n, list(indices), w, h, "decord", duration)


@contextlib.contextmanager
def _native_stderr_hidden():
    """decord's C++ writes "[time] .../video_reader.cc:83: ERROR opening: ..." straight to file descriptor 2 for
    a file it cannot open, whatever its log level, before PyAV reads the file or the caller says in a sentence
    what is wrong with it: descriptor 2 goes to /dev/null for that call alone."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no descriptor 2 to hide
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


class _Fallback(Exception):
    """decord could not read the file: try PyAV."""


def _av_message(err: Exception) -> str:
    text = str(err).lower()
    if "invalid data" in text or "could not find codec" in text or "end of file" in text:
        return "not a video file (or a corrupt one): no decoder could read it"
    return f"the video could not be decoded ({type(err).__name__}: {str(err)[:200]})"


def _read_pyav(src: Source, pick, window=None):
    import av

    try:
        container = av.open(src.open(), mode="r")
    except av.error.FFmpegError as e:
        raise VideoError(_av_message(e)) from None
    except (OSError, ValueError) as e:
        raise VideoError(f"not a video file: {e}") from None
    with container:
        if not container.streams.video:
            if container.streams.audio:
                raise VideoError("no video stream: this is an audio-only file")
            raise VideoError("not a video file (or a corrupt one): no video stream found")
        stream = container.streams.video[0]
        w, h = stream.codec_context.width, stream.codec_context.height
        _check_size(w, h)
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate else 0.0
        tb = float(stream.time_base) if stream.time_base else 0.0
        # count the frames from the packets that hold one: GIF and WebM headers carry no count, and an AVI's
        # index also lists the empty slots of dropped frames
        try:
            packets = [(p.pts, p.duration) for p in container.demux(stream) if p.size > 0]
        except av.error.FFmpegError as e:
            raise VideoError(_av_message(e)) from None
        container.seek(0)
        n = len(packets)
        if n < 1:
            raise VideoError("the video stream has no frames (empty or truncated file)")
        if n > MAX_FRAMES:
            raise VideoError(f"the stream holds {n:,} frames: the file is corrupt")
        starts, duration = _packet_times(packets, tb, fps)
        listed, header = int(stream.frames or 0), float(stream.duration or 0) * tb
        if listed > n and duration < 0.95 * header:  # the index outlives the data: a cut file, not dropped frames
            raise VideoError(f"the file is truncated or corrupt: its index lists {listed} frames ({header:.2f} s) "
                             f"but it holds {n} ({duration:.2f} s)")
        indices = _pick_by_time(starts, duration, fps, pick, window)
        wanted = set(indices)
        last = max(indices)
        got: dict[int, np.ndarray] = {}
        decoded = 0
        try:
            for i, frame in enumerate(container.decode(stream)):
                decoded = i + 1
                if i in wanted:
                    got[i] = frame.to_ndarray(format="rgb24")
                if i >= last:
                    break
        except av.error.FFmpegError as e:
            if decoded == 0:
                raise VideoError(_av_message(e)) from None
        if len(got) < len(wanted):
            if decoded == 0:
                raise VideoError("not a video file (or a corrupt one): no frame could be decoded")
            raise VideoError(f"the file is truncated or corrupt: only {decoded} of {n} frames could be decoded")
    frames = np.stack([got[i] for i in indices])
    if frames.shape[1:3] != (h, w):  # a stream whose frames change size mid-way
        h, w = frames.shape[1:3]
    return frames, ClipInfo(fps, n, list(indices), w, h, "pyav", duration)


def _packet_times(packets: list[tuple[int | None, int | None]], tb: float, fps: float) -> tuple[np.ndarray, float]:
    """((n,) start of each frame in seconds from the first, ascending; duration) from (pts, duration) packets
    in `tb` units; evenly spaced at `fps` where the packets carry no timestamps."""
    pts = [p for p, _ in packets]
    step = 1.0 / fps if fps > 0 else 0.0
    if tb <= 0 or any(p is None for p in pts):
        return np.arange(len(pts)) * step, len(pts) * step
    order = np.argsort(pts, kind="stable")  # decode order → presentation order (B-frames)
    starts = (np.asarray(pts, dtype=np.float64)[order] - min(pts)) * tb
    last = packets[order[-1]][1]
    return starts, float(starts[-1] + (last * tb if last else step))


def decode_frames(source, indices_for, *, backend: str = "auto", window=None) -> tuple[np.ndarray, ClipInfo]:
    """Decode the frames `indices_for(n)` picks among the video's n frames — or, where frame count and time
    disagree, among its duration·fps time slots (see `_pick_by_time`) — of the `window` (start, end or None)
    seconds when given: uint8 (T, H, W, 3) and ClipInfo."""
    src = Source(source)
    kind = sniff(src.head)
    if backend not in ("auto", "decord", "pyav"):
        raise ValueError(f"backend must be auto, decord or pyav, not {backend!r}")
    if kind != "gif" and backend in ("auto", "decord"):
        try:
            return _read_decord(src, indices_for, window)
        except _Fallback as e:
            if backend == "decord":
                raise VideoError(f"decord could not read {src.name}: {str(e).splitlines()[0][:200]}") from None
    return _read_pyav(src, indices_for, window)


def read_clip(source, num_frames: int = 8, sampling_rate: int = 32, size: int = 224, spatial_crops: int = 1,
              train: bool = False, rng: np.random.Generator | None = None, backend: str = "auto",
              keep_frames: bool = False, mean: float = MEAN, std: float = STD,
              window: tuple[float, float | None] | None = None) -> tuple[torch.Tensor, ClipInfo]:
    """Decode, sample, resize, crop and normalise one clip (of the `window` (start, end) seconds of the video:
    end None is the end; the whole video without it).

    Returns `(video, info)`: `video` float32 `(spatial_crops, 3, num_frames, size, size)`; `info` a ClipInfo
    (fps, num_frames, indices, width, height, backend; the sampled uint8 frames with keep_frames=True).
    `sampling_rate=SPREAD` (0) spreads the frames evenly over the whole video.
    Raises VideoError (a ValueError) on anything that is not a readable video.
    """
    _check_arguments(num_frames, sampling_rate, size, spatial_crops, mean, std, window)
    rng = rng if rng is not None else (np.random.default_rng() if train else None)
    frames, info = decode_frames(source, lambda n: sample_indices(n, num_frames, sampling_rate, train, rng),
                                 backend=backend, window=window)
    video = transform_frames(frames, size, spatial_crops, train, rng, mean, std)
    if keep_frames:
        info.frames = frames
    return video, info


def _check_arguments(num_frames, sampling_rate, size, spatial_crops, mean, std, window) -> None:
    """read_clip's arguments, before anything is decoded: a ValueError naming the first bad one (a float frame
    count, a one-element window or std=0 would otherwise end in a TypeError, an IndexError or NaNs)."""
    for name, value, low in (("num_frames", num_frames, 1), ("size", size, 1), ("sampling_rate", sampling_rate, 0)):
        if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < low:
            spread = " (0: spread)" if name == "sampling_rate" else ""
            raise ValueError(f"{name} must be an integer ≥ {low}{spread}, got {value!r}")
    if spatial_crops not in (1, 3):
        raise ValueError(f"spatial_crops must be 1 or 3, got {spatial_crops!r}")
    for name, value in (("mean", mean), ("std", std)):
        if not isinstance(value, numbers.Real) or not math.isfinite(value) or (name == "std" and value <= 0):
            raise ValueError(f"{name} must be a {'positive ' * (name == 'std')}finite number, got {value!r}")
    if window is None:
        return
    if not isinstance(window, (tuple, list)) or len(window) != 2:
        raise ValueError(f"window must be a pair (start, end) in seconds, not {window!r}")
    start, end = window
    numeric = isinstance(start, numbers.Real) and (end is None or isinstance(end, numbers.Real))
    if not (numeric and start >= 0 and (end is None or end > start)):
        raise ValueError(f"a time window starts at 0 s or later and ends after it starts, not {window}")


def write_video(path, frames: np.ndarray, fps: float = 8.0, crf: int = 18) -> Path:
    """uint8 (T, H, W, 3) → an H.264 mp4 (yuv444p where a side is odd, else yuv420p) with PyAV."""
    import av

    path = Path(path)
    frames = np.asarray(frames, dtype=np.uint8)
    T, H, W, _ = frames.shape
    with av.open(str(path), mode="w") as out:
        stream = out.add_stream("libx264", rate=max(1, round(fps)))
        stream.width, stream.height = W, H
        stream.pix_fmt = "yuv420p" if H % 2 == 0 and W % 2 == 0 else "yuv444p"
        stream.options = {"crf": str(crf), "preset": "medium"}
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path
