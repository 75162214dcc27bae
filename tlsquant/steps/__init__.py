"""The named steps of one slide's analysis, in the order :func:`tlsquant.analyze_slide` runs them.

1. :func:`plan_channels` (channels): which channel plays which role, which markers are scored per cell;
2. :func:`plan_grid` (grid): the evidence maps' bins, and whether their memory fits;
3. :func:`model_signal` (signal): each channel's background and threshold;
4. :func:`count_evidence` (signal): the full-resolution counting pass into the evidence maps;
5. :func:`tissue_and_tumour` (regions): tissue, tumour bed, margin and distance to the border;
6. :func:`find_tls` (tls): dense B-cell aggregates, artefacts excluded;
7. :func:`tls_rows` (measures): stage, location and each TLS's numbers from the evidence maps;
8. :func:`count_cells` (cells): the second full-resolution pass, nuclei and marker-positive cells
   (with ``compute.one_read``, :func:`count_evidence_and_cells` reads the slide once for 4 and 8,
   and :func:`finish_cells` counts the cells into the regions once 5-7 have found them);
9. :func:`tls_table` and :func:`slide_metrics_of` (measures): the cells of each TLS, the slide's metrics
   (:func:`measure_tls` is 7 and 9 in one call).

Each step is a function of arrays, the config and the results of the steps before it: it
can be run, tested and benchmarked alone (``tlsquant.sensitivity`` re-runs 5, 6, 7 and 9 per
scenario). Nothing here reads or writes files beyond the slide's pixels.
"""

from .cells import CellPass, SegmentedCells, count_cells, count_evidence_and_cells, finish_cells
from .channels import CellMarker, ChannelPlan, check_marker_rules, column_key, plan_channels, resolve_cell_markers, resolve_channels
from .grid import Grid, check_memory, plan_grid
from .measures import measure_tls, slide_metrics_of, staged_tls, tls_rows, tls_table
from .regions import TumourBed, region_warnings, tissue_and_tumour
from .signal import count_evidence, model_signal, sensitivity_groups
from .tls import FoundTLS, artefact_zone, b_occupancy, find_tls

__all__ = ["CellMarker", "CellPass", "SegmentedCells", "ChannelPlan", "FoundTLS", "Grid", "TumourBed", "artefact_zone", "b_occupancy",
           "check_marker_rules", "check_memory", "column_key", "count_cells", "count_evidence", "count_evidence_and_cells", "find_tls", "finish_cells",
           "measure_tls", "model_signal", "plan_channels", "plan_grid", "region_warnings", "resolve_cell_markers",
           "resolve_channels", "sensitivity_groups", "slide_metrics_of", "staged_tls", "tissue_and_tumour", "tls_rows",
           "tls_table"]
