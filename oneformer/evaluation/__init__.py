"""Metrics (mIoU, PQ, mask AP), prediction-file formats, and scoring any predictor on the evaluation split."""
