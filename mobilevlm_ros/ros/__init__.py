"""The ROS 2 layer: the node, its inference worker and parameters, message conversion, the image
bridge, annotation, and bags. Needs rclpy; never torch."""
