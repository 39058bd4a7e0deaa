"""Video in and out: MP4 / WebM / GIF / ... through PyAV (FFmpeg's decoders), or a folder of frames;
frames sampled as Molmo2's processor samples them; GIF and MP4 written with points and tracks drawn.

    read_video(src, max_frames=64, max_fps=2.0) -> Video(frames uint8 (F, H, W, 3), timestamps (F,) s,
                                                         fps, total frames, size)
Every failure is an InvalidImage that says what was wrong: a file that is not a video, one without a
video stream, zero frames, frames over MAX_FRAME_PIXELS, more than MAX_DECODED_FRAMES frames.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from mmfm.errors import InvalidImage
from mmfm.vision.crops import sample_frame_indices
from mmfm.vision.io import load_image

MAX_DECODED_FRAMES = 20_000  # about 11 minutes at 30 fps: longer videos are cut into clips first
MAX_FRAME_PIXELS = 3840 * 2160
FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


@dataclass
class Video:
    frames: np.ndarray  # (F, H, W, 3) uint8, the sampled frames
    timestamps: list[float]  # seconds of each sampled frame
    fps: float | None  # of the source (None: unknown, e.g. a folder of frames)
    total: int  # frames in the source

    @property
    def size(self) -> tuple[int, int]:
        return self.frames.shape[2], self.frames.shape[1]  # (width, height)


def _decode(path: Path) -> tuple[list[np.ndarray], float | None]:
    import av

    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError, ValueError) as e:
        raise InvalidImage(f"{path}: not a video FFmpeg can read ({type(e).__name__}: {e})") from e
    with container:
        if not container.streams.video:
            raise InvalidImage(f"{path}: the file has no video stream")
        stream = container.streams.video[0]
        if stream.width * stream.height > MAX_FRAME_PIXELS:
            raise InvalidImage(f"{path}: frames of {stream.width} x {stream.height} are over the limit of "
                               f"{MAX_FRAME_PIXELS:,} pixels")
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate else None
        frames = []
        try:
            for frame in container.decode(stream):
                if len(frames) >= MAX_DECODED_FRAMES:
                    raise InvalidImage(f"{path}: more than {MAX_DECODED_FRAMES} frames; cut it into clips first")
                frames.append(frame.to_ndarray(format="rgb24"))
        except av.error.FFmpegError as e:
            raise InvalidImage(f"{path}: the video is corrupt after {len(frames)} frames ({e})") from e
    return frames, fps


def read_video(src, max_frames: int = 64, max_fps: float = 2.0, fps: float | None = None) -> Video:
    """A video file or a folder of frames (sorted by name; `fps` says their rate, default max_fps) ->
    the frames Molmo2 would look at."""
    path = Path(src)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in FRAME_SUFFIXES)
        if len(files) > MAX_DECODED_FRAMES:
            raise InvalidImage(f"{path}: more than {MAX_DECODED_FRAMES} frames")
        frames = [np.asarray(load_image(p)) for p in files]
        rate = fps
    elif path.is_file():
        frames, rate = _decode(path)
        rate = fps or rate
    else:
        raise InvalidImage(f"{path}: no such file or folder")
    if not frames:
        raise InvalidImage(f"{path}: the video has no frames")
    if len({f.shape for f in frames}) > 1:
        raise InvalidImage(f"{path}: the frames do not all have the same size")
    keep = sample_frame_indices(len(frames), rate, max_frames=max_frames, max_fps=max_fps)
    step = rate or max_fps
    return Video(np.stack([frames[i] for i in keep]), [i / step for i in keep], rate, len(frames))


# ----------------------------------------------------------------------------------------- writing
PALETTE = [(255, 80, 80), (80, 200, 255), (255, 220, 60), (120, 255, 120), (255, 120, 255), (255, 160, 60)]


def draw_points(frames: np.ndarray, points: list[list[tuple[int, float, float]]], scale: int = 1,
                trail: bool = True) -> list[Image.Image]:
    """frames (F, H, W, 3) uint8; points[f] = [(id, x, y) pixels] on frame f -> PIL frames, upscaled by
    `scale`, with a dot per point (colour by id) and, with trail, each id's path so far (a track)."""
    out, history = [], {}
    for f, frame in enumerate(frames):
        img = Image.fromarray(frame).resize((frame.shape[1] * scale, frame.shape[0] * scale), Image.NEAREST)
        d = ImageDraw.Draw(img)
        for oid, x, y in points[f] if f < len(points) else []:
            history.setdefault(oid, []).append((x * scale, y * scale))
        for oid, path in history.items():
            colour = PALETTE[oid % len(PALETTE)]
            if trail and len(path) > 1:
                d.line(path, fill=colour, width=max(1, scale // 2))
        for oid, x, y in points[f] if f < len(points) else []:
            r = max(2, scale * 1.5)
            colour = PALETTE[oid % len(PALETTE)]
            d.ellipse([x * scale - r, y * scale - r, x * scale + r, y * scale + r], outline=(0, 0, 0), fill=colour)
        out.append(img)
    return out


def write_video(frames, path, fps: float = 4.0) -> Path:
    """PIL images or (F, H, W, 3) uint8 -> a GIF (by Pillow) or an MP4 / WebM / ... (by PyAV, H.264 when
    FFmpeg has it, MPEG-4 part 2 otherwise). Odd sizes are padded to even for the video codecs."""
    path = Path(path)
    images = [f if isinstance(f, Image.Image) else Image.fromarray(np.asarray(f, dtype=np.uint8)) for f in frames]
    if not images:
        raise InvalidImage("no frames to write")
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".gif":
        images[0].save(path, save_all=True, append_images=images[1:], duration=int(round(1000 / fps)), loop=0)
        return path
    import av

    w, h = images[0].size
    w2, h2 = w + w % 2, h + h % 2
    with av.open(str(path), mode="w") as container:
        codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        stream = container.add_stream(codec, rate=int(round(fps)) or 1)
        stream.width, stream.height, stream.pix_fmt = w2, h2, "yuv420p"
        for img in images:
            canvas = Image.new("RGB", (w2, h2))
            canvas.paste(img.convert("RGB"))
            for packet in stream.encode(av.VideoFrame.from_image(canvas)):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


__all__ = ["Video", "read_video", "write_video", "draw_points", "MAX_DECODED_FRAMES"]
