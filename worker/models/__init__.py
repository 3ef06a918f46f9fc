"""Deepfake classifier backends, each behind the pipeline's ``FaceClassifier`` port."""
