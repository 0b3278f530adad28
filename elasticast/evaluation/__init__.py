"""Evaluation across lengths and resolutions (the paper's Figures 4 and 5) and training-token
usage (its Table 1); `elasticast-evaluate` is the entry point. Ray-free; names load on first use."""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "candidates": ["Candidate", "is_run_folder", "load_candidate"],
        "points": ["SWEEPS", "Point", "sweep_points"],
        "report": ["write_report"],
        "sweep": ["evaluate_point", "point_logits"],
        "usage": ["training_usage"],
    },
)
