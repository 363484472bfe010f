"""RCSegNeXt (sagittal T2 MR): ``configuration`` (the network configurations), ``mixins`` (the nnU-Net trainer hook), ``compare`` (the RCSegNeXt paper's Table 3 comparison)."""
