"""The python steps keep freed buffers (ensembles/heap.py): a request does not page-fault its decode buffers
in again (measured before: 1,320 faults and +4 ms of CPU per 1280x720 JPEG in the served preprocess)."""

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("psutil")  # step_processes reads the stubs through it

# a fresh process preprocessing one 1280x720 JPEG again and again: its minor page faults per image
FAULTS_PER_IMAGE = """
import resource, sys
import cv2, numpy as np
from tdet.client.pipeline import preprocess_rows
from tdet.client.specs import preprocess_spec
from tdet.ensembles.heap import keep_freed_memory
if sys.argv[1] == "keep" and not keep_freed_memory():
    print("no mallopt"); sys.exit(0)
cv2.setNumThreads(1)
img = np.random.default_rng(0).integers(0, 255, (720, 1280, 3), np.uint8)
blob = cv2.imencode(".jpg", cv2.GaussianBlur(img, (9, 9), 3))[1].tobytes()
spec = preprocess_spec("damo-yolo", (320, 320))
preprocess_rows([blob], spec)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    preprocess_rows([blob], spec)
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20)
"""

DECODE_PAGES = 720 * 1280 * 3 // 4096  # 675: the decoded image's pages


def _faults_per_image(mode: str) -> float | None:
    out = subprocess.run([sys.executable, "-c", FAULTS_PER_IMAGE, mode], capture_output=True, text=True, check=True)
    return None if out.stdout.strip() == "no mallopt" else float(out.stdout)


def test_kept_memory_is_not_faulted_in_per_image():
    kept = _faults_per_image("keep")
    if kept is None:
        pytest.skip("not glibc: no mallopt")
    assert kept < DECODE_PAGES / 10, kept
    assert _faults_per_image("plain") > DECODE_PAGES, "glibc no longer gives the buffers back: the control is void"


def _minor_faults(server_pid: int, model: str) -> int:
    """Minor page faults so far of `model`'s stub processes (/proc/PID/stat field 10)."""
    from tdet.ensembles.server import step_processes

    return sum(int(Path(f"/proc/{p.pid}/stat").read_text().rsplit(")", 1)[1].split()[7])
               for p in step_processes(server_pid)[model])


def test_the_served_preprocess_does_not_fault_per_request(served, images):
    from tdet.client.triton import connect

    frames = [images["wide.jpg"]] * 16  # 1280x720
    with connect(served.grpc_url, "damo_yolo_t") as client:
        client.infer_many(frames[:4], concurrency=2)  # every instance warm
        before = _minor_faults(served.pid, "damo_yolo_t_preprocess")
        client.infer_many(frames, concurrency=2)
        after = _minor_faults(served.pid, "damo_yolo_t_preprocess")
    assert before > 0 and (after - before) / len(frames) < DECODE_PAGES / 10, (before, after)
