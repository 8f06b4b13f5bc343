"""`tdet repo build --preprocess dali`: the `<m>_preprocess` step as a DALI pipeline (Triton's DALI backend,
in the NGC tritonserver image): IMAGE (encoded bytes as uint8 [-1]) -> images uint8 [3,H,W] RGB + orig_hw int32 [2],
the python step's outputs (ensembles/preprocess/model.py, client/preprocess.py), so the engine and postprocess
are unchanged.

The same pipeline function builds both variants: device="gpu" (nvJPEG decode, GPU resize: what the build
serialises) and device="cpu" (DALI's CPU operators: what the tests run here, where there is no GPU).
Semantics, as the python step: RGB, EXIF orientation applied, stretched to the input size (no letterbox),
bilinear with half-pixel centres; "cv2-linear" (DAMO-YOLO) without antialiasing, "pil-bilinear" (RT-DETRv2)
with DALI's antialiasing (a triangle filter as wide as the scale, PIL's); the cast/scale stays in the engine.
"""

from __future__ import annotations

from pathlib import Path

from tdet.client.errors import UserError
from tdet.client.specs import EXPORT_INPUT, PreprocessSpec

DALI_INPUT = "IMAGE"
DALI_OUTPUTS = (EXPORT_INPUT, "orig_hw")  # the DALI backend matches config outputs to these by position
DALI_FILE = "model.dali"
DALI_MISSING = "--preprocess dali needs nvidia-dali (nvidia-dali-cuda120): pip install -e '.[dali]'"


def require_dali():
    """nvidia.dali, or a UserError saying how to install it."""
    try:
        import nvidia.dali as dali
    except ImportError:
        raise UserError(DALI_MISSING) from None
    return dali


def dali_pipeline(spec: PreprocessSpec, *, device: str, batch_size: int, num_threads: int = 2):
    """The preprocess pipeline (not built). device: "gpu" (decoders.image on "mixed" = nvJPEG, resize and
    transpose on the GPU) or "cpu". device_id stays None: serialising needs no GPU, and the backend runs each
    instance's copy on that instance's GPU."""
    if device not in ("gpu", "cpu"):
        raise ValueError(f"device {device!r}: gpu or cpu")
    dali = require_dali()
    fn, types = dali.fn, dali.types

    @dali.pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=None)
    def preprocess():
        encoded = fn.external_source(name=DALI_INPUT, dtype=types.UINT8, ndim=1, device="cpu")
        # adjust_orientation: the EXIF rotation, as the python step applies it
        rgb = fn.decoders.image(encoded, device="mixed" if device == "gpu" else "cpu", output_type=types.RGB,
                                adjust_orientation=True)
        orig_hw = rgb.shape(dtype=types.INT32)[0:2]  # [H, W, C] -> (height, width), on the CPU either way
        resized = fn.resize(rgb, size=list(spec.size_hw), interp_type=types.INTERP_LINEAR,
                            antialias=spec.resize == "pil-bilinear", dtype=types.UINT8)
        return fn.transpose(resized, perm=[2, 0, 1]), orig_hw

    return preprocess()


def serialized_pipeline(spec: PreprocessSpec, *, device: str = "gpu", batch_size: int) -> bytes:
    """The pipeline as the bytes the DALI backend loads (model.dali)."""
    return dali_pipeline(spec, device=device, batch_size=batch_size).serialize()


def dali_version() -> str:
    """The nvidia-dali release that serialises model.dali (the backend's DALI must be able to read it)."""
    return str(require_dali().__version__)


def write_dali_model(version_dir: Path, spec: PreprocessSpec, batch_size: int) -> Path:
    """`<m>_preprocess/1/model.dali`: the GPU pipeline, for up to `batch_size` images per batch."""
    path = Path(version_dir) / DALI_FILE
    path.write_bytes(serialized_pipeline(spec, device="gpu", batch_size=batch_size))
    return path
