"""Evaluation across lengths and resolutions (the paper's Figures 4 and 5) and training-token
usage (its Table 1); `jobs/evaluate.py` is the entry point. Ray-free."""
from elasticast.evaluation.candidates import Candidate, load_candidate
from elasticast.evaluation.report import write_report
from elasticast.evaluation.sweep import Point, evaluate_point, sweep_points
from elasticast.evaluation.usage import training_usage

__all__ = ["Candidate", "Point", "evaluate_point", "load_candidate", "sweep_points", "training_usage", "write_report"]
