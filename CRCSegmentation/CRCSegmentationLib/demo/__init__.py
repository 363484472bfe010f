"""L4, the demonstrations: ``ct`` (guidance + tumor model on a CT phantom), ``mr`` (RCSegNeXt on an MR phantom),
``mr_phantom`` (the sagittal T2 phantom)."""
