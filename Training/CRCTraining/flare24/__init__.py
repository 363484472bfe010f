"""FLARE24 organ interference: ``labels`` (organs + tumor training labels, §2.2), ``class_weights``, ``class_first_sampling``, ``losses`` (the public code's weighted loss), ``ablation`` (Table 4)."""
