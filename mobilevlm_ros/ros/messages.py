"""Runtime results -> ROS messages (ours, and vision_msgs' detections), in exactly one place."""

from __future__ import annotations

from vision_msgs.msg import Detection2D, Detection2DArray, ObjectHypothesisWithPose

from ..msg import BoundingBox, Caption, GroundedAnswer, Timings
from ..runtime.types import Answer, Box
from ..runtime.types import Timings as RuntimeTimings


def timings_msg(t: RuntimeTimings) -> Timings:
    return Timings(queue_s=float(max(t.queue_s, 0.0)), preprocess_s=float(t.preprocess_s),
                   vision_s=float(t.vision_s), prefill_s=float(t.prefill_s), decode_s=float(t.decode_s),
                   total_s=float(t.total_s),
                   prompt_tokens=int(t.prompt_tokens), new_tokens=int(t.new_tokens),
                   decode_tokens_per_s=float(t.decode_tokens_per_s))


def box_msg(b: Box) -> BoundingBox:
    return BoundingBox(label=b.phrase, center_x=(b.x1 + b.x2) / 2.0, center_y=(b.y1 + b.y2) / 2.0,
                       size_x=float(b.x2 - b.x1), size_y=float(b.y2 - b.y1),
                       normalized=[float(v) for v in (b.normalized or [0.0] * 4)])


def caption_msg(answer: Answer, header, camera: str, model_id: str) -> Caption:
    return Caption(header=header, camera=camera, text=answer.text, prompt=answer.prompt, model_id=model_id,
                   timings=timings_msg(answer.timings), reused=answer.reused)


def answer_msg(answer: Answer, header, camera: str, model_id: str) -> GroundedAnswer:
    w, h = answer.image_size or (0, 0)
    return GroundedAnswer(header=header, camera=camera, question=answer.prompt, text=answer.text,
                          boxes=[box_msg(b) for b in answer.boxes], image_width=int(w), image_height=int(h),
                          model_id=model_id, finish_reason=answer.finish_reason,
                          timings=timings_msg(answer.timings))


# The model gives a box, not a confidence: every detection says 1.0, so score thresholds downstream
# (trackers, rviz/Foxglove panels) keep them.
DETECTION_SCORE = 1.0


def detections_msg(answer: Answer, header) -> Detection2DArray:
    """The answer's boxes as vision_msgs: one Detection2D per box, in the source frame's pixels,
    class_id = the box's phrase."""
    detections = []
    for b in answer.boxes:
        d = Detection2D(header=header)
        d.bbox.center.position.x, d.bbox.center.position.y = (b.x1 + b.x2) / 2.0, (b.y1 + b.y2) / 2.0
        d.bbox.size_x, d.bbox.size_y = float(b.x2 - b.x1), float(b.y2 - b.y1)
        hypothesis = ObjectHypothesisWithPose()
        hypothesis.hypothesis.class_id, hypothesis.hypothesis.score = b.phrase, DETECTION_SCORE
        d.results = [hypothesis]
        detections.append(d)
    return Detection2DArray(header=header, detections=detections)
