"""L2, kind ``nnunet`` (AG-CRC, FLARE24 organ interference, RCSegNeXt): ``open`` (bundle or results folder),
``loading`` (network + weights into nnU-Net's predictor, no pickle), ``restricted_predictor`` (only the tiles
that matter), ``segmenter`` (``NNUNetSegmenter``)."""
