"""Runtime: what runs on the robot. numpy, onnxruntime and sentencepiece only; no torch, no ROS."""
