"""mobilevlm_ros: MobileVLM on a robot.

Layers (each importable without the one above it):
  mobilevlm_ros.model    PyTorch reference, checkpoint loader, exporters (needs torch)
  mobilevlm_ros.runtime  numpy + onnxruntime + sentencepiece: image -> tokens -> engines -> text -> boxes
  mobilevlm_ros (ROS)    the node, message conversion, replay (needs rclpy)
"""

__version__ = "0.1.0"
