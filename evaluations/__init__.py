"""Evaluation of samples: Inception features, FID/IS/KID/precision-recall, reference statistics, results registry and the paper's tables."""
