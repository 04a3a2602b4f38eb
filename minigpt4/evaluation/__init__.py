"""Evaluation of FaceGPT models: label maps, metrics, reports and public benchmarks."""
