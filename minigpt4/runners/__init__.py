"""FaceGPT subpackage."""
