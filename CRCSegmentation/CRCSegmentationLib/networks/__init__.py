"""Every PyTorch network a shipped model needs at prediction time (DESIGN.md, "Where the five methods live").

``blocks`` holds building blocks, each architecture has its own sub-package (``usam``), and
``nnunet_architectures`` tells which network an nnU-Net trainer name of ours stands for, so a
bundle predicts without the training package. Builders take explicit arguments, return a
module and read no files; weights are loaded by the code that uses the network.
"""
