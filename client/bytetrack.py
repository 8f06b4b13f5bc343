"""ByteTrack (Zhang et al., ECCV 2022, "ByteTrack: Multi-Object Tracking by Associating Every Detection Box"),
numpy + scipy only (the Triton tracker model and the client share it; no torch).

What the paper (and its official BYTETracker) does, per frame:
  1. split detections by score: high (> track_thresh) and low (> low_thresh, <= track_thresh);
  2. Kalman-predict every tracked and lost track (constant velocity, state x, y, aspect, h and velocities);
  3. first association: high detections vs tracked+lost tracks, cost 1 - IoU fused with the score,
     Hungarian with gate match_thresh;
  4. second association: low detections vs the tracked tracks left unmatched, cost 1 - IoU, gate 0.5;
  5. unconfirmed tracks (born last frame) vs the high detections left, gate 0.7; unmatched ones are removed;
  6. a high detection left unmatched with score > det_thresh (track_thresh + 0.1) starts a new track;
  7. a track lost for more than track_buffer frames (scaled by frame_rate / 30) is removed.
Linear assignment: scipy's Hungarian (the official code uses lap.lapjv with the same gate), so equal costs may
pair differently only in exact ties.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

TRACKED, LOST, REMOVED = 0, 1, 2


@dataclass(frozen=True)
class ByteTrackParams:
    track_thresh: float = 0.5  # high/low split; new tracks need track_thresh + 0.1
    low_thresh: float = 0.1  # detections below this are dropped
    match_thresh: float = 0.8  # gate of the first association (1 - IoU, fused with score)
    track_buffer: int = 30  # frames a lost track is kept (at 30 fps)
    frame_rate: int = 30
    fuse_score: bool = True  # the official MOT17 setting (not for MOT20)

    def check(self) -> ByteTrackParams:
        if not (0 <= self.low_thresh <= self.track_thresh <= 1) or not (0 < self.match_thresh <= 1):
            raise ValueError(f"tracker: need 0 <= low_thresh <= track_thresh <= 1 and 0 < match_thresh <= 1, "
                             f"got {self}")
        if self.track_buffer < 0 or self.frame_rate < 1:
            raise ValueError(f"tracker: track_buffer must be >= 0 and frame_rate >= 1, got {self}")
        return self


class KalmanFilter:
    """The constant-velocity filter of SORT/DeepSORT as ByteTrack uses it: state (cx, cy, a, h, vcx, vcy, va, vh),
    noise proportional to the box height."""

    def __init__(self):
        self.F = np.eye(8)
        self.F[:4, 4:] = np.eye(4)
        self.H = np.eye(4, 8)
        self.w_pos, self.w_vel = 1.0 / 20, 1.0 / 160

    def initiate(self, z):
        mean = np.r_[z, np.zeros(4)]
        h = z[3]
        std = [2 * self.w_pos * h, 2 * self.w_pos * h, 1e-2, 2 * self.w_pos * h,
               10 * self.w_vel * h, 10 * self.w_vel * h, 1e-5, 10 * self.w_vel * h]
        return mean, np.diag(np.square(std))

    def predict(self, mean, cov):
        """Batched: mean [N, 8], cov [N, 8, 8]."""
        h = mean[:, 3]
        std = np.stack([self.w_pos * h, self.w_pos * h, np.full_like(h, 1e-2), self.w_pos * h,
                        self.w_vel * h, self.w_vel * h, np.full_like(h, 1e-5), self.w_vel * h], 1)
        q = np.einsum("ni,ij->nij", np.square(std), np.eye(8))
        return mean @ self.F.T, self.F @ cov @ self.F.T + q

    def update(self, mean, cov, z):
        """Batched: mean [N, 8], cov [N, 8, 8], measurements z [N, 4] (one 4x4 solve per track, all at once:
        per-track scipy calls were most of a frame's cost)."""
        h = mean[:, 3]
        std = np.stack([self.w_pos * h, self.w_pos * h, np.full_like(h, 1e-1), self.w_pos * h], 1)
        s = cov[:, :4, :4] + np.einsum("ni,ij->nij", np.square(std), np.eye(4))  # H P H^T + R (H picks x, y, a, h)
        pht = cov[:, :, :4]  # P H^T
        gain = np.linalg.solve(s, pht.transpose(0, 2, 1)).transpose(0, 2, 1)  # P H^T S^-1 (S symmetric)
        mean = mean + np.einsum("nij,nj->ni", gain, z - mean[:, :4])
        return mean, cov - gain @ s @ gain.transpose(0, 2, 1)


def xyxy_to_xyah(b):
    """[..., 4] xyxy -> [..., 4] (cx, cy, aspect, h)."""
    b = np.asarray(b)
    w, h = b[..., 2] - b[..., 0], b[..., 3] - b[..., 1]
    return np.stack([b[..., 0] + w / 2, b[..., 1] + h / 2, w / h, h], -1)


def xyah_to_xyxy(m):
    """[..., 4] (cx, cy, aspect, h) -> [..., 4] xyxy."""
    m = np.asarray(m)
    w = m[..., 2] * m[..., 3]
    return np.stack([m[..., 0] - w / 2, m[..., 1] - m[..., 3] / 2, m[..., 0] + w / 2, m[..., 1] + m[..., 3] / 2], -1)


def track_boxes(tracks):
    """[N, 4] xyxy of tracks that have a Kalman state, in one step."""
    if not tracks:
        return np.zeros((0, 4))
    return xyah_to_xyxy(np.stack([t.mean[:4] for t in tracks]))


def iou_matrix(a, b):
    """IoU [len(a), len(b)] of xyxy boxes (the official code's cython_bbox adds +1 to widths: pixel
    convention of the time; here continuous coordinates)."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), 2)
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None] - inter, 1e-12)


def linear_assignment(cost, thresh):
    """(matches [(row, col)], unmatched rows, unmatched cols): Hungarian on `cost`, pairs above thresh dropped
    (what lap.lapjv(cost, extend_cost=True, cost_limit=thresh) returns in the official code)."""
    if cost.size == 0:
        return [], list(range(cost.shape[0])), list(range(cost.shape[1]))
    big = thresh + 1.0  # a pair over the gate is as good as no pair
    rows, cols = linear_sum_assignment(np.where(cost > thresh, big, cost))
    matches = [(r, c) for r, c in zip(rows, cols) if cost[r, c] <= thresh]
    mr, mc = {r for r, _ in matches}, {c for _, c in matches}
    return matches, [r for r in range(cost.shape[0]) if r not in mr], [c for c in range(cost.shape[1]) if c not in mc]


class Track:
    __slots__ = ("mean", "cov", "score", "cls", "track_id", "state", "activated", "frame_id", "start_frame", "_box")

    def __init__(self, box, score, cls):
        self.mean, self.cov = None, None
        self.score, self.cls = float(score), int(cls)
        self._box = np.asarray(box, np.float64)
        self.track_id, self.state, self.activated, self.frame_id, self.start_frame = 0, TRACKED, False, 0, 0

    @property
    def box(self):
        return self._box if self.mean is None else xyah_to_xyxy(self.mean[:4])


class ByteTracker:
    """One stream's tracker: update(boxes xyxy [N,4], scores [N], classes [N]) per frame ->
    (boxes [M,4], scores [M], classes [M], track ids [M]) of the tracks active in this frame."""

    def __init__(self, params: ByteTrackParams | None = None):
        self.p = (params or ByteTrackParams()).check()
        self.kf = KalmanFilter()
        self.tracked: list[Track] = []
        self.lost: list[Track] = []
        self.frame_id = 0
        self.next_id = 0
        self.max_lost = int(self.p.frame_rate / 30.0 * self.p.track_buffer)

    def _predict(self, tracks):
        live = [t for t in tracks if t.mean is not None]
        if not live:
            return
        mean = np.stack([t.mean for t in live])
        mean[[i for i, t in enumerate(live) if t.state != TRACKED], 7] = 0  # a lost track's height stops changing
        mean, cov = self.kf.predict(mean, np.stack([t.cov for t in live]))
        for t, m, c in zip(live, mean, cov):
            t.mean, t.cov = m, c

    def _activate(self, t):
        self.next_id += 1
        t.track_id = self.next_id
        t.mean, t.cov = self.kf.initiate(xyxy_to_xyah(t._box))
        t.state, t.frame_id, t.start_frame = TRACKED, self.frame_id, self.frame_id
        t.activated = self.frame_id == 1  # tracks of the first frame are confirmed at once

    def _update(self, pairs):
        """Kalman-update each (track, detection) pair, all in one batched step."""
        if not pairs:
            return
        z = xyxy_to_xyah(np.stack([d._box for _, d in pairs]))
        mean, cov = self.kf.update(np.stack([t.mean for t, _ in pairs]), np.stack([t.cov for t, _ in pairs]), z)
        for (t, det), m, c in zip(pairs, mean, cov):
            t.mean, t.cov = m, c
            t.state, t.activated, t.frame_id, t.score, t.cls = TRACKED, True, self.frame_id, det.score, det.cls

    def _cost(self, tracks, dets, fuse):
        iou = iou_matrix(track_boxes(tracks), np.array([d._box for d in dets]).reshape(-1, 4))
        if fuse and iou.size:
            iou = iou * np.array([d.score for d in dets])[None]
        return 1 - iou

    def update(self, boxes, scores, classes):
        p = self.p
        self.frame_id += 1
        boxes, scores = np.asarray(boxes, np.float64).reshape(-1, 4), np.asarray(scores, np.float64).reshape(-1)
        classes = np.asarray(classes).reshape(-1)
        high = scores > p.track_thresh
        low = (scores > p.low_thresh) & (scores < p.track_thresh)  # the official split: == goes nowhere
        dets = [Track(b, s, c) for b, s, c in zip(boxes[high], scores[high], classes[high])]
        dets_low = [Track(b, s, c) for b, s, c in zip(boxes[low], scores[low], classes[low])]
        unconfirmed = [t for t in self.tracked if not t.activated]
        confirmed = [t for t in self.tracked if t.activated]
        pool = confirmed + [t for t in self.lost if t.track_id not in {c.track_id for c in confirmed}]
        self._predict(pool)
        activated, refound, lost, removed = [], [], [], []
        # 1st association: high-score detections with every tracked and lost track
        matches, u_track, u_det = linear_assignment(self._cost(pool, dets, p.fuse_score), p.match_thresh)
        for it, _ in matches:
            (activated if pool[it].state == TRACKED else refound).append(pool[it])
        self._update([(pool[it], dets[idet]) for it, idet in matches])
        # 2nd association: low-score detections with the still-unmatched tracked ones (IoU only)
        r_tracked = [pool[i] for i in u_track if pool[i].state == TRACKED]
        matches, u_track2, _ = linear_assignment(self._cost(r_tracked, dets_low, False), 0.5)
        for it, _ in matches:
            (activated if r_tracked[it].state == TRACKED else refound).append(r_tracked[it])
        self._update([(r_tracked[it], dets_low[idet]) for it, idet in matches])
        for it in u_track2:
            t = r_tracked[it]
            if t.state != LOST:
                t.state = LOST
                lost.append(t)
        # unconfirmed tracks (one frame old) with the high detections left
        dets = [dets[i] for i in u_det]
        matches, u_unconf, u_det = linear_assignment(self._cost(unconfirmed, dets, p.fuse_score), 0.7)
        self._update([(unconfirmed[it], dets[idet]) for it, idet in matches])
        activated += [unconfirmed[it] for it, _ in matches]
        for it in u_unconf:
            unconfirmed[it].state = REMOVED
            removed.append(unconfirmed[it])
        for idet in u_det:  # new tracks
            d = dets[idet]
            if d.score >= p.track_thresh + 0.1:
                self._activate(d)
                activated.append(d)
        for t in self.lost:
            if self.frame_id - t.frame_id > self.max_lost:
                t.state = REMOVED
                removed.append(t)
        self._merge(activated, refound, lost, removed)
        out = [t for t in self.tracked if t.activated]
        return (track_boxes(out).astype(np.float32), np.array([t.score for t in out], np.float32),
                np.array([t.cls for t in out], np.int32), np.array([t.track_id for t in out], np.int64))

    def _merge(self, activated, refound, lost, removed):
        """The official bookkeeping: joint/sub stracks, then duplicates (IoU > 0.85) resolved by track age."""
        tracked = [t for t in self.tracked if t.state == TRACKED]
        tracked = _joint(_joint(tracked, activated), refound)
        removed_ids = {id(t) for t in removed}
        tracked_ids = {t.track_id for t in tracked}
        lost_pool = [t for t in self.lost if t.track_id not in tracked_ids] + lost
        lost_pool = [t for t in lost_pool if id(t) not in removed_ids]
        self.tracked, self.lost = _remove_duplicates(tracked, lost_pool)


def _joint(a, b):
    seen = {t.track_id for t in a}
    return a + [t for t in b if t.track_id not in seen and not seen.add(t.track_id)]


def _remove_duplicates(a, b):
    if not a or not b:
        return a, b
    dist = 1 - iou_matrix(track_boxes(a), track_boxes(b))
    dup_a, dup_b = set(), set()
    for i, j in zip(*np.nonzero(dist < 0.15)):
        ta, tb = a[i].frame_id - a[i].start_frame, b[j].frame_id - b[j].start_frame
        (dup_b if ta > tb else dup_a).add(j if ta > tb else i)
    return [t for i, t in enumerate(a) if i not in dup_a], [t for i, t in enumerate(b) if i not in dup_b]
