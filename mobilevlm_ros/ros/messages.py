"""Runtime results -> ROS messages (ours, and vision_msgs' detections), in exactly one place."""

from __future__ import annotations

import math

from vision_msgs.msg import Detection2D, Detection2DArray, ObjectHypothesisWithPose

from ..msg import BoundingBox, Caption, GroundedAnswer, Timings, WatchStates
from ..msg import WatchEvent as WatchEventMsg
from ..msg import WatchState as WatchStateMsg
from ..runtime.answer_types import AnswerType
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


def answer_msg(answer: Answer, header, camera: str, model_id: str, conversation: str = "") -> GroundedAnswer:
    w, h = answer.image_size or (0, 0)
    msg = GroundedAnswer(header=header, camera=camera, question=answer.prompt, text=answer.text,
                         boxes=[box_msg(b) for b in answer.boxes], image_width=int(w), image_height=int(h),
                         model_id=model_id, finish_reason=answer.finish_reason,
                         timings=timings_msg(answer.timings), answer_type=answer.answer_type,
                         value_json=answer.value_json, confidence=float(answer.confidence),
                         alternatives=list(answer.alternatives),
                         probabilities=[float(p) for p in answer.alternatives.values()],
                         conversation=conversation)
    _typed_fields(msg, answer.value)
    return msg


def _typed_fields(msg, value) -> None:
    """The typed fields (value_bool, value_string, value_integer, value_number) of a GroundedAnswer
    or a watch message, for the simple types; the rest keep their defaults."""
    if isinstance(value, bool):
        msg.value_bool = value
    elif isinstance(value, int):
        msg.value_integer, msg.value_number = value, float(value)
    elif isinstance(value, float):
        msg.value_number = value
    elif isinstance(value, str):
        msg.value_string = value


def answer_type_from_msg(msg) -> AnswerType:
    """The runtime's AnswerType of a request's mobilevlm_ros/AnswerType (not checked yet)."""
    return AnswerType(kind=msg.kind or "text", choices=tuple(msg.choices),
                      minimum=msg.minimum[0] if len(msg.minimum) else None,
                      maximum=msg.maximum[0] if len(msg.maximum) else None, schema=msg.schema or None)


def watch_event_msg(event) -> WatchEventMsg:
    msg = WatchEventMsg(header=event.header, watch=event.watch, camera=event.camera,
                        value_json=event.value_json, confidence=float(event.confidence),
                        previous_value_json=event.previous_json)
    msg.value_bool = event.value is True
    msg.previous_value_bool = event.previous is True
    return msg


def watch_states_msg(states, stamp) -> WatchStates:
    """states: (Watch, camera, watches.WatchState) of every watch and camera."""
    out = []
    for watch, camera, st in states:
        m = WatchStateMsg(watch=watch.name, camera=camera, question=watch.question,
                          answer_type=watch.answer_type.kind, known=st.known, value_json=st.value_json,
                          value_bool=st.value is True,
                          confidence=float(st.confidence) if math.isfinite(st.confidence) else 0.0,
                          evaluations=st.evaluations, changes=st.changes)
        if st.header is not None:
            m.header = st.header
        out.append(m)
    return WatchStates(stamp=stamp, states=out)


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
