"""L2, kind ``hcf`` (slice classifier + SANet, the HCF paper): ``bundle`` (format, open, weights),
``preprocessing`` (slices to network inputs and back), ``segmenter`` (``HCFSegmenter``)."""
