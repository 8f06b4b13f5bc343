"""Triton python model `<m>_tracker`: the last step of the `<m>_track` ensemble. Detections of one frame
(NUM_DETECTIONS, BOXES, SCORES, CLASSES, padded to K) -> the same plus TRACK_IDS (int64, 0 = padding), from
one ByteTrack (tdet.client.bytetrack) per stream, keyed by Triton's sequence correlation id.

The sequence batcher (oldest strategy, so many streams share an instance) passes the correlation id and the
START/END flags through the ensemble (checked: bench/seq_ensemble). START makes a fresh tracker, END drops it
after answering. A stream that goes quiet for max_sequence_idle_microseconds is dropped by the batcher (its next
non-START request is refused with INVALID_ARGUMENT) and here (its tracker is freed on the next execute).
Tracker parameters: config parameters, overridden per stream by the START request's parameters
(track_thresh, low_thresh, match_thresh, track_buffer, frame_rate).
"""

import json
import time

import numpy as np
import triton_python_backend_utils as pb_utils

from tdet.client.bytetrack import ByteTracker, ByteTrackParams
from tdet.client.specs import WIRE_OUTPUTS, config_parameters
from tdet.ensembles.heap import keep_freed_memory

START, END = 1, 2  # TRITONSERVER_REQUEST_FLAG_SEQUENCE_START / _END
FIELDS = {"track_thresh": float, "low_thresh": float, "match_thresh": float, "track_buffer": int, "frame_rate": int}


def track_params(values, base=None):
    """ByteTrackParams from string/number `values` (config or request parameters) over `base`."""
    out = dict(vars(base or ByteTrackParams()))
    for k, cast in FIELDS.items():
        if k in values:
            try:
                out[k] = cast(values[k])
            except (TypeError, ValueError):
                raise ValueError(f"tracker parameter {k}={values[k]!r} is not a {cast.__name__}") from None
    return ByteTrackParams(**out).check()


class TritonPythonModel:
    def initialize(self, args):
        keep_freed_memory()  # no page faults per request (ensembles/heap.py)
        cfg = json.loads(args["model_config"])
        self.defaults = track_params(config_parameters(cfg))
        idle_us = int(cfg.get("sequence_batching", {}).get("max_sequence_idle_microseconds", 0) or 0)
        self.idle_s = idle_us / 1e6 if idle_us else float("inf")
        self.streams = {}  # correlation id -> [tracker, last seen (monotonic s)]

    def execute(self, requests):
        now = time.monotonic()
        for cid in [c for c, (_, seen) in self.streams.items() if now - seen > self.idle_s]:
            del self.streams[cid]  # the batcher has dropped this sequence too
        return [self._respond(r, now) for r in requests]

    def _respond(self, request, now):
        cid, flags = request.correlation_id(), request.flags()
        if cid in (0, ""):
            return _error("a `_track` model needs a sequence id (the stream's correlation id)", True)
        if flags & START or cid not in self.streams:
            try:
                params = track_params(json.loads(request.parameters() or "{}"), self.defaults)
            except ValueError as err:
                return _error(str(err), True)
            self.streams[cid] = [ByteTracker(params), now]
        entry = self.streams[cid]
        entry[1] = now
        try:
            num, boxes, scores, classes = (pb_utils.get_input_tensor_by_name(request, n).as_numpy()
                                           for n in WIRE_OUTPUTS)
            outs = [_track_row(entry[0], num[b], boxes[b], scores[b], classes[b]) for b in range(len(num))]
        except Exception as err:
            return _error(f"tracker: {type(err).__name__}: {err}", False)
        finally:
            if flags & END:
                self.streams.pop(cid, None)
        names = (*WIRE_OUTPUTS, "TRACK_IDS")
        return pb_utils.InferenceResponse([pb_utils.Tensor(n, np.stack([o[i] for o in outs]))
                                           for i, n in enumerate(names)])

    def finalize(self):
        self.streams.clear()


def _track_row(tracker, num, boxes, scores, classes):
    """One frame: the first num[0] detections through the tracker, padded back to K."""
    k, n = len(scores), int(num.reshape(-1)[0])
    tb, ts, tc, ti = tracker.update(boxes[:n], scores[:n], classes[:n])
    m = min(len(ts), k)
    out_b, out_s = np.zeros((k, 4), np.float32), np.zeros(k, np.float32)
    out_c, out_i = np.zeros(k, np.int32), np.zeros(k, np.int64)
    out_b[:m], out_s[:m], out_c[:m], out_i[:m] = tb[:m], ts[:m], tc[:m], ti[:m]
    return np.array([m], np.int32), out_b, out_s, out_c, out_i


def _error(msg, client):
    code = pb_utils.TritonError.INVALID_ARG if client else pb_utils.TritonError.INTERNAL
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(msg, code))
