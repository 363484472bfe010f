"""U-SAM (point-prompted rectal tumor refinement): ``data`` (slices from volumes), ``train``, ``evaluate`` (the CARE paper's Table 4)."""
