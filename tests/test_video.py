"""read_clip on files made by a real ffmpeg: containers, odd shapes, sampling, and every kind of bad input."""

import io
import math
import subprocess
import sys
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
import torch

from timesformer import video as V
from timesformer.video import VideoError, read_clip, sample_indices, transform_frames

FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()


def ffmpeg(*args):
    subprocess.run([FFMPEG, "-loglevel", "error", "-y", *args], check=True, timeout=60)


def lavfi(path, src="testsrc2", size="96x64", rate=25, frames=32, extra=()):
    sep = "" if src.endswith(":") else "="
    ffmpeg("-f", "lavfi", "-i", f"{src}{sep}size={size}:rate={rate}", "-frames:v", str(frames), *extra, str(path))
    return path


DROPPED_PTS = "N+floor(N*N*0.0838)"  # frame N's slot on the 15 fps grid: 0, 1, 2, 3, 5, ..., 443


def dropped_slot(n: int) -> int:
    return n + math.floor(n * n * 0.0838)


def dropped_frame_avi(path):
    """An AVI with dropped-frame slots, as capture software writes them: 68 Cinepak frames at uneven times on
    a 15 fps grid over 29.6 s, so the index has 444 entries and 376 of them are empty."""
    return lavfi(path, size="64x48", rate=15, frames=68, extra=(
        "-vf", f"setpts='{DROPPED_PTS}/TB/15'", "-c:v", "cinepak", "-fps_mode", "vfr", "-enc_time_base", "1/15"))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("videos")
    f = {}
    for ext in ("mp4", "webm", "avi", "mov", "mkv"):
        extra = ("-pix_fmt", "yuv420p") if ext in ("mp4", "mov", "mkv") else ()
        f[ext] = lavfi(d / f"clip.{ext}", extra=extra)
    f["gif"] = lavfi(d / "anim.gif", size="64x48", rate=10, frames=6)
    # testsrc2 rounds odd sizes down to even ones: scale to the odd size
    f["odd"] = lavfi(d / "odd.mp4", size="320x240", frames=12, extra=("-vf", "scale=321:239", "-pix_fmt", "yuv444p"))
    f["portrait"] = lavfi(d / "portrait.mp4", size="48x96", frames=12, extra=("-pix_fmt", "yuv420p"))
    f["one"] = lavfi(d / "one.mp4", frames=1, extra=("-pix_fmt", "yuv420p"))
    f["four"] = lavfi(d / "four.mp4", frames=4, extra=("-pix_fmt", "yuv420p"))
    f["long"] = lavfi(d / "long.mp4", size="32x32", frames=900, extra=("-pix_fmt", "yuv420p", "-g", "30"))
    f["vfr"] = lavfi(d / "vfr.mkv", frames=40, extra=("-vf", "setpts='if(lt(N,20),N,2*N)/25/TB'",
                                                        "-fps_mode", "vfr", "-pix_fmt", "yuv420p"))
    f["dropped"] = dropped_frame_avi(d / "dropped.avi")
    f["gray"] = lavfi(d / "gray.mp4", src="color=c=0x737373:", size="64x64", frames=10, extra=("-pix_fmt", "yuv444p"))
    # a big noisy faststart mp4 to cut: the index survives the cut, the frame data does not
    f["big"] = lavfi(d / "big.mp4", src="testsrc2", size="160x120", frames=32,
                     extra=("-vf", "noise=alls=40:allf=t", "-pix_fmt", "yuv420p", "-g", "8", "-movflags", "+faststart"))
    ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:duration=1", str(d / "audio.m4a"))
    f["audio"] = d / "audio.m4a"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=64x48", "-frames:v", "1", str(d / "image.png"))
    f["png_as_mp4"] = d / "image.mp4"
    f["png_as_mp4"].write_bytes((d / "image.png").read_bytes())
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=64x48", "-frames:v", "1", str(d / "image.jpg"))
    f["jpg_as_mp4"] = d / "photo.mp4"
    f["jpg_as_mp4"].write_bytes((d / "image.jpg").read_bytes())
    big = f["big"].read_bytes()
    f["truncated"] = d / "truncated.mp4"
    f["truncated"].write_bytes(big[: len(big) * 3 // 10])
    f["headless"] = d / "headless.mp4"  # the end of a file: no header at all
    f["headless"].write_bytes(big[len(big) // 2:])
    corrupt = bytearray(big)
    rng = np.random.default_rng(0)
    corrupt[len(big) // 2: len(big) // 2 + 5000] = rng.integers(0, 256, 5000, dtype=np.uint8).tobytes()
    f["corrupt"] = d / "corrupt.mp4"
    f["corrupt"].write_bytes(bytes(corrupt))
    f["empty"] = d / "empty.mp4"
    f["empty"].write_bytes(b"")
    f["random"] = d / "random.mp4"
    f["random"].write_bytes(rng.integers(0, 256, 4000, dtype=np.uint8).tobytes())
    f["text"] = d / "notes.mp4"
    f["text"].write_text("this is not a video\n" * 20)
    return f


@pytest.mark.parametrize("ext", ["mp4", "webm", "avi", "mov", "mkv"])
def test_containers(files, ext):
    video, info = read_clip(files[ext], num_frames=8, sampling_rate=4, size=48)
    assert video.shape == (1, 3, 8, 48, 48) and video.dtype == torch.float32
    assert (info.width, info.height, info.num_frames) == (96, 64, 32)
    assert info.fps == pytest.approx(25.0)
    assert info.indices == [1, 5, 9, 13, 17, 21, 25, 29]  # the middle span of 29 frames
    assert info.backend == "decord"
    assert torch.isfinite(video).all()


def test_gif_falls_back_to_pyav(files):
    video, info = read_clip(files["gif"], num_frames=8, size=32)
    assert info.backend == "pyav" and info.num_frames == 6
    assert video.shape == (1, 3, 8, 32, 32)
    assert info.indices == sorted(info.indices) and set(info.indices) <= set(range(6))


def test_bytes_file_object_and_path_agree(files):
    a, _ = read_clip(files["mp4"], size=32, sampling_rate=2)
    b, _ = read_clip(files["mp4"].read_bytes(), size=32, sampling_rate=2)
    with open(files["mp4"], "rb") as fh:
        c, _ = read_clip(fh, size=32, sampling_rate=2)
    d, info = read_clip(io.BytesIO(files["gif"].read_bytes()), size=32)
    assert torch.equal(a, b) and torch.equal(a, c)
    assert info.backend == "pyav" and d.shape == (1, 3, 8, 32, 32)


def test_pyav_backend_matches_decord(files):
    a, ia = read_clip(files["mp4"], size=32, sampling_rate=3, backend="decord")
    b, ib = read_clip(files["mp4"], size=32, sampling_rate=3, backend="pyav")
    assert ia.indices == ib.indices and ib.backend == "pyav"
    assert (a - b).abs().max() < 0.2  # same frames; colour conversion may differ by a few levels


def test_odd_size_portrait_and_three_crops(files):
    video, info = read_clip(files["odd"], size=64, spatial_crops=3, keep_frames=True)
    assert video.shape == (3, 3, 8, 64, 64) and (info.width, info.height) == (321, 239)
    assert info.frames.shape == (8, 239, 321, 3)
    assert not torch.equal(video[0], video[2])  # left and right crops of a wide frame differ
    centre, _ = read_clip(files["odd"], size=64, spatial_crops=1)
    assert torch.allclose(centre[0], video[1])
    tall, info = read_clip(files["portrait"], size=32, spatial_crops=3)
    assert tall.shape == (3, 3, 8, 32, 32) and (info.width, info.height) == (48, 96)
    assert not torch.equal(tall[0], tall[2])  # top and bottom crops


def test_short_videos_repeat_frames(files):
    video, info = read_clip(files["one"], num_frames=8, size=32)
    assert video.shape == (1, 3, 8, 32, 32) and info.indices == [0] * 8
    assert torch.equal(video[0, :, 0], video[0, :, 7])
    _, info = read_clip(files["four"], num_frames=8, size=32)
    assert info.indices == [0, 0, 1, 1, 2, 2, 3, 3]


def test_long_and_vfr_videos(files):
    _, info = read_clip(files["long"], num_frames=8, sampling_rate=32, size=32)
    span = 7 * 32 + 1
    assert info.num_frames == 900 and info.indices[0] == (900 - span) // 2
    assert np.diff(info.indices).tolist() == [32] * 7
    video, info = read_clip(files["vfr"], num_frames=8, sampling_rate=4, size=32)
    assert video.shape == (1, 3, 8, 32, 32) and info.num_frames == 40


def test_dropped_frame_avi_is_sampled_by_time(files):
    """68 frames over 29.6 s: both backends count 68 frames, report 29.6 s and sample the time line."""
    import av

    with av.open(str(files["dropped"])) as c:  # the file is what the issue describes
        stream = c.streams.video[0]
        assert stream.codec_context.name == "cinepak" and stream.frames == 444
        every = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(stream)])
    assert len(every) == 68
    slots = [dropped_slot(n) for n in range(68)]
    assert slots[-1] == 443

    def on_screen(slot):  # the last frame shown at or before this slot of the 15 fps grid
        return max(n for n in range(68) if slots[n] <= slot)

    for backend in ("decord", "pyav"):
        _, info = read_clip(files["dropped"], num_frames=8, sampling_rate=V.SPREAD, size=32, backend=backend,
                            keep_frames=True)
        assert (info.num_frames, info.fps, info.backend) == (68, 15.0, backend)
        # 8 slots spread over 444 (the centres of 8 equal segments), each read as the frame then on screen
        assert info.indices == [on_screen(s) for s in sample_indices(444, 8, V.SPREAD)]
        assert info.duration == pytest.approx(29.6, abs=1e-4)
        assert np.array_equal(info.frames, every[info.indices])
        # a stride of 32 is 32/15 s, from the middle span of the 29.6 s
        _, info = read_clip(files["dropped"], num_frames=8, sampling_rate=32, size=32, backend=backend)
        assert info.indices == [on_screen(109 + 32 * i) for i in range(8)]


def test_a_time_window_is_sampled_as_if_it_were_the_video(files):
    """window=(start, end) seconds: the frames of that part (a constant-rate mp4: frames; the AVI with dropped
    frames: its 15 fps time slots, each read as the frame on screen), sampled as a whole video is."""
    slots = [dropped_slot(n) for n in range(68)]

    def on_screen(slot):
        return max(n for n in range(68) if slots[n] <= slot)

    for backend in ("decord", "pyav"):
        # 900 frames at 25 fps: 10–12 s is frames 250–299
        _, info = read_clip(files["long"], num_frames=8, sampling_rate=V.SPREAD, size=32, backend=backend,
                            window=(10.0, 12.0))
        assert info.indices == [250 + i for i in sample_indices(50, 8, V.SPREAD)]
        _, info = read_clip(files["long"], num_frames=8, sampling_rate=4, size=32, backend=backend, window=(10, 12))
        assert info.indices == [250 + (50 - 29) // 2 + 4 * i for i in range(8)]  # the middle span of the window
        _, info = read_clip(files["long"], num_frames=4, sampling_rate=V.SPREAD, size=32, backend=backend,
                            window=(34.0, None))  # to the end
        assert info.indices == [850 + i for i in sample_indices(50, 4, V.SPREAD)]
        _, info = read_clip(files["dropped"], num_frames=8, sampling_rate=V.SPREAD, size=32, backend=backend,
                            window=(10.0, 20.0))  # slots 150–299 of the 15 fps grid
        assert info.indices == [on_screen(150 + i) for i in sample_indices(150, 8, V.SPREAD)]
    with pytest.raises(V.VideoError, match="the window starts at 40 s, past the end of the 36.00 s video"):
        read_clip(files["long"], size=32, window=(40.0, None))
    with pytest.raises(ValueError, match="ends after it starts"):
        read_clip(files["long"], size=32, window=(5.0, 5.0))


def test_duration_of_constant_rate_and_vfr_videos(files):
    for name, frames, seconds in (("mp4", 32, 1.28), ("gif", 6, 0.6), ("vfr", 40, 3.16)):
        for backend in ("decord", "pyav") if name != "gif" else ("pyav",):
            _, info = read_clip(files[name], size=32, sampling_rate=V.SPREAD, backend=backend)
            assert info.num_frames == frames and info.duration == pytest.approx(seconds, abs=1e-3)
    # the mkv's first 20 frames are 1/25 s apart, the last 20 2/25 s: frame 19 stays on screen 0.76–1.6 s
    _, info = read_clip(files["vfr"], size=32, sampling_rate=V.SPREAD)
    assert info.indices == [4, 14, 19, 19, 22, 27, 32, 37]


def test_normalisation_and_denormalize(files):
    video, _ = read_clip(files["gray"], size=32)
    expected = (0x73 / 255 - V.MEAN) / V.STD
    assert video.mean().item() == pytest.approx(expected, abs=0.03)
    frames = V.denormalize(video[0])
    assert frames.shape == (8, 32, 32, 3) and abs(int(frames.mean()) - 0x73) <= 2


def test_spread_sampling_covers_the_whole_video():
    """sampling_rate=SPREAD (0): centres of T equal segments, for a long video and a short one alike."""
    assert sample_indices(1000, 8, V.SPREAD) == [62, 187, 312, 437, 562, 687, 812, 937]
    assert sample_indices(1000, 8, V.SPREAD) == sample_indices(1000, 8, 10**9)  # as a rate longer than any video
    assert sample_indices(4, 8, V.SPREAD) == [0, 0, 1, 1, 2, 2, 3, 3]
    with pytest.raises(ValueError, match="sampling_rate"):
        read_clip(b"\x00", sampling_rate=-1)


def test_training_sampling_is_random_and_seedable():
    a = sample_indices(1000, 8, 32, train=True, rng=np.random.default_rng(1))
    b = sample_indices(1000, 8, 32, train=True, rng=np.random.default_rng(1))
    starts = {sample_indices(1000, 8, 32, train=True, rng=np.random.default_rng(s))[0] for s in range(20)}
    assert a == b and len(starts) > 10 and max(starts) <= 1000 - 225
    frames = np.random.default_rng(0).integers(0, 256, (8, 40, 60, 3), dtype=np.uint8)
    x = transform_frames(frames, size=32, train=True, rng=np.random.default_rng(0))
    y = transform_frames(frames, size=32, train=True, rng=np.random.default_rng(0))
    assert x.shape == (1, 3, 8, 32, 32) and torch.equal(x, y)


@pytest.mark.parametrize("name, message", [
    ("empty", "empty file"),
    ("random", "not a video"),
    ("text", "text file"),
    ("png_as_mp4", "PNG image"),
    ("jpg_as_mp4", "JPEG image"),
    ("audio", "no video stream"),
    ("truncated", "truncated"),
    ("headless", "not a video"),
])
def test_bad_input_raises_video_error(files, name, message):
    with pytest.raises(VideoError, match=message):
        read_clip(files[name], size=32)
    with pytest.raises(ValueError):  # VideoError is a ValueError
        read_clip(files[name].read_bytes(), size=32)


def test_corrupt_frame_data_fails_clearly_or_decodes(files):
    try:
        video, _ = read_clip(files["corrupt"], size=32, sampling_rate=4)
    except VideoError as e:
        assert "corrupt" in str(e) or "truncated" in str(e)
    else:
        assert video.shape == (1, 3, 8, 32, 32) and torch.isfinite(video).all()


def test_paths_and_argument_errors(files, tmp_path, monkeypatch):
    with pytest.raises(VideoError, match="no such file"):
        read_clip(tmp_path / "missing.mp4")
    with pytest.raises(VideoError, match="folder"):
        read_clip(tmp_path)
    with open(files["mp4"]) as fh, pytest.raises(VideoError, match="text mode"):
        read_clip(fh)
    with pytest.raises(TypeError):
        read_clip(12345)
    monkeypatch.setattr(V, "MAX_PIXELS", 1000)
    with pytest.raises(VideoError, match="too large"):
        read_clip(files["mp4"], size=32)
    with pytest.raises(VideoError, match="too large"):
        read_clip(files["gif"], size=32)


def test_write_video_round_trip(tmp_path):
    frames = np.zeros((6, 30, 41, 3), np.uint8)
    frames[:, :, :20] = (200, 30, 30)
    path = V.write_video(tmp_path / "out.mp4", frames, fps=6)
    video, info = read_clip(path, num_frames=6, sampling_rate=1, size=30, keep_frames=True)
    assert (info.width, info.height, info.num_frames) == (41, 30, 6)
    assert abs(int(info.frames[0, 15, 5, 0]) - 200) < 12


SAMPLE = Path(__file__).resolve().parents[1] / "assets" / "samples" / "moving_left.mp4"


@pytest.mark.parametrize("kwargs, message", [
    (dict(window=(1,)), r"window must be a pair \(start, end\) in seconds, not \(1,\)"),
    (dict(window=(0, 1, 2)), r"window must be a pair \(start, end\) in seconds, not \(0, 1, 2\)"),
    (dict(window="0-1"), r"window must be a pair \(start, end\) in seconds, not '0-1'"),
    (dict(window=(2, 1)), "a time window starts at 0 s or later and ends after it starts, not \\(2, 1\\)"),
    (dict(std=0), "std must be a positive finite number, got 0"),
    (dict(std=float("nan")), "std must be a positive finite number, got nan"),
    (dict(mean=float("inf")), "mean must be a finite number, got inf"),
    (dict(num_frames=2.5), "num_frames must be an integer ≥ 1, got 2.5"),
    (dict(num_frames=0), "num_frames must be an integer ≥ 1, got 0"),
    (dict(size=True), "size must be an integer ≥ 1, got True"),
    (dict(sampling_rate=-1), r"sampling_rate must be an integer ≥ 0 \(0: spread\), got -1"),
    (dict(sampling_rate=1.5), r"sampling_rate must be an integer ≥ 0 \(0: spread\), got 1.5"),
    (dict(spatial_crops=2), "spatial_crops must be 1 or 3, got 2"),
])
def test_read_clip_names_a_bad_argument(kwargs, message):
    """Checked before decoding, each in one line naming the argument (was: IndexError, TypeError, or NaNs)."""
    with pytest.raises(ValueError, match=f"^{message}$"):
        read_clip(SAMPLE, **{"size": 32, **kwargs})


def test_read_clip_takes_numpy_integers_and_a_window_list():
    assert read_clip(SAMPLE, num_frames=np.int64(2), size=16, window=[0, None])[0].shape == (1, 3, 2, 16, 16)


def test_a_file_decord_cannot_open_leaves_no_native_error_line(tmp_path):
    """decord's C++ printed "[time] /github/workspace/src/video/video_reader.cc:83: ERROR opening: ..." on stderr
    beside the one-line message of every command that met a broken clip."""
    data = (Path(__file__).resolve().parent.parent / "assets" / "samples" / "moving_left.mp4").read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[:3000])
    code = ("import sys\nfrom timesformer.video import VideoError, read_clip\ntry:\n"
            "    read_clip(sys.argv[1], 4, 1, 32)\nexcept VideoError as e:\n    print('said:', e, file=sys.stderr)\n"
            "print('still writes', file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "cut.mp4")], capture_output=True, text=True,
                          timeout=120)
    assert proc.stderr.splitlines() == ["said: not a video file (or a corrupt one): no decoder could read it",
                                        "still writes"], proc.stderr

