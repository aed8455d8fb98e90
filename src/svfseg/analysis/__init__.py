"""Analyses of trained runs behind the paper's "Why SVF works" figures.

* :mod:`~svfseg.analysis.curves`: training vs validation mIoU over epochs (Figs 2, 3, 7);
* :mod:`~svfseg.analysis.spectra`: singular values before / after fine-tuning (Figs 4, 8-11);
* :mod:`~svfseg.analysis.cues`: where the most grown / shrunk directions respond in an image (Figs 5, 6);
* :mod:`~svfseg.analysis.checkpoint`: loading a checkpoint and dataset images for the above.

``notebooks/svf_analysis.ipynb`` runs all of them on one checkpoint.
"""

from svfseg.analysis.checkpoint import (
    dataset_root,
    find_backbone,
    image_from_dataset,
    load_run,
    parse_run_dirs,
)
from svfseg.analysis.cues import (
    CueMaps,
    capture_input,
    cue_maps,
    direction_coefficients,
    overlay_cues,
    prepare_image,
)
from svfseg.analysis.curves import (
    Curve,
    find_metrics_csv,
    mean_curve,
    plot_strategy_panels,
    plot_train_val_curves,
    read_metric_curves,
)
from svfseg.analysis.spectra import (
    KINDS,
    SpectrumChange,
    plot_before_after,
    plot_top_k_change,
    select_convs,
    singular_value_changes,
    spectrum_change,
    stage_change_stats,
    stage_of,
)

__all__ = [
    "KINDS",
    "CueMaps",
    "Curve",
    "SpectrumChange",
    "capture_input",
    "cue_maps",
    "dataset_root",
    "direction_coefficients",
    "find_backbone",
    "find_metrics_csv",
    "image_from_dataset",
    "load_run",
    "mean_curve",
    "overlay_cues",
    "parse_run_dirs",
    "plot_before_after",
    "plot_strategy_panels",
    "plot_top_k_change",
    "plot_train_val_curves",
    "prepare_image",
    "read_metric_curves",
    "select_convs",
    "singular_value_changes",
    "spectrum_change",
    "stage_change_stats",
    "stage_of",
]
