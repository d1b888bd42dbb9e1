"""Replaying a bag into the VLM node and recording what it says: the function behind mobilevlm-replay
and each task of mobilevlm-regress. rclpy is imported when a replay runs."""

from __future__ import annotations

import sys
import threading
import time
from typing import Dict, Optional

DISCOVERY_SETTLE_S = 0.5  # after both sides report matched endpoints, before the first frame
REPORTED_INPUTS_TIMEOUT_S = 5.0  # a running node publishes /diagnostics every diagnostics_period_s (1 s)


def replay(in_bag: str, out_bag: str, engine: Optional[str], rate: float = 1.0,
           questions: Optional[str] = None, annotated: bool = False, max_new_tokens: int = 48,
           storage: str = "sqlite3", quiet: bool = False, node: str = "/vlm",
           change_threshold: Optional[float] = None, camera_topics: Optional[Dict[str, str]] = None,
           domain_id: Optional[int] = None, threads: int = 0,
           watches: Optional[Dict[str, str]] = None) -> dict:
    """Play `in_bag` into the node `node` (started here on `engine` if given), record its outputs to
    `out_bag`; the summary (report.summary). `camera_topics` (camera -> topic) overrides where frames
    go; else a running node's own report of its inputs, else the default names. `domain_id`: the ROS
    domain of this replay (default: ROS_DOMAIN_ID). `watches` (name -> yes/no question): standing
    watches added to the node before the first frame, their events printed and recorded.
    Interrupted (KeyboardInterrupt), it still writes `out_bag` with everything recorded so far, then
    re-raises."""
    import rclpy
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.signals import SignalHandlerOptions

    from . import report
    from .player import Player, camera_transports, default_inputs, load_events, reported_inputs
    from .recorder import Recorder

    events, image_topics = load_events(in_bag, questions)
    transports = camera_transports(events, image_topics)
    unknown = sorted(set(camera_topics or {}) - set(transports))
    if unknown:
        raise ValueError(f"--camera-topic names camera(s) {unknown} that bag {in_bag} does not have "
                         f"(it has {sorted(transports)})")
    context = rclpy.Context()  # our own: the caller may have rclpy running already
    # No rclpy signal handlers: Ctrl-C / SIGTERM must unwind through the finally below (the bag is written).
    rclpy.init(context=context, domain_id=domain_id, signal_handler_options=SignalHandlerOptions.NO)
    vlm = replay_node = executor = spin = recorder = None
    timing_errors = []
    try:
        if engine:
            vlm = _start_vlm_node(node, engine, transports, max_new_tokens, context, change_threshold,
                                  threads)
        replay_node = rclpy.create_node("mobilevlm_replay", context=context)
        recorder = Recorder(replay_node, node, annotated,
                            on_caption=None if quiet else lambda c: print(report.caption_text(c), flush=True),
                            on_watch_event=None if quiet else lambda e: print(report.watch_event_text(e),
                                                                              flush=True))
        executor = MultiThreadedExecutor(num_threads=16, context=context)
        for n in (vlm, replay_node):
            if n is not None:
                executor.add_node(n)
        spin = threading.Thread(target=executor.spin, daemon=True)
        spin.start()
        inputs = default_inputs(node, transports)
        if not engine and set(camera_topics or {}) != set(transports):  # a running node says where
            reported = reported_inputs(replay_node, node, timeout=REPORTED_INPUTS_TIMEOUT_S)
            if not reported and not quiet:
                print(f"note: no /diagnostics from {node}; publishing to {sorted(inputs.values())}",
                      file=sys.stderr)
            inputs.update({cam: topic for cam, topic in reported.items() if cam in inputs})
        inputs.update(camera_topics or {})
        player = Player(replay_node, node, transports, inputs)

        def on_response(q: dict, response) -> None:
            if not response.success:
                print(report.refusal_text(q, response.error), file=sys.stderr, flush=True)
                return
            recorder.add_answer(q, response.answer)
            if not quiet:
                print(report.answer_text(q, response.answer), flush=True)

        player.wait_for_node(timeout=30)
        recorder.wait_for_node(timeout=10)
        for name, question in (watches or {}).items():
            _add_watch(replay_node, node, name, question)
        # DDS matches each side on its own: our reader can see the node's caption writer before that
        # writer has matched our reader, and a volatile caption sent in that gap never arrives (seen
        # once in CI: the first frame's caption lost, lock-step waiting 120 s). Give the other sides time.
        time.sleep(DISCOVERY_SETTLE_S)
        timing_errors = player.play(events, rate, recorder.wait_for_caption, on_response)
        time.sleep(0.5)  # the last caption may still be on its way
    finally:
        if executor is not None:
            executor.shutdown()
        if spin is not None:
            spin.join(timeout=10)
        if vlm is not None:
            vlm.trigger_shutdown()  # its on_shutdown stops the inference worker and frees the engine
            vlm.destroy_node()
        if replay_node is not None:
            replay_node.destroy_node()
        rclpy.try_shutdown(context=context)
        if recorder is not None:  # also when interrupted: what was recorded up to then
            recorder.write(out_bag, storage)
    result = report.summary(events, recorder.captions, recorder.answers, timing_errors)
    result["watch_events"] = len(recorder.watch_events)
    return result


def _add_watch(ros_node, node: str, name: str, question: str, timeout: float = 30.0) -> None:
    """A yes/no watch on every camera of `node`, through its ~/add_watch (RuntimeError on refusal)."""
    from ..srv import AddWatch
    from .player import wait_until

    client = ros_node.create_client(AddWatch, f"{node}/add_watch")
    if not client.wait_for_service(timeout_sec=timeout):
        raise RuntimeError(f"{node} has no add_watch service")
    future = client.call_async(AddWatch.Request(name=name, question=question))
    wait_until(future.done, timeout, f"{node}/add_watch")
    if not future.result().success:
        raise RuntimeError(f"watch '{name}': {future.result().error}")


def _start_vlm_node(node: str, engine: str, transports: Dict[str, str], max_new_tokens: int, context,
                    change_threshold: Optional[float] = None, threads: int = 0):
    """The VLM node named `node`, configured for the bag's cameras and active. Reliable camera QoS, a
    deep queue and captions as fast as it can: a replay wants every frame it can get captioned."""
    from rclpy.lifecycle import TransitionCallbackReturn
    from rclpy.parameter import Parameter

    from .node import VLMNode
    from .player import split_node_name

    namespace, name = split_node_name(node)
    cameras = list(transports)
    vlm = VLMNode(name=name, namespace=namespace, context=context, parameter_overrides=[
        Parameter("engine_dir", value=engine), Parameter("cameras", value=cameras),
        Parameter("transports", value=[transports[c] for c in cameras]),
        Parameter("caption_rate_hz", value=30.0), Parameter("max_new_tokens", value=max_new_tokens),
        Parameter("qos_reliability", value="reliable"), Parameter("qos_depth", value=10),
        Parameter("max_queue", value=8), Parameter("threads", value=int(threads))]
        + ([] if change_threshold is None
           else [Parameter("change_threshold", value=float(change_threshold))]))
    if (vlm.trigger_configure() != TransitionCallbackReturn.SUCCESS
            or vlm.trigger_activate() != TransitionCallbackReturn.SUCCESS):
        vlm.trigger_shutdown()
        vlm.destroy_node()
        raise RuntimeError(f"the VLM node could not start on engine {engine} (see the log above)")
    return vlm
