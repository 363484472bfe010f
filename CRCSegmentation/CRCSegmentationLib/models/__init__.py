"""L3: ``kinds`` (the registry of model kinds), ``open`` (``open_model``), ``catalogue`` (named and shipped models),
``cache`` (opened models reused), ``slice_filter`` (an HCF classifier in front of any model's result)."""
