"""mobilevlm_ros: MobileVLM on a robot.

Layers (each importable without the ones above it; ARCHITECTURE.md, test/test_layers.py):
  mobilevlm_ros.runtime  numpy + onnxruntime + sentencepiece: image -> tokens -> engines -> text -> boxes
  mobilevlm_ros.demo     the scene world of the demo model
  mobilevlm_ros.ros      the node, worker, bridge, messages, bags and replay (needs rclpy, never torch)
  mobilevlm_ros.model    PyTorch reference, checkpoint loader, exporter (needs torch)
  mobilevlm_ros.tools    console entry points
The generated interfaces are mobilevlm_ros.msg, mobilevlm_ros.srv and mobilevlm_ros.action.
"""

# One package, possibly in two folders: with `make setup` the sources are an editable install of
# the repository while rosidl installs the generated msg/srv/action subpackages (and their
# typesupport modules) into the venv's site-packages/mobilevlm_ros. Every mobilevlm_ros folder on
# sys.path becomes part of this package. On a colcon install both live in one folder and this
# changes nothing.
from pkgutil import extend_path

__path__ = extend_path(__path__, __name__)

__version__ = "0.1.0"
