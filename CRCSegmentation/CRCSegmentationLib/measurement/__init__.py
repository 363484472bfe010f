"""L1: measuring masks: ``metrics`` (Dice, HD95, ASSD, NSD), ``surface_area``, ``statistics`` (tumor statistics)."""
