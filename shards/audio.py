"""Audio in and out of the shard format: decode sources (paths or URLs), validate, resample, PCM16 round trip.

Shards store mono PCM16 WAV: lossless for 16-bit sources, half the size of float32, and it
decodes at ~10,000x real time (FLAC ~2,900x), so decoding stays far cheaper than the fbank
the loader computes next.
"""

from __future__ import annotations

import io
import re
import struct
from functools import lru_cache
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio

from shards.location import Location
from shards.retry import StorageFailure, retrying

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")

_DATA_CHUNK = re.compile(r"data\s*:\s*(\d+)\s*\(should be (\d+)\)")
_PLACEHOLDER_SIZES = {0, 0xFFFFFFFF, 0x7FFFFFFF}  # streaming writers leave these in the header
HEADER_BLOCK_BYTES = 64 * 1024  # what one ranged read of a remote source's header fetches
UNREACHABLE = "storage unreachable"  # a remote source its store did not serve within the time budget


class AudioError(Exception):
    """A source that cannot become a valid sample; `reason` is a short category for counting."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def probe(path: str | Path) -> tuple[int, int]:
    """Frames and sample rate from the header alone (no decoding), rejecting bad files."""
    with _open(path, header_only=True) as handle:
        return handle.frames, handle.samplerate


def _open(path: str | Path, header_only: bool = False) -> sf.SoundFile:
    """Open a source (a path or URL), turning every way it can be unusable into an `AudioError` naming it."""
    handle = _open_remote(Location.of(path), header_only) if "://" in str(path) else _open_local(Path(path))
    match = _DATA_CHUNK.search(handle.extra_info or "")
    if match:
        declared, present = int(match.group(1)), int(match.group(2))
        if declared > present and declared not in _PLACEHOLDER_SIZES:
            handle.close()
            raise AudioError("truncated file", f"{path}: header declares {declared} data bytes, file holds {present}")
    if handle.frames <= 0:
        handle.close()
        raise AudioError("empty audio", f"{path} has no audio frames")
    return handle


def _open_local(path: Path) -> sf.SoundFile:
    if path.is_dir():
        raise AudioError("not a file", f"{path} is a directory")
    if not path.exists():
        raise AudioError("missing file", f"{path} does not exist")
    if not path.is_file():
        raise AudioError("not a file", f"{path} is not a regular file")
    try:
        with open(path, "rb"):
            pass
    except PermissionError:
        raise AudioError("permission denied", f"{path} cannot be read by this user") from None
    except OSError as exc:
        raise AudioError("unreadable file", f"{path}: {exc.strerror or exc}") from None
    return _soundfile(str(path), path)


def _open_remote(location: Location, header_only: bool) -> sf.SoundFile:
    """A remote source: its header through small ranged reads (a whole-file read would double the
    traffic of a build), or all of it in one retried read for decoding."""
    try:
        if not location.is_file():
            raise AudioError(
                *(
                    ("not a file", f"{location} is a folder")
                    if location.is_dir()
                    else ("missing file", f"{location} does not exist")
                )
            )
        if header_only:
            return retrying(lambda: _header(location), f"read the header of {location}")
        return _soundfile(io.BytesIO(location.read_bytes()), location)
    except AudioError:
        raise
    except PermissionError:
        raise AudioError("permission denied", f"{location} cannot be read with these credentials") from None
    except StorageFailure as exc:  # not the file's fault: a build fails on it unless --allow-missing
        raise AudioError(UNREACHABLE, str(exc)) from None
    except Exception as exc:  # anything else the backend raises about this object
        raise AudioError("unreadable file", f"{location}: {exc}") from None


def _soundfile(source, name) -> sf.SoundFile:
    """libsndfile's view of a path or file object; a read error of the object is raised as itself."""
    try:
        handle = sf.SoundFile(source)
    except Exception as exc:  # libsndfile raises several types for unreadable input
        if getattr(source, "error", None) is not None:
            raise source.error from None
        raise AudioError("unreadable audio", f"{name}: {exc}") from None
    if getattr(source, "error", None) is not None:
        handle.close()
        raise source.error
    return handle


def _header(location: Location) -> sf.SoundFile:
    """soundfile's view of a remote source's header (frames, rate: all a probe asks), read in small
    ranged requests; the remote file is closed as soon as soundfile has opened it, or failed to."""
    with _ReadRecorder(location) as recorder:
        return _soundfile(recorder, location)


class _ReadRecorder:
    """A remote file for soundfile that keeps the error of a failed read. soundfile's I/O callbacks
    cannot raise (libsndfile would see a short file, and call a network error a truncated file), so
    a failed read returns nothing here and its error is raised once soundfile is done. A context
    manager: leaving it closes the remote file."""

    def __init__(self, location: Location):
        self.handle = location.fs.open(location.path, "rb", block_size=HEADER_BLOCK_BYTES)
        self.error: Exception | None = None

    def __enter__(self) -> _ReadRecorder:
        return self

    def __exit__(self, *_) -> None:
        self.handle.close()

    def read(self, size: int = -1) -> bytes:
        try:
            return self.handle.read(size)
        except Exception as exc:
            self.error = self.error or exc
            return b""

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        try:
            return self.handle.seek(offset, whence)
        except Exception as exc:
            self.error = self.error or exc
            return self.handle.tell()

    def tell(self) -> int:
        return self.handle.tell()


def segment_frames(
    frames: int, sample_rate: int, start_s: float | None, end_s: float | None, path: str
) -> tuple[int, int]:
    """Frame range [first, last) of a segment in seconds, validated against the file length
    (bounds are compared in seconds first, so no value, however large, overflows)."""
    for name, seconds in (("start", start_s), ("end", end_s)):
        if seconds is not None and not 0 <= seconds <= frames / sample_rate + 1.0:
            raise AudioError(
                "segment out of range", f"{path}: {name}={seconds} s, file lasts {frames / sample_rate:.3f} s"
            )
    first = 0 if start_s is None else int(round(start_s * sample_rate))
    last = frames if end_s is None else int(round(end_s * sample_rate))
    if first < 0 or last <= first:
        raise AudioError("invalid segment", f"{path}: start={start_s} end={end_s}")
    if last > frames:
        raise AudioError(
            "segment out of range",
            f"{path}: segment ends at {last / sample_rate:.3f} s, file lasts {frames / sample_rate:.3f} s",
        )
    return first, last


def load_source(
    path: str | Path, sample_rate: int, start_s: float | None = None, end_s: float | None = None
) -> tuple[np.ndarray, bool]:
    """Decode a source (or a segment of it) to mono float32 at `sample_rate`.

    Stereo is downmixed and other rates resampled rather than skipped. Returns the waveform
    and whether PCM16 encoding will clip it (peaks beyond +-1.0), so callers can report it.
    """
    with _open(path) as handle:
        source_rate = handle.samplerate
        first, last = segment_frames(handle.frames, source_rate, start_s, end_s, str(path))
        try:
            handle.seek(first)
            audio = handle.read(last - first, dtype="float32", always_2d=True)
        except Exception as exc:
            raise AudioError("unreadable audio", f"{path}: {exc}") from None
    if audio.shape[0] == 0:
        raise AudioError("empty audio", f"{path} decoded to zero frames")
    if not np.isfinite(audio).all():
        raise AudioError("non-finite samples", f"{path} contains NaN or Inf")
    mono = audio.mean(axis=1)
    if source_rate != sample_rate:
        mono = resample(mono, source_rate, sample_rate)
    return mono, bool(np.abs(mono).max(initial=0.0) > 1.0)


def resample(waveform: np.ndarray, source_rate: int, target_rate: int) -> np.ndarray:
    """Band-limited (windowed sinc) resampling, the same function for building and for tests."""
    tensor = torch.from_numpy(np.ascontiguousarray(waveform, dtype=np.float32))
    with torch.no_grad():
        return _resampler(source_rate, target_rate)(tensor).numpy()


@lru_cache(maxsize=16)
def _resampler(source_rate: int, target_rate: int) -> torchaudio.transforms.Resample:
    """The sinc kernel costs more than resampling a short clip: build it once per rate pair."""
    return torchaudio.transforms.Resample(source_rate, target_rate)


def output_frames(frames: int, source_rate: int, target_rate: int) -> int:
    """Length after resampling, as torchaudio computes it (ceil), to plan shard sizes exactly."""
    return -(-frames * target_rate // source_rate)


def encode_pcm16(waveform: np.ndarray, sample_rate: int) -> bytes:
    """Mono float waveform → PCM16 WAV bytes (values beyond +-1 are clipped)."""
    buffer = io.BytesIO()
    sf.write(buffer, np.clip(waveform, -1.0, 1.0), sample_rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def decode_pcm16(data: bytes) -> tuple[np.ndarray, int]:
    """WAV bytes from a shard → (mono float32 waveform, sample rate)."""
    waveform, rate = sf.read(io.BytesIO(data), dtype="float32")
    return waveform, int(rate)


PCM16_HEADER_BYTES = 44
_PCM16_HEADER = struct.Struct("<4sI4s4sIHHIIHH4sI")


def pcm16_wav_bytes(num_samples: int) -> int:
    """Size of `encode_pcm16` output: 44-byte header plus 2 bytes a sample."""
    return PCM16_HEADER_BYTES + 2 * num_samples


def pcm16_header(head: bytes) -> tuple[int, int]:
    """(samples, sample rate) from the 44-byte header `encode_pcm16` writes; ValueError naming
    what differs for anything else, so a member can be decoded from a prefix of its bytes."""
    if len(head) < PCM16_HEADER_BYTES:
        raise ValueError(f"{len(head)} bytes are too few for a WAV header")
    riff, _, wave, fmt, fmt_size, tag, channels, rate, _, _, bits, data, size = _PCM16_HEADER.unpack_from(head)
    if (riff, wave, fmt, data) != (b"RIFF", b"WAVE", b"fmt ", b"data") or fmt_size != 16:
        raise ValueError("not a canonical 44-byte WAV header")
    if (tag, channels, bits) != (1, 1, 16):
        raise ValueError(f"not mono PCM16 (format {tag}, {channels} channel(s), {bits} bits)")
    return size // 2, rate


def pcm16_samples(data: bytes) -> np.ndarray:
    """PCM16 little-endian bytes → int16 samples, as stored (half the memory of floats, and what
    a stream featurizing on the trainer's device ships)."""
    return np.frombuffer(data, "<i2")


def pcm16_float(samples: np.ndarray) -> np.ndarray:
    """int16 samples → float32 in [-1, 1), the same numbers libsndfile gives."""
    return np.asarray(samples, np.int16).astype(np.float32) / np.float32(32768.0)
